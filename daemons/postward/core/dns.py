"""Asynchronous DNS for every daemon: c-ares (pycares) underneath, answers shared through Redis.

A lookup first asks the Redis cache, which every daemon on every host shares, then the
nameservers. Answers are kept for their own TTL (clamped to the configured bounds); "no such
name" and "no such record" for ``negative_ttl``; failures and timeouts are never kept. DNS
trouble is an answer (``rcode`` TIMEOUT, SERVFAIL, ...), never an exception: each caller decides
what a failed lookup means (for a DNSBL: not listed).

Answers from the nameservers are written to Redis behind the caller's back: the caller has its
answer at once, and the writes of lookups made close together leave in one command. A name the
shared cache did not have a moment ago is not asked for again (in any type) for
``ABSENT_FOR`` seconds: a DNSBL's TXT lookup follows its A lookup, and both are written
together, so the second read could only miss. A wrong guess costs one DNS query, never a wrong
answer.

The network side is a :class:`Transport`, passed in; tests use the real one against their own
unbound and rbldnsd, and may pass another where a fault cannot be produced for real.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections import OrderedDict
from typing import Any, NamedTuple, Protocol

import pycares

from postward.core.clock import Clock, SystemClock
from postward.core.config_values import host_port
from postward.core.logs import get_log
from postward.core.metrics import Labelled, Metrics
from postward.core.redis_store import RedisStore, StoreUnavailable
from postward.core.resp import Script
from postward.core.settings import DnsSettings

log = get_log("dns")

# Query types the daemons use; their rdata is rendered as text (TXT strings joined, as DKIM and
# DNSBL reasons want them).
RTYPES = ("A", "AAAA", "TXT", "MX", "PTR", "NS", "CNAME")

NOERROR, NXDOMAIN, NODATA = "NOERROR", "NXDOMAIN", "NODATA"
TIMEOUT, SERVFAIL, REFUSED, ERROR = "TIMEOUT", "SERVFAIL", "REFUSED", "ERROR"
_CACHEABLE = {NOERROR, NXDOMAIN, NODATA}

# Seconds a name the shared cache did not have is not asked from it again (see the docstring).
ABSENT_FOR = 1.0
# Cache writes waiting for Redis at most (it is slow or down): past this the oldest are dropped.
MAX_PENDING_WRITES = 10_000

# Writes answers to the cache: one command for a whole batch instead of a SET each (one reply
# to wait for and parse, where a pipeline costs a future per SET).
_CACHE_PUT = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[2 * i - 1], 'PX', ARGV[2 * i])
end
return #KEYS
"""

_ARES_RCODES = {
    pycares.errno.ARES_ENOTFOUND: NXDOMAIN,
    pycares.errno.ARES_ENODATA: NODATA,
    pycares.errno.ARES_ETIMEOUT: TIMEOUT,
    pycares.errno.ARES_ESERVFAIL: SERVFAIL,
    pycares.errno.ARES_EREFUSED: REFUSED,
    pycares.errno.ARES_ECONNREFUSED: REFUSED,
}


class Answer(NamedTuple):
    name: str
    rtype: str
    rcode: str
    records: tuple[str, ...] = ()
    ttl: int = 0
    from_cache: bool = False

    @property
    def ok(self) -> bool:
        return self.rcode == NOERROR and bool(self.records)

    @property
    def definite(self) -> bool:
        """True when the DNS gave an answer (records or a clear 'none'); False on failure."""
        return self.rcode in _CACHEABLE


class Transport(Protocol):
    async def query(self, name: str, rtype: str) -> Answer: ...

    async def query_many(self, queries: list[tuple[str, str]]) -> list[Answer]:
        """Several queries sent at once; their answers in order."""
        ...

    async def close(self) -> None: ...


