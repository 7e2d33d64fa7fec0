"""What the classifier does with a message: classify, decide whether to learn, retrain.

dspam's training modes: TEFT trains every message as what it was classified as; TOE trains
only corrections (the user's "this is spam / not spam"); TUM trains everything until the
user's model has seen 2,500 innocent messages, then only corrections; NOTRAIN never trains
(corrections included). Retraining needs only the X-DSPAM-Signature id: the message's tokens
were kept in Redis under it when it was classified.
"""

from __future__ import annotations

import email.utils
import hashlib
import time
from dataclasses import dataclass

from postward.classifier.model import (
    INNOCENT,
    SPAM,
    UNSURE,
    Counts,
    Evidence,
    ModelSettings,
    Verdict,
    classify,
)
from postward.classifier.settings import ClassifierSettings
from postward.classifier.store import DIGEST_BYTES, GLOBAL, SignatureRecord, TokenStore, user_model
from postward.classifier.tokenizer import TokenizerSettings, tokenize
from postward.core.clock import Clock

TUM_MATURE_INNOCENT = 2500
# Bounds of the classifier's memo of per-count-pair evidence (model.classify's ``memo``): a
# message stream against one model meets a few thousand distinct count pairs (1,000 corpus
# messages: 2,900), ~300 bytes each; one memo per pair of training totals, and totals change
# with every message a user's own model learns, so old ones are dropped wholesale.
MEMO_TOTALS = 8
MEMO_ENTRIES = 20_000
RESULT_NAMES = {SPAM: "Spam", INNOCENT: "Innocent", UNSURE: "Unsure"}


@dataclass(frozen=True)
class Classified:
    verdict: Verdict
    signature: str
    learnt: bool
    headers: list[tuple[str, str]]


@dataclass(frozen=True)
class Retrained:
    changed: bool
    detail: str


def model_settings(s: ClassifierSettings) -> ModelSettings:
    return ModelSettings(robs=s.robs, robx=s.robx, min_dev=s.min_dev,
                         spam_cutoff=s.spam_cutoff, ham_cutoff=s.ham_cutoff, unsure=s.unsure)


def _digests(tokens: list[str]) -> tuple[list[str], list[bytes]]:
    """Tokens with distinct digests (a collision would count one token twice)."""
    # One BLAKE2b object per token is most of the cost; a plain comprehension with the
    # constructor bound locally keeps the rest (~0.7 us per token) near that floor.
    blake2b, size = hashlib.blake2b, DIGEST_BYTES
    digests = [blake2b(t.encode("utf-8", "surrogatepass"), digest_size=size).digest()
               for t in tokens]
    seen = dict(zip(digests, tokens, strict=True))
    if len(seen) == len(tokens):
        return list(tokens), digests
    return list(seen.values()), list(seen.keys())


