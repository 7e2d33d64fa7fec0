"""Token counts and signatures in the shared Redis.

Layout (every key under ``[redis] key_prefix``):

* ``cls:tok:<model>`` — a hash: field = the first 6 bytes of BLAKE2b(token), value = one
  integer packing both counts, ``spam * 2**26 + ham``. One field per token keeps a model at one
  Redis entry per token (a third of rspamd's two keys per token), and 48-bit digests collide
  about once in 2**24 pairs of a million-token vocabulary — noise for a statistical filter.
* ``cls:tot:<model>`` — a hash with ``spam`` and ``ham``: messages learnt.
* ``cls:sig:<id>`` — what ``X-DSPAM-Signature: <id>`` refers to: the model, the class the
  message was filed as, whether it was learnt, and its token digests; kept ``signature_ttl``
  (dspam's ``PurgeSignatures``, 14 days), so retraining needs only the header.

Models are ``global`` and ``user:<name>``. Classification reads the user's model and the global
one in one round trip (their counts add up: a user with no training of their own gets the
global model; dspam's "merged" groups). Training writes through one Lua script per model, so
counts never go negative and never tear.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from postward.classifier.model import Counts
from postward.core.redis_store import RedisStore

DIGEST_BYTES = 6
_PACK = 1 << 26
GLOBAL = "global"

# ARGV: spam delta, ham delta, digest...; KEYS: tokens hash, totals hash.
_TRAIN = """
local ds, dh, pack = tonumber(ARGV[1]), tonumber(ARGV[2]), 67108864
for i = 3, #ARGV do
  local v = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  local s = math.max(0, math.floor(v / pack) + ds)
  local h = math.max(0, v % pack + dh)
  if s == 0 and h == 0 then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], string.format('%d', s * pack + h))
  end
end
local ts = math.max(0, tonumber(redis.call('HGET', KEYS[2], 'spam') or '0') + ds)
local th = math.max(0, tonumber(redis.call('HGET', KEYS[2], 'ham') or '0') + dh)
redis.call('HSET', KEYS[2], 'spam', ts, 'ham', th)
return {ts, th}
"""


def digest(token: str) -> bytes:
    return hashlib.blake2b(token.encode("utf-8", "surrogatepass"),
                           digest_size=DIGEST_BYTES).digest()


def user_model(user: str) -> str:
    return f"user:{user.strip().lower()}" if user else GLOBAL


def _unpack(raw: bytes | None) -> tuple[int, int]:
    if not raw:
        return 0, 0
    value = int(raw)
    return value // _PACK, value % _PACK


@dataclass(frozen=True)
class Lookup:
    """Counts for one message's tokens: the user's and the global model's, added."""

    hits: list[tuple[int, int]]
    totals: Counts
    user_totals: Counts


@dataclass(frozen=True)
class SignatureRecord:
    model: str
    filed_as: str            # spam / innocent: what the message was classified as
    learnt: bool             # whether that class was trained into the model
    digests: tuple[bytes, ...]


class TokenStore:
    def __init__(self, store: RedisStore, signature_ttl: float) -> None:
        self.store = store
        self.signature_ttl = int(signature_ttl)
        self._train = store.client.register_script(_TRAIN)

    def _tokens_key(self, model: str) -> str:
        return self.store.key("cls", "tok", model)

    def _totals_key(self, model: str) -> str:
        return self.store.key("cls", "tot", model)

    async def lookup(self, model: str, digests: Sequence[bytes]) -> Lookup:
        """Counts for ``digests`` in ``model`` plus the global model (raises StoreUnavailable)."""
        models = [model] if model == GLOBAL else [model, GLOBAL]

        async def fetch(client):  # type: ignore[no-untyped-def]
            pipe = client.pipeline(transaction=False)
            for m in models:
                if digests:
                    pipe.hmget(self._tokens_key(m), list(digests))
                pipe.hmget(self._totals_key(m), ["spam", "ham"])
            return await pipe.execute()

        replies = await self.store.run("classify_lookup", fetch)
        hits = [(0, 0)] * len(digests)
        spam_total = ham_total = 0
        user_totals = Counts(0, 0)
        i = 0
        for m in models:
            if digests:
                values = replies[i]
                i += 1
                hits = [(a + s, b + h) for (a, b), (s, h) in
                        zip(hits, (_unpack(v) for v in values), strict=True)]
            spam, ham = (int(x or 0) for x in replies[i])
            i += 1
            spam_total += spam
            ham_total += ham
            if m == model:
                user_totals = Counts(spam, ham)
        return Lookup(hits, Counts(spam_total, ham_total), user_totals)

    async def train(self, model: str, digests: Sequence[bytes], spam: int, ham: int) -> Counts:
        """Add (or, with negative deltas, take away) one message's tokens to a class."""
        keys = [self._tokens_key(model), self._totals_key(model)]
        result = await self.store.run(
            "train", lambda c: self._train(keys=keys, args=[spam, ham, *digests], client=c))
        return Counts(int(result[0]), int(result[1]))

    async def totals(self, model: str) -> Counts:
        raw = await self.store.run("totals", lambda c: c.hmget(self._totals_key(model),
                                                               ["spam", "ham"]))
        return Counts(int(raw[0] or 0), int(raw[1] or 0))

    # -- signatures ----------------------------------------------------------------------

    async def save_signature(self, record: SignatureRecord) -> str:
        sig_id = secrets.token_hex(12)
        head = f"1|{record.model}|{record.filed_as}|{int(record.learnt)}|".encode()
        value = head + b"".join(record.digests)
        await self.store.run("signature_save", lambda c: c.set(
            self.store.key("cls", "sig", sig_id), value, ex=self.signature_ttl))
        return sig_id

    async def load_signature(self, sig_id: str) -> SignatureRecord | None:
        if not sig_id or not all(ch in "0123456789abcdef" for ch in sig_id.lower()):
            return None
        raw = await self.store.run("signature_load", lambda c: c.get(
            self.store.key("cls", "sig", sig_id.lower())))
        if not raw:
            return None
        version, model, filed_as, learnt, rest = raw.split(b"|", 4)
        if version != b"1":
            return None
        digests = tuple(rest[i:i + DIGEST_BYTES] for i in range(0, len(rest), DIGEST_BYTES))
        return SignatureRecord(model.decode(), filed_as.decode(), learnt == b"1", digests)

    async def update_signature(self, sig_id: str, record: SignatureRecord) -> None:
        head = f"1|{record.model}|{record.filed_as}|{int(record.learnt)}|".encode()
        value = head + b"".join(record.digests)
        await self.store.run("signature_save", lambda c: c.set(
            self.store.key("cls", "sig", sig_id.lower()), value, keepttl=True))
