"""postward.core.resp's hot path takes its open connection directly: it must still open a new
one when the old one is lost or belongs to another (finished) event loop, and a lone command
on an open connection must reuse it."""

from __future__ import annotations

import asyncio

import pytest

from postward.core.resp import RespClient, fast_client_for
from postward.core.settings import RedisSettings
from tests.testbed.redis_server import RedisServer

pytestmark = pytest.mark.integration


def client(url: str) -> RespClient:
    made = fast_client_for(RedisSettings(url=url, timeout=0.5, connect_timeout=0.5, retries=1,
                                         backoff_base=0.01, backoff_cap=0.05))
    assert made is not None
    return made


def test_commands_reuse_one_connection(redis_server: RedisServer) -> None:
    c = client(redis_server.url)

    async def body() -> None:
        assert await c.execute("SET", "reuse:k", "v") == b"OK"
        first = c._conn
        for _ in range(5):
            assert await c.execute("GET", "reuse:k") == b"v"
        assert c._conn is first
        await c.close()

    asyncio.run(body())


def test_a_client_used_under_a_second_event_loop_connects_again(
        redis_server: RedisServer) -> None:
    c = client(redis_server.url)

    async def first() -> object:
        assert await c.execute("SET", "loops:k", "1") == b"OK"
        return c._conn

    old = asyncio.run(first())  # that loop is closed now; its connection is of no use

    async def second() -> None:
        assert await c.execute("GET", "loops:k") == b"1"
        assert c._conn is not old and c._conn is not None
        assert c._conn.loop is asyncio.get_running_loop()
        await c.close()

    asyncio.run(second())


def test_a_lost_connection_is_replaced_on_the_next_command(redis_server: RedisServer) -> None:
    c = client(redis_server.url)

    async def body() -> None:
        assert await c.execute("SET", "lost:k", "2") == b"OK"
        old = c._conn
        assert old is not None and old.transport is not None
        old.transport.abort()  # as if Redis had dropped it
        await asyncio.sleep(0)  # connection_lost runs (abort schedules it first)
        assert old.lost is not None
        assert await c.execute("GET", "lost:k") == b"2"
        assert c._conn is not old
        await c.close()

    asyncio.run(body())
