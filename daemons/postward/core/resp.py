"""A small Redis client for hot paths: one pipelined connection per process, RESP packed and
parsed by hiredis, no connection pool.

redis-py spends ~150 µs of CPU per EVALSHA here (pool checkout, command encoding in Python,
a StreamReader, retry wrappers), where the round trip itself costs ~60 µs; a policy decision
is a single command, so that overhead was most of its cost. This client writes every command
of one event-loop pass in one ``send`` and matches replies to callers in order (Redis answers
a connection's commands in the order it got them), so concurrent requests share one socket.

It keeps :class:`~postward.core.redis_store.RedisStore`'s contract: the settings are the same
(URL, ACL user, password file, timeouts, retries with exponential backoff), and every failure
is a ``redis.exceptions`` error, so ``RedisStore.run`` counts and reports it as it does redis-py's.
It serves ``redis://`` and ``unix://`` URLs; TLS and Sentinel stay with redis-py
(:func:`fast_client_for` answers None for them).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from postward.core.settings import RedisSettings

Arg = str | bytes | int | float


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to connect: a TCP host:port or a unix socket path."""

    host: str = ""
    port: int = 6379
    path: str = ""  # set: a unix socket
    db: int = 0
    username: str | None = None
    password: str | None = None


def endpoint_for(s: RedisSettings) -> Endpoint | None:
    """The endpoint for these settings, or None where this client cannot serve them (TLS,
    Sentinel): the caller then keeps redis-py."""
    if s.sentinels or not s.url.startswith(("redis://", "unix://")):
        return None
    url = parse_url(s.url)
    # As redis-py's from_url: what the URL says wins over the separate settings.
    username = url.get("username") or s.username or None
    password = url.get("password")
    if password is None and s.password_file:
        password = Path(s.password_file).read_text().strip()
    return Endpoint(host=url.get("host", "localhost"), port=int(url.get("port", 6379)),
                    path=url.get("path", ""), db=int(url.get("db", 0) or 0),
                    username=username, password=password)


