"""The syntax of opendkim.conf, read as OpenDKIM's config_load() reads it.

One option a line: a name, white space (spaces or tabs), the value. A '#' anywhere ends the
line (so a value cannot hold one), as does a carriage return; blank lines are skipped. Names
ignore case; surrounding spaces and tabs of a value are dropped; an empty value is an error, as
in OpenDKIM. ``Include /path`` reads another file in place, nested at most five deep.

Postward is stricter in one place: an option given twice is an error naming both lines, where
OpenDKIM silently uses the last one. (Appending ``Socket inet:...`` to Debian's stock file,
which already has a Socket line, is the classic way to end up with two.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from postward.core.config_file import Problem
from postward.dkim import opendkim_names as names
from postward.dkim.datasets import decode_lines

MAX_INCLUDE_DEPTH = 5  # OpenDKIM's MAXLEVEL


@dataclass(frozen=True)
class RawOption:
    """One ``Name value`` line: the value as written and where it is."""

    name: str  # the usual spelling, e.g. "KeyTable" for "keytable"
    value: str
    path: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def problem(self, message: str) -> Problem:
        """A problem on this line; the message is prefixed with the name unless it starts so."""
        named = message.startswith(f"{self.name} ")
        return Problem(self.path, self.line, message if named else f"{self.name}: {message}")


def split_line(raw: str) -> tuple[str, str] | None:
    """``(name, value)`` of one line, or None for a blank or comment line."""
    for end in ("#", "\r"):
        raw = raw.split(end, 1)[0]
    stripped = raw.strip(" \t")
    if not stripped:
        return None
    cut = next((i for i, c in enumerate(stripped) if c in " \t"), len(stripped))
    return stripped[:cut], stripped[cut:].strip(" \t")


class ConfReader:
    """Reads a config file and its Includes into options, collecting every problem."""

    def __init__(self, problems: list[Problem], root: Path | None = None) -> None:
        self.problems = problems
        self.root = root
        self.options: dict[str, RawOption] = {}
        self.files: list[str] = []  # in the order read
        self._stack: list[str] = []

    def read(self, path: str, included_at: RawOption | None = None) -> bool:
        """Read ``path``; ``included_at`` is the Include line naming it, if any. False if the
        file cannot be read at all."""
        real = (self.root / path.lstrip("/") if self.root is not None and included_at
                else Path(path))
        try:
            data = real.read_bytes()
        except OSError as e:
            self.problems.append(
                included_at.problem(f"cannot read {path}: {e.strerror}") if included_at
                else Problem(path, 0, f"cannot read: {e.strerror}"))
            return False
        self.files.append(path)
        self._stack.append(path)
        try:
            text = decode_lines(data, path, "", self.problems)
            for number, raw in enumerate(text.split("\n"), start=1):
                parts = split_line(raw)
                if parts is not None:
                    self._option(*parts, path, number)
        finally:
            self._stack.pop()
        return True

    def _option(self, name: str, value: str, path: str, line: int) -> None:
        if not names.is_implemented(name):
            self.problems.append(Problem(path, line, names.refusal(name)))
            return
        option = RawOption(names.canonical(name) or name, value, path, line)
        if not value:
            self.problems.append(option.problem("has no value; give one or remove the line "
                                                "(OpenDKIM refuses an empty value too)"))
            return
        if option.name == "Include":
            self._include(option)
            return
        first = self.options.setdefault(option.name, option)
        if first is not option:
            self.problems.append(option.problem(
                f"set twice (first at {first.where}); OpenDKIM would silently use the later "
                f"one: keep one of them"))

    def _include(self, option: RawOption) -> None:
        target = option.value
        if not target.startswith("/"):
            self.problems.append(option.problem(
                f"{target!r} is a relative path, which OpenDKIM opens relative to the "
                f"directory it was started in; give the absolute path"))
        elif target in self._stack:
            self.problems.append(option.problem(f"{target} includes itself (through "
                                                f"{' -> '.join(self._stack)}); remove this "
                                                f"Include"))
        elif len(self._stack) > MAX_INCLUDE_DEPTH:
            self.problems.append(option.problem(
                f"nested more than {MAX_INCLUDE_DEPTH} levels deep (OpenDKIM's limit); "
                f"flatten the Includes"))
        else:
            self.read(target, option)


def read_conf(path: Path, problems: list[Problem], root: Path | None = None) -> ConfReader | None:
    """The config file at ``path`` read, Includes and all: ``.options`` by usual spelling,
    ``.files`` in reading order. None if ``path`` itself cannot be read.

    ``root``, when given, is prefixed to the absolute paths the file names (not to ``path``).
    """
    reader = ConfReader(problems, root)
    return reader if reader.read(str(path)) else None
