"""Postfix list parameters (restriction lists, milter lists) as items, for telling an admin
what replacing one of them changes.

A snippet replaces a whole list (``postconf -e`` sets the whole value). When the admin's list
was not the default, the difference is spelled out item by item: which item is the same one
under another spelling (postfwd's ``check_policy_service inet:127.0.0.1:10040`` and the
snippet's ``check_policy_service $postward_policy_service``), which moved to another list and
which is gone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# The lists postward's snippets set, and how their items are formed.
LIST_PARAMS = {
    "smtpd_client_restrictions": "restrictions",
    "smtpd_data_restrictions": "restrictions",
    "smtpd_milters": "milters",
    "non_smtpd_milters": "milters",
}

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_REFERENCE = re.compile(r"\$(?:\{(\w+)\}|\((\w+)\)|(\w+))")


def tokens(value: str) -> list[str]:
    """Whitespace- or comma-separated words; ``{ ... }`` (Postfix 3 grouping) is one word."""
    words: list[str] = []
    depth, current = 0, ""
    for char in value:
        if char == "{":
            depth += 1
        elif char == "}":
            depth = max(depth - 1, 0)
        if depth == 0 and (char.isspace() or char == ","):
            if current:
                words.append(current)
            current = ""
        else:
            current += char
    if current:
        words.append(current)
    return words


def items(value: str, kind: str) -> list[str]:
    """The list's entries: one per milter; for restrictions a restriction with its arguments
    (``check_client_access pcre:/etc/postfix/x``, ``reject_rbl_client zen.spamhaus.org``)."""
    words = tokens(value)
    if kind == "milters":
        return words
    grouped: list[str] = []
    for word in words:
        if grouped and not _NAME.fullmatch(word):
            grouped[-1] = f"{grouped[-1]} {word}"
        else:
            grouped.append(word)
    return grouped


def expand(value: str, params: Mapping[str, str], depth: int = 10) -> str:
    """``$name``, ``${name}`` and ``$(name)`` replaced by ``params`` (others left as they are)."""
    for _ in range(depth):
        expanded = _REFERENCE.sub(lambda m: params.get(next(g for g in m.groups() if g),
                                                       m.group(0)), value)
        if expanded == value:
            break
        value = expanded
    return value


def contains(current: str, wanted: str, kind: str) -> bool:
    """Whether ``current`` already has every item of ``wanted``, in order (written alike)."""
    remaining = iter(items(current, kind))
    return all(any(item == have for have in remaining) for item in items(wanted, kind))


def replacement(old: str, new: str, kind: str, params: Mapping[str, str],
                elsewhere: Mapping[str, str]) -> list[str]:
    """What replacing list ``old`` by ``new`` means, one line per item that changes.

    ``params`` expand ``$references`` for comparing (the values postward sets); ``elsewhere``
    are the other lists postward sets (name -> value), where a dropped item may reappear.
    """
    new_items = items(new, kind)
    new_expanded = [expand(i, params) for i in new_items]
    lines = []
    for item in items(old, kind):
        if item in new_items:
            continue
        same = expand(item, params)
        if same in new_expanded:
            twin = new_items[new_expanded.index(same)]
            spelled = ", ".join(f"{word} = {expand(word, params)}" for word in tokens(twin)
                                if word not in tokens(item))
            lines.append(f"{item} is now {twin} (the same: {spelled})")
            continue
        moved = [name for name, value in elsewhere.items()
                 if same in (expand(i, params) for i in items(value, kind))]
        where = f"moved to {', '.join(moved)}" if moved else "no longer in it"
        lines.append(f"{item}: {where}")
    old_expanded = {expand(i, params) for i in items(old, kind)}
    lines += [f"{item}: added" for item, same in zip(new_items, new_expanded, strict=True)
              if same not in old_expanded]
    return lines
