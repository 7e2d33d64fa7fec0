"""A small client of the milter protocol (version 6), playing the MTA's side.

Postfix is the real client in the integration tests; this one is for what Postfix will not do
on demand: hang up in the middle of a message, send binary garbage as a header, or look at the
milter's exact replies (which header it inserted where, what reply code it set).

Packets are ``uint32 length, command byte, data``; strings are NUL-terminated.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

SMFIP_HDR_LEADSPC = 0x00100000
ALL_ACTIONS = 0x1FF


@dataclass
class EomResult:
    """The milter's answer to end-of-message: modifications, then the final reply."""

    inserted: list[tuple[int, str, bytes]] = field(default_factory=list)   # (index, name, value)
    added: list[tuple[str, bytes]] = field(default_factory=list)
    changed: list[tuple[int, str, bytes]] = field(default_factory=list)    # value b"": deleted
    reply: str = ""          # 'c' continue, 'a' accept, 't' tempfail, 'r' reject, 'y' text...
    reply_text: bytes = b""

    def header(self, name: str) -> list[bytes]:
        low = name.lower()
        return [v for _i, n, v in self.inserted if n.lower() == low] + \
            [v for n, v in self.added if n.lower() == low]


class MilterClient:
    def __init__(self, address: str | tuple[str, int], timeout: float = 30.0) -> None:
        if isinstance(address, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)

    # -- wire ----------------------------------------------------------------------------

    def send(self, cmd: bytes, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack("!I", len(data) + 1) + cmd + data)

    def _exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("milter closed the connection")
            out += chunk
        return out

    def read(self) -> tuple[str, bytes]:
        (length,) = struct.unpack("!I", self._exact(4))
        packet = self._exact(length)
        return chr(packet[0]), packet[1:]

    def ask(self, cmd: bytes, data: bytes = b"") -> str:
        self.send(cmd, data)
        return self.read()[0]

    # -- the SMTP transaction, step by step ---------------------------------------------

    def negotiate(self, protocol: int = SMFIP_HDR_LEADSPC) -> tuple[int, int]:
        self.send(b"O", struct.pack("!III", 6, ALL_ACTIONS, protocol))
        cmd, data = self.read()
        assert cmd == "O", cmd
        _version, actions, proto = struct.unpack("!III", data[:12])
        return actions, proto

    def macros(self, stage: bytes, values: dict[str, str]) -> None:
        data = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in values.items())
        self.send(b"D", stage + data)

    def connect(self, hostname: str, ip: str, port: int = 40000) -> str:
        return self.ask(b"C", hostname.encode() + b"\0" + b"4" + struct.pack("!H", port)
                        + ip.encode() + b"\0")

    def mail(self, sender: str, macros: dict[str, str] | None = None) -> str:
        if macros:
            self.macros(b"M", macros)
        return self.ask(b"M", f"<{sender}>".encode() + b"\0")

    def rcpt(self, recipient: str) -> str:
        return self.ask(b"R", f"<{recipient}>".encode() + b"\0")

    def data(self) -> str:
        return self.ask(b"T")

    def header(self, name: bytes, value: bytes) -> str:
        return self.ask(b"L", name + b"\0" + value + b"\0")

    def eoh(self) -> str:
        return self.ask(b"N")

    def body(self, chunk: bytes) -> str:
        return self.ask(b"B", chunk)

    def eom(self, queue_id: str = "TESTQUEUEID") -> EomResult:
        self.macros(b"E", {"i": queue_id})
        self.send(b"E")
        result = EomResult()
        while True:
            cmd, data = self.read()
            if cmd == "i":
                (index,) = struct.unpack("!I", data[:4])
                name, value = data[4:].rstrip(b"\0").split(b"\0", 1)
                result.inserted.append((index, name.decode(), value))
            elif cmd == "h":
                name, value = data.rstrip(b"\0").split(b"\0", 1)
                result.added.append((name.decode(), value))
            elif cmd == "m":
                (index,) = struct.unpack("!I", data[:4])
                name, _, value = data[4:].rstrip(b"\0").partition(b"\0")
                result.changed.append((index, name.decode(), value))
            else:
                result.reply, result.reply_text = cmd, data.rstrip(b"\0")
                return result

    def quit(self) -> None:
        try:
            self.send(b"Q")
        finally:
            self.sock.close()

    def close(self) -> None:
        self.sock.close()


def split_message(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(name, value-with-leading-space) fields and the CRLF body of a raw message, the way an
    MTA that negotiated SMFIP_HDR_LEADSPC hands them to a milter (folds joined by LF)."""
    message = message.replace(b"\r\n", b"\n")
    head, _, body = message.partition(b"\n\n")
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\n" + line)
        else:
            name, _, value = line.partition(b":")
            fields.append((name, value))
    return fields, body.replace(b"\n", b"\r\n")


def run_message(client: MilterClient, message: bytes, *, client_ip: str = "203.0.113.10",
                sender: str = "alice@example.test", recipient: str = "bob@receiver.test",
                macros: dict[str, str] | None = None, chunk: int = 65535) -> EomResult | str:
    """A whole transaction; the EomResult, or the early reply letter that ended it."""
    for step in (lambda: client.connect("client.test", client_ip),
                 lambda: client.mail(sender, macros), lambda: client.rcpt(recipient),
                 client.data):
        reply = step()
        if reply != "c":
            return reply
    fields, body = split_message(message)
    for name, value in fields:
        reply = client.header(name, value)
        if reply != "c":
            return reply
    reply = client.eoh()
    if reply != "c":
        return reply
    for i in range(0, len(body), chunk):
        reply = client.body(body[i:i + chunk])
        if reply != "c":
            return reply
    return client.eom()


def one_message(address: tuple[str, int], message: bytes, client_ip: str) -> EomResult:
    """A connection of its own for one whole transaction that must reach end of message."""
    client = MilterClient(address)
    try:
        client.negotiate()
        result = run_message(client, message, client_ip=client_ip)
    finally:
        client.close()
    assert isinstance(result, EomResult), result
    return result
