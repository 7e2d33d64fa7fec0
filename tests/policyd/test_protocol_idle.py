"""The idle timeout: a client silent (or stuck mid-request) for idle_timeout is disconnected;
a client that keeps asking is not, however long its connection lasts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from postward.core.metrics import Metrics
from postward.core.service import InFlight
from postward.policyd.actions import Actions
from postward.policyd.ask import ask_policy_server
from postward.policyd.engine import Engine
from postward.policyd.protocol import Limits, PolicyServer
from postward.policyd.ratelimit import MemoryRates
from postward.policyd.ruleset import load_ruleset

REQUEST = b"request=smtpd_access_policy\nclient_address=192.0.2.9\n\n"
HANG_GUARD = 20.0  # only so that a broken server fails the test instead of hanging it


async def serve(tmp_path: Path, idle: float) -> tuple[asyncio.Server, int]:
    rules = tmp_path / "rules.cf"
    rules.write_text("id=R1 ; client_address==192.0.2.9 ; action=REJECT go away\n")
    engine = Engine(load_ruleset([("file", str(rules))]), None,
                    Actions(MemoryRates(), ask_policy_server))
    server = PolicyServer(lambda: engine, Limits(idle_timeout=idle), Metrics("policyd"),
                          InFlight())
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    return listener, listener.sockets[0].getsockname()[1]


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(REQUEST)
    return await asyncio.wait_for(reader.readuntil(b"\n\n"), HANG_GUARD)


def test_a_silent_client_is_disconnected(tmp_path: Path) -> None:
    async def body() -> None:
        listener, port = await serve(tmp_path, idle=0.3)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await ask(reader, writer) == b"action=REJECT go away\n\n"
        assert await asyncio.wait_for(reader.read(), HANG_GUARD) == b""  # closed by the server
        writer.close()
        listener.close()

    asyncio.run(body())


def test_a_client_stuck_mid_request_is_disconnected(tmp_path: Path) -> None:
    async def body() -> None:
        listener, port = await serve(tmp_path, idle=0.3)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST[:30])  # never finished
        assert await asyncio.wait_for(reader.read(), HANG_GUARD) == b""
        writer.close()
        listener.close()

    asyncio.run(body())


def test_a_busy_client_outlives_the_idle_timeout(tmp_path: Path) -> None:
    async def body() -> None:
        listener, port = await serve(tmp_path, idle=1.0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(15):  # ~1.5 s in all, never 1 s silent
            assert await ask(reader, writer) == b"action=REJECT go away\n\n"
            await asyncio.sleep(0.1)
        writer.close()
        listener.close()

    asyncio.run(body())
