"""postward-classifierd's socket server on every edge of a request: split anywhere, in
chunks, with bytes after it, cut off, malformed, oversized, too slow, and in flight at a stop.
A real daemon (in this process, to read its metrics) on a real unix socket and a real Redis."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from postward.classifier.daemon import MAX_HEAD, ClassifierDaemon
from postward.classifier.filter_client import PROTOCOL
from postward.core.runtime import Runtime
from postward.core.service import serve
from postward.schema import load_config

pytestmark = pytest.mark.integration

SPAM = b"Subject: cheap meds\n\nBuy cheap viagra pills now, best price, click http://p.example\n"
HAM = b"Subject: meeting\n\nHi team, the meeting moved to Tuesday; agenda attached. Alice\n"
ERRORS = "postward_classifierd_errors_total"
TEMPFAILS = "postward_classifierd_tempfail_replies_total"


def request(op: str, message: bytes, **fields: str) -> bytes:
    head = "".join(f"{name}: {value}\n" for name, value in fields.items())
    return f"{PROTOCOL} {op}\n{head}length: {len(message)}\n\n".encode() + message


async def exchange(path: str, *pieces: bytes, shut: bool = True) -> bytes:
    """Sends ``pieces`` with a pause after each (so the daemon reads them apart), shuts down
    its side if ``shut`` (as postward-filter does) and returns all the daemon wrote."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX) as s:
        s.setblocking(False)
        await loop.sock_connect(s, path)
        for piece in pieces:
            await loop.sock_sendall(s, piece)
            await asyncio.sleep(0.001)
        if shut:
            s.shutdown(socket.SHUT_WR)
        reply = bytearray()
        while chunk := await loop.sock_recv(s, 65536):
            reply += chunk
    return bytes(reply)


