"""Postfix list parameters (restriction lists, milter lists) as items, and how postward's
entries are merged into an admin's list.

A snippet's list (``smtpd_client_restrictions = permit_sasl_authenticated check_policy_service
$postward_policy_service``) holds *postward's entries* (those that name a ``postward_*``
parameter) and the snippet's own *guards* before them (``permit_sasl_authenticated``: logged-in
clients skip postward's check). :func:`merge` puts postward's entries into the admin's list
without removing anything of the admin's:

- an entry of the admin's that is postward's under another spelling (postfwd's
  ``check_policy_service inet:127.0.0.1:10040`` when ``$postward_policy_service`` is that
  address, the guide's FILTER map, OpenDKIM's milter) is respelled in place;
- a missing entry goes at the end of the list: after every entry of the admin's, so the
  admin's whitelists and cheap rejections still come first, and before a final unconditional
  ``permit`` (nothing after it is evaluated), with the snippet's guards the list lacks just
  before it. A restriction list that ends in an unconditional ``reject`` or ``defer`` is left
  alone: an entry after it is never reached, and one before it could let clients through.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

# The lists postward's snippets set or may find its entries in, and how their items are formed.
# A FILTER or a policy service acts from any smtpd restriction list, so postward's restriction
# entries are looked for in all of them; a milter list only in itself.
LIST_PARAMS = {
    "smtpd_client_restrictions": "restrictions",
    "smtpd_helo_restrictions": "restrictions",
    "smtpd_sender_restrictions": "restrictions",
    "smtpd_relay_restrictions": "restrictions",
    "smtpd_recipient_restrictions": "restrictions",
    "smtpd_data_restrictions": "restrictions",
    "smtpd_end_of_data_restrictions": "restrictions",
    "smtpd_milters": "milters",
    "non_smtpd_milters": "milters",
}
RESTRICTION_LISTS = tuple(n for n, kind in LIST_PARAMS.items() if kind == "restrictions")

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_REFERENCE = re.compile(r"\$(?:\{(\w+)\}|\((\w+)\)|(\w+))")
# The first word of a Postfix 3 group: { inet:host:port, timeout=10s } -> inet:host:port
_GROUP_HEAD = re.compile(r"(\{\s*)([^\s,{}]+)")
_GROUP = re.compile(r"\{\s*([^\s,{}]+)[^{}]*\}")


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


def join(entries: Sequence[str], like: str) -> str:
    """A list value of ``entries``, comma-separated if the admin's value ``like`` was."""
    return (", " if "," in like else " ").join(entries)


def expand(value: str, params: Mapping[str, str], depth: int = 10) -> str:
    """``$name``, ``${name}`` and ``$(name)`` replaced by ``params`` (others left as they are)."""
    for _ in range(depth):
        expanded = _REFERENCE.sub(lambda m: params.get(next(g for g in m.groups() if g),
                                                       m.group(0)), value)
        if expanded == value:
            break
        value = expanded
    return value


def reference(item: str) -> str | None:
    """The parameter an item only refers to (``$smtpd_milters`` -> smtpd_milters), else None."""
    match = _REFERENCE.fullmatch(item)
    return next(g for g in match.groups() if g) if match else None


def _core(item: str, params: Mapping[str, str]) -> str:
    """What an item does, for comparing: expanded, a group reduced to its address, one space
    between words (``check_policy_service { $p, timeout=10s }`` -> ``check_policy_service
    inet:127.0.0.1:10040``)."""
    return " ".join(_GROUP.sub(r"\1", expand(item, params)).split())


def _respell(item: str, entry: str) -> str:
    """The admin's ``item`` in postward's spelling ``entry``; a group keeps its settings
    (``{ inet:127.0.0.1:8891, default_action=accept }`` -> ``{ $postward_dkim_milter,
    default_action=accept }``)."""
    if not _GROUP_HEAD.search(item):
        return entry
    return _GROUP_HEAD.sub(lambda m: m.group(1) + tokens(entry)[-1], item, count=1)


def _spelled(entry: str, params: Mapping[str, str]) -> str:
    """``$postward_policy_service = inet:127.0.0.1:10040`` for the references of ``entry``."""
    return ", ".join(f"{word} = {expand(word, params)}" for word in
                     dict.fromkeys(m.group(0) for m in _REFERENCE.finditer(entry)))


@dataclass(frozen=True)
class Entry:
    """One of postward's entries, as its snippet writes it."""

    item: str                  # check_policy_service $postward_policy_service
    snippet: str               # the snippet file that adds it
    guards: tuple[str, ...]    # the snippet's entries before it (permit_sasl_authenticated)
    alias: str | None = None   # a list whose $reference in the list counts as this entry


