"""Public-key lookups for libmilter's threads, through the shared asyncio resolver.

libmilter calls back from a thread per connection, while the core resolver (c-ares, with the
Redis cache every postward daemon shares) lives on an asyncio loop. :class:`LoopThread` runs
that loop in one thread of its own; :func:`make_lookup` gives the milter a plain blocking
function that hands each query to it and waits at most ``budget`` seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from postward.core.dns import Resolver
from postward.dkim.metrics import DkimMetrics
from postward.dkim.verifier import KeyAnswer, KeyLookup

T = TypeVar("T")


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="postward-dns",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError from None

    def stop(self, closer: Callable[[], Awaitable[Any]] | None = None) -> None:
        if closer is not None:
            with contextlib.suppress(Exception):
                self.run(closer(), timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def make_lookup(loop: LoopThread, resolver: Resolver, metrics: DkimMetrics,
                budget: float, keep: float = 10.0, clock: Callable[[], float] = time.monotonic,
                ) -> KeyLookup:
    """A blocking TXT lookup of ``selector._domainkey.domain`` for the verifier.

    Answers are also kept here, in the milter threads' own reach, for ``keep`` seconds at most
    (never past their TTL): the hop to the resolver's event loop costs more than the rest of
    verifying a small message, and the same few keys sign most mail."""
    kept: dict[str, tuple[float, KeyAnswer]] = {}
    lock = threading.Lock()

    def lookup(name: str) -> KeyAnswer:
        now = clock()
        with lock:
            hit = kept.get(name)
        if hit is not None and hit[0] > now:
            metrics.key_lookups("cache").inc()
            return KeyAnswer(hit[1].records, from_cache=True)
        answer = _lookup(name)
        if answer.records and keep > 0:
            with lock:
                if len(kept) > 10_000:
                    kept.clear()
                kept[name] = (now + min(keep, answer.ttl), answer)
        return answer

    def _lookup(name: str) -> KeyAnswer:
        try:
            answer = loop.run(resolver.query(name, "TXT"), timeout=budget)
        except TimeoutError:
            metrics.key_lookups("failed").inc()
            return KeyAnswer((), transient=True)
        if not answer.definite:
            metrics.key_lookups("failed").inc()
            return KeyAnswer((), transient=True)
        metrics.key_lookups("cache" if answer.from_cache else "dns").inc()
        # Only records that claim to be DKIM keys count; a name may carry other TXT data.
        records = tuple(r for r in answer.records if "p=" in r)
        return KeyAnswer(records, from_cache=answer.from_cache, ttl=answer.ttl)

    return lookup
