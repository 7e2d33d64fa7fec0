"""OpenDKIM "data sets": the values of KeyTable, SigningTable, InternalHosts, Domain and the like.

OpenDKIM decides a data set's type from the start of its value (opendkim(8), DATA SETS; the code
is dkimf_db_open() in opendkim-db.c):

    file:/path      a flat file, one entry a line: ``KEY`` or ``KEY VALUE``
    /path           the same (any value starting with "/")
    refile:/path    a flat file whose keys are wildcard patterns, tried in file order
    csl:a,b=c       an inline comma-separated list; ``x=y`` is the key x with the value y
    a,b             the same (anything else)

In the files '#' starts a comment anywhere on a line, blank lines are skipped, the key is the
first word and the value everything after the white space that follows it. A refile pattern
matches the whole key; '*' matches any run of characters. Lookups ignore (ASCII) case, as
OpenDKIM's do for every set it opens with DKIMF_DB_FLAG_ICASE (all but KeyTable, which postward
matches without case as well: two key names differing only in case are surely one key).

Where postward is stricter than OpenDKIM, and why:

- The other types (db:, dsn:, ldap:, lua:, memcache:, mdb:, erlang:, redis:, socket: and a
  plain name ending in ".db", which the Debian build reads as Berkeley DB) are refused by name.
- A relative file name is refused: OpenDKIM opens it relative to whatever directory it was
  started in.
- In a refile pattern OpenDKIM hands every character except '*', '.' and '+' to regcomp(3) as
  POSIX regular-expression syntax, although its manual says only '*' is special. A pattern
  using any of ``?[](){}|^$\\`` means different things under the two readings, so it is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Literal, TypeVar

from postward.core.config_file import Problem

DataSetKind = Literal["file", "refile", "csl"]
T = TypeVar("T")

# Types OpenDKIM can be built with; postward reads none of them.
_OTHER_TYPES = ("db", "dsn", "ldap", "ldapi", "ldaps", "lua", "memcache", "mdb", "erlang",
                "redis", "socket")
_REGEX_SYNTAX = frozenset("?[](){}|^$\\")
_SPACE = " \t\n\r\f\v"  # C isspace() in the "C" locale; str.split() would split on more


@dataclass(frozen=True)
class Origin:
    """The config line that named a data set: its problems without a line of their own go here."""

    option: str
    path: str
    line: int

    def problem(self, message: str) -> Problem:
        return Problem(self.path, self.line, f"{self.option}: {message}")


@dataclass(frozen=True)
class Entry:
    """One element of a data set and the line it came from (the config line for inline lists)."""

    key: str
    value: str | None
    path: str
    line: int

    @property
    def source(self) -> str:
        return f"{self.path}:{self.line}"


def wildcard_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be a refile pattern, or None."""
    bad = sorted({c for c in pattern if c in _REGEX_SYNTAX})
    if not bad:
        return None
    shown = " ".join(repr(c) for c in bad)
    return (f"pattern {pattern!r} uses {shown}, which OpenDKIM would read as regular-expression "
            f"syntax although its manual says only '*' is special; postward refuses the "
            f"ambiguity: use only '*' as a wildcard")


def wildcard_regex(pattern: str) -> re.Pattern[str]:
    """The whole-string, case-insensitive matcher for a refile pattern ('*': any run)."""
    body = "".join(".*" if c == "*" else re.escape(c) for c in pattern)
    return re.compile(body, re.IGNORECASE | re.ASCII | re.DOTALL)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(key: str) -> str:
    """Keys compare without ASCII case, as strcasecmp(3) compares them."""
    return key.translate(_ASCII_LOWER)


class Matcher(Generic[T]):
    """Finds items by key: exactly (ignoring case) or, for refile sets, by wildcard pattern.

    The first match in item order wins, as in OpenDKIM's dkimf_db_get(). A refile pattern
    without '*' is literal, so it is looked up like an exact key instead of being scanned.
    """

    def __init__(self, kind: DataSetKind, items: Sequence[tuple[str, T]]) -> None:
        self._patterns: list[tuple[int, re.Pattern[str], T]] = []
        self._exact: dict[str, list[tuple[int, T]]] = {}
        for index, (key, item) in enumerate(items):
            if kind == "refile" and "*" in key:
                self._patterns.append((index, wildcard_regex(key), item))
            else:
                self._exact.setdefault(fold(key), []).append((index, item))

    @property
    def has_patterns(self) -> bool:
        return bool(self._patterns)

    def exact_keys(self) -> Iterable[str]:
        """The (folded) keys looked up exactly, i.e. all but the wildcard patterns."""
        return self._exact.keys()

    def all(self, key: str) -> list[T]:
        found = list(self._exact.get(fold(key), ()))
        found += [(i, item) for i, regex, item in self._patterns if regex.fullmatch(key)]
        return [item for _, item in sorted(found, key=lambda pair: pair[0])]

    def first(self, key: str) -> T | None:
        # Called for every key of every SMTP client (peerlist.py tries dozens per client):
        # the earliest exact item, unless a pattern before it matches, without building lists.
        exact = self._exact.get(fold(key))
        best = exact[0] if exact else None
        for index, regex, item in self._patterns:
            if best is not None and index > best[0]:
                break
            if regex.fullmatch(key):
                return item
        return best[1] if best is not None else None


