"""Snippet files: fragments of main.cf (``*.main.cf``) and master.cf (``*.master.cf``).

Both follow Postfix's line syntax: ``#`` lines and blank lines are ignored and a line that
starts with whitespace continues the previous one. Each logical line becomes one argument of
``postconf -e`` (a parameter) or ``postconf -M`` (a service entry); see
postfix-snippets/README.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_PARAM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class SnippetError(ValueError):
    """A snippet file that is not a valid main.cf or master.cf fragment (or cannot be read)."""


def logical_lines(text: str, origin: str) -> list[tuple[int, str]]:
    """Postfix's line syntax: '#' lines and blank lines are ignored, a line starting with
    whitespace continues the previous one. Returns (first line number, joined text)."""
    lines: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0].isspace():
            if not lines:
                raise SnippetError(f"{origin}:{number}: continuation line with nothing to continue")
            first, joined = lines[-1]
            lines[-1] = (first, f"{joined} {stripped}")
        else:
            lines.append((number, stripped))
    return lines


def parse_main_cf(text: str, origin: str = "<main.cf>") -> list[tuple[str, str]]:
    """``name = value`` pairs of a main.cf fragment, in order."""
    params = []
    for number, line in logical_lines(text, origin):
        name, eq, value = line.partition("=")
        name = name.strip()
        if not eq or not _PARAM_NAME.fullmatch(name):
            raise SnippetError(f"{origin}:{number}: expected 'name = value', got {line!r}")
        params.append((name, value.strip()))
    return params


def parse_master_cf(text: str, origin: str = "<master.cf>") -> list[tuple[str, str]]:
    """``("name/type", entry)`` pairs of a master.cf fragment, each entry on one line."""
    entries = []
    for number, line in logical_lines(text, origin):
        fields = line.split()
        if len(fields) < 8:
            raise SnippetError(f"{origin}:{number}: a master.cf entry has 8+ fields: {line!r}")
        entries.append((f"{fields[0]}/{fields[1]}", line))
    return entries


def read_text(path: Path) -> str:
    """A snippet file's text; an unreadable file is a SnippetError that names it."""
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise SnippetError(f"{path}: cannot read: {reason}") from None


@dataclass(frozen=True)
class Snippet:
    """One snippet file: ``*.main.cf`` (parameters) or ``*.master.cf`` (service entries)."""

    path: Path
    kind: str  # "main" or "master"
    entries: tuple[tuple[str, str], ...]

    @classmethod
    def load(cls, path: Path) -> Snippet:
        if path.name.endswith(".main.cf"):
            return cls(path, "main", tuple(parse_main_cf(read_text(path), str(path))))
        if path.name.endswith(".master.cf"):
            return cls(path, "master", tuple(parse_master_cf(read_text(path), str(path))))
        raise SnippetError(f"{path}: a snippet's name ends in .main.cf or .master.cf")