class Classifier:
    def __init__(self, store: TokenStore, settings: ClassifierSettings, clock: Clock,
                 tokenizer: TokenizerSettings | None = None) -> None:
        self.store = store
        self.settings = settings
        self.model = model_settings(settings)
        self.tokenizer = tokenizer or TokenizerSettings()
        self.clock = clock
        self._memos: dict[Counts, dict[tuple[int, int], Evidence]] = {}

    def _evidence_memo(self, totals: Counts) -> dict[tuple[int, int], Evidence]:
        """The evidence memo for these totals (valid for them and this classifier's model
        settings, which never change: a reload builds a new Classifier)."""
        memo = self._memos.get(totals)
        if memo is None or len(memo) > MEMO_ENTRIES:
            if len(self._memos) >= MEMO_TOTALS:
                self._memos.clear()
            memo = self._memos[totals] = {}
        return memo

    def tokens(self, message: bytes) -> tuple[list[str], list[bytes]]:
        return _digests(tokenize(message, self.tokenizer))

    async def classify(self, message: bytes, user: str, mode: str | None = None,
                       learn: bool = True) -> Classified:
        """Classify for ``user``; learn per the training mode; keep the signature."""
        mode = mode or self.settings.training_mode
        model = user_model(user)
        tokens, digests = self.tokens(message)
        found = await self.store.lookup(model, digests)
        verdict = classify(tokens, found.hits, found.totals, self.model,
                           self._evidence_memo(found.totals))
        filed_as = SPAM if verdict.result == SPAM else INNOCENT
        should_learn = learn and verdict.result != UNSURE and (
            mode == "teft" or (mode == "tum" and found.user_totals.ham < TUM_MATURE_INNOCENT))
        record = SignatureRecord(model, filed_as, should_learn, tuple(digests))
        if should_learn:
            # Learnt and signed in one script call: one round trip, and never one without
            # the other.
            spam, ham = _deltas(filed_as, +1)
            signature = await self.store.learn_and_sign(model, digests, spam, ham,
                                                        self._also_global(model), record)
        else:
            signature = await self.store.save_signature(record)
        return Classified(verdict, signature, should_learn, self.headers(verdict, signature))

    def _also_global(self, model: str) -> bool:
        return self.settings.global_training and model != GLOBAL

    async def _learn(self, model: str, digests: list[bytes], spam: int, ham: int) -> None:
        if self._also_global(model):
            await self.store.train(model, digests, spam, ham, also_global=True)
        else:
            await self.store.train(model, digests, spam, ham)

    async def retrain(self, user: str, label: str, source: str, signature: str | None,
                      message: bytes | None, mode: str | None = None) -> Retrained:
        """A correction (source=error) or a training example (corpus/inoculation)."""
        mode = mode or self.settings.training_mode
        if mode == "notrain":
            return Retrained(False, "training mode notrain: nothing learnt")
        model = user_model(user)
        if source == "error":
            record = await self.store.load_signature(signature or "") if signature else None
            if record is not None:
                return await self._correct(signature or "", record, label)
            if message is None:
                raise LookupError(f"signature {signature!r} not found (expired after "
                                  f"{self.settings.signature_ttl / 86400:g} days?)")
        if message is None:
            raise ValueError("training without a signature needs the message")
        _tokens, digests = self.tokens(message)
        # Inoculation is dspam's "this is certainly spam": learnt with more weight.
        for _ in range(5 if source == "inoculation" else 1):
            await self._learn(model, digests, *_deltas(label, +1))
        return Retrained(True, f"learnt as {label} from the message ({source})")

    async def _correct(self, sig_id: str, record: SignatureRecord, label: str) -> Retrained:
        if record.filed_as == label and record.learnt:
            return Retrained(False, f"already learnt as {label}")
        # Un-learning the old class and learning the new one touch different classes, so one
        # pass over the tokens (one class -1, floored at 0; the other +1) is what two gave.
        spam, ham = _deltas(label, +1)
        if record.learnt:
            old_spam, old_ham = _deltas(record.filed_as, -1)
            spam, ham = spam + old_spam, ham + old_ham
        await self._learn(record.model, list(record.digests), spam, ham)
        await self.store.update_signature(sig_id, SignatureRecord(record.model, label, True,
                                                                  record.digests))
        return Retrained(True, f"relearnt from {record.filed_as} to {label}")

    def headers(self, verdict: Verdict, signature: str) -> list[tuple[str, str]]:
        """dspam's result headers, so the guide's Sieve rule files spam unchanged."""
        factors = ",\n\t".join(f"{_printable(t)}, {f:.5f}" for t, f in verdict.factors)
        now = email.utils.formatdate(self.clock.time(), localtime=False, usegmt=True)
        return [
            ("X-DSPAM-Result", RESULT_NAMES[verdict.result]),
            ("X-DSPAM-Processed", now),
            ("X-DSPAM-Confidence", f"{verdict.confidence:.4f}"),
            ("X-DSPAM-Probability", f"{verdict.probability:.4f}"),
            ("X-DSPAM-Signature", signature),
            ("X-DSPAM-Factors", f"{len(verdict.factors)}" + (f",\n\t{factors}" if factors
                                                             else "")),
        ]


def _deltas(label: str, delta: int) -> tuple[int, int]:
    return (delta, 0) if label == SPAM else (0, delta)


def _printable(token: str) -> str:
    """A token as a header can carry it: ASCII, no commas or line breaks, bounded."""
    if token.isascii() and "," not in token and "\r" not in token and "\n" not in token:
        return token[:60]    # most tokens: what the general path below would give
    text = token.encode("ascii", "backslashreplace").decode("ascii")
    return text.replace(",", "\\x2c").replace("\r", "").replace("\n", "")[:60]


def elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000
