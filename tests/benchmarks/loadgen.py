"""A load generator for Postfix policy servers, and the do-nothing server that measures its floor.

The generator behaves as Postfix's smtpd does towards a policy service: persistent connections,
one request in flight per connection (no pipelining), the next request sent as soon as the
answer to the last one is complete. It is written to cost as little as possible per request, so
that it is not what a measurement measures:

* every request is encoded before the clock starts (``encode``); the timed loop only sends
  bytes it already has, and reads;
* one thread, one ``epoll`` and non-blocking sockets: no event-loop scheduling, no tasks, no
  futures; a completed answer costs a ``recv``, a ``send`` and two clock reads;
* the garbage collector is off while the clock runs;
* answers are kept as bytes and checked only after the clock stops.

A run is bounded by its number of requests and by a time limit, whichever comes first, and only
ever connects where it is told (the benchmark gives it private loopback addresses).

``python -m tests.benchmarks.loadgen serve-dunno HOST PORT`` runs the "physical limit" server:
an asyncio policy server that answers ``DUNNO`` to every request without looking at it, with
the same asyncio streams postward-policyd uses.

``python -m tests.benchmarks.loadgen serve-dns HOST PORT NAMESERVER ZONE...`` is the DNS limit
for a client seen for the first time: per request it makes only the lookups the guide's rules
make for such a client (an A query per DNSBL zone at once, then TXT for the zones that list it)
through postward's own c-ares transport, no cache, and answers ``554`` when three or more list
the client, else ``DUNNO``. What it costs is what unbound and rbldnsd cost on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import select
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ANSWER_END = b"\n\n"
_RECV = 65536


def encode(request: Mapping[str, str]) -> bytes:
    """One policy request on the wire: ``name=value`` lines and an empty line."""
    return ("".join(f"{k}={v}\n" for k, v in request.items()) + "\n").encode()


def verb(answer: bytes) -> str:
    """The first word of an answer's action: ``554``, ``DUNNO``, ``DEFER_IF_PERMIT`` ..."""
    text = answer.decode("utf-8", "replace").strip()
    return text.removeprefix("action=").split(" ", 1)[0].upper()


class LoadError(RuntimeError):
    """The server closed a connection or stopped answering."""


@dataclass(frozen=True)
class LoadResult:
    """One timed run: the answers by request index, and each answer's latency."""

    connections: int
    elapsed: float  # seconds from the first request sent to the last answer read
    latencies_ns: list[int]  # in completion order
    answers: list[bytes | None]  # answers[i] answers requests[i]; None: never sent

    @property
    def completed(self) -> int:
        return len(self.latencies_ns)

    @property
    def rate(self) -> float:
        return self.completed / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, fraction: float) -> float:
        """Latency in seconds at ``fraction`` (0.5, 0.99), nearest-rank."""
        if not self.latencies_ns:
            return float("nan")
        ordered = sorted(self.latencies_ns)
        rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
        return ordered[rank] / 1e9


