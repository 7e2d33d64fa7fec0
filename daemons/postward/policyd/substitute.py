"""``$$name`` / ``$$(name)`` substitution, exactly as postfwd's devar_item does it.

postfwd replaces the *last* ``$$name`` first (its regex starts with a greedy ``(.*)``), starts
over after each replacement, and stops at the first name the request does not define — so in
the guide's ``blocked using $$DSBL_count dnsbls, INFOL [$$DSBL_text]``, DSBL_text is replaced
and the undefined DSBL_count stays as written. ``$$dnsbltext`` is the DNSBL reasons of the
current rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from postward.policyd import perl

_BARE = re.compile(r"\$\$\s*(\w+)")
_PAREN = re.compile(r"\$\$\s*\((\w+)\)")
# postfwd can loop forever on an undefined $$(name); we stop after this many passes.
_MAX_PASSES = 256


def _last(pattern: re.Pattern[str], val: str, start: int) -> re.Match[str] | None:
    """The last match of ``pattern`` starting at or after ``start``: what postfwd's greedy
    ``(.*)`` in front of it picks. Found from the right, so the cost stays linear."""
    i = val.rfind("$$", start)
    while i >= start:
        if m := pattern.match(val, i):
            return m
        i = val.rfind("$$", start, i + 1)  # "$$$x": the candidate one to the left overlaps
    return None


def uniq(items: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    return [x for x in items if not (x in seen or seen.add(x))]


def devar(val: str, item: str, request: Mapping[str, str], dnsbl_text: Sequence[str]) -> str:
    """The substituted value, or '' when nothing was substituted (postfwd's return)."""
    if not (perl.truthy(val) and perl.truthy(item)) or "$$" not in val:
        return ""
    result = ""
    pos = 0
    for _ in range(_MAX_PASSES):
        m = _last(_BARE, val, pos)
        if m is None:
            m = _last(_PAREN, val, 0)  # a failed //g match resets pos: the next starts at 0
            if m is None:
                break
        pos = len(val)  # the trailing (.*) took the rest of the string
        pre, name, post = val[:m.start()], m.group(1), val[m.end():]
        if name == "dnsbltext":
            val = pre + "; ".join(uniq(dnsbl_text)) + post
        elif name in request:
            val = pre + request[name] + post
        else:
            continue
        result = val
        pos = 0  # assigning to the string resets //g's position
    return result


def escape_for_regex(value: str) -> str:
    """postfwd's escaping of a substituted value used as a regex: everything but - _ @ . word
    characters and white space gets a backslash (so '.' stays a wildcard, as in postfwd)."""
    return re.sub(r"([^-_@.\w\s])", r"\\\1", value)
