"""Token counts and signatures in the shared Redis.

Layout (every key under ``[redis] key_prefix``):

* ``cls:b:<model>:<n>`` — bucket ``n`` of a model's token counts: a hash, field = the token's
  digest (the first 6 bytes of BLAKE2b(token)), value = both counts paired into one integer
  (:func:`pair`). Buckets are what keeps a model small: Redis stores a hash of at most
  ``hash-max-listpack-entries`` (128 by default) fields as one listpack, ~13 bytes per token
  here, where one big hash is a hashtable at ~61 bytes per field.
* ``cls:m:<model>`` — the model's header: ``spam`` and ``ham`` (messages learnt), ``n`` (token
  fields stored) and ``lvl``/``sp``, where its buckets stand (below).
* ``cls:sig:<id>`` — what ``X-DSPAM-Signature: <id>`` refers to: the model, the class the
  message was filed as, whether it was learnt, and its token digests; kept ``signature_ttl``
  (dspam's ``PurgeSignatures``, 14 days), so retraining needs only the header.

The number of buckets grows with the model by linear hashing (Litwin, 1980): a model has
``2**lvl + sp`` buckets; a token goes to bucket ``h mod 2**lvl``, or ``h mod 2**(lvl+1)`` when
that is below ``sp`` (``h``: the digest's first 3 bytes as an integer). Before training adds
tokens, the script splits bucket ``sp`` in two (about ``LOAD`` fields move) until the model
would hold at most ``LOAD`` tokens per bucket on average. So a user's model of a few hundred
tokens is a few small hashes, and the corpus-trained global model of 1.4 M tokens ~44,000 of
them (measured: the fullest held 72 fields). Buckets not yet split in a round hold twice the
average, and the Poisson tail stays well below 128. Past ``MAX_LEVEL`` (2**24 buckets, ~500 M
tokens) buckets only grow: a bucket past 128 fields becomes a hashtable in Redis (and stays
one), which still works, that bucket at ~4x the memory. Raising ``hash-max-listpack-entries``
in redis.conf is not needed and would make each field lookup in a bucket slower. Buckets are
never merged when untraining shrinks a model (it rarely shrinks by much).

The price is Redis CPU: a message's tokens fall into as many buckets, so reading a big model
is one HGET per token inside the lookup script (~3 us each on the 2-core benchmark VM, where
one HMGET of all fields from one hash was ~1 us per field). The client sends all digests as
one argument and gets the counts back as one flat integer array, so it no longer packs or
parses a value per token.

The 6-byte digest: a token shares its digest with one of a 1.4 M-token model's with
probability 1.4e6 / 2**48 = 5e-9, so a message of 1,000 tokens meets another token's counts
about once in 200,000 messages — noise for a statistical filter. Fewer bytes would save 1 byte
per token in the model and in signatures but make that 256x likelier. The signature must hold
every token (retraining un-learns and learns all of them, and a message's tokens cannot be
recomputed safely later: the tokenizer settings may have changed), so its size follows the
tokenizer's token count.

Models are ``global`` and ``user:<name>``. Classification reads the user's model and the global
one in one script call (their counts add up: a user with no training of their own gets the
global model; dspam's "merged" groups). Training writes through one script for all the models
it touches (and the signature, for a message learnt as it is classified), so counts never go
negative and never tear.

The scripts name bucket keys they compute: fine on one Redis and with Sentinel, not on Redis
Cluster (which postward does not support).

Data in the earlier single-hash layout (``cls:tok:<model>``, ``cls:tot:<model>``, signatures
of version 1) is not read: retrain from a corpus (``postward classifier train``).
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from postward.classifier.model import Counts
from postward.core.redis_store import RedisStore

DIGEST_BYTES = 6
LOAD = 32          # tokens per bucket, on average, before a bucket is split
MAX_LEVEL = 24     # the bucket index is taken from the digest's first 3 bytes
MAX_COUNT = (1 << 26) - 1  # per class and token; pair() stays below 2**53 (exact in Lua)
GLOBAL = "global"

# Shared by both scripts: pairing, and which bucket a digest is in.
_LUA_COMMON = f"local D = {DIGEST_BYTES}" + """
local function unpair(v)
  if not v then return 0, 0 end
  local z = tonumber(v)
  local r = math.floor(math.sqrt(z))
  while r * r > z do r = r - 1 end
  while (r + 1) * (r + 1) <= z do r = r + 1 end
  local t = z - r * r
  if t < r then return t, r end
  return r, t - r