def connect(host: str, port: int, timeout: float = 20.0) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send one request on a blocking socket and return its whole answer."""
    sock.sendall(request)
    answer = b""
    while not answer.endswith(ANSWER_END):
        data = sock.recv(_RECV)
        if not data:
            raise LoadError(f"connection closed after {answer!r}")
        answer += data
    return answer


def ask(host: str, port: int, requests: Sequence[bytes]) -> list[bytes]:
    """The answers to ``requests``, sent one after the other over one connection."""
    with connect(host, port) as sock:
        return [exchange(sock, r) for r in requests]


def run_load(host: str, port: int, requests: Sequence[bytes], *, connections: int,
             warmup: Sequence[Sequence[bytes]] = (), time_limit: float = 120.0) -> LoadResult:
    """Open ``connections`` persistent connections, send each its ``warmup[i]`` requests (not
    timed), then send ``requests`` in order over all of them, one in flight per connection,
    until all are answered or ``time_limit`` seconds have passed."""
    socks = [connect(host, port) for _ in range(connections)]
    try:
        for i, sock in enumerate(socks):
            for request in warmup[i] if i < len(warmup) else ():
                exchange(sock, request)
        return _timed(socks, requests, time_limit)
    finally:
        for sock in socks:
            sock.close()


def _timed(socks: list[socket.socket], requests: Sequence[bytes],
           time_limit: float) -> LoadResult:
    total = len(requests)
    answers: list[bytes | None] = [None] * total
    latencies: list[int] = []
    by_fd = {s.fileno(): s for s in socks}
    pending: dict[int, int] = {}  # fd -> index of the request in flight
    sent_at: dict[int, int] = {}
    buffers: dict[int, bytes] = {}
    clock = time.perf_counter_ns
    poller = select.epoll()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        nxt = 0
        start = clock()
        deadline = start + int(time_limit * 1e9)
        for fd, sock in by_fd.items():
            if nxt >= total:
                break
            sock.setblocking(False)
            poller.register(fd, select.EPOLLIN)
            pending[fd], buffers[fd], sent_at[fd] = nxt, b"", clock()
            _send(sock, requests[nxt])
            nxt += 1
        end = start
        while pending:
            for fd, _event in poller.poll(time_limit):
                sock = by_fd[fd]
                data = sock.recv(_RECV)
                if not data:
                    raise LoadError(f"the server closed a connection after {nxt} requests")
                buf = buffers[fd] + data
                if not buf.endswith(ANSWER_END):
                    buffers[fd] = buf
                    continue
                end = clock()
                latencies.append(end - sent_at[fd])
                answers[pending[fd]] = buf
                buffers[fd] = b""
                if nxt < total and end < deadline:
                    pending[fd], sent_at[fd] = nxt, clock()
                    _send(sock, requests[nxt])
                    nxt += 1
                else:
                    del pending[fd]
                    poller.unregister(fd)
            if pending and clock() > deadline + int(time_limit * 1e9):
                raise LoadError(f"no answer on {len(pending)} connections for {time_limit}s")
        return LoadResult(len(socks), (end - start) / 1e9, latencies, answers)
    finally:
        poller.close()
        if gc_was_enabled:
            gc.enable()


def _send(sock: socket.socket, data: bytes) -> None:
    sent = sock.send(data)
    if sent < len(data):  # a full socket buffer: never seen with requests this small
        sock.setblocking(True)
        try:
            sock.sendall(data[sent:])
        finally:
            sock.setblocking(False)


# --------------------------------------------------------------------------------------------
# The do-nothing policy server ("physical limit")


async def _answer_dunno(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            await reader.readuntil(ANSWER_END)
            writer.write(b"action=DUNNO\n\n")
            await writer.drain()
    writer.close()


async def serve_dunno(host: str, port: int) -> None:
    server = await asyncio.start_server(_answer_dunno, host, port, reuse_address=True)
    async with server:
        await server.serve_forever()


# --------------------------------------------------------------------------------------------
# The DNS-only policy server ("DNS limit")


async def serve_dns(host: str, port: int, nameserver: str, zones: Sequence[str]) -> None:
    from postward.core.dns import NOERROR, CaresTransport

    transport = CaresTransport([nameserver], 2.0, 1)

    async def answer(request: bytes) -> bytes:
        address = ""
        for line in request.split(b"\n"):
            if line.startswith(b"client_address="):
                address = line[15:].decode()
        reverse = ".".join(reversed(address.split(".")))
        names = [f"{reverse}.{zone}" for zone in zones]
        answers = await transport.query_many([(n, "A") for n in names])
        listed = [n for n, a in zip(names, answers, strict=True) if a.rcode == NOERROR]
        if listed:
            await transport.query_many([(n, "TXT") for n in listed])
        return b"action=554 listed\n\n" if len(listed) >= 3 else b"action=DUNNO\n\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                writer.write(await answer(await reader.readuntil(ANSWER_END)))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, host, port, reuse_address=True)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.loadgen")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve-dunno", help="answer DUNNO to every policy request")
    serve.add_argument("host")
    serve.add_argument("port", type=int)
    dns = sub.add_parser("serve-dns", help="only the DNSBL lookups of a new client, no cache")
    dns.add_argument("host")
    dns.add_argument("port", type=int)
    dns.add_argument("nameserver", help="IP:port")
    dns.add_argument("zones", nargs="+")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        if args.command == "serve-dns":
            asyncio.run(serve_dns(args.host, args.port, args.nameserver, args.zones))
        else:
            asyncio.run(serve_dunno(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
