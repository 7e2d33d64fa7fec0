"""The classifier against a real Redis: learning, classifying, dspam's training modes,
retraining from a signature alone, per-user models over the global one, and Redis going away."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path

import pytest

from postward.classifier.filter_client import PROTOCOL
from postward.classifier.handler import Handler, signature_in
from postward.classifier.metrics import ClassifierMetrics
from postward.classifier.service import Classifier
from postward.classifier.settings import ClassifierSettings
from postward.classifier.store import TokenStore
from postward.core.clock import FakeClock
from postward.core.metrics import Metrics
from postward.core.redis_store import RedisStore, StoreUnavailable
from postward.core.settings import RedisSettings
from tests.testbed.net import wait_until

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


def test_global_training_learns_and_corrects_both_models_in_one_pass(redis_server) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        c, store = await _classifier(redis_server.url, global_training=True)
        try:
            await _train(c, "")
            done = await c.classify(NEW_HAM, "gus", mode="teft")
            assert done.learnt and done.verdict.result == "innocent"
            assert (await c.store.totals("user:gus")).ham == 1
            assert (await c.store.totals("global")).ham == len(HAMS) + 1
            fixed = await c.retrain("gus", "spam", "error", done.signature, None)
            assert fixed.changed
            for model, spam, ham in (("user:gus", 1, 0), ("global", len(SPAMS) + 1, len(HAMS))):
                totals = await c.store.totals(model)
                assert (totals.spam, totals.ham) == (spam, ham), model
            _tokens, digests = c.tokens(NEW_HAM)
            found = await c.store.lookup("user:gus", digests)
            user_only = await c.store.lookup("user:nobody", digests)
            # gus's own counts: every token of the message once as spam, never as ham.
            assert {(s - gs, h - gh) for (s, h), (gs, gh)
                    in zip(found.hits, user_only.hits, strict=True)} == {(1, 0)}
        finally:
            await store.close()
    run(main())


def _request(socket_path: str, op: str, message: bytes, **fields: str) -> tuple[int, str]:
    head = "".join(f"{name}: {value}\n" for name, value in fields.items())
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(socket_path)
        s.sendall(f"{PROTOCOL} {op}\n{head}length: {len(message)}\n\n".encode() + message)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1]), reply.decode(errors="replace")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def test_workers_share_the_socket_and_the_models(make_classifierd, redis_server) -> None:  # type: ignore[no-untyped-def]
    daemon = make_classifierd(redis_url=redis_server.url, delivery_agent="/bin/true",
                              extra="workers = 2\n")
    # The supervisor binds the socket (which the fixture waits for) before it forks: poll.
    workers = wait_until(lambda: [w for w in [_children(daemon.process.pid)] if len(w) >= 2],
                         what="two classifierd workers")[0]
    assert len(workers) == 2
    path = str(daemon.socket_path)
    assert oct(daemon.socket_path.stat().st_mode & 0o777) == "0o666"   # socket_mode
    # Connections go to either worker; what one learns, both read (the models are in Redis).
    for spam, ham in zip(SPAMS, HAMS, strict=True):
        assert _request(path, "RETRAIN", spam, user="", **{"class": "spam"},
                        source="corpus")[0] == 200
        assert _request(path, "RETRAIN", ham, user="", **{"class": "innocent"},
                        source="corpus")[0] == 200
    for i in range(8):
        code, text = _request(path, "CLASSIFY", NEW_SPAM if i % 2 else NEW_HAM, user="hal")
        assert code == 200, text
        assert f"result: {'spam' if i % 2 else 'innocent'}" in text, text
    assert daemon.stop() == 0
    assert not daemon.socket_path.exists()   # the supervisor removed its socket
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


async def _cached_classifier(redis_url: str, entries: int = 10_000,
                             **changes) -> tuple[Classifier, RedisStore]:  # type: ignore[no-untyped-def]
    store = RedisStore.from_settings(RedisSettings(url=redis_url, retries=0, timeout=2,
                                                   connect_timeout=1), Metrics("test"))
    settings = _settings(**changes)
    return Classifier(TokenStore(store, settings.signature_ttl, global_cache_entries=entries),
                      settings, FakeClock()), store


def test_the_global_cache_changes_no_verdict(redis_server) -> None:  # type: ignore[no-untyped-def]
    """The same stream for two users, one through a daemon's cache of the global model: the
    same probabilities, while TEFT learns into each user's model and corpus training into the
    global model goes through a third classifier (another process, or MX host)."""
    async def main() -> None:
        admin, s0 = await _classifier(redis_server.url)
        plain, s1 = await _classifier(redis_server.url)
        cached, s2 = await _cached_classifier(redis_server.url)
        cache = cached.store.global_cache
        assert cache is not None
        try:
            await _train(admin, "")
            stream = [NEW_SPAM, NEW_HAM, *SPAMS[:3], *HAMS[:3]] * 2
            again = len(stream) // 2 + 1
            assert stream[again] == NEW_HAM
            for i, message in enumerate(stream):
                if i == again:    # the admin trains the global model meanwhile, on tokens
                    for _ in range(3):    # of the next message, which the cache holds
                        await admin.retrain("", "spam", "corpus", None, NEW_HAM)
                want = await plain.classify(message, "ivy", mode="teft")
                got = await cached.classify(message, "jon", mode="teft")
                assert got.verdict == want.verdict and got.learnt == want.learnt
                assert (await cached.classify(message, "kim", learn=False)).verdict == \
                    (await plain.classify(message, "lee", learn=False)).verdict
            assert cache.hits > 0 and cache.drops == 1
        finally:
            for s in (s0, s1, s2):
                await s.close()
    run(main())


def test_global_training_drops_the_cache_with_every_learnt_message(redis_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        plain, s1 = await _classifier(redis_server.url, global_training=True)
        cached, s2 = await _cached_classifier(redis_server.url, global_training=True)
        cache = cached.store.global_cache
        assert cache is not None
        try:
            await _train(plain, "")
            for message in (NEW_SPAM, NEW_HAM, NEW_SPAM):
                # Both read the same models: the first learns nothing, the second learns
                # into ned's model and the global one.
                want = await plain.classify(message, "ned", learn=False)
                got = await cached.classify(message, "ned", mode="teft")
                assert got.verdict == want.verdict and got.learnt
            assert cache.hits == 0    # each learnt message changed the global model
        finally:
            await s1.close()
            await s2.close()
    run(main())

    # So the daemon keeps no such cache in that mode.
    from postward.classifier.daemon import build_handler
    from postward.core.runtime import Runtime
    from postward.schema import load_config

    async def handlers() -> list[object]:
        caches = []
        for training in ("no", "yes"):
            conf = tmp_path / f"postward-{training}.conf"
            conf.write_text(f"[redis]\nurl = {redis_server.url}\n[classifier]\n"
                            f"global_training = {training}\nglobal_cache_entries = 1234\n")
            config = load_config(conf)
            runtime = Runtime.create(config, "classifierd", serve_metrics=False)
            try:
                handler = build_handler(config, runtime, ClassifierMetrics(runtime.metrics))
                caches.append(handler.classifier.store.global_cache)
            finally:
                await runtime.aclose()
        return caches
    default, with_global_training = run(handlers())
    assert default is not None and default.max_entries == 1234
    assert with_global_training is None