end
local function pair(s, h)
  if s >= h then return s * s + s + h end
  return h * h + s
end
local function hash24(str, at)
  local a, b, c = string.byte(str, at, at + 2)
  return (a * 256 + b) * 256 + c
end
-- Calls with many arguments go in slices: Lua's C stack holds ~8,000 values.
local function call_sliced(cmd, key, items)
  local step = 1000
  for i = 1, #items, step do
    redis.call(cmd, key, unpack(items, i, math.min(i + step - 1, #items)))
  end
end
-- The digests of blob (D bytes each) grouped by bucket: bucket -> list of offsets.
local function by_bucket(blob, lvl, sp, dedupe)
  local lo, hi = 2 ^ lvl, 2 ^ (lvl + 1)
  local groups, seen = {}, {}
  for at = 1, #blob - D + 1, D do
    local keep = true
    if dedupe then
      local f = string.sub(blob, at, at + D - 1)
      if seen[f] then keep = false else seen[f] = true end
    end
    if keep then
      local h = hash24(blob, at)
      local k = h % lo
      if k < sp then k = h % hi end
      local g = groups[k]
      if g then g[#g + 1] = at else groups[k] = {at} end
    end
  end
  return groups
end
local function hmget(key, blob, offsets)
  local fields, out = {}, {}
  for j = 1, #offsets do
    fields[#fields + 1] = string.sub(blob, offsets[j], offsets[j] + D - 1)
    if #fields == 1000 or j == #offsets then
      local got = redis.call('HMGET', key, unpack(fields))
      for i = 1, #got do out[#out + 1] = got[i] end
      fields = {}
    end
  end
  return out
end
"""

# KEYS: the models' header keys (user first). ARGV[1]: the digests, joined; ARGV[2..]: each
# model's bucket key prefix. Returns {counts, totals}: counts holds, per digest, the sum over
# the models of its spam and its ham count; totals each model's spam and ham messages.
_LOOKUP = _LUA_COMMON + """
local blob = ARGV[1]
local n = #blob / D
local counts = {}
for i = 1, 2 * n do counts[i] = 0 end
local totals = {}
local function add(i, v)
  local s, h = unpair(v)
  counts[2 * i - 1] = counts[2 * i - 1] + s
  counts[2 * i] = counts[2 * i] + h
end
for m = 1, #KEYS do
  local head = redis.call('HMGET', KEYS[m], 'spam', 'ham', 'n', 'lvl', 'sp')
  totals[#totals + 1] = tonumber(head[1] or '0')
  totals[#totals + 1] = tonumber(head[2] or '0')
  if tonumber(head[3] or '0') > 0 then  -- a model without tokens: nothing to read
    local prefix = ARGV[m + 1]
    local lvl, sp = tonumber(head[4] or '0'), tonumber(head[5] or '0')
    if 2 ^ lvl >= 4 * n then
      -- Far more buckets than tokens (a big model): one HGET per token; grouping by bucket
      -- would only cost Lua tables.
      local lo, hi = 2 ^ lvl, 2 ^ (lvl + 1)
      for i = 1, n do
        local at = i * D - D + 1
        local h = hash24(blob, at)
        local k = h % lo
        if k < sp then k = h % hi end
        local v = redis.call('HGET', prefix .. k, string.sub(blob, at, at + D - 1))
        if v then add(i, v) end
      end
    else
      for k, offsets in pairs(by_bucket(blob, lvl, sp, false)) do
        local got = hmget(prefix .. k, blob, offsets)
        for j = 1, #offsets do
          if got[j] then add((offsets[j] - 1) / D + 1, got[j]) end
        end
      end
    end
  end
end
return {counts, totals}
"""

# KEYS: the header key of each model trained, then (optionally) a signature key.
# ARGV: models, spam delta, ham delta, digests joined, each model's bucket prefix, then with a
# signature key its value and TTL in seconds. Returns the first model's {spam, ham} totals.
_TRAIN = _LUA_COMMON + f"local LOAD, MAX_LEVEL, MAX_COUNT = {LOAD}, {MAX_LEVEL}, {MAX_COUNT}" + """
local models, ds, dh, blob = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
-- Linear hashing: split bucket sp in two (its fields whose next hash bit is set move to
-- bucket sp + 2^lvl); after the last bucket of a round the level goes up.
local function split(prefix, lvl, sp)
  local src, dst = prefix .. sp, prefix .. (sp + 2 ^ lvl)
  local all = redis.call('HGETALL', src)
  local moved, gone, hi = {}, {}, 2 ^ (lvl + 1)
  for j = 1, #all, 2 do
    if hash24(all[j], 1) % hi ~= sp then
      moved[#moved + 1] = all[j]
      moved[#moved + 1] = all[j + 1]
      gone[#gone + 1] = all[j]
    end
  end
  call_sliced('HSET', dst, moved)
  call_sliced('HDEL', src, gone)
  if sp + 1 == 2 ^ lvl then return lvl + 1, 0 end
  return lvl, sp + 1
end
local first
for m = 1, models do
  local key, prefix = KEYS[m], ARGV[4 + m]
  local head = redis.call('HMGET', key, 'spam', 'ham', 'n', 'lvl', 'sp')
  local ts, th = tonumber(head[1] or '0'), tonumber(head[2] or '0')
  local n, lvl, sp = tonumber(head[3] or '0'), tonumber(head[4] or '0'), tonumber(head[5] or '0')
  -- Split before adding, for as many fields as this message could add: a bucket that once
  -- passes 128 fields stays a hashtable in Redis even after a split empties it again.
  local incoming = 0
  if ds > 0 or dh > 0 then incoming = #blob / D end
  while lvl < MAX_LEVEL and n + incoming > LOAD * (2 ^ lvl + sp) do
    lvl, sp = split(prefix, lvl, sp)
  end
  for k, offsets in pairs(by_bucket(blob, lvl, sp, true)) do
    local bucket = prefix .. k
    local got = hmget(bucket, blob, offsets)
    local sets, dels = {}, {}
    for j = 1, #offsets do
      local f = string.sub(blob, offsets[j], offsets[j] + D - 1)
      local s0, h0 = unpair(got[j])
      local s = math.min(MAX_COUNT, math.max(0, s0 + ds))
      local h = math.min(MAX_COUNT, math.max(0, h0 + dh))
      if s == 0 and h == 0 then
        if got[j] then dels[#dels + 1] = f; n = n - 1 end
      elseif s ~= s0 or h ~= h0 then
        sets[#sets + 1] = f
        sets[#sets + 1] = string.format('%d', pair(s, h))
        if not got[j] then n = n + 1 end
      end
    end
    call_sliced('HSET', bucket, sets)
    call_sliced('HDEL', bucket, dels)
  end
  ts, th = math.max(0, ts + ds), math.max(0, th + dh)
  redis.call('HSET', key, 'spam', ts, 'ham', th, 'n', n, 'lvl', lvl, 'sp', sp)
  if not first then first = {ts, th} end
end
if #KEYS > models then
  local value, ttl = ARGV[5 + models], tonumber(ARGV[6 + models])
  if ttl > 0 then
    redis.call('SET', KEYS[models + 1], value, 'EX', ttl)
  else
    redis.call('SET', KEYS[models + 1], value, 'KEEPTTL')
  end
end
return first
"""


def digest(token: str) -> bytes:
    """A token's digest (the service computes them in bulk the same way)."""
    return hashlib.blake2b(token.encode("utf-8", "surrogatepass"),
                           digest_size=DIGEST_BYTES).digest()


def user_model(user: str) -> str:
    return f"user:{user.strip().lower()}" if user else GLOBAL


def pair(spam: int, ham: int) -> int:
    """Both counts in one integer, small while both are (Szudzik's pairing): a token seen once
    is 1 or 2, one byte in a listpack, where ``spam * 2**26 + ham`` took five for any spam."""
    return spam * spam + spam + ham if spam >= ham else ham * ham + spam


def unpair(value: int) -> tuple[int, int]:
    r = math.isqrt(value)
    t = value - r * r
    return (t, r) if t < r else (r, t - r)


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
        self._lookup = store.client.register_script(_LOOKUP)
        self._train = store.client.register_script(_TRAIN)

    def _head_key(self, model: str) -> str:
        return self.store.key("cls", "m", model)

    def _bucket_prefix(self, model: str) -> str:
        return self.store.key("cls", "b", model, "")

    def _signature_key(self, sig_id: str) -> str:
        return self.store.key("cls", "sig", sig_id)

    async def lookup(self, model: str, digests: Sequence[bytes]) -> Lookup:
        """Counts for ``digests`` in ``model`` plus the global model (raises StoreUnavailable)."""
        models = [model] if model == GLOBAL else [model, GLOBAL]
        keys = [self._head_key(m) for m in models]
        args = [b"".join(digests), *(self._bucket_prefix(m) for m in models)]
        reply = await self.store.run("classify_lookup", lambda c: self._lookup(
            keys=keys, args=args, client=c))
        counts, totals = reply
        it = iter(counts)
        return Lookup(list(zip(it, it, strict=True)),
                      Counts(sum(totals[0::2]), sum(totals[1::2])),
                      Counts(totals[0], totals[1]))

    async def train(self, model: str, digests: Sequence[bytes], spam: int, ham: int,
                    also_global: bool = False) -> Counts:
        """Add (or, with negative deltas, take away) one message's tokens to a class, in
        ``model`` and with ``also_global`` in the global model too."""
        keys, args = self._train_call(model, digests, spam, ham, also_global)
        result = await self.store.run("train", lambda c: self._train(keys=keys, args=args,
                                                                     client=c))
        return Counts(int(result[0]), int(result[1]))

    async def learn_and_sign(self, model: str, digests: Sequence[bytes], spam: int, ham: int,
                             also_global: bool, record: SignatureRecord) -> str:
        """Train a message as it is classified and keep its signature: one script call, so
        a message is never learnt without the signature that lets the user correct it."""
        sig_id = secrets.token_hex(12)
        keys, args = self._train_call(model, digests, spam, ham, also_global)
        keys.append(self._signature_key(sig_id))
        args += [_signature_value(record), self.signature_ttl]
        await self.store.run("train", lambda c: self._train(keys=keys, args=args, client=c))
        return sig_id

    def _train_call(self, model: str, digests: Sequence[bytes], spam: int, ham: int,
                    also_global: bool) -> tuple[list[str], list[object]]:
        models = [model, GLOBAL] if also_global and model != GLOBAL else [model]
        keys = [self._head_key(m) for m in models]
        args: list[object] = [len(models), spam, ham, b"".join(digests),
                              *(self._bucket_prefix(m) for m in models)]
        return keys, args

    async def totals(self, model: str) -> Counts:
        raw = await self.store.run("totals", lambda c: c.hmget(self._head_key(model),
                                                               ["spam", "ham"]))
        return Counts(int(raw[0] or 0), int(raw[1] or 0))

    # -- signatures ----------------------------------------------------------------------

    async def save_signature(self, record: SignatureRecord) -> str:
        sig_id = secrets.token_hex(12)
        await self.store.run("signature_save", lambda c: c.set(
            self._signature_key(sig_id), _signature_value(record), ex=self.signature_ttl))
        return sig_id

    async def load_signature(self, sig_id: str) -> SignatureRecord | None:
        if not sig_id or not all(ch in "0123456789abcdef" for ch in sig_id.lower()):
            return None
        raw = await self.store.run("signature_load", lambda c: c.get(
            self._signature_key(sig_id.lower())))
        if not raw:
            return None
        version, model, filed_as, learnt, rest = raw.split(b"|", 4)
        if version != _SIGNATURE_VERSION or len(rest) % DIGEST_BYTES:
            return None
        digests = tuple(rest[i:i + DIGEST_BYTES] for i in range(0, len(rest), DIGEST_BYTES))
        return SignatureRecord(model.decode(), filed_as.decode(), learnt == b"1", digests)

    async def update_signature(self, sig_id: str, record: SignatureRecord) -> None:
        await self.store.run("signature_save", lambda c: c.set(
            self._signature_key(sig_id.lower()), _signature_value(record), keepttl=True))


# "2": the bucketed layout's signatures. A "1" signature names counts in the old single-hash
# layout, which this one does not read; such a signature is treated as expired.
_SIGNATURE_VERSION = b"2"


def _signature_value(record: SignatureRecord) -> bytes:
    head = b"|".join([_SIGNATURE_VERSION, record.model.encode(), record.filed_as.encode(),
                      b"1" if record.learnt else b"0", b""])
    return head + b"".join(record.digests)