@dataclass(frozen=True)
class DataSet:
    """A loaded data set: its entries in order, searchable by key."""

    option: str
    spec: str
    kind: DataSetKind
    entries: tuple[Entry, ...]
    _matcher: Matcher[Entry] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_matcher",
                           Matcher(self.kind, [(e.key, e) for e in self.entries]))

    def find(self, key: str) -> Entry | None:
        """The first entry whose key is ``key`` (refile: whose pattern matches it)."""
        return self._matcher.first(key)

    def find_all(self, key: str) -> list[Entry]:
        return self._matcher.all(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.find(key) is not None

    def keys(self) -> tuple[str, ...]:
        return tuple(e.key for e in self.entries)


def parse_spec(spec: str) -> tuple[DataSetKind, str]:
    """Split a data set value into its type and the rest, as dkimf_db_open() does.

    Raises ValueError naming what is wrong and what to write instead.
    """
    colon, comma = spec.find(":"), spec.find(",")
    if colon < 0 or 0 <= comma < colon:  # no type prefix (a list whose later items hold ':')
        if spec.endswith(".db"):
            raise ValueError(f"{spec!r}: OpenDKIM reads a name ending in '.db' as a Berkeley DB "
                             f"file, which postward does not read; convert it to a flat file "
                             f"and write file:/path")
        return ("file", spec) if spec.startswith("/") else ("csl", spec)
    prefix, rest = spec[:colon].lower(), spec[colon + 1:]
    if prefix in ("file", "refile", "csl"):
        return prefix, rest  # type: ignore[return-value]
    if prefix in _OTHER_TYPES:
        raise ValueError(f"{prefix}: data sets are an OpenDKIM feature postward-dkim does not "
                         f"implement; use file:, refile: or csl: (an inline list)")
    raise ValueError(f"unknown data set type {prefix + ':'!r} in {spec!r} (OpenDKIM reads the "
                     f"text before the first ':' as the type); use file:/path, refile:/path or "
                     f"csl:a,b - an inline list starting with an IPv6 address needs csl:")


def csl_entries(text: str, origin: Origin) -> list[Entry]:
    """The items of an inline comma-separated list; empty items are skipped, as strtok skips."""
    entries = []
    for item in text.split(","):
        key, eq, value = item.partition("=")
        key = key.strip(_SPACE)
        if key:
            entries.append(Entry(key, value.strip(_SPACE) if eq else None,
                                 origin.path, origin.line))
    return entries


def file_entries(text: str, path: str) -> Iterator[Entry]:
    """The entries of a flat file: key = first word, value = the rest of the line."""
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.split("#", 1)[0].strip(_SPACE)
        if not line:
            continue
        cut = next((i for i, c in enumerate(line) if c in _SPACE), len(line))
        value = line[cut:].strip(_SPACE)
        yield Entry(line[:cut], value or None, path, number)


def decode_lines(data: bytes, path: str, prefix: str, problems: list[Problem]) -> str:
    """``data`` as text; a line that is not UTF-8 is reported and read as blank, so the
    other lines keep their numbers and their problems are found too."""
    lines = data.split(b"\n")
    for number, raw in enumerate(lines):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(Problem(path, number + 1,
                                    f"{prefix}this line is not UTF-8 text; save the file as UTF-8"))
            lines[number] = b""
    return b"\n".join(lines).decode("utf-8")


def read_data_file(name: str, origin: Origin, problems: list[Problem],
                   root: Path | None = None) -> str | None:
    """The text of a data set file, or None after reporting why it cannot be read."""
    if not name.startswith("/"):
        problems.append(origin.problem(
            f"{name!r} is a relative path, which OpenDKIM opens relative to the directory it "
            f"was started in; give the absolute path"))
        return None
    real = Path(name) if root is None else root / name.lstrip("/")
    try:
        data = real.read_bytes()
    except OSError as e:
        problems.append(origin.problem(f"cannot read {name}: {e.strerror}"))
        return None
    return decode_lines(data, name, f"{origin.option}: ", problems)


def load_dataset(spec: str, origin: Origin, problems: list[Problem],
                 root: Path | None = None) -> DataSet | None:
    """Read the data set ``spec`` named at ``origin``; None if it cannot be read at all.

    Problems go to ``problems`` with the line they are on: the data file's own file:line, or
    the config line for inline lists and unreadable files. ``root``, when given, is prefixed to
    the absolute paths read (to check a config tree copied from another machine).
    """
    try:
        kind, target = parse_spec(spec)
    except ValueError as e:
        problems.append(origin.problem(str(e)))
        return None
    if kind == "csl":
        return DataSet(origin.option, spec, kind, tuple(csl_entries(target, origin)))
    text = read_data_file(target, origin, problems, root)
    if text is None:
        return None
    entries = []
    for entry in file_entries(text, target):
        why = wildcard_problem(entry.key) if kind == "refile" else None
        if why is not None:
            problems.append(Problem(entry.path, entry.line, f"{origin.option}: {why}"))
        else:
            entries.append(entry)
    return DataSet(origin.option, spec, kind, tuple(entries))


def inline_dataset(option: str, items: Sequence[str], where: Origin) -> DataSet:
    """A data set built in memory (a default, or one derived from other options)."""
    return DataSet(option, ",".join(items), "csl",
                   tuple(Entry(i, None, where.path, where.line) for i in items))
