"""Counters for rate(), size() and rcpt(): in Redis, so a limit holds across every MX host on
the same Redis; in memory for the one-shot stdin mode (one process, as postfwd keeps them)."""

from __future__ import annotations

from postward.core.redis_store import RedisStore

# KEYS[1] the counter; ARGV amount, maximum, window (s), now (s). postfwd's rate object:
# start or renew the window, else add unless that passes the maximum. Returns the count the
# request brings; over the maximum means exceeded.
_LUA = """
local count = tonumber(redis.call('HGET', KEYS[1], 'count'))
local deadline = tonumber(redis.call('HGET', KEYS[1], 'until'))
local amount, maximum, window, now =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if count == nil or deadline == nil or now > deadline then
  redis.call('HSET', KEYS[1], 'count', amount, 'until', now + window)
  redis.call('EXPIRE', KEYS[1], window + 60)
  return amount
end
local total = count + amount
if total <= maximum then
  redis.call('HSET', KEYS[1], 'count', total)
end
return total
"""


class MemoryRates:
    def __init__(self) -> None:
        self._rates: dict[str, tuple[int, float]] = {}

    async def add(self, key: str, amount: int, maximum: int, ttl: int, now: float) -> int:
        entry = self._rates.get(key)
        if entry is None or now > entry[1]:
            self._rates[key] = (amount, now + ttl)
            return amount
        total = entry[0] + amount
        if total <= maximum:
            self._rates[key] = (total, entry[1])
        return total


class RedisRates:
    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self._script = store.client.register_script(_LUA)

    async def add(self, key: str, amount: int, maximum: int, ttl: int, now: float) -> int:
        redis_key = self.store.key("rate", key)
        return int(await self.store.run(
            "rate_limit",
            lambda c: self._script(keys=[redis_key], args=[amount, maximum, ttl, int(now)],
                                   client=c)))
