"""Token counts and signatures in the shared Redis.

Layout (every key under ``[redis] key_prefix``):

* ``cls:b:<model>:<n>`` — bucket ``n`` of a model's token counts: a hash, field = the token's
  digest (the first 6 bytes of BLAKE2b(token)), value = both counts paired into one integer
  (:func:`pair`). Buckets are what keeps a model small: Redis stores a hash of at most
  ``hash-max-listpack-entries`` (128 by default) fields as one listpack, ~13 bytes per token
  here, where one big hash is a hashtable at ~61 bytes per field.
* ``cls:m:<model>`` — the model's header: ``spam`` and ``ham`` (messages learnt), ``n`` (token
  fields stored), ``lvl``/``sp``, where its buckets stand (below), and ``gen``, its generation,
  changed by every training script (what :class:`GlobalCountsCache` relies on).
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
one in one script call, the latter partly from :class:`GlobalCountsCache` in the daemon (their
counts add up: a user with no training of their own gets the global model; dspam's "merged"
groups). Training writes through one script for all the models
it touches (and the signature, for a message learnt as it is classified), so counts never go
negative and never tear.

The scripts name bucket keys they compute: fine on one Redis and with Sentinel, not on Redis
Cluster (which postward does not support).

Data in the earlier single-hash layout (``cls:tok:<model>``, ``cls:tot:<model>``, signatures
of version 1) is not read: retrain from a corpus (``postward classifier train``).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import is_
from typing import cast

from postward.classifier.model import Counts
from postward.core.redis_store import RedisStore
from postward.core.resp import Arg, Script

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

# KEYS: the models' header keys (user first, the global model last). ARGV[1]: the digests,
# joined; ARGV[2..#KEYS+1]: each model's bucket key prefix; then the generation of the last
# model that the caller's cache holds ('' for none) and the digests, joined, the cache does not
# hold. Returns {counts of each model, totals, generation, subset}: a model's counts hold a
# spam and a ham count per digest read ({} for a model without tokens); the last model reads
# only the digests the cache lacks (subset = 1) when the generations are equal, else all of
# them (subset = 0). totals: each model's spam and ham messages; generation: the last model's
# ('' when it has none).
_LOOKUP = _LUA_COMMON + """
local function read(prefix, head, blob)
  local n = #blob / D
  if n == 0 or tonumber(head[3] or '0') == 0 then return {} end  -- no tokens: nothing to read
  local counts = {}
  for i = 1, 2 * n do counts[i] = 0 end
  local function set(i, v)
    counts[2 * i - 1], counts[2 * i] = unpair(v)
  end
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
      if v then set(i, v) end
    end
  else
    for k, offsets in pairs(by_bucket(blob, lvl, sp, false)) do
      local got = hmget(prefix .. k, blob, offsets)
      for j = 1, #offsets do
        if got[j] then set((offsets[j] - 1) / D + 1, got[j]) end
      end
    end
  end
  return counts
end
local models = #KEYS
local cached_gen, missing = ARGV[models + 2], ARGV[models + 3]
local out, totals, gen, subset = {}, {}, '', 0
for m = 1, models do
  local head = redis.call('HMGET', KEYS[m], 'spam', 'ham', 'n', 'lvl', 'sp', 'gen')
  totals[#totals + 1] = tonumber(head[1] or '0')
  totals[#totals + 1] = tonumber(head[2] or '0')
  local blob = ARGV[1]
  if m == models then
    gen = head[6] or ''
    if gen ~= '' and gen == cached_gen then blob, subset = missing, 1 end
  end
  out[m] = read(ARGV[m + 1], head, blob)
end
out[models + 1] = totals
out[models + 2] = gen
out[models + 3] = subset
return out
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
-- A model's generation changes with every change to it (see GlobalCountsCache). A new
-- model (or one trained before generations existed) starts from the clock in microseconds,
-- so a model deleted and trained anew never repeats a generation its old self had.
local function next_generation(g)
  if g then return string.format('%d', tonumber(g) + 1) end
  local t = redis.call('TIME')
  return string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2]))
end
local first
for m = 1, models do
  local key, prefix = KEYS[m], ARGV[4 + m]
  local head = redis.call('HMGET', key, 'spam', 'ham', 'n', 'lvl', 'sp', 'gen')
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
  redis.call('HSET', key, 'spam', ts, 'ham', th, 'n', n, 'lvl', lvl, 'sp', sp,
             'gen', next_generation(head[6]))
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


_ZERO = (0, 0)
# Shared tuples for the small counts most tokens have, so a cache entry rarely holds its own.
_SMALL = tuple((spam, ham) for spam in range(16) for ham in range(16))
_SHARED = {p: p for p in _SMALL}


