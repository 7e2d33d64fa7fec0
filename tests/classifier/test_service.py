"""The classifier against a real Redis: learning, classifying, dspam's training modes,
retraining from a signature alone, per-user models over the global one, and Redis going away."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from postward.classifier.handler import Handler, signature_in
from postward.classifier.metrics import ClassifierMetrics
from postward.classifier.service import Classifier
from postward.classifier.settings import ClassifierSettings
from postward.classifier.store import TokenStore
from postward.core.clock import FakeClock
from postward.core.metrics import Metrics
from postward.core.redis_store import RedisStore, StoreUnavailable
from postward.core.settings import RedisSettings

pytestmark = pytest.mark.integration

SPAMS = [f"Subject: cheap meds {i}\n\nBuy cheap viagra pills now, best price offer {i}, "
         f"click http://pills{i % 3}.example.com/buy\n".encode() for i in range(12)]
HAMS = [f"Subject: meeting notes {i}\n\nHi team, the project meeting moved to Tuesday; "
        f"agenda and minutes attached {i}. Regards, Alice\n".encode() for i in range(12)]
NEW_SPAM = b"Subject: best price\n\nCheap pills, viagra offer, click now http://pills1.example.com\n"
NEW_HAM = b"Subject: agenda\n\nHi team, the meeting agenda for Tuesday. Regards\n"


def _settings(**changes) -> ClassifierSettings:  # type: ignore[no-untyped-def]
    return dataclasses.replace(ClassifierSettings(), **changes)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def _classifier(redis_url: str, **changes) -> tuple[Classifier, RedisStore]:  # type: ignore[no-untyped-def]
    metrics = Metrics("test")
    store = RedisStore.from_settings(RedisSettings(url=redis_url, retries=0, timeout=0.3,
                                                   connect_timeout=0.3), metrics)
    settings = _settings(**changes)
    return Classifier(TokenStore(store, settings.signature_ttl), settings, FakeClock()), store


async def _train(c: Classifier, user: str) -> None:
    for spam, ham in zip(SPAMS, HAMS, strict=True):
        await c.retrain(user, "spam", "corpus", None, spam, mode="teft")
        await c.retrain(user, "innocent", "corpus", None, ham, mode="teft")


def test_learns_and_classifies_with_dspam_headers(redis_server) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        c, store = await _classifier(redis_server.url)
        try:
            await _train(c, "")           # the global model
            spam = await c.classify(NEW_SPAM, "bob@example.test", mode="toe")
            ham = await c.classify(NEW_HAM, "bob@example.test", mode="toe")
            assert (spam.verdict.result, ham.verdict.result) == ("spam", "innocent")
            names = [n for n, _v in spam.headers]
            assert names == ["X-DSPAM-Result", "X-DSPAM-Processed", "X-DSPAM-Confidence",
                             "X-DSPAM-Probability", "X-DSPAM-Signature", "X-DSPAM-Factors"]
            assert dict(spam.headers)["X-DSPAM-Result"] == "Spam"
            assert "viagra" in dict(spam.headers)["X-DSPAM-Factors"]
            assert not spam.learnt          # TOE: nothing learnt on arrival
        finally:
            await store.close()
    run(main())


def test_teft_learns_every_message_and_notrain_none(redis_server) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        c, store = await _classifier(redis_server.url)
        try:
            await _train(c, "")
            before = await c.store.totals("user:carol")
            done = await c.classify(NEW_SPAM, "carol", mode="teft")
            assert done.learnt and (await c.store.totals("user:carol")).spam == before.spam + 1
            done = await c.classify(NEW_SPAM, "carol", mode="notrain")
            assert not done.learnt and (await c.store.totals("user:carol")).spam == 1
        finally:
            await store.close()
    run(main())


def test_retraining_from_the_signature_alone_moves_the_counts(redis_server) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        c, store = await _classifier(redis_server.url)
        try:
            await _train(c, "")
            first = await c.classify(NEW_HAM, "dave", mode="teft")
            assert first.verdict.result == "innocent"
            assert (await c.store.totals("user:dave")).ham == 1
            # The user says: this was spam. Only the signature id is given.
            done = await c.retrain("dave", "spam", "error", first.signature, None)
            assert done.changed, done.detail
            totals = await c.store.totals("user:dave")
            assert (totals.spam, totals.ham) == (1, 0)     # un-learnt as ham, learnt as spam
            again = await c.retrain("dave", "spam", "error", first.signature, None)
            assert not again.changed                        # idempotent
            with pytest.raises(LookupError):
                await c.retrain("dave", "spam", "error", "0123abcd", None)
        finally:
            await store.close()
    run(main())


def test_a_users_own_training_outweighs_the_global_model(redis_server) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        c, store = await _classifier(redis_server.url)
        try:
            await _train(c, "")
            # erin loves pill offers: her own corrections, many times.
            for _ in range(30):
                await c.retrain("erin", "innocent", "corpus", None, NEW_SPAM, mode="teft")
            assert (await c.classify(NEW_SPAM, "erin", mode="toe")).verdict.result == "innocent"
            assert (await c.classify(NEW_SPAM, "frank", mode="toe")).verdict.result == "spam"
        finally:
            await store.close()
    run(main())


def test_redis_down_is_store_unavailable_and_a_451_reply(redis_server) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        c, store = await _classifier(redis_server.url)
        redis_server.stop()
        try:
            with pytest.raises(StoreUnavailable):
                await c.classify(NEW_SPAM, "bob", mode="teft")
            handler = Handler(c, c.settings, ClassifierMetrics(Metrics("t2")))
            reply = await handler.handle("PROCESS", [("user", "bob")], NEW_SPAM)
            assert reply.code == 451
        finally:
            await store.close()
    run(main())


def test_signature_found_in_lf_and_crlf_messages() -> None:
    assert signature_in(b"X-DSPAM-Signature: 0abc12\nSubject: x\n\nbody") == "0abc12"
    assert signature_in(b"Subject: x\r\nX-DSPAM-Signature: ff00\r\n\r\nbody") == "ff00"
    assert signature_in(b"Subject: x\n\nX-DSPAM-Signature: ff00\n") is None
