"""The token store against a real Redis: bucketed counts that grow by splitting, stay
listpack-encoded, add up across the user's and the global model, never go negative, untrain
symmetrically, and signatures that round trip."""

from __future__ import annotations

import asyncio
import hashlib
import random

import pytest
import redis

from postward.classifier.model import Counts
from postward.classifier.store import (
    DIGEST_BYTES,
    GLOBAL,
    LOAD,
    SignatureRecord,
    TokenStore,
    pair,
    unpair,
)
from postward.core.metrics import Metrics
from postward.core.redis_store import RedisStore
from postward.core.settings import RedisSettings

pytestmark = pytest.mark.integration

PREFIX = "postward:"


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def digests(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    return list(dict.fromkeys(hashlib.blake2b(rng.randbytes(8), digest_size=DIGEST_BYTES)
                              .digest() for _ in range(count)))


async def _store(redis_url: str) -> tuple[TokenStore, RedisStore]:
    store = RedisStore.from_settings(RedisSettings(url=redis_url, retries=0, timeout=2,
                                                   connect_timeout=1), Metrics("test"))
    return TokenStore(store, 3600), store


def buckets(r: redis.Redis, model: str) -> dict[bytes, dict[bytes, bytes]]:
    return {k: r.hgetall(k) for k in r.scan_iter(match=f"{PREFIX}cls:b:{model}:*", count=1000)}


def header(r: redis.Redis, model: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall(f"{PREFIX}cls:m:{model}").items()}


def test_pairing_round_trips_and_keeps_small_counts_small() -> None:
    for s in range(60):
        for h in range(60):
            assert unpair(pair(s, h)) == (s, h)
    big = (1 << 24) - 1
    assert unpair(pair(big, big - 3)) == (big, big - 3)
    assert {pair(1, 0), pair(0, 1), pair(1, 1)} == {1, 2, 3}   # one listpack byte each


def test_a_growing_model_splits_into_listpack_buckets_and_keeps_every_count(redis_server) -> None:  # type: ignore[no-untyped-def]
    r = redis.Redis.from_url(redis_server.url)
    tokens = digests(1, 12_000)

    async def main() -> None:
        ts, store = await _store(redis_server.url)
        try:
            # Messages of 1,000 tokens, overlapping: new and known tokens in each.
            for start in range(0, len(tokens) - 1000, 500):
                await ts.train(GLOBAL, tokens[start:start + 1000], 1, 0)
            await ts.train(GLOBAL, tokens[:300], 0, 2)
            found = await ts.lookup(GLOBAL, tokens)
            expect = []
            for i in range(len(tokens)):
                times = sum(1 for start in range(0, len(tokens) - 1000, 500)
                            if start <= i < start + 1000)
                expect.append((times, 2 if i < 300 else 0))
            assert found.hits == expect
            messages = len(range(0, len(tokens) - 1000, 500))
            assert (found.totals.spam, found.totals.ham) == (messages, 2)
        finally:
            await store.close()
    run(main())

    head = header(r, GLOBAL)
    stored = buckets(r, GLOBAL)
    known = len(tokens) - 1000 + 500  # the last 500 tokens were never trained
    assert head["n"] == known == sum(len(b) for b in stored.values())
    assert len(stored) == 2 ** head["lvl"] + head["sp"] > known // (2 * LOAD)
    assert max(len(b) for b in stored.values()) < 128
    assert {r.object("encoding", k) for k in stored} == {b"listpack"}
    # Each field sits in the bucket its digest names at the model's level and split point.
    lo, hi = 2 ** head["lvl"], 2 ** (head["lvl"] + 1)
    for key, fields in stored.items():
        number = int(key.rsplit(b":", 1)[1])
        for field in fields:
            h = int.from_bytes(field[:3])
            assert (h % lo if h % lo >= head["sp"] else h % hi) == number


def test_untraining_is_symmetric_and_counts_never_go_negative(redis_server) -> None:  # type: ignore[no-untyped-def]
    r = redis.Redis.from_url(redis_server.url)
    a, b = digests(2, 900), digests(3, 700)

    async def main() -> None:
        ts, store = await _store(redis_server.url)
        try:
            await ts.train("user:x", a, 1, 0)
            await ts.train("user:x", b, 0, 1)
            await ts.train("user:x", a + b, 0, 1)
            assert (await ts.lookup("user:x", a[:1] + b[:1])).hits == [(1, 1), (0, 2)]
            await ts.train("user:x", a + b, 0, -1)
            await ts.train("user:x", b, 0, -1)
            left = await ts.train("user:x", a, -1, 0)
            assert left == Counts(0, 0)
            assert set((await ts.lookup("user:x", a + b)).hits) == {(0, 0)}
            # Taking away what was never there leaves zeros, never negative counts.
            assert await ts.train("user:x", a, -1, -1) == Counts(0, 0)
            assert await ts.train("user:y", a, -1, -1) == Counts(0, 0)
            await ts.train("user:x", a[:5], 0, 1)
            assert (await ts.lookup("user:x", a[:1])).hits == [(0, 1)]
            await ts.train("user:x", a[:5], 0, -1)
        finally:
            await store.close()
    run(main())
    assert header(r, "user:x")["n"] == header(r, "user:y")["n"] == 0
    assert buckets(r, "user:x") == buckets(r, "user:y") == {}  # no field left, so no key


def test_lookup_adds_the_users_model_to_the_global_one_in_one_call(redis_server) -> None:  # type: ignore[no-untyped-def]
    shared, own = digests(5, 400), digests(6, 100)

    async def main() -> None:
        ts, store = await _store(redis_server.url)
        try:
            for _ in range(3):
                await ts.train(GLOBAL, shared, 1, 0)
            await ts.train("user:amy", shared[:50] + own, 0, 1)
            amy = await ts.lookup("user:amy", shared[:60] + own[:5])
            assert amy.hits == [(3, 1)] * 50 + [(3, 0)] * 10 + [(0, 1)] * 5
            assert (amy.totals.spam, amy.totals.ham) == (3, 1)
            assert (amy.user_totals.spam, amy.user_totals.ham) == (0, 1)
            nobody = await ts.lookup("user:nobody", shared[:2])
            assert nobody.hits == [(3, 0)] * 2 and nobody.user_totals.spam == 0
            glob = await ts.lookup(GLOBAL, own[:1])
            assert glob.hits == [(0, 0)] and glob.user_totals.spam == 3
            assert (await ts.lookup(GLOBAL, [])).hits == []
        finally:
            await store.close()
    run(main())


def test_signatures_round_trip_and_learning_writes_one_with_the_counts(redis_server) -> None:  # type: ignore[no-untyped-def]
    r = redis.Redis.from_url(redis_server.url)
    tokens = digests(7, 300)

    async def main() -> None:
        ts, store = await _store(redis_server.url)
        try:
            record = SignatureRecord("user:bo", "innocent", False, tuple(tokens))
            sig = await ts.save_signature(record)
            assert await ts.load_signature(sig) == record
            assert await ts.load_signature(sig.upper()) == record
            assert 3590 <= r.ttl(f"{PREFIX}cls:sig:{sig}") <= 3600
            changed = SignatureRecord("user:bo", "spam", True, tuple(tokens))
            await ts.update_signature(sig, changed)
            assert await ts.load_signature(sig) == changed
            assert r.ttl(f"{PREFIX}cls:sig:{sig}") > 0           # the TTL was kept
            learnt = SignatureRecord("user:bo", "spam", True, tuple(tokens))
            sig2 = await ts.learn_and_sign("user:bo", tokens, 1, 0, True, learnt)
            assert await ts.load_signature(sig2) == learnt
            assert 3590 <= r.ttl(f"{PREFIX}cls:sig:{sig2}") <= 3600
            assert (await ts.totals("user:bo")).spam == 1
            assert (await ts.totals(GLOBAL)).spam == 1           # also_global
            assert (await ts.lookup("user:bo", tokens[:1])).hits == [(2, 0)]
            # A signature of the earlier single-hash layout names counts no longer read.
            r.set(f"{PREFIX}cls:sig:abcd", b"1|user:bo|spam|1|" + b"".join(tokens))
            assert await ts.load_signature("abcd") is None
            assert await ts.load_signature("not-hex") is None
            assert await ts.load_signature("0123") is None
        finally:
            await store.close()
    run(main())


async def _cached_store(redis_url: str, entries: int) -> tuple[TokenStore, RedisStore]:
    store = RedisStore.from_settings(RedisSettings(url=redis_url, retries=0, timeout=2,
                                                   connect_timeout=1), Metrics("test"))
    return TokenStore(store, 3600, global_cache_entries=entries), store


def test_every_training_changes_the_models_generation(redis_server) -> None:  # type: ignore[no-untyped-def]
    r = redis.Redis.from_url(redis_server.url)
    tokens = digests(20, 50)

    async def main() -> None:
        ts, store = await _store(redis_server.url)
        try:
            await ts.train(GLOBAL, tokens, 1, 0)
            first = header(r, GLOBAL)["gen"]
            await ts.train(GLOBAL, tokens, 0, 1)
            await ts.train("user:ann", tokens, 0, 1, also_global=True)
            assert header(r, GLOBAL)["gen"] == first + 2
            # Deleted and trained anew, a model starts from the clock: no old generation again.
            r.delete(f"{PREFIX}cls:m:{GLOBAL}", *buckets(r, GLOBAL))
            await ts.train(GLOBAL, tokens, 1, 0)
            assert header(r, GLOBAL)["gen"] > first + 2
        finally:
            await store.close()
    run(main())


def test_cached_global_counts_match_redis_and_follow_training_elsewhere(redis_server) -> None:  # type: ignore[no-untyped-def]
    shared, own, fresh = digests(21, 3000), digests(22, 300), digests(23, 400)

    async def main() -> None:
        plain, store1 = await _store(redis_server.url)            # another process, or host
        cached, store2 = await _cached_store(redis_server.url, 100_000)
        cache = cached.global_cache
        assert cache is not None
        try:
            for _ in range(2):
                await plain.train(GLOBAL, shared, 1, 0)
            await plain.train(GLOBAL, shared[:1000], 0, 3)
            await plain.train("user:cy", shared[:100] + own, 0, 1)

            async def same(model: str, ds: list[bytes]) -> None:
                want, got = await plain.lookup(model, ds), await cached.lookup(model, ds)
                assert got == want

            # Cold, then warm: the second lookup reads none of the global model's counts.
            await same("user:cy", shared[:500] + own + fresh[:100])
            assert (cache.hits, cache.misses) == (0, 900)
            await same("user:cy", shared[:500] + own + fresh[:100])
            assert (cache.hits, cache.misses) == (900, 900)
            await same("user:dee", shared[400:600] + fresh[:200])   # partly known
            assert (cache.hits, cache.misses) == (900 + 200, 900 + 200)
            await same(GLOBAL, shared[:50] + fresh[:50])
            # Training through the other store changes counts this cache holds (and a token
            # it holds as absent): the next lookup sees them and starts the cache over.
            await plain.train(GLOBAL, shared[:10] + fresh[:5], 0, 7)
            generation = cache.generation
            await same("user:cy", shared[:500] + own + fresh[:100])
            assert cache.generation != generation and cache.drops == 1
            assert len(cache.counts) == 900
            found = await cached.lookup("user:cy", fresh[:5])
            assert found.hits == [(0, 7)] * 5 and found.totals.ham == 3 + 1 + 7
            # A correction with also_global changes the global model too.
            await plain.train("user:cy", shared[:3], -1, 1, also_global=True)
            await same("user:cy", shared[:500])
            assert cache.drops == 2
            # A user's own training leaves the global model and the cache as they were.
            await plain.train("user:cy", shared[:500], 1, 0)
            await same("user:cy", shared[:500])
            assert cache.drops == 2 and cache.hits >= 500
        finally:
            await store1.close()
            await store2.close()
    run(main())


def test_the_cache_keeps_its_bound_and_skips_a_model_without_generation(redis_server) -> None:  # type: ignore[no-untyped-def]
    r = redis.Redis.from_url(redis_server.url)
    tokens = digests(24, 5000)

    async def main() -> None:
        plain, store1 = await _store(redis_server.url)
        cached, store2 = await _cached_store(redis_server.url, 1000)
        cache = cached.global_cache
        assert cache is not None
        try:
            # No global model yet: nothing to tell its next version from, so nothing cached.
            await cached.lookup("user:eve", tokens[:100])
            assert cache.counts == {} and cache.generation is None
            await plain.train(GLOBAL, tokens[::2], 1, 0)
            for start in range(0, 5000, 700):
                part = tokens[start:start + 900]
                assert await cached.lookup("user:eve", part) == await plain.lookup("user:eve",
                                                                                   part)
                assert len(cache.counts) <= 1000
            # The newest entries were kept: the last message's digests are all there.
            assert all(d in cache.counts for d in tokens[4900:5000])
            # The model's keys deleted by hand: a model without a generation, not cached.
            r.delete(f"{PREFIX}cls:m:{GLOBAL}", *buckets(r, GLOBAL))
            assert (await cached.lookup(GLOBAL, tokens[:10])).hits == [(0, 0)] * 10
            assert cache.counts == {} and cache.generation is None
        finally:
            await store1.close()
            await store2.close()
    run(main())
