"""postfwd's request cache: the answer to a request is kept for a while and given again to the
same request (postfwd: 600 s, keyed on every non-empty attribute but instance and queue_id).

Unlike postfwd, a decision is only kept when it depends on nothing but the request and the rules:
one that ran a rate limit, greylisting, ask(), wait() or quit(), read an lfile:/ltable: list or
a date/time item is never kept. (postfwd turns its cache off when rate limits exist, and keeps
the rest, date/time and live lists included.)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

_NOT_IN_KEY = frozenset({"instance", "queue_id"})

Key = tuple[tuple[str, str], ...]


def cache_key(attrs: Mapping[str, str]) -> Key:
    # A dict comprehension and two pops rather than a generator testing every name: this runs
    # for every request, and a Postfix request has some 30 attributes, half of them empty.
    kept = {k: v for k, v in attrs.items() if v}
    for name in _NOT_IN_KEY:
        kept.pop(name, None)
    return tuple(sorted(kept.items()))


class RequestCache:
    def __init__(self, ttl: float, size: int = 50_000, hits: Any = None) -> None:
        self.ttl = ttl
        self.size = size
        self.hits = hits  # a counter to increment on each hit, if any
        self._entries: OrderedDict[Key, tuple[Any, float]] = OrderedDict()

    def get(self, key: Key, now: float) -> Any | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] < now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        if self.hits is not None:
            self.hits.inc()
        return entry[0]

    def put(self, key: Key, value: Any, now: float) -> None:
        if self.ttl <= 0:
            return
        self._entries[key] = (value, now + self.ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