class Script:
    """A Lua script run by its SHA1 (EVALSHA), loaded again whenever Redis has forgotten it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class _Connection(asyncio.Protocol):
    """One socket: commands written as they come, replies handed to waiters in order.

    A command whose reply has not come ``timeout`` seconds after it was sent drops the
    connection (:meth:`_check_deadlines`). One timer serves every command: the replies come in
    order, so only the oldest unanswered command's deadline can be the next to pass. (A timer
    made and cancelled per command cost more than the rest of the bookkeeping.)"""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float | None = None) -> None:
        self.loop = loop
        self.timeout = timeout  # None: no deadline
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.deadlines: deque[float] = deque()  # each waiter's, in the same order
        self.outgoing: list[bytes] = []
        self.lost: Exception | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: other event loops' transports (uvloop's) do not
        # derive from asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if not self.waiters:  # a reply nobody asked for: the stream is out of step
                self.abort(RedisConnectionError("unexpected reply from Redis"))
                return
            waiter = self.waiters.popleft()
            self.deadlines.popleft()
            if not waiter.done():  # done: its caller gave up (cancelled), the reply is dropped
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed by server'}"))

    def _fail(self, error: Exception) -> None:
        if self.lost is None:
            self.lost = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.deadlines.clear()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(self.lost)
                waiter.exception()  # retrieved: a cancelled caller must not leave a warning

    def abort(self, error: Exception) -> None:
        self._fail(error)
        if self.transport is not None:
            self.transport.abort()

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        if self.lost is not None:
            raise self.lost
        if not self.waiters and not self.outgoing and self.transport is not None:
            # Nothing in flight: write at once. Waiting for the end of the loop pass would
            # cost one more pass on a lone request's path, and a batch only forms while
            # replies are awaited anyway.
            self.transport.write(packed)
        else:
            if not self.outgoing:
                # Commands issued in this loop pass leave in one write.
                self.loop.call_soon(self._flush)
            self.outgoing.append(packed)
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        if self.timeout is not None:
            deadline = self.loop.time() + self.timeout
            self.deadlines.append(deadline)
            if self._timer is None:
                self._timer = self.loop.call_at(deadline, self._check_deadlines)
        else:
            self.deadlines.append(float("inf"))
        return waiter

    def _check_deadlines(self) -> None:
        """As a timer per command would: the first command still awaited (a cancelled
        caller's is not) past its deadline drops the connection; else wait for that
        command's deadline."""
        self._timer = None
        for waiter, deadline in zip(self.waiters, self.deadlines, strict=True):
            if waiter.done():
                continue
            if deadline <= self.loop.time():
                # As redis-py: a command that timed out drops its connection (the server may
                # be gone, and later replies would be late too); the next command opens a
                # new one.
                self.abort(RedisTimeoutError("Timeout reading from Redis"))
            elif deadline != float("inf"):
                self._timer = self.loop.call_at(deadline, self._check_deadlines)
            return

    def _flush(self) -> None:
        data, self.outgoing = b"".join(self.outgoing), []
        if self.lost is None and self.transport is not None:
            self.transport.write(data)


class RespClient:
    """Commands over one connection, (re)opened on demand; see the module docstring."""

    def __init__(self, endpoint: Endpoint, settings: RedisSettings) -> None:
        self.endpoint = endpoint
        self.connect_timeout = settings.connect_timeout
        self.timeout = settings.timeout
        self.retries = settings.retries
        self.backoff_base = settings.backoff_base
        self.backoff_cap = settings.backoff_cap
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    async def execute(self, *args: Arg) -> Any:
        """One command's reply (bytes, int, list, None); an error reply raises ResponseError,
        a connection failure or timeout ConnectionError/TimeoutError after the retries."""
        packed = hiredis.pack_command(args)
        failures = 0
        while True:
            try:
                conn = self._conn
                if conn is None or conn.lost is not None \
                        or conn.loop is not asyncio.get_running_loop():
                    conn = await self._connection()
                # An open connection used directly, not through _connection(): this is the
                # hot path, and each coroutine frame on it costs.
                reply = await conn.send(packed)  # the connection enforces the timeout
                if isinstance(reply, ResponseError):
                    raise _specific(reply)
                return reply
            except (RedisConnectionError, RedisTimeoutError, OSError):
                if failures >= self.retries:
                    raise
                failures += 1
                await asyncio.sleep(min(self.backoff_cap, self.backoff_base * 2 ** failures))

    async def evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # A restarted or flushed Redis forgot it: load it and run it again.
            await self.execute("SCRIPT", "LOAD", script.source)
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    async def pipeline(self, commands: Sequence[Sequence[Arg]],
                       raise_on_error: bool = True) -> list[Any]:
        """Several commands written together, and their replies. As redis-py's pipeline
        ``execute``: the first error reply is raised once all have arrived, or, without
        ``raise_on_error``, left in its place in the list. Not retried: the caller decides
        whether a partly applied batch may run again."""
        conn = await self._connection()
        waiters = [conn.send(hiredis.pack_command(tuple(c))) for c in commands]
        replies = list(await asyncio.gather(*waiters))
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, ResponseError):
                    raise _specific(reply)
        return replies

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.lost is None:
            if conn.loop is asyncio.get_running_loop():
                return conn
            self._conn = conn = None  # made under another (finished) event loop
        if self._connecting is None or self._connecting.get_loop() is not \
                asyncio.get_running_loop():
            # One connect for every caller arriving meanwhile.
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(_retrieve)
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        e = self.endpoint
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                if e.path:
                    _, conn = await loop.create_unix_connection(lambda: _Connection(loop),
                                                                e.path)
                else:
                    _, conn = await loop.create_connection(lambda: _Connection(loop),
                                                           e.host, e.port)
                handshake = []
                if e.password is not None:
                    handshake.append(("AUTH", e.username, e.password) if e.username
                                     else ("AUTH", e.password))
                if e.db:
                    handshake.append(("SELECT", e.db))
                if handshake:
                    replies = await asyncio.gather(
                        *(conn.send(hiredis.pack_command(c)) for c in handshake))
                    for reply in replies:
                        if isinstance(reply, ResponseError):
                            conn.abort(RedisConnectionError("handshake failed"))
                            raise _specific(reply)
        except TimeoutError as exc:  # asyncio's (the builtin), not redis-py's
            if conn is not None:
                conn.abort(RedisTimeoutError("handshake timed out"))
            raise RedisTimeoutError(
                f"connecting to Redis timed out after {self.connect_timeout}s") from exc
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        conn.timeout = self.timeout  # the handshake had only connect_timeout, as before
        self._conn = conn
        return conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None and not conn.loop.is_closed():
            conn.transport.close()
            conn._fail(RedisConnectionError("client closed"))


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Every caller of a failed connect may have been cancelled: nobody else reads its error.
    if not future.cancelled():
        future.exception()


def _specific(reply: ResponseError) -> ResponseError:
    """Error replies as redis-py names them, where callers tell them apart."""
    text = str(reply)
    if text.startswith("NOSCRIPT"):
        return NoScriptError(text)
    if text.startswith(("WRONGPASS", "NOAUTH", "NOPERM")):
        return AuthenticationError(text)
    return reply


def fast_client_for(settings: RedisSettings) -> RespClient | None:
    """A RespClient for these settings, or None where only redis-py can serve them."""
    endpoint = endpoint_for(settings)
    return None if endpoint is None else RespClient(endpoint, settings)