def snippet_entries(name: str, value: str, kind: str, snippet: str,
                    lists: Mapping[str, str]) -> list[Entry]:
    """postward's entries of snippet list ``name`` (``lists``: every list the snippets set).

    An item naming a ``postward_*`` parameter is postward's; one that only refers to another
    of the snippets' lists (``non_smtpd_milters = $smtpd_milters``) stands for that list's
    entries; any other item is a guard of the entries after it."""
    entries: list[Entry] = []
    guards: list[str] = []
    for item in items(value, kind):
        ref = reference(item)
        if ref in lists and ref != name:
            entries += [replace(e, alias=ref) for e in snippet_entries(
                ref, lists[ref], kind, snippet, {k: v for k, v in lists.items() if k != name})]
        elif any(next(g for g in m.groups() if g).startswith("postward_")
                 for m in _REFERENCE.finditer(item)):
            entries.append(Entry(item, snippet, tuple(guards)))
        else:
            guards.append(item)
    return entries


def holder(entries: Sequence[str], entry: Entry, kind: str,
           params: Mapping[str, str]) -> str | None:
    """The item of ``entries`` that is postward's ``entry`` (also through a parameter the
    item refers to), or None."""
    want = _core(entry.item, params)
    for item in entries:
        if entry.alias is not None and reference(item) == entry.alias:
            return item
        if reference(item) in LIST_PARAMS:
            continue
        if want in (_core(i, params) for i in items(expand(item, params), kind)):
            return item
    return None


@dataclass
class Merged:
    """A list after :func:`merge`: its items and what happened to them."""

    items: list[str]
    changes: list[str] = field(default_factory=list)    # one line per item respelled or added
    notes: list[str] = field(default_factory=list)      # postward's entries found, kept
    warnings: list[str] = field(default_factory=list)   # entries that could not be added
    respelled: list[Entry] = field(default_factory=list)


def merge(name: str, old: str, kind: str, own: Sequence[Entry], known: Sequence[Entry],
          elsewhere: Mapping[str, str], params: Mapping[str, str]) -> Merged:
    """The admin's list ``name = old`` with postward's entries ``own`` in it.

    ``known`` are all of postward's entries of this kind (any of them found under another
    spelling is respelled in place); ``elsewhere`` the other lists where an entry of ``own``
    already acts (name -> value); ``params`` expand ``$references`` (the values postward
    leaves)."""
    result = Merged(items(old, kind))
    respelled: set[str] = set()
    for i, item in enumerate(result.items):
        if reference(item) in LIST_PARAMS:
            continue
        entry = next((e for e in known if _core(item, params) == _core(e.item, params)), None)
        if entry is not None and _respell(item, entry.item) != item:
            result.items[i] = _respell(item, entry.item)
            respelled.add(result.items[i])
            result.respelled.append(entry)
            result.changes.append(f"{item} is now {result.items[i]} (the same: "
                                  f"{_spelled(entry.item, params)})")
    missing = []
    for entry in own:
        found = holder(result.items, entry, kind, params)
        where = None if found is not None else next(
            (n for n, v in elsewhere.items() if holder(items(v, kind), entry, kind, params)),
            None)
        if found is not None:
            if found in respelled:
                continue  # said above
            result.notes.append(f"{name} has postward's {entry.item}"
                                + ("" if found == entry.item else f" (as {found})")
                                + " among its entries")
        elif where is not None:
            result.notes.append(f"postward's {entry.item} is in {where} already: not added to "
                                f"{name}")
        else:
            missing.append(entry)
    if missing:
        _add(result, name, kind, missing)
    return result


def _add(result: Merged, name: str, kind: str, missing: Sequence[Entry]) -> None:
    group: list[str] = []
    for entry in missing:
        group += [g for g in entry.guards if g not in result.items and g not in group]
        group.append(entry.item)
    added = " ".join(group)
    last = result.items[-1] if result.items else None
    if kind == "restrictions" and last in ("reject", "defer"):
        result.warnings.append(
            f"{name} ends in an unconditional {last}: postward's {added} is not added (after "
            f"the {last} it would never be reached; before it, it could let through clients "
            f"your list refuses): put it in by hand where it belongs")
        return
    guards = [g for g in group if g not in (e.item for e in missing)]
    why = (f"; {' '.join(guards)} first, as in {missing[0].snippet}: your entries before it "
           "decide as they did") if guards else ""
    if kind == "restrictions" and last == "permit":
        result.items[-1:-1] = group
        result.changes.append(f"added {added} before your final permit (nothing after an "
                              f"unconditional permit is evaluated){why}")
    else:
        result.items += group
        result.changes.append(f"added {added} at the end{why}")