def _render(data: Any) -> str:
    if isinstance(data, (pycares.ARecordData, pycares.AAAARecordData)):
        return data.addr
    if isinstance(data, pycares.TXTRecordData):
        return data.data.decode("utf-8", errors="replace")
    if isinstance(data, pycares.MXRecordData):
        return f"{data.priority} {data.exchange.rstrip('.').lower()}"
    if isinstance(data, pycares.PTRRecordData):
        return data.dname.rstrip(".").lower()
    if isinstance(data, pycares.NSRecordData):
        return data.nsdname.rstrip(".").lower()
    if isinstance(data, pycares.CNAMERecordData):
        return data.cname.rstrip(".").lower()
    return str(data)


class CaresTransport:
    """Queries through c-ares, its sockets watched by the running event loop.

    aiodns (with pycares 5) lets c-ares run its own thread and hands every answer back with
    ``call_soon_threadsafe``: a thread switch, a wake-up write and the GIL passed back and forth
    per answer, which cost more CPU than the lookup itself on a DNSBL-heavy policy server. Here
    c-ares reports its sockets through ``sock_state_cb`` and the loop calls it when they are
    readable, so answers arrive in the loop's own thread. Nameservers are "IP:port" strings
    (c-ares takes ports per server)."""

    _TYPE_CODES = {t: getattr(pycares, f"QUERY_TYPE_{t}") for t in RTYPES}

    def __init__(self, nameservers: list[str], timeout: float, tries: int) -> None:
        self._nameservers = nameservers
        # STAYOPEN only towards loopback resolvers: one fixed UDP source port is no weaker
        # there (nothing off the host can answer in their place), while towards a remote
        # resolver a port per query is part of the defence against forged answers.
        self._stay_open = bool(nameservers) and all(_is_loopback(ns) for ns in nameservers)
        self._timeout = timeout
        self._tries = tries
        self._channel: pycares.Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._readers: set[int] = set()
        self._writers: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._generation = 0  # of the channel; a closed one's late callbacks are ignored
        self._budget = timeout * tries * max(1, len(nameservers)) + 0.5

    def _channel_for(self, loop: asyncio.AbstractEventLoop) -> pycares.Channel:
        # Made on first use, per event loop: the loop watches the channel's sockets.
        if self._channel is None or self._loop is not loop:
            self._forget()
            self._loop = loop
            # STAYOPEN: without it c-ares closes its UDP socket whenever no query is pending
            # and opens a new one for the next (socket, connect, epoll add/remove, close per
            # request at low load: ~0.3 ms a DNSBL-miss request). Query IDs stay random.
            self._generation += 1
            watch = functools.partial(self._sock_state, self._generation)
            self._channel = pycares.Channel(sock_state_cb=watch,
                                            flags=(pycares.ARES_FLAG_STAYOPEN
                                                   if self._stay_open else 0),
                                            servers=self._nameservers or None,
                                            timeout=self._timeout, tries=self._tries)
        return self._channel

    def _sock_state(self, generation: int, fd: int, readable: bool, writable: bool) -> None:
        loop, channel = self._loop, self._channel
        if generation != self._generation or loop is None or channel is None:
            # A channel being closed (possibly in pycares' destroyer thread) reports its
            # sockets closing: they are no longer watched.
            return
        if readable and fd not in self._readers:
            loop.add_reader(fd, channel.process_fd, fd, pycares.ARES_SOCKET_BAD)
            self._readers.add(fd)
        elif not readable and fd in self._readers:
            loop.remove_reader(fd)
            self._readers.discard(fd)
        if writable and fd not in self._writers:
            loop.add_writer(fd, channel.process_fd, pycares.ARES_SOCKET_BAD, fd)
            self._writers.add(fd)
        elif not writable and fd in self._writers:
            loop.remove_writer(fd)
            self._writers.discard(fd)
        if (self._readers or self._writers) and self._timer is None:
            self._tick()

    def _tick(self) -> None:
        # c-ares notices timeouts (and retries) only when called: do so at its next deadline
        # (at least once a second) while it has sockets open.
        self._timer = None
        channel, loop = self._channel, self._loop
        if channel is None or loop is None:
            return
        channel.process_fd(pycares.ARES_SOCKET_BAD, pycares.ARES_SOCKET_BAD)
        if self._readers or self._writers:
            self._timer = loop.call_later(max(channel.timeout(1.0), 0.001), self._tick)

    def _watch_deadline(self, loop: asyncio.AbstractEventLoop) -> None:
        """A new query times out ``timeout`` from now: the tick must come by then."""
        if self._timer is not None and self._timer.when() <= loop.time() + self._timeout:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(self._timeout, self._tick)

    async def query(self, name: str, rtype: str) -> Answer:
        return (await self.query_many([(name, rtype)]))[0]

    async def query_many(self, queries: list[tuple[str, str]]) -> list[Answer]:
        # One future for the batch, settled by the last c-ares callback, and one timer for its
        # hard stop: no future, task or timeout context per lookup.
        loop = asyncio.get_running_loop()
        batch = _Batch(loop.create_future(), len(queries))
        refused: dict[int, Answer] = {}
        for i, (name, rtype) in enumerate(queries):
            if (answer := self._start(loop, name, rtype, batch, i)) is not None:
                refused[i] = answer
                batch.remaining -= 1
        if batch.remaining:
            self._watch_deadline(loop)
            # c-ares has its own timeout; this is the hard stop should it not fire.
            timer = loop.call_later(self._budget, batch.expire)
            try:
                await batch.done
            finally:
                timer.cancel()
        answers = []
        for i, (name, rtype) in enumerate(queries):
            if (answer := refused.get(i)) is None:
                raw = batch.raw[i]
                answer = Answer(name, rtype, TIMEOUT) if raw is None else \
                    self._answer(name, rtype, raw[0], raw[1])
            answers.append(answer)
        return answers

    def _start(self, loop: asyncio.AbstractEventLoop, name: str, rtype: str, batch: _Batch,
               index: int) -> Answer | None:
        """Send the query, its result to land in ``batch`` at ``index``; or its answer at once,
        for a name c-ares refused."""
        try:
            self._channel_for(loop).query(name, self._TYPE_CODES[rtype],
                                          callback=functools.partial(batch.settle, index))
        except pycares.AresError as e:
            code = e.args[0] if e.args else None
            return Answer(name, rtype, _ARES_RCODES.get(code, ERROR))
        except (UnicodeError, ValueError, TypeError) as e:
            # Names come from SMTP clients (HELO, reverse names, senders): one that cannot be
            # a DNS name is an answer too, never an exception in the caller.
            log.info("dns_bad_name", name=name[:100], type=rtype, error=str(e)[:200])
            return Answer(name, rtype, ERROR)
        return None

    def _answer(self, name: str, rtype: str, result: Any, code: int | None) -> Answer:
        if code is not None:
            return Answer(name, rtype, _ARES_RCODES.get(code, ERROR))
        want = self._TYPE_CODES[rtype]
        records = [r for r in result.answer if r.type == want]
        if not records:
            return Answer(name, rtype, NODATA)
        return Answer(name, rtype, NOERROR, tuple(_render(r.data) for r in records),
                      ttl=min(r.ttl for r in records))

    def _forget(self) -> None:
        """Stop watching the sockets and close the channel (its pending queries end)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop, channel = self._loop, self._channel
        self._channel = None
        self._generation += 1
        if loop is not None and not loop.is_closed():
            for fd in self._readers:
                loop.remove_reader(fd)
            for fd in self._writers:
                loop.remove_writer(fd)
        self._readers.clear()
        self._writers.clear()
        if channel is not None:
            if loop is not None and not loop.is_closed():
                # Cancelled here, their callbacks run in this thread, not in close()'s
                # destroyer thread.
                channel.cancel()
            channel.close()

    async def close(self) -> None:
        self._forget()


def _is_loopback(nameserver: str) -> bool:
    """Whether an "IP", "IP:port" or "[IPv6]:port" nameserver is on this host (parsed as
    ``[dns] nameservers`` entries are)."""
    try:
        return host_port(53)(nameserver).is_loopback
    except ValueError:
        return False


class _Batch:
    """The results of queries sent together, (result, error code) each, in order; ``done``
    once every one has come or the hard stop passed."""

    __slots__ = ("done", "raw", "remaining")

    def __init__(self, done: asyncio.Future[None], size: int) -> None:
        self.done = done
        self.raw: list[tuple[Any, int | None] | None] = [None] * size
        self.remaining = size

    def settle(self, index: int, result: Any, code: int | None) -> None:
        # Done: its caller gave up (cancelled) or the hard stop passed. A closed loop: the
        # channel is being torn down.
        done = self.done
        if done.done() or done.get_loop().is_closed():
            return
        self.raw[index] = (result, code)
        self.remaining -= 1
        if self.remaining <= 0:
            done.set_result(None)

    def expire(self) -> None:
        if not self.done.done():
            self.done.set_result(None)  # the queries not answered yet: TIMEOUT


def _count_by_type(counter: Labelled, keys: list[tuple[str, str]]) -> None:
    """Add each (name, type) key to ``counter`` under its type: one increment per type."""
    if not keys:
        return
    rtype = keys[0][1]
    if all(key[1] == rtype for key in keys):  # a batch's usual case: one type
        counter(rtype).inc(len(keys))
        return
    for key in keys:
        counter(key[1]).inc()


class Resolver:
    def __init__(
        self,
        settings: DnsSettings,
        metrics: Metrics,
        store: RedisStore | None = None,
        transport: Transport | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.store = store if settings.cache else None
        self.transport = transport or CaresTransport(
            [str(ns) for ns in settings.nameservers], settings.timeout, settings.tries)
        self.clock = clock or SystemClock()
        self._inflight: dict[tuple[str, str], asyncio.Future[Answer]] = {}
        # A small per-process layer in front of Redis: (name, type) -> (answer, expiry).
        self._local: OrderedDict[tuple[str, str], tuple[Answer, float]] = OrderedDict()
        # Names the shared cache did not have, until when that is trusted.
        self._absent: OrderedDict[str, float] = OrderedDict()
        # Answers not yet written to Redis (key, value, milliseconds to keep), and the task
        # writing them.
        self._writes: list[tuple[str, str, int]] = []
        self._cache_put = Script(_CACHE_PUT)
        self._writer: asyncio.Task[None] | None = None
        self._queries = Labelled(metrics.counter("dns_queries_total",
                                        "DNS queries sent to nameservers, by type and result",
                                        ["type", "result"]))
        self._hits = Labelled(metrics.counter(
            "dns_cache_hits_total", "DNS answers served from the shared Redis cache", ["type"]))
        self._local_hits = Labelled(metrics.counter(
            "dns_local_cache_hits_total", "DNS answers served from the process's own cache",
            ["type"]))
        self._misses = Labelled(metrics.counter(
            "dns_cache_misses_total", "DNS lookups not in the Redis cache", ["type"]))
        self._latency = Labelled(metrics.histogram(
            "dns_query_seconds", "Time for a DNS query to the nameservers", ["type"]))
        self._writes_dropped = metrics.counter(
            "dns_cache_writes_dropped_total",
            "Answers not written to the Redis cache because too many writes were waiting")

    def peek(self, name: str, rtype: str) -> Answer | None:
        """The answer from this process's own cache, without waiting; None if not there."""
        key = (name.rstrip(".").lower(), rtype)
        answer = self._local_get(key)
        if answer is not None:
            self._local_hits(rtype).inc()
        return answer

    async def query(self, name: str, rtype: str) -> Answer:
        """Look ``name`` up; concurrent lookups of the same name and type share one query."""
        if rtype not in RTYPES:
            raise ValueError(f"unsupported query type {rtype!r}")
        name = name.rstrip(".").lower()
        key = (name, rtype)
        if (local := self._local_get(key)) is not None:
            self._local_hits(rtype).inc()
            return local
        if (pending := self._inflight.get(key)) is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            answer = await self._lookup(name, rtype)
            self._local_put(key, answer)
            fut.set_result(answer)
            return answer
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters, if any, get it through shield
            raise
        finally:
            del self._inflight[key]

    async def query_many(self, queries: list[tuple[str, str]]) -> list[Answer]:
        """Several lookups at once (a rule's DNSBLs): one Redis round trip reads the cache for
        all of them, the misses go to the nameservers together, and their answers are written
        back in one command without waiting for it."""
        keys = [(name.rstrip(".").lower(), rtype) for name, rtype in queries]
        found: dict[tuple[str, str], Answer] = {}
        todo: list[tuple[str, str]] = []
        for key in keys:
            if key in found or key in todo:
                continue
            if (local := self._local_get(key)) is not None:
                self._local_hits(key[1]).inc()
                found[key] = local
            else:
                todo.append(key)
        if todo and self.store is not None:
            ask = [key for key in todo if not self._known_absent(key[0])]
            if ask:
                for key, answer in zip(ask, await self._cache_get_many(ask), strict=True):
                    if answer is not None:
                        self._hits(key[1]).inc()
                        found[key] = answer
                        self._local_put(key, answer)
                    else:
                        self._note_absent(key[0])
            todo = [key for key in todo if key not in found]
            _count_by_type(self._misses, todo)
        if todo:
            answers = await self._ask_nameservers_many(todo)
            for key, answer in zip(todo, answers, strict=True):
                found[key] = answer
                self._local_put(key, answer)
            self._cache_put_many(answers)
        return [found[key] for key in keys]

    async def _ask_nameservers(self, name: str, rtype: str) -> Answer:
        return (await self._ask_nameservers_many([(name, rtype)]))[0]

    async def _ask_nameservers_many(self, queries: list[tuple[str, str]]) -> list[Answer]:
        start = self.clock.monotonic()
        answers = await self.transport.query_many(queries)
        # Sent together, they are timed together: each takes the batch's time.
        elapsed = self.clock.monotonic() - start
        outcomes: dict[tuple[str, str], int] = {}
        for answer in answers:
            self._latency(answer.rtype).observe(elapsed)
            outcome = (answer.rtype, answer.rcode)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if answer.rcode in (TIMEOUT, SERVFAIL, ERROR):
                log.info("dns_failure", name=answer.name, type=answer.rtype,
                         result=answer.rcode)
        for (rtype, rcode), n in outcomes.items():  # one increment per kind, not per answer
            self._queries(rtype, rcode).inc(n)
        return answers

    async def _cache_get_many(self, keys: list[tuple[str, str]]) -> list[Answer | None]:
        assert self.store is not None
        redis_keys = [self._cache_key(name, rtype) for name, rtype in keys]
        try:
            raws = await self.store.command("dns_cache_get", "MGET", *redis_keys)
        except StoreUnavailable:
            return [None] * len(keys)
        return [None if raw is None else self._decode(name, rtype, raw)
                for (name, rtype), raw in zip(keys, raws, strict=True)]

    def _cache_put_many(self, answers: list[Answer]) -> None:
        """Have the cacheable answers written to Redis, without waiting for it."""
        if self.store is None:
            return
        for answer in answers:
            keep = self._keep_for(answer) if answer.rcode in _CACHEABLE else 0
            if keep > 0:
                self._writes.append((self._cache_key(answer.name, answer.rtype),
                                     self._encode(answer, keep), max(1, int(keep * 1000))))
        if not self._writes:
            return
        if len(self._writes) > MAX_PENDING_WRITES:
            dropped = len(self._writes) - MAX_PENDING_WRITES
            del self._writes[:dropped]
            self._writes_dropped.inc(dropped)
        loop = asyncio.get_running_loop()
        writer = self._writer
        if writer is None or writer.done() or writer.get_loop() is not loop:
            # One writer at a time: what comes while it waits for Redis leaves together next.
            self._writer = loop.create_task(self._write_behind())

    async def _write_behind(self) -> None:
        assert self.store is not None
        while self._writes:
            batch, self._writes = self._writes, []
            args: list[str | int] = []
            for _, value, px in batch:
                args += (value, px)
            try:
                await self.store.evalsha("dns_cache_put", self._cache_put,
                                         [key for key, _, _ in batch], args)
            except StoreUnavailable:
                pass  # counted and logged by the store: a cache not written is only slower
            except Exception:
                # Never an unretrieved task exception, never a request failed by a cache.
                log.exception("dns_cache_write_failed", answers=len(batch))

    async def flush(self) -> None:
        """Wait until the answers looked up so far are written to the shared cache (or have
        failed to be)."""
        writer = self._writer
        if writer is not None and not writer.done() and \
                writer.get_loop() is asyncio.get_running_loop():
            try:
                await asyncio.shield(writer)
            except asyncio.CancelledError:
                if not writer.cancelled():
                    raise  # we were cancelled, not the writer

    def _known_absent(self, name: str) -> bool:
        until = self._absent.get(name)
        if until is None:
            return False
        if until > self.clock.time():
            return True
        del self._absent[name]
        return False

    def _note_absent(self, name: str) -> None:
        s = self.settings
        if s.local_cache_size <= 0 or s.local_cache_ttl <= 0:
            return  # no per-process memory of answers: none of their absence either
        absent = self._absent
        now = self.clock.time()
        absent[name] = now + min(ABSENT_FOR, s.local_cache_ttl)
        absent.move_to_end(name)
        # Oldest first: drop the expired ones, and any beyond the local cache's size.
        while absent and (len(absent) > s.local_cache_size or next(iter(absent.values())) <= now):
            absent.popitem(last=False)

    async def _lookup(self, name: str, rtype: str) -> Answer:
        if self.store is not None:
            if not self._known_absent(name):
                cached = await self._cache_get(name, rtype)
                if cached is not None:
                    self._hits(rtype).inc()
                    return cached
                self._note_absent(name)
            self._misses(rtype).inc()
        answer = await self._ask_nameservers(name, rtype)
        self._cache_put_many([answer])
        return answer

    def _local_get(self, key: tuple[str, str]) -> Answer | None:
        entry = self._local.get(key)
        if entry is None:
            return None
        answer, expires = entry
        remaining = expires - self.clock.time()
        if remaining <= 0:
            del self._local[key]
            return None
        self._local.move_to_end(key)
        return Answer(answer.name, answer.rtype, answer.rcode, answer.records,
                      min(answer.ttl, int(remaining)), True)

    def _local_put(self, key: tuple[str, str], answer: Answer) -> None:
        s = self.settings
        if s.local_cache_ttl <= 0 or s.local_cache_size <= 0 or not answer.definite:
            return
        keep = min(self._keep_for(answer), s.local_cache_ttl)
        if keep <= 0:
            return
        self._local[key] = (answer, self.clock.time() + keep)
        self._local.move_to_end(key)
        while len(self._local) > s.local_cache_size:
            self._local.popitem(last=False)

    def _keep_for(self, answer: Answer) -> float:
        s = self.settings
        ttl = answer.ttl if answer.rcode == NOERROR else s.negative_ttl
        return min(max(ttl, s.cache_min_ttl), s.cache_max_ttl)

    def _cache_key(self, name: str, rtype: str) -> str:
        assert self.store is not None
        return self.store.key("dns", rtype, name)

    async def _cache_get(self, name: str, rtype: str) -> Answer | None:
        if self.store is None:
            return None
        key = self._cache_key(name, rtype)
        try:
            raw = await self.store.command("dns_cache_get", "GET", key)
        except StoreUnavailable:
            return None
        if raw is None:
            return None
        return self._decode(name, rtype, raw)

    def _decode(self, name: str, rtype: str, raw: bytes) -> Answer | None:
        try:
            entry = json.loads(raw)
            remaining = max(0, int(entry["exp"] - self.clock.time()))
            return Answer(name, rtype, entry["rcode"], tuple(entry["records"]), remaining,
                          from_cache=True)
        except (ValueError, KeyError, TypeError):
            log.warning("dns_cache_corrupt", name=name, type=rtype)
            return None

    def _encode(self, answer: Answer, keep: float) -> str:
        # What json.dumps of {"rcode", "records", "exp"} gives, without building the dict (a
        # few per request): the rcode is one of our constants, the float's repr is JSON.
        records = json.dumps(answer.records) if answer.records else "[]"
        return f'{{"rcode": "{answer.rcode}", "records": {records}, ' \
               f'"exp": {float(self.clock.time() + keep)!r}}}'

    async def close(self) -> None:
        await self.flush()
        await self.transport.close()


