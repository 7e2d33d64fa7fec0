"""Typed sections built from postward.conf, with every error reported as ``file:line: reason``.

A section is a frozen dataclass whose fields are declared with :func:`setting`; the field's
parser turns the raw text into a value. A section may add a ``check()`` method for rules that
span several keys; it returns ``(key, message)`` pairs.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from postward.core.config_file import ConfigError, Problem, RawSection, parse_ini

DEFAULT_PATH = Path("/etc/postward/postward.conf")

T = TypeVar("T")


def setting(default: Any, parse: Callable[[str], Any], doc: str = "") -> Any:
    """Declare a config key: its default, how to parse it and one line saying what it does."""
    return dataclasses.field(default=default, metadata={"parse": parse, "doc": doc})


def section_from_raw(
    cls: type[T], raw: RawSection | None, name: str
) -> tuple[T | None, list[Problem]]:
    """Build section ``cls`` from ``raw`` (None: all defaults). Returns it and the problems."""
    problems: list[Problem] = []
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    if raw is not None:
        for key, rv in raw.values.items():
            f = known.get(key)
            if f is None:
                hint = difflib.get_close_matches(key, known, n=1)
                did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
                problems.append(Problem(rv.path, rv.line,
                                        f"[{name}] unknown key '{key}'{did_you_mean}"))
                continue
            try:
                values[key] = f.metadata["parse"](rv.text)
            except ValueError as e:
                problems.append(Problem(rv.path, rv.line, f"[{name}] {key}: {e}"))
    if problems:
        return None, problems
    section = cls(**values)
    check = getattr(section, "check", None)
    if check is not None:
        for key, message in check():
            where = raw.values.get(key) if raw is not None else None
            path = where.path if where else (raw.path if raw else "<defaults>")
            line = where.line if where else (raw.line if raw else 0)
            problems.append(Problem(path, line, f"[{name}] {key}: {message}"))
    return (None, problems) if problems else (section, [])


def build_sections(
    raw_sections: Mapping[str, RawSection], schema: Mapping[str, type], path: str
) -> dict[str, Any]:
    """Every section of ``schema`` built (absent ones from defaults); unknown ones are errors."""
    problems: list[Problem] = []
    for name, raw in raw_sections.items():
        if name not in schema:
            hint = difflib.get_close_matches(name, schema, n=1)
            did_you_mean = f" (did you mean [{hint[0]}]?)" if hint else ""
            problems.append(Problem(raw.path, raw.line, f"unknown section [{name}]{did_you_mean}"
                                    f"; known: {', '.join(sorted(schema))}"))
    built: dict[str, Any] = {}
    for name, cls in schema.items():
        section, errs = section_from_raw(cls, raw_sections.get(name), name)
        problems.extend(errs)
        built[name] = section
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.path, p.line)))
    return built


def read_config_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(str(path), 0, "no such file")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([Problem(str(path), 0, f"cannot read: {e}")]) from None


def load_sections(path: Path, schema: Mapping[str, type]) -> dict[str, Any]:
    return build_sections(parse_ini(read_config_text(path), str(path)), schema, str(path))


def describe(schema: Mapping[str, type]) -> str:
    """The config reference: every section and key with its default and what it does."""
    out: list[str] = []
    for name, cls in schema.items():
        out.append(f"[{name}]")
        for f in dataclasses.fields(cls):
            default = f.default
            if isinstance(default, tuple):
                default = ", ".join(str(d) for d in default)
            elif isinstance(default, bool):
                default = "yes" if default else "no"
            elif isinstance(default, float) and getattr(f.metadata["parse"], "plain_number",
                                                        False):
                default = f"{default:g}"
            elif isinstance(default, float):  # every other float setting is a duration
                default = f"{int(default)}s" if default.is_integer() else f"{default:g}s"
            elif default is None:
                default = ""
            out.append(f"# {f.metadata.get('doc', '')}".rstrip())
            out.append(f"{f.name} = {default}".rstrip())
        out.append("")
    return "\n".join(out)
