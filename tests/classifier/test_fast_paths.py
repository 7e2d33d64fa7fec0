"""The classifier's fast paths give what the plain ones gave: the token store through either
Redis client (postward.core.resp's, or redis-py's where the settings need it), model.classify
against Robinson's formulas computed token by token, bit for bit (and with a memo carried from
message to message), a long-lived Classifier against a fresh one per message, and the
delivery agent's template split once."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import random

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from postward.classifier.handler import agent_argv
from postward.classifier.model import (
    INNOCENT,
    SPAM,
    UNSURE,
    Counts,
    ModelSettings,
    Verdict,
    classify,
    combine,
    token_probability,
    token_weight,
)
from postward.classifier.service import MEMO_TOTALS, Classifier, _printable
from postward.classifier.settings import ClassifierSettings
from postward.classifier.store import DIGEST_BYTES, GLOBAL, SignatureRecord, TokenStore
from postward.core.clock import FakeClock
from postward.core.metrics import Metrics
from postward.core.redis_store import RedisStore, client_from_settings
from postward.core.settings import RedisSettings


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def reference_classify(tokens: list[str], hits: list[tuple[int, int]], totals: Counts,
                       s: ModelSettings) -> Verdict:
    """model.classify as it was written before it was made fast: one token_probability()
    call per token, a sort on (-deviation, token), combine() on the evidence."""
    scored = []
    for token, (spam_hits, ham_hits) in zip(tokens, hits, strict=True):
        f = token_probability(spam_hits, ham_hits, totals, s)
        deviation = abs(f - 0.5)
        if deviation >= s.min_dev and spam_hits + ham_hits > 0:
            scored.append((deviation, token, f))
    scored.sort(key=lambda item: (-item[0], item[1]))
    evidence = scored[: s.max_evidence] if s.max_evidence > 0 else scored
    probability = combine([f for _d, _t, f in evidence],
                          [token_weight(t, s) for _d, t, _f in evidence])
    if probability >= s.spam_cutoff:
        result, edge = SPAM, s.spam_cutoff
    elif s.unsure and probability > s.ham_cutoff:
        result, edge = UNSURE, s.spam_cutoff
    else:
        result, edge = INNOCENT, s.ham_cutoff if s.unsure else s.spam_cutoff
    if result == SPAM:
        span = 1.0 - edge
        confidence = 1.0 if span <= 0 else min(1.0, max(0.0, (probability - edge) / span))
    elif result == INNOCENT:
        confidence = 1.0 if edge <= 0 else min(1.0, max(0.0, (edge - probability) / edge))
    else:
        confidence = 0.0
    return Verdict(result, probability, confidence,
                   tuple((t, f) for _d, t, f in evidence[: s.factors]), len(evidence))


def _message(rng: random.Random, size: int) -> tuple[list[str], list[tuple[int, int]]]:
    """Tokens (words and OSB pairs, a few repeated) with counts drawn from few values, so
    that count pairs, deviations and their ties repeat as in real mail."""
    tokens = [f"w{rng.randrange(size * 2)}" + ("~1~x" if rng.random() < 0.6 else "")
              for _ in range(size)]
    small = [0, 0, 0, 1, 1, 2, 3, 5, 8, 40, 300]
    hits = [(rng.choice(small), rng.choice(small)) for _ in tokens]
    return tokens, hits


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.integers(0, 600),
       spam=st.sampled_from([0, 1, 7, 500, 10_000]), ham=st.sampled_from([0, 1, 9, 2750]),
       max_evidence=st.sampled_from([0, 0, 5, 150]), unsure=st.booleans(),
       pair_weight=st.sampled_from([0.1, 1.0, 0.0]))
def test_classify_equals_the_formulas_token_by_token(seed: int, size: int, spam: int, ham: int,
                                                     max_evidence: int, unsure: bool,
                                                     pair_weight: float) -> None:
    rng = random.Random(seed)
    s = ModelSettings(max_evidence=max_evidence, unsure=unsure, pair_weight=pair_weight)
    totals = Counts(spam, ham)
    memo: dict = {}   # type: ignore[type-arg]  # one memo for these totals and settings
    for _ in range(3):
        tokens, hits = _message(rng, size)
        want = reference_classify(tokens, hits, totals, s)
        assert classify(tokens, hits, totals, s) == want       # ==: the same floats exactly
        assert classify(tokens, hits, totals, s, memo) == want


def test_classify_keeps_ties_in_the_order_the_stable_sort_gave() -> None:
    # Equal deviations from different counts, and one token twice with equal deviations
    # (f above and below 0.5): the order of factors and of the sums must not change.
    totals = Counts(10, 10)
    tokens = ["b", "a", "c", "a", "b~1~c"]
    hits = [(9, 1), (1, 9), (9, 1), (9, 1), (1, 9)]
    s = ModelSettings(pair_weight=0.5)
    assert classify(tokens, hits, totals, s) == reference_classify(tokens, hits, totals, s)
    with pytest.raises(ValueError):
        classify(tokens, hits[:-1], totals, s)


class _Stub:
    """A store for Classifier.classify alone: fixed counts per token digest, totals that
    the test changes between messages."""

    def __init__(self) -> None:
        self.counts: dict[bytes, tuple[int, int]] = {}
        self.totals = Counts(0, 0)

    async def lookup(self, model: str, digests: list[bytes]):  # type: ignore[no-untyped-def]
        from postward.classifier.store import Lookup
        return Lookup([self.counts.get(d, (0, 0)) for d in digests], self.totals, Counts(0, 0))

    async def save_signature(self, record: SignatureRecord) -> str:
        return "0" * 24


def test_a_long_lived_classifier_answers_as_a_fresh_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Its memo of evidence per count pair is per training totals: totals that change (a
    global model trained meanwhile, users' own models) never reuse a stale f."""
    rng = random.Random(3)
    stub = _Stub()
    settings_ = ClassifierSettings()
    long_lived = Classifier(stub, settings_, FakeClock())  # type: ignore[arg-type]
    words = [f"word{i}" for i in range(300)]
    for w in words:
        stub.counts[hashlib.blake2b(w.encode(), digest_size=DIGEST_BYTES).digest()] = (
            rng.choice([0, 1, 2, 5, 30]), rng.choice([0, 1, 3, 7, 60]))

    async def main() -> None:
        for i in range(3 * MEMO_TOTALS):
            stub.totals = Counts(100 + i % (MEMO_TOTALS + 3), 200 + 7 * (i % 4))
            message = ("Subject: s\n\n" + " ".join(rng.sample(words, 80))).encode()
            fresh = Classifier(stub, settings_, FakeClock())  # type: ignore[arg-type]
            got = await long_lived.classify(message, "", mode="toe")
            want = await fresh.classify(message, "", mode="toe")
            assert got.verdict == want.verdict and got.headers == want.headers
            assert got.verdict.evidence > 0
        assert 0 < len(long_lived._memos) <= MEMO_TOTALS
    run(main())


