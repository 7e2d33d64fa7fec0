"""postward.core.resp against a real redis-server: replies, scripts, auth, unix sockets, and the
failure paths RedisStore relies on (errors, not hangs; reconnect after an outage or a timeout)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from postward.core.config_values import HostPort
from postward.core.metrics import Metrics
from postward.core.redis_store import RedisStore, StoreUnavailable
from postward.core.resp import RespClient, Script, fast_client_for
from postward.core.settings import RedisSettings
from tests.testbed.redis_server import RedisServer

pytestmark = pytest.mark.integration

FAST = dict(timeout=0.5, connect_timeout=0.5, retries=0, backoff_base=0.01, backoff_cap=0.05)


def client(url: str, **settings: Any) -> RespClient:
    made = fast_client_for(RedisSettings(url=url, **{**FAST, **settings}))
    assert made is not None
    return made


async def until_in_flight(c: RespClient, n: int) -> None:
    """Poll until ``n`` commands of ``c`` wait for their replies (sent, none answered)."""
    async with asyncio.timeout(5):
        while c._conn is None or len(c._conn.waiters) < n:
            await asyncio.sleep(0.005)


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


def test_replies_of_each_type_and_error_replies(redis_server: RedisServer) -> None:
    async def body() -> None:
        c = client(redis_server.url)
        assert await c.execute("PING") == b"PONG"
        assert await c.execute("SET", "k", "v", "PX", 60000) == b"OK"
        assert await c.execute("GET", "k") == b"v"
        assert await c.execute("GET", "missing") is None
        assert await c.execute("INCRBY", "n", 5) == 5
        assert await c.execute("RPUSH", "l", "a", b"\xff", 1.5) == 3
        assert await c.execute("LRANGE", "l", 0, -1) == [b"a", b"\xff", b"1.5"]
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await c.execute("INCR", "l")
        assert await c.execute("GET", "k") == b"v"  # still in step after an error reply
        await c.close()

    run(body)


def test_concurrent_callers_each_get_their_own_reply(redis_server: RedisServer) -> None:
    async def body() -> None:
        c = client(redis_server.url)
        # All written in one pass of the loop, answered in order on one connection.
        results = await asyncio.gather(*(c.execute("INCRBY", f"c{i}", i) for i in range(500)))
        assert results == list(range(500))
        await c.close()

    run(body)


def test_pipeline_raises_or_returns_error_replies(redis_server: RedisServer) -> None:
    async def body() -> None:
        c = client(redis_server.url)
        batch = [("SET", "p", "x"), ("INCR", "p"), ("GET", "p")]
        replies = await c.pipeline(batch, raise_on_error=False)
        assert replies[0] == b"OK" and replies[2] == b"x"
        assert isinstance(replies[1], ResponseError)
        with pytest.raises(ResponseError, match="not an integer"):  # as redis-py's pipeline
            await c.pipeline(batch)
        assert await c.execute("GET", "p") == b"x"
        await c.close()

    run(body)


def test_evalsha_loads_a_script_redis_does_not_know(redis_server: RedisServer) -> None:
    script = Script("redis.call('SET', KEYS[1], ARGV[1]) return {1, ARGV[1], #KEYS}")

    async def body() -> None:
        c = client(redis_server.url)
        assert await c.evalsha(script, ["s1"], [7]) == [1, b"7", 1]  # never loaded
        assert await c.evalsha(script, ["s2"], ["x"]) == [1, b"x", 1]  # by its SHA
        await c.execute("SCRIPT", "FLUSH")  # as after a Redis restart
        assert await c.evalsha(script, ["s3", "s4"], [9]) == [1, b"9", 2]
        assert await c.execute("MGET", "s1", "s2", "s3") == [b"7", b"x", b"9"]
        await c.close()

    run(body)


def test_unix_socket_and_database_from_the_url(redis_server: RedisServer) -> None:
    async def body() -> None:
        c = client(f"unix://{redis_server.unix_socket}?db=3")
        await c.execute("SET", "where", "db3")
        await c.close()

    run(body)
    seen = redis.Redis(unix_socket_path=str(redis_server.unix_socket), db=3)
    try:
        assert seen.get("where") == b"db3"
        assert redis.Redis(unix_socket_path=str(redis_server.unix_socket), db=0).get(
            "where") is None
    finally:
        seen.close()


def test_acl_user_with_password_file(redis_acl_server: RedisServer, testbed_dir: Path) -> None:
    good = testbed_dir / "redis.pass"
    good.write_text(f"{redis_acl_server.password}\n")
    good.chmod(0o600)
    bad = testbed_dir / "bad.pass"
    bad.write_text("not-the-password\n")
    bad.chmod(0o600)

    async def body() -> None:
        c = client(redis_acl_server.url, username=redis_acl_server.user,
                   password_file=str(good))
        assert await c.execute("PING") == b"PONG"
        await c.close()
        wrong = client(redis_acl_server.url, username=redis_acl_server.user,
                       password_file=str(bad))
        with pytest.raises(AuthenticationError):
            await wrong.execute("PING")
        await wrong.close()

    run(body)


def test_outage_raises_then_the_client_reconnects(redis_server: RedisServer) -> None:
    async def body() -> None:
        metrics = Metrics("policyd")
        store = RedisStore.from_settings(RedisSettings(url=redis_server.url, **FAST), metrics)
        fast = store.fast
        assert fast is not None
        assert await store.run("t", lambda _: fast.execute("SET", "a", "1")) == b"OK"
        redis_server.stop()
        try:
            with pytest.raises(StoreUnavailable, match="t: ConnectionError"):
                await store.run("t", lambda _: fast.execute("GET", "a"))
            with pytest.raises(StoreUnavailable, match="t: ConnectionError"):
                await store.run("t", lambda _: fast.execute("GET", "a"))  # connect refused
        finally:
            redis_server.start()
        assert await store.run("t", lambda _: fast.execute("PING")) == b"PONG"
        assert metrics.value("postward_policyd_redis_errors_total",
                             {"op": "t", "error": "ConnectionError"}) == 2
        await store.close()

    run(body)


def test_retries_cover_a_server_restarting_between_commands(redis_server: RedisServer) -> None:
    async def body() -> None:
        c = client(redis_server.url, retries=2)
        await c.execute("PING")
        redis_server.restart()  # the open connection is dead; the retry reconnects
        assert await c.execute("PING") == b"PONG"
        await c.close()

    run(body)


def test_a_timeout_raises_and_a_cancelled_call_leaves_the_stream_in_step(
        redis_server: RedisServer) -> None:
    async def body() -> None:
        c = client(redis_server.url, timeout=0.2)
        await c.execute("MSET", "a", "A", "b", "B")
        other = client(redis_server.url, timeout=5)
        # Redis answers nobody (but this pause) for a while: a real slow server.
        await other.execute("CLIENT", "PAUSE", 600, "ALL")
        with pytest.raises(RedisTimeoutError):
            await c.execute("GET", "a")
        # A caller that gives up (its request budget ran out) must not shift replies.
        patient = client(redis_server.url, timeout=5)
        first = asyncio.ensure_future(patient.execute("GET", "a"))
        second = asyncio.ensure_future(patient.execute("GET", "b"))
        await until_in_flight(patient, 2)
        first.cancel()
        assert await second == b"B"
        assert await patient.execute("GET", "a") == b"A"
        assert await c.execute("GET", "a") == b"A"  # a new connection after the timeout
        for each in (c, other, patient):
            await each.close()

    run(body)


def test_every_command_in_flight_times_out_and_the_client_recovers(
        redis_server: RedisServer) -> None:
    # The first command is written at once (nothing in flight), the others wait for the end
    # of the loop pass; all share one deadline timer. A caller that gave up first must not
    # keep the later ones from timing out.
    async def body() -> None:
        c = client(redis_server.url, timeout=0.2)
        assert await c.execute("SET", "a", "A") == b"OK"
        other = client(redis_server.url, timeout=5)
        await other.execute("CLIENT", "PAUSE", 400, "ALL")
        first = asyncio.ensure_future(c.execute("GET", "a"))
        rest = [asyncio.ensure_future(c.execute("GET", "a")) for _ in range(3)]
        await until_in_flight(c, 4)
        first.cancel()
        for each in rest:
            with pytest.raises(RedisTimeoutError):
                await each
        assert await other.execute("PING") == b"PONG"  # answered once the pause is over
        assert await c.execute("GET", "a") == b"A"  # on a new connection
        for each in (c, other):
            await each.close()

    run(body)


def test_tls_and_sentinel_stay_with_redis_py(testbed_dir: Path) -> None:
    assert fast_client_for(RedisSettings(url="rediss://127.0.0.1:6380/0")) is None
    sentinel = RedisSettings(url="redis://127.0.0.1:6379/0", sentinel_master="m",
                             sentinels=(HostPort("127.0.0.1", 26379),))
    assert fast_client_for(sentinel) is None
    store = RedisStore.from_settings(RedisSettings(url="rediss://127.0.0.1:6380/0"),
                                     Metrics("policyd"))
    assert store.fast is None
    asyncio.run(store.close())


def test_connection_refused_is_a_connection_error(loopback: str) -> None:
    from tests.testbed.net import free_port

    async def body() -> None:
        c = client(f"redis://{loopback}:{free_port(loopback)}/0", retries=1)
        with pytest.raises(RedisConnectionError):
            await c.execute("PING")
        await c.close()

    run(body)


def test_the_store_gives_the_same_replies_with_and_without_the_fast_client(
        redis_server: RedisServer) -> None:
    # RedisStore.command/commands/evalsha take the fast client where the settings allow it and
    # redis-py otherwise (TLS, Sentinel): callers must not see which.
    script = Script("return {tonumber(ARGV[1]) + 1, redis.call('GET', KEYS[1])}")

    async def body() -> None:
        fast = RedisStore.from_settings(RedisSettings(url=redis_server.url, **FAST),
                                        Metrics("policyd"))
        slow = RedisStore(redis.asyncio.Redis.from_url(redis_server.url), "", Metrics("dkim"))
        assert fast.fast is not None and slow.fast is None
        for store in (fast, slow):
            await store.commands("t", [("SET", "k1", "v1", "PX", 60_000), ("SET", "k2", "v2")])
            assert await store.command("t", "MGET", "k1", "k2", "none") == [b"v1", b"v2", None]
            assert await store.command("t", "GET", "k1") == b"v1"
            await store.command("t", "SCRIPT", "FLUSH")  # forgotten: loaded again
            assert await store.evalsha("t", script, ["k2"], [41]) == [42, b"v2"]
            await store.close()

    run(body)
