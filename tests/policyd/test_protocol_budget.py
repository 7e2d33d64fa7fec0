"""The request budget: a decision that runs past request_budget is answered the default action,
counted as errors_total{kind="budget"}, and the connection goes on serving requests."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from postward.core.metrics import Metrics
from postward.core.service import InFlight
from postward.policyd.actions import Actions
from postward.policyd.ask import ask_policy_server
from postward.policyd.engine import Engine
from postward.policyd.protocol import Limits, PolicyServer
from postward.policyd.ratelimit import MemoryRates
from postward.policyd.ruleset import load_ruleset

SLOW = b"request=smtpd_access_policy\nclient_address=192.0.2.8\n\n"  # wait(30): never in time
FAST = b"request=smtpd_access_policy\nclient_address=192.0.2.9\n\n"
DEFAULT = "451 4.3.0 try again later"
HANG_GUARD = 20.0  # only so that a broken server fails the test instead of hanging it
BUDGET = 'postward_policyd_errors_total'


def make_server(tmp_path: Path, budget: float) -> tuple[PolicyServer, Metrics]:
    rules = tmp_path / "rules.cf"
    rules.write_text("id=SLOW ; client_address==192.0.2.8 ; action=wait(30)\n"
                     "id=R1 ; client_address==192.0.2.9 ; action=REJECT go away\n")
    engine = Engine(load_ruleset([("file", str(rules))]), None,
                    Actions(MemoryRates(), ask_policy_server, max_wait=30))
    metrics = Metrics("policyd")
    server = PolicyServer(lambda: engine, Limits(request_budget=budget, default_action=DEFAULT),
                          metrics, InFlight())
    return server, metrics


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
    writer.write(request)
    return await asyncio.wait_for(reader.readuntil(b"\n\n"), HANG_GUARD)


async def connect(server: PolicyServer) -> tuple[asyncio.Server, asyncio.StreamReader,
                                                  asyncio.StreamWriter]:
    """``server`` listening on a loopback port, and a client connected to it."""
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return listener, reader, writer


def budget_errors(metrics: Metrics) -> float:
    return metrics.value(BUDGET, {"kind": "budget"})


def test_a_decision_past_the_budget_gets_the_default_and_the_connection_goes_on(
        tmp_path: Path) -> None:
    async def body() -> None:
        server, metrics = make_server(tmp_path, budget=0.3)
        listener, reader, writer = await connect(server)
        assert await ask(reader, writer, SLOW) == f"action={DEFAULT}\n\n".encode()
        assert budget_errors(metrics) == 1
        # The same connection: a fast request is answered by its rule, a slow one cut again.
        assert await ask(reader, writer, FAST) == b"action=REJECT go away\n\n"
        assert await ask(reader, writer, SLOW) == f"action={DEFAULT}\n\n".encode()
        assert await ask(reader, writer, FAST) == b"action=REJECT go away\n\n"
        assert budget_errors(metrics) == 2
        assert metrics.value("postward_policyd_requests_total",
                             {"state": "NONE", "action": "451"}) == 0  # 4xx is the class
        assert metrics.value("postward_policyd_requests_total",
                             {"state": "NONE", "action": "4xx"}) == 2
        writer.close()
        listener.close()

    asyncio.run(body())


def test_a_budget_lowered_by_a_reload_applies_to_open_connections(tmp_path: Path) -> None:
    async def body() -> None:
        server, metrics = make_server(tmp_path, budget=60)
        listener, reader, writer = await connect(server)
        assert await ask(reader, writer, FAST) == b"action=REJECT go away\n\n"
        server.limits = dataclasses.replace(server.limits, request_budget=0.3)  # as reload()
        assert await ask(reader, writer, SLOW) == f"action={DEFAULT}\n\n".encode()
        assert budget_errors(metrics) == 1
        writer.close()
        listener.close()

    asyncio.run(body())


def test_answer_outside_a_connection_keeps_its_budget(tmp_path: Path) -> None:
    async def body() -> None:
        server, metrics = make_server(tmp_path, budget=0.3)
        slow = {"request": "smtpd_access_policy", "client_address": "192.0.2.8"}
        assert await asyncio.wait_for(server.answer(slow), HANG_GUARD) == DEFAULT
        assert budget_errors(metrics) == 1

    asyncio.run(body())


def test_a_shutdown_during_a_decision_is_not_taken_for_the_budget(tmp_path: Path) -> None:
    async def body() -> None:
        server, metrics = make_server(tmp_path, budget=60)
        a, b = await open_pair()
        handler = asyncio.create_task(server.handle(*a))
        b[1].write(SLOW)
        async with asyncio.timeout(HANG_GUARD):
            while server.inflight.count == 0:  # until the decision is under way (wait(30))
                await asyncio.sleep(0.005)
        handler.cancel()
        try:
            await asyncio.wait_for(handler, HANG_GUARD)
        except asyncio.CancelledError:
            pass
        else:
            raise AssertionError("the handler swallowed a cancellation that was not its own")
        assert budget_errors(metrics) == 0
        b[1].close()

    asyncio.run(body())


async def open_pair() -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter],
                               tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Two connected stream pairs, as a server's handler and its client see them."""
    accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = \
        asyncio.get_running_loop().create_future()

    async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.set_result((r, w))

    listener = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client = await asyncio.open_connection("127.0.0.1", port)
    server_side = await asyncio.wait_for(accepted, HANG_GUARD)
    listener.close()
    return server_side, client