def test_the_agent_template_is_split_as_a_shell_would() -> None:
    template = "/usr/lib/dovecot/deliver -d %u -f '%s x' -- %r"
    for _ in range(2):    # the second time from the split template kept
        assert agent_argv(template, "amy", "s@x.test", "r@y.test") == \
            "/usr/lib/dovecot/deliver\t-d\tamy\t-f\ts@x.test x\t--\tr@y.test"
    # Values are put in as they are: never split, never expanded again.
    assert agent_argv(template, "c d", "%u", "%r") == \
        "/usr/lib/dovecot/deliver\t-d\tc d\t-f\t%u x\t--\t%r"
    assert agent_argv("/bin/cat", "u", "s", "r") == "/bin/cat"
    assert agent_argv("lmtp:unix:/run/dovecot/lmtp", "u", "s", "r") == \
        "lmtp:unix:/run/dovecot/lmtp"


# -- the token store through both clients --------------------------------------------------


def _digests(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    return list(dict.fromkeys(hashlib.blake2b(rng.randbytes(8), digest_size=DIGEST_BYTES)
                              .digest() for _ in range(count)))


def _redis_store(url: str, client: str) -> RedisStore:
    s = RedisSettings(url=url, retries=0, timeout=2, connect_timeout=1)
    if client == "fast":
        store = RedisStore.from_settings(s, Metrics("test"))
        assert store.fast is not None
    else:   # as with TLS or Sentinel: redis-py alone
        store = RedisStore(client_from_settings(s), s.key_prefix, Metrics("test"))
        assert store.fast is None
    return store


@pytest.mark.integration
@pytest.mark.parametrize("client", ["fast", "redis-py"])
@pytest.mark.parametrize("cache", [0, 1000])
def test_the_store_reads_and_writes_the_same_through_either_client(redis_server, client: str,
                                                                   cache: int) -> None:  # type: ignore[no-untyped-def]
    r = redis.Redis.from_url(redis_server.url)
    shared, own = _digests(1, 400), _digests(2, 60)

    async def main() -> None:
        store = _redis_store(redis_server.url, client)
        ts = TokenStore(store, 3600, global_cache_entries=cache)
        try:
            for _ in range(3):
                assert await ts.train(GLOBAL, shared, 1, 0) is not None
            assert await ts.train("user:amy", shared[:50] + own, 0, 1) == Counts(0, 1)
            for _ in range(2):    # the second time partly from the cache, if there is one
                amy = await ts.lookup("user:amy", shared[:60] + own[:5] + _digests(3, 5))
                assert amy.hits == [(3, 1)] * 50 + [(3, 0)] * 10 + [(0, 1)] * 5 + \
                    [(0, 0)] * 5
                assert amy.totals == Counts(3, 1) and amy.user_totals == Counts(0, 1)
            assert await ts.totals(GLOBAL) == Counts(3, 0)
            assert await ts.totals("user:nobody") == Counts(0, 0)
            # Redis forgot the scripts (a restart, SCRIPT FLUSH): loaded again, not an error.
            r.script_flush()
            assert (await ts.lookup(GLOBAL, shared[:2])).hits == [(3, 0)] * 2
            r.script_flush()
            record = SignatureRecord("user:bo", SPAM, True, tuple(own))
            sig = await ts.learn_and_sign("user:bo", own, 1, 0, True, record)
            assert await ts.load_signature(sig) == record
            assert 3590 <= r.ttl(f"postward:cls:sig:{sig}") <= 3600
            plain = dataclasses.replace(record, learnt=False)
            sig2 = await ts.save_signature(plain)
            assert await ts.load_signature(sig2.upper()) == plain
            assert 3590 <= r.ttl(f"postward:cls:sig:{sig2}") <= 3600
            await ts.update_signature(sig2, record)
            assert await ts.load_signature(sig2) == record
            assert r.ttl(f"postward:cls:sig:{sig2}") > 0     # the TTL was kept
            assert await ts.load_signature("f" * 24) is None
        finally:
            await store.close()
    run(main())


def test_log_floor_matches_combine() -> None:
    # combine() and classify() share their last step; both floor f and 1 - f at 1e-200.
    s = ModelSettings()
    tokens, hits = ["a", "b"], [(10**6, 0), (0, 10**6)]
    totals = Counts(1, 10**9)
    assert classify(tokens, hits, totals, s) == reference_classify(tokens, hits, totals, s)
    assert math.isfinite(classify(tokens, hits, totals, s).probability)


def _reference_printable(token: str) -> str:
    text = token.encode("ascii", "backslashreplace").decode("ascii")
    return text.replace(",", "\\x2c").replace("\r", "").replace("\n", "")[:60]


@settings(max_examples=300, deadline=None)
@given(token=st.one_of(st.text(max_size=90),
                       st.text(alphabet="ab~,\r\n é\\x", max_size=90)))
def test_factor_tokens_are_printed_as_before(token: str) -> None:
    assert _printable(token) == _reference_printable(token)
