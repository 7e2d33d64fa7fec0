"""The syntax of postward.conf: an INI file whose every value remembers its file and line.

    # comment (also ';' at the start of a line)
    [section]
    key = value
        continued value (indented lines join the value above with a space)

Python's configparser forgets line numbers, and a bad value must be reported as ``file:line``,
so this small reader keeps them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SECTION = re.compile(r"^\[\s*([A-Za-z0-9_.-]+)\s*\]\s*$")
_KEY = re.compile(r"^([A-Za-z0-9_.-]+)\s*=\s*(.*)$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the config, where it is."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class ConfigError(Exception):
    """The config cannot be used; ``problems`` lists every reason, each with its file and line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class RawValue:
    text: str
    path: str
    line: int


@dataclass
class RawSection:
    name: str
    path: str
    line: int
    values: dict[str, RawValue] = field(default_factory=dict)


def parse_ini(text: str, path: str) -> dict[str, RawSection]:
    """Split ``text`` into sections of raw values; raise ConfigError for syntax problems."""
    sections: dict[str, RawSection] = {}
    problems: list[Problem] = []
    current: RawSection | None = None
    last_key: str | None = None

    for lineno, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if raw[0] in " \t" and current is not None and last_key is not None:
            prev = current.values[last_key]
            current.values[last_key] = RawValue(f"{prev.text} {stripped}", prev.path, prev.line)
            continue
        if m := _SECTION.match(stripped):
            name = m.group(1).lower()
            if name in sections:
                problems.append(Problem(path, lineno, f"section [{name}] appears twice "
                                        f"(first at line {sections[name].line})"))
            current = sections.setdefault(name, RawSection(name, path, lineno))
            last_key = None
            continue
        if (m := _KEY.match(stripped)) is None:
            problems.append(Problem(path, lineno, f"expected 'key = value' or '[section]', "
                                    f"got {stripped[:60]!r}"))
            last_key = None
            continue
        if current is None:
            problems.append(Problem(path, lineno, f"'{m.group(1)}' is outside any [section]"))
            continue
        key = m.group(1).lower()
        if key in current.values:
            problems.append(Problem(path, lineno, f"[{current.name}] {key}: set twice "
                                    f"(first at line {current.values[key].line})"))
            continue
        current.values[key] = RawValue(m.group(2).strip(), path, lineno)
        last_key = key

    if problems:
        raise ConfigError(problems)
    return sections
