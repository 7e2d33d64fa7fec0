"""The shared Redis client against a real redis-server: URLs, ACLs, Sentinel, outages."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from postward.core.metrics import Metrics
from postward.core.redis_store import RedisStore, StoreUnavailable
from postward.core.settings import RedisSettings
from tests.testbed.redis_server import RedisSentinel, RedisServer

pytestmark = pytest.mark.integration

FAST = RedisSettings(timeout=0.5, connect_timeout=0.5, retries=1, backoff_base=0.01,
                     backoff_cap=0.05)


def password_file(directory: Path, password: str) -> str:
    p = directory / "redis.pass"
    p.write_text(password + "\n")
    p.chmod(0o600)
    return str(p)


async def roundtrip(settings: RedisSettings) -> tuple[str | None, Metrics]:
    metrics = Metrics("test")
    store = RedisStore.from_settings(settings, metrics)
    try:
        key = store.key("greylist", "triplet")
        await store.run("set", lambda c: c.set(key, "1", ex=60))
        value = await store.run("get", lambda c: c.get(key))
        return (value.decode() if value is not None else None), metrics
    finally:
        await store.close()


def test_tcp_url_with_prefix(redis_server: RedisServer) -> None:
    value, metrics = asyncio.run(roundtrip(replace(FAST, url=redis_server.url,
                                                   key_prefix="pw1:")))
    assert value == "1"
    assert metrics.value("postward_test_redis_operations_total", {"op": "get"}) == 1


def test_unix_socket_url(redis_server: RedisServer) -> None:
    value, _ = asyncio.run(roundtrip(replace(FAST, url=redis_server.unix_url)))
    assert value == "1"


def test_acl_user_and_password_file(redis_acl_server: RedisServer, testbed_dir: Path) -> None:
    assert redis_acl_server.password is not None
    good = replace(FAST, url=redis_acl_server.url, username="postward",
                   password_file=password_file(testbed_dir, redis_acl_server.password))
    value, _ = asyncio.run(roundtrip(good))
    assert value == "1"


def test_wrong_password_is_counted_not_raised_raw(redis_acl_server: RedisServer,
                                                  testbed_dir: Path) -> None:
    bad = replace(FAST, url=redis_acl_server.url, username="postward",
                  password_file=password_file(testbed_dir, "wrong"))

    async def attempt() -> Metrics:
        metrics = Metrics("test")
        store = RedisStore.from_settings(bad, metrics)
        try:
            with pytest.raises(StoreUnavailable, match="get: AuthenticationError"):
                await store.run("get", lambda c: c.get(store.key("x")))
        finally:
            await store.close()
        return metrics

    metrics = asyncio.run(attempt())
    assert metrics.value("postward_test_redis_errors_total",
                         {"op": "get", "error": "AuthenticationError"}) == 1


def test_outage_is_counted_and_the_client_reconnects(redis_server: RedisServer) -> None:
    """Redis going away raises StoreUnavailable (counted); once it is back, the same client
    works again without being rebuilt."""

    async def scenario() -> Metrics:
        metrics = Metrics("test")
        store = RedisStore.from_settings(replace(FAST, url=redis_server.url), metrics)
        try:
            await store.run("set", lambda c: c.set(store.key("k"), "v"))
            redis_server.stop()
            with pytest.raises(StoreUnavailable):
                await store.run("get", lambda c: c.get(store.key("k")))
            assert await store.ping() is False
            redis_server.start()  # same address and port, empty data
            assert await store.ping() is True
            assert await store.run("get", lambda c: c.get(store.key("k"))) is None
        finally:
            await store.close()
        return metrics

    metrics = asyncio.run(scenario())
    errors = sum(metrics.value("postward_test_redis_errors_total", {"op": op, "error": e})
                 for op in ("get", "ping") for e in ("ConnectionError", "TimeoutError"))
    assert errors == 2


def test_sentinel_finds_the_master(redis_server: RedisServer,
                                   redis_sentinel: RedisSentinel) -> None:
    from postward.core.config_values import HostPort

    settings = replace(FAST, url="redis:///0",
                       sentinels=(HostPort(redis_sentinel.host, redis_sentinel.port),),
                       sentinel_master=redis_sentinel.master_name)
    value, _ = asyncio.run(roundtrip(settings))
    assert value == "1"

    # The value went to the master the Sentinel names: read it there directly.
    async def direct() -> bytes | None:
        store = RedisStore.from_settings(replace(FAST, url=redis_server.url), Metrics("t2"))
        try:
            return await store.run("get", lambda c: c.get("postward:greylist:triplet"))
        finally:
            await store.close()

    assert asyncio.run(direct()) == b"1"