class GlobalCountsCache:
    """This process's copy of some of the global model's counts (digest -> (spam, ham),
    tokens the model lacks included as (0, 0)), all of one generation of the model.

    The global model changes only when it is trained (``postward classifier train --global``,
    corrections and corpus training through the global model, or every learnt message with
    ``global_training = yes``), while a user's model changes with each message it learns. So
    the lookup script reads the user's model in full and, from the global model, only the
    digests missing here, provided the model's generation (``gen`` in its header, changed by
    every training script in the same atomic call) still equals the one these counts were
    read at; when it differs, the script reads every digest from the global model and the
    cache is emptied and refilled at the new generation.

    What that guarantees: a lookup's global counts, cached or read, and its totals all come
    from the same state of the global model, the one current when its script ran, on any
    number of processes and hosts sharing the Redis; the answer is exactly what it would be
    without the cache. It relies on every change to the model going through the training
    script (deleting the model's keys by hand and training it anew is fine: a new model's
    generation starts from the Redis clock in microseconds, so it does not repeat an old one;
    a model without a generation, e.g. just deleted, is not cached). Not covered: a Redis
    clock that goes backwards across a delete, and an older copy of the model restored from a
    backup and then trained to the generation a process last saw; reload the daemons after a
    restore (SIGHUP starts each cache empty).

    Bounded to ``max_entries``: past it, the older half (in insertion order) is dropped,
    which costs one copy of the newer half per ``max_entries / 2`` insertions. An entry takes
    ~80-100 bytes of Python memory (tracemalloc: the 6-byte digest object and the dict's slot;
    the count pair is a shared tuple for counts below 16): 500,000 entries ~45 MB per process,
    ~20 MB more while the older half is dropped.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.generation: bytes | None = None   # the model's generation the counts are of
        self.counts: dict[bytes, tuple[int, int]] = {}
        self.hits = 0          # digests answered from the cache
        self.misses = 0        # digests read from Redis
        self.drops = 0         # times the generation changed and the counts were dropped

    def known(self, digests: Sequence[bytes]) -> tuple[list[tuple[int, int] | None],
                                                       list[bytes]]:
        """The cached counts of ``digests`` (None where unknown) and the digests missing."""
        # map/compress: C loops over the ~400 digests of a message, not Python bytecode.
        found = list(map(self.counts.get, digests))
        return found, list(compress(digests, map(is_, found, repeat(None))))

    def update(self, generation: bytes, digests: Sequence[bytes],
               pairs: Sequence[tuple[int, int]]) -> None:
        """Counts read at ``generation``: (spam, ham) per digest, best the shared tuples of
        :func:`_pairs` (``shared=True``)."""
        if generation != self.generation:
            if self.counts:
                self.drops += 1
            self.counts = {}
            self.generation = generation or None
        if self.generation is None:
            return    # a model without a generation cannot be told apart from its successor
        counts = self.counts
        counts.update(zip(digests, pairs, strict=True))
        if len(counts) > self.max_entries:
            keep = self.max_entries // 2
            self.counts = dict(itertools.islice(counts.items(), len(counts) - keep, None))


class TokenStore:
    def __init__(self, store: RedisStore, signature_ttl: float,
                 global_cache_entries: int = 0) -> None:
        """``global_cache_entries``: bound of this process's :class:`GlobalCountsCache`
        (0: no cache, every lookup reads the global model's counts from Redis)."""
        self.store = store
        self.signature_ttl = int(signature_ttl)
        # Run through RedisStore.evalsha/command: its pipelined hiredis client where the
        # settings allow one (~150 us of CPU less per call than redis-py), else redis-py.
        self._lookup = Script(_LOOKUP)
        self._train = Script(_TRAIN)
        self.global_cache = (GlobalCountsCache(global_cache_entries)
                             if global_cache_entries > 0 else None)

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
        cache = self.global_cache
        # Taken before the call: another lookup may replace the cache while this one waits.
        known, missing = cache.known(digests) if cache else ([], [])
        sent_generation = cache.generation if cache else None
        args = [b"".join(digests), *(self._bucket_prefix(m) for m in models),
                sent_generation or b"", b"".join(missing)]
        reply = await self.store.evalsha("classify_lookup", self._lookup, keys, args)
        *per_model, totals, generation, subset = reply
        global_flat = per_model[-1]
        n = len(digests)
        if cache is not None and subset:    # the cache's generation was the model's
            cache.hits += n - len(missing)
            cache.misses += len(missing)
            if missing:
                fresh = _pairs(global_flat, len(missing), shared=True)
                cache.update(generation, missing, fresh)
                # Each digest's cached counts, or the counts just read where there were none.
                hits = list(map(dict(zip(missing, fresh, strict=True)).get, digests, known))
            else:
                hits = cast(list[tuple[int, int]], known)    # no None in it
        else:
            hits = _pairs(global_flat, n, shared=cache is not None)
            if cache is not None:
                cache.misses += n
                cache.update(generation, digests, hits)
        if len(per_model) == 2 and per_model[0]:    # the user's model, when it has tokens
            user = iter(per_model[0])
            hits = [(s + us, h + uh) for (s, h), us, uh in zip(hits, user, user, strict=True)]
        return Lookup(hits, Counts(sum(totals[0::2]), sum(totals[1::2])),
                      Counts(totals[0], totals[1]))

    async def train(self, model: str, digests: Sequence[bytes], spam: int, ham: int,
                    also_global: bool = False) -> Counts:
        """Add (or, with negative deltas, take away) one message's tokens to a class, in
        ``model`` and with ``also_global`` in the global model too."""
        keys, args = self._train_call(model, digests, spam, ham, also_global)
        result = await self.store.evalsha("train", self._train, keys, args)
        return Counts(int(result[0]), int(result[1]))

    async def learn_and_sign(self, model: str, digests: Sequence[bytes], spam: int, ham: int,
                             also_global: bool, record: SignatureRecord) -> str:
        """Train a message as it is classified and keep its signature: one script call, so
        a message is never learnt without the signature that lets the user correct it."""
        sig_id = secrets.token_hex(12)
        keys, args = self._train_call(model, digests, spam, ham, also_global)
        keys.append(self._signature_key(sig_id))
        args += [_signature_value(record), self.signature_ttl]
        await self.store.evalsha("train", self._train, keys, args)
        return sig_id

    def _train_call(self, model: str, digests: Sequence[bytes], spam: int, ham: int,
                    also_global: bool) -> tuple[list[str], list[Arg]]:
        models = [model, GLOBAL] if also_global and model != GLOBAL else [model]
        keys = [self._head_key(m) for m in models]
        args: list[Arg] = [len(models), spam, ham, b"".join(digests),
                           *(self._bucket_prefix(m) for m in models)]
        return keys, args

    async def totals(self, model: str) -> Counts:
        raw = await self.store.command("totals", "HMGET", self._head_key(model), "spam", "ham")
        return Counts(int(raw[0] or 0), int(raw[1] or 0))

    # -- signatures ----------------------------------------------------------------------

    async def save_signature(self, record: SignatureRecord) -> str:
        sig_id = secrets.token_hex(12)
        await self.store.command("signature_save", "SET", self._signature_key(sig_id),
                                 _signature_value(record), "EX", self.signature_ttl)
        return sig_id

    async def load_signature(self, sig_id: str) -> SignatureRecord | None:
        if not sig_id or not all(ch in "0123456789abcdef" for ch in sig_id.lower()):
            return None
        raw = await self.store.command("signature_load", "GET",
                                       self._signature_key(sig_id.lower()))
        if not raw:
            return None
        version, model, filed_as, learnt, rest = raw.split(b"|", 4)
        if version != _SIGNATURE_VERSION or len(rest) % DIGEST_BYTES:
            return None
        digests = tuple(rest[i:i + DIGEST_BYTES] for i in range(0, len(rest), DIGEST_BYTES))
        return SignatureRecord(model.decode(), filed_as.decode(), learnt == b"1", digests)

    async def update_signature(self, sig_id: str, record: SignatureRecord) -> None:
        await self.store.command("signature_save", "SET", self._signature_key(sig_id.lower()),
                                 _signature_value(record), "KEEPTTL")


def _pairs(flat: Sequence[int], n: int, shared: bool = False) -> list[tuple[int, int]]:
    """Flat spam, ham counts as pairs; an empty reply (a model without tokens) as zeros.
    ``shared``: the small counts most tokens have as shared tuples (:data:`_SMALL`), for the
    global cache, so that it rarely holds a tuple of its own."""
    if not flat:
        return [_ZERO] * n
    it = iter(flat)
    pairs = list(zip(it, it, strict=True))
    return list(map(_SHARED.get, pairs, pairs)) if shared else pairs


# "2": the bucketed layout's signatures. A "1" signature names counts in the old single-hash
# layout, which this one does not read; such a signature is treated as expired.
_SIGNATURE_VERSION = b"2"


def _signature_value(record: SignatureRecord) -> bytes:
    head = b"|".join([_SIGNATURE_VERSION, record.model.encode(), record.filed_as.encode(),
                      b"1" if record.learnt else b"0", b""])
    return head + b"".join(record.digests)
