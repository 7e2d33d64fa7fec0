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