def code(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def verdict(reply: bytes) -> list[bytes]:
    return [line for line in reply.split(b"\n\n", 1)[0].split(b"\n")
            if line.startswith((PROTOCOL.encode(), b"result:", b"probability:"))]


Scenario = Callable[[ClassifierDaemon, str], Awaitable[None]]
Stopping = Callable[[ClassifierDaemon, str, "asyncio.Future[int]"], Awaitable[None]]


def run_daemon(redis_url: str, scenario: Scenario | Stopping, extra: str = "",
               stopping: bool = False) -> None:
    """Runs ``scenario(daemon, socket path)`` against a daemon serving as in production
    (``stopping``: also given the future of serve(), to watch it stop)."""
    where = Path(tempfile.mkdtemp(prefix="pwp-"))
    try:
        conf = where / "postward.conf"
        conf.write_text(f"[redis]\nurl = {redis_url}\n\n[metrics]\nenabled = no\n\n"
                        f"[classifier]\nsocket = {where / 'c.sock'}\nsocket_mode = 0660\n"
                        f"delivery_agent = /bin/true\n{extra}")
        config = load_config(conf)

        async def main() -> None:
            runtime = Runtime.create(config, "classifierd", serve_metrics=False)
            daemon = ClassifierDaemon(config, runtime)
            stop = asyncio.Event()
            served = asyncio.ensure_future(serve(daemon, daemon.inflight, lambda: config,
                                                 stop=stop))
            while daemon._server is None:
                await asyncio.sleep(0.01)
            async with asyncio.timeout(120):  # a hang fails the test instead of the run
                try:
                    if stopping:
                        await scenario(daemon, str(where / "c.sock"), served)  # type: ignore[call-arg]
                    else:
                        await scenario(daemon, str(where / "c.sock"))  # type: ignore[call-arg]
                finally:
                    stop.set()
                    assert await served == 0
            assert not (where / "c.sock").exists()

        asyncio.run(main())
    finally:
        shutil.rmtree(where, ignore_errors=True)


def errors(daemon: ClassifierDaemon, kind: str) -> float:
    return daemon.runtime.metrics.value(ERRORS, {"kind": kind})


def test_a_request_split_at_every_byte_of_its_header_or_in_bytes(redis_server) -> None:  # type: ignore[no-untyped-def]
    async def scenario(daemon: ClassifierDaemon, path: str) -> None:
        assert oct(Path(path).stat().st_mode & 0o777) == "0o660"
        whole = request("CLASSIFY", SPAM, user="amy")
        want = await exchange(path, whole)
        assert code(want) == 200 and verdict(want), want
        head = whole.index(b"\n\n") + 2
        for cut in range(1, head + 1):
            got = await exchange(path, whole[:cut], whole[cut:])
            assert verdict(got) == verdict(want), (cut, got)
        got = await exchange(path, *(whole[i:i + 1] for i in range(len(whole))))
        assert verdict(got) == verdict(want), got
        # CRLF header lines.
        crlf = whole[:head].replace(b"\n", b"\r\n") + SPAM
        assert verdict(await exchange(path, crlf)) == verdict(want)
        assert errors(daemon, "protocol") == 0
    run_daemon(redis_server.url, scenario)


def test_a_message_in_chunks_and_bytes_after_it(redis_server) -> None:  # type: ignore[no-untyped-def]
    big = HAM + b"".join(b"line %d of the agenda for the team meeting\n" % i
                         for i in range(5000))
    async def scenario(daemon: ClassifierDaemon, path: str) -> None:
        whole = request("CLASSIFY", big, user="bob")
        want = await exchange(path, whole)
        assert code(want) == 200 and verdict(want), want
        chunks = [whole[i:i + 7919] for i in range(0, len(whole), 7919)]
        assert verdict(await exchange(path, *chunks)) == verdict(want)
        # What follows the message is not read as part of it, nor answered.
        for after in (b"garbage\n", b"postward-1 CLASSIFY\nlength: 3\n\nabc" * 100):
            got = await exchange(path, whole + after)
            assert verdict(got) == verdict(want) and got.count(b"\n\n") == 1, got
            got = await exchange(path, whole[:-10], whole[-10:] + after)
            assert verdict(got) == verdict(want), got
        # An empty message is a request too.
        assert code(await exchange(path, request("CLASSIFY", b"", user="bob"))) == 200
        assert errors(daemon, "protocol") == 0
    run_daemon(redis_server.url, scenario)


def test_a_client_gone_mid_request_gets_nothing_and_is_counted(redis_server) -> None:  # type: ignore[no-untyped-def]
    async def scenario(daemon: ClassifierDaemon, path: str) -> None:
        whole = request("CLASSIFY", SPAM, user="cat")
        cuts = [0, 5, whole.index(b"\n") + 1, whole.index(b"\n\n") + 1,
                whole.index(b"\n\n") + 2, len(whole) - 1]
        for n, cut in enumerate(cuts, 1):
            assert await exchange(path, whole[:cut]) == b"", cut
            assert errors(daemon, "protocol") == n
        # The daemon goes on serving.
        assert code(await exchange(path, whole)) == 200
        assert daemon.inflight.count == 0
    run_daemon(redis_server.url, scenario)


def test_malformed_requests_are_answered_500(redis_server) -> None:  # type: ignore[no-untyped-def]
    async def scenario(daemon: ClassifierDaemon, path: str) -> None:
        bad = {
            b"HELO there\n\n": b"bad request line",
            f"{PROTOCOL} DELETE\nlength: 0\n\n".encode(): b"bad request line",
            f"{PROTOCOL} CLASSIFY\nno colon\nlength: 0\n\n".encode(): b"bad header line",
            f"{PROTOCOL} CLASSIFY\nuser: x\n\n".encode(): b"no length",
            f"{PROTOCOL} CLASSIFY\nlength: ten\n\n".encode(): b"no length",
            f"{PROTOCOL} CLASSIFY\nlength: -1\n\n".encode(): b"negative length",
            f"{PROTOCOL} CLASSIFY\n".encode() + b"x: y\n" * (MAX_HEAD // 5):
                b"request header too long",
        }
        for n, (sent, reason) in enumerate(bad.items(), 1):
            got = await exchange(path, sent, shut=False)
            assert code(got) == 500 and reason in got, (sent[:40], got)
            assert errors(daemon, "protocol") == n
        # A header line longer than the bound: the stream server's line limit, no answer.
        line = f"{PROTOCOL} CLASSIFY\nx: ".encode() + b"y" * MAX_HEAD
        assert await exchange(path, line) == b""
        assert await exchange(path, line + b"\nlength: 0\n\n") == b""
        assert errors(daemon, "protocol") == len(bad) + 2
        assert code(await exchange(path, request("CLASSIFY", HAM, user="dan"))) == 200
    run_daemon(redis_server.url, scenario)


def test_an_oversized_message_is_read_to_its_end_and_answered_552(redis_server) -> None:  # type: ignore[no-untyped-def]
    async def scenario(daemon: ClassifierDaemon, path: str) -> None:
        big = HAM + b"x" * 5000
        whole = request("PROCESS", big, user="eve", recipient="eve@example.test")
        for pieces in ([whole], [whole[i:i + 1000] for i in range(0, len(whole), 1000)]):
            pieces[-1] += b"after"   # the next bytes are not a message
            got = await exchange(path, *pieces)
            assert code(got) == 552 and b"agent: /bin/true" in got, got
        assert errors(daemon, "oversized") == 2
        assert await exchange(path, whole[:-1]) == b""   # gone before its end
        assert errors(daemon, "protocol") == 1
        assert code(await exchange(path, request("CLASSIFY", HAM, user="eve"))) == 200
    run_daemon(redis_server.url, scenario, "max_message_size = 2048\n")


def test_a_slow_request_times_out_451(redis_server) -> None:  # type: ignore[no-untyped-def]
    async def scenario(daemon: ClassifierDaemon, path: str) -> None:
        whole = request("CLASSIFY", SPAM, user="fay")
        metrics = daemon.runtime.metrics
        for cut in (0, 10, len(whole) - 3):    # the client never sends the rest
            got = await exchange(path, whole[:cut], shut=False)
            assert code(got) == 451 and b"request timed out" in got, got
        assert errors(daemon, "timeout") == 3 and metrics.value(TEMPFAILS) == 3
        assert code(await exchange(path, whole)) == 200
    run_daemon(redis_server.url, scenario, "request_timeout = 1s\n")


def test_a_stop_waits_for_a_request_still_arriving(redis_server) -> None:  # type: ignore[no-untyped-def]
    async def scenario(daemon: ClassifierDaemon, path: str, served: asyncio.Future[int]) -> None:
        whole = request("CLASSIFY", SPAM, user="gil")
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_UNIX) as s:
            s.setblocking(False)
            await loop.sock_connect(s, path)
            await loop.sock_sendall(s, whole[:20])
            while daemon.inflight.count == 0:
                await asyncio.sleep(0.001)
            os.kill(os.getpid(), signal.SIGTERM)   # serve() stops: the socket goes first
            while Path(path).exists():
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.05)
            assert not served.done() and daemon.inflight.count == 1   # it waits for this one
            await loop.sock_sendall(s, whole[20:])
            reply = bytearray()
            while chunk := await loop.sock_recv(s, 65536):
                reply += chunk
        assert code(bytes(reply)) == 200, reply
        assert await served == 0
    run_daemon(redis_server.url, scenario, stopping=True)
