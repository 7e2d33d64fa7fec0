"""``lfile:`` and ``ltable:`` lists: read when a rule uses them, again whenever the file changes
(postfwd's live lists). A list that cannot be read is empty and logged, as postfwd does."""

from __future__ import annotations

import os

from postward.core.logs import get_log
from postward.policyd.ruleset import Cond, ListError, read_list

log = get_log("policyd.lists")


class LiveLists:
    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, str], tuple[float, list[Cond]]] = {}

    def read(self, kind: str, cmp: str, path: str) -> list[Cond]:
        key = (kind, cmp, path)
        try:
            mtime = os.stat(path).st_mtime
        except OSError as e:
            log.warning("live_list_unreadable", list=f"{kind}:{path}", error=e.strerror)
            return []
        cached = self._cache.get(key)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            conds = read_list(kind.replace("l", "", 1), cmp, path)
        except ListError as e:
            log.warning("live_list_unreadable", list=f"{kind}:{path}", error=str(e))
            return []
        self._cache[key] = (mtime, conds)
        return conds
