"""The pipe client's reply reading on the raw socket (its own recv loop instead of socket.py's
makefile), against a real unix socket peer that answers with what a daemon could send: the
reply in pieces, CRLF line ends, and replies cut short or malformed, which must all end in
Unavailable (exit 75), never in a message handed on with a partial header."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from postward.classifier.filter_client import PROTOCOL, Unavailable, ask, encode_request

FIELDS = [("user", "bob@example.test"), ("sender", "s@sender.test")]
MESSAGE = b"Subject: hi\n\nbody\n"


class Peer:
    """Accepts one connection, reads the request to its end, answers with ``reply`` three
    bytes per send (so the client sees it in as many pieces as the kernel cares to make)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.request = b""

    def answer(self, reply: bytes) -> threading.Thread:
        def serve() -> None:
            conn, _ = self.listener.accept()
            with conn:
                while chunk := conn.recv(65536):
                    self.request += chunk
                try:
                    for i in range(0, len(reply), 3):
                        conn.sendall(reply[i:i + 3])
                except BrokenPipeError:
                    pass  # the client gave up on a reply too long: what it should do
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        return thread


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    p = Peer(tmp_path / "d.sock")
    try:
        yield p
    finally:
        p.listener.close()


def test_a_reply_in_pieces_with_crlf_lines_and_header_bytes(peer: Peer) -> None:
    extra = b"X-DSPAM-Result: Innocent\nX-DSPAM-Probability: 0.0100\n"
    thread = peer.answer(f"{PROTOCOL} 200 ok\r\nResult: innocent\r\nagent: /bin/cat\r\n"
                         f"header-length: {len(extra)}\r\n\r\n".encode() + extra)
    code, text, head, got = ask(str(peer.path), "PROCESS", FIELDS, MESSAGE)
    thread.join(10)
    assert (code, text, got) == (200, "ok", extra)
    assert head == [("result", "innocent"), ("agent", "/bin/cat"),
                    ("header-length", str(len(extra)))]
    assert peer.request == encode_request("PROCESS", FIELDS, MESSAGE) + MESSAGE


def test_a_reply_without_header_bytes(peer: Peer) -> None:
    thread = peer.answer(f"{PROTOCOL} 451 redis down\n\n".encode())
    assert ask(str(peer.path), "RETRAIN", FIELDS, MESSAGE) == (451, "redis down", [], b"")
    thread.join(10)


@pytest.mark.parametrize("reply, reason", [
    (b"", b"connection closed before a complete reply"),
    (f"{PROTOCOL} 200 ok\nresult: spam\n".encode(), b"reply header cut short"),
    (f"{PROTOCOL} 200 ok\nheader-length: 40\n\nX-DSPAM-Result: Sp".encode(), b"cut short"),
    (f"{PROTOCOL} 200 ok\nheader-length: many\n\n".encode(), b"failed"),
    (b"HTTP/1.0 200 OK\n\n", b"unexpected reply"),
    (f"{PROTOCOL} 200 ok\nx: {'y' * 70000}\n\n".encode(), b"too long"),
])
def test_a_short_or_malformed_reply_is_unavailable(peer: Peer, reply: bytes,
                                                   reason: bytes) -> None:
    thread = peer.answer(reply)
    with pytest.raises(Unavailable) as caught:
        ask(str(peer.path), "PROCESS", FIELDS, MESSAGE)
    assert reason.decode() in str(caught.value)
    thread.join(10)


def test_no_daemon_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="cannot reach postward-classifierd"):
        ask(str(tmp_path / "none.sock"), "PROCESS", FIELDS, MESSAGE)
