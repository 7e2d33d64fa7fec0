"""The shared Redis: one async client per daemon process, keys under one prefix, errors counted.

Everything a daemon keeps in Redis goes through :meth:`RedisStore.run`, which turns any Redis
failure into :class:`StoreUnavailable` after counting it. Callers then take their configured safe
path (policyd: the default answer; the classifier: exit 75), so an outage never crashes a daemon.
Reconnects, with exponential backoff, are redis-py's own ``Retry``; Sentinel is redis-py's too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from postward.core.logs import get_log
from postward.core.metrics import Labelled, Metrics
from postward.core.resp import Arg, RespClient, Script, fast_client_for
from postward.core.settings import RedisSettings

T = TypeVar("T")
log = get_log("redis")


class StoreUnavailable(Exception):
    """Redis could not serve a request (down, timing out, refusing); already counted and logged."""


def _read_secret(path: str) -> str | None:
    return Path(path).read_text().strip() if path else None


def _common_kwargs(s: RedisSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": s.connect_timeout,
        "socket_timeout": s.timeout,
        "retry": Retry(ExponentialBackoff(cap=s.backoff_cap, base=s.backoff_base), s.retries),
        "health_check_interval": 30,
        "max_connections": s.pool_size,
    }
    if s.username:
        kwargs["username"] = s.username
    if (password := _read_secret(s.password_file)) is not None:
        kwargs["password"] = password
    if s.url.startswith("rediss://") and s.tls_ca_file:
        kwargs["ssl_ca_certs"] = s.tls_ca_file
    return kwargs


def client_from_settings(s: RedisSettings) -> aioredis.Redis:
    """A client for a plain Redis (by URL) or for the master a set of Sentinels names."""
    kwargs = _common_kwargs(s)
    if not s.sentinels:
        return aioredis.Redis.from_url(s.url, **kwargs)
    # With Sentinel the URL still says which database and whether to use TLS.
    parsed = aioredis.connection.parse_url(s.url)
    kwargs.setdefault("db", parsed.get("db", 0))
    if s.url.startswith("rediss://"):
        kwargs["ssl"] = True
    sentinel_kwargs: dict[str, Any] = {"socket_connect_timeout": s.connect_timeout,
                                       "socket_timeout": s.timeout}
    if s.sentinel_username:
        sentinel_kwargs["username"] = s.sentinel_username
    if (sp := _read_secret(s.sentinel_password_file)) is not None:
        sentinel_kwargs["password"] = sp
    max_connections = kwargs.pop("max_connections")
    sentinel = Sentinel([(h.host, h.port) for h in s.sentinels],
                        sentinel_kwargs=sentinel_kwargs, **kwargs)
    return sentinel.master_for(s.sentinel_master, max_connections=max_connections)


class RedisStore:
    def __init__(self, client: aioredis.Redis, prefix: str, metrics: Metrics,
                 fast: RespClient | None = None) -> None:
        self.client = client
        self.prefix = prefix
        # The same Redis through postward.core.resp, for hot paths; None where the settings
        # need redis-py (TLS, Sentinel). command(), commands() and evalsha() pick the client.
        self.fast = fast
        self._scripts: dict[str, Any] = {}  # redis-py's registered scripts, by SHA1
        self._errors = metrics.counter(
            "redis_errors_total", "Redis commands that failed, by operation and error",
            ["op", "error"])
        self._ops = Labelled(metrics.counter("redis_operations_total", "Redis operations run",
                                             ["op"]))

    @classmethod
    def from_settings(cls, s: RedisSettings, metrics: Metrics) -> RedisStore:
        return cls(client_from_settings(s), s.key_prefix, metrics, fast_client_for(s))

    def key(self, *parts: str) -> str:
        """``prefix`` + parts joined by ':' — every key postward writes is made here."""
        return self.prefix + ":".join(parts)

    async def run(self, op: str, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run ``fn(client)``; any Redis failure becomes StoreUnavailable, counted under ``op``."""
        self._ops(op).inc()
        try:
            return await fn(self.client)
        except (RedisError, OSError, TimeoutError) as e:
            kind = type(e).__name__
            self._errors.labels(op, kind).inc()
            log.warning("redis_error", op=op, error=f"{kind}: {e}")
            raise StoreUnavailable(f"{op}: {kind}: {e}") from e

    async def command(self, op: str, *args: Arg) -> Any:
        """One command, through the fast client where there is one (as ``run``: failures
        become StoreUnavailable, counted under ``op``)."""
        fast = self.fast
        if fast is not None:
            return await self.run(op, lambda _: fast.execute(*args))
        return await self.run(op, lambda c: c.execute_command(*args))

    async def commands(self, op: str, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Several commands written together (no transaction), their replies in order."""
        fast = self.fast
        if fast is not None:
            return await self.run(op, lambda _: fast.pipeline(commands))

        async def pipelined(c: aioredis.Redis) -> list[Any]:
            pipe = c.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute()  # type: ignore[no-any-return]

        return await self.run(op, pipelined)

    async def evalsha(self, op: str, script: Script, keys: Sequence[Arg],
                      args: Sequence[Arg]) -> Any:
        """A Lua script by its SHA1, loaded again if Redis has forgotten it."""
        fast = self.fast
        if fast is not None:
            return await self.run(op, lambda _: fast.evalsha(script, keys, args))
        registered = self._scripts.get(script.sha)
        if registered is None:
            registered = self._scripts[script.sha] = self.client.register_script(
                script.source)
        return await self.run(op, lambda c: registered(keys=keys, args=args, client=c))

    async def ping(self) -> bool:
        try:
            return bool(await self.run("ping", lambda c: c.ping()))
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        if self.fast is not None:
            await self.fast.close()
        await self.client.aclose()
