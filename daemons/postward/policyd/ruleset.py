"""Reading postfwd rule files, with postfwd 1.35's own parsing rules (read_config_file,
acl_parser, parse_config_line, prepare_item in /usr/sbin/postfwd1).

Faithful where an existing postfwd.cf depends on it:
- every ``"`` is removed and ``#`` starts a comment anywhere, even inside a regex;
- a line ending in ``\\`` or ``{`` continues on the next line; a line starting with white space
  or ``}`` continues the rule above (a ``;`` is put between);
- ``&&NAME { ... }`` defines a macro, ``&&NAME`` elsewhere is replaced by its text (macros may
  use macros);
- ``file:``/``table:`` lists are read at load time, ``lfile:``/``ltable:`` at every evaluation;
- ``<=``, ``>=``, ``~=`` are spelled ``=<``, ``=>``, ``=~`` internally, as postfwd shows them.

Stricter where postfwd warns and carries on with a rule that silently never matches (or is
dropped): those are load errors naming the file and line, so the daemon refuses the rule file.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from postward.core.config_file import ConfigError, Problem

SEPARATOR = r"[=~<>]=|[<>]|[=!][=~<>]|="
_SEPARATOR_RE = re.compile(SEPARATOR)
# postfwd's validity check, as it really behaves: postfwd interpolates its separator pattern
# without brackets, so the check is an alternation that any line holding '<', '>', '==', '!=',
# '=~'... passes. Its nested quantifier ([^;\s]+\s*)+ is written here as the equal language
# [^;\s][^;]*, so a long bad line cannot take exponential time.
_V = r"[^;\s][^;]*"
_VALID_LINE = re.compile(
    rf"^\s*[^=\s]+\s*[=~<>]=|[<>]|[=!][=~<>]"
    rf"|=\s*{_V}(?:;\s*[^=\s]+\s*[=~<>]=|[<>]|[=!][=~<>]|=\s*{_V})*[;\s]*$")
_SPLIT_ITEM = re.compile(rf"^\s*(.*?)\s*({SEPARATOR})\s*(.*?)\s*$", re.DOTALL)
_MACRO_DEF = re.compile(r"^\s*(&&[-\w]+)\s*\{\s*(.*?)\s*;?\s*\}[\s;]*$", re.DOTALL)
_MACRO_USE = re.compile(r"&&[-\w]+")
_LOAD_TIME_LIST = re.compile(r"^(cfile|file|ctable|table):(.+)$", re.IGNORECASE)
LIVE_LIST = re.compile(r"^(lfile|ltable):(.+)$", re.IGNORECASE)
_NEGATED = re.compile(r"^!!\s*\(?\s*(.+?)\s*\)?$", re.DOTALL)
COMMAND = re.compile(r"^(\w[-\w]+)\s*\(\s*(.*?)\s*\)$", re.DOTALL)

SINGLE_KEYS = frozenset({"id", "action", "score", "rblcount", "rhsblcount"})
_CSV_KEYS = re.compile(
    r"^(?:(?:client_address|sender_(?:ns|mx)_addrs|helo_address)|rbl|rhsbl|rhsbl_client"
    r"|rhsbl_helo|rhsbl_sender|rhsbl_reverse_client|(?:date|time|days|months)"
    r"|helo_address|sender_ns_addrs|sender_mx_addrs)$")
DNSBL_KEYS = ("rbl", "rhsbl", "rhsbl_client", "rhsbl_sender", "rhsbl_helo",
              "rhsbl_reverse_client")
_MAX_MACRO_EXPANSIONS = 1000
_MAX_FILE_DEPTH = 16


@dataclass(frozen=True)
class Cond:
    """One value of a rule item with its operator, as postfwd stores it ("cmp;value")."""

    cmp: str
    value: str

    def __str__(self) -> str:
        return f"{self.cmp};{self.value}"


@dataclass
class Rule:
    index: int
    id: str
    action: str
    items: dict[str, list[Cond]] = field(default_factory=dict)
    single: dict[str, str] = field(default_factory=dict)  # score, rblcount, rhsblcount
    path: str = ""
    line: int = 0

    # Both cached: read per request, and a rule's items do not change once it is parsed.
    @functools.cached_property
    def dnsbl_keys(self) -> tuple[str, ...]:
        return tuple(k for k in DNSBL_KEYS if k in self.items)

    @functools.cached_property
    def dnsbl_zones(self) -> tuple[tuple[str, str], ...]:
        """(item type, list zone) of every list the rule looks up (not live lists), in order;
        the zone in lower case, negated values (``!!zone``) by their inside."""
        from postward.policyd.dnsbl import parse_spec  # dnsbl imports this module

        zones = []
        for key in self.dnsbl_keys:
            for cond in self.items[key]:
                if LIVE_LIST.match(cond.value):
                    continue
                zone = parse_spec(deneg(cond.value) or cond.value).zone.lower()
                if zone:
                    zones.append((key, zone))
        return tuple(zones)

    def show(self) -> str:
        """The rule as ``postfwd -C`` prints it."""
        out = f'Rule {self.index:3d}: id->"{self.id}"; action->"{self.action}"'
        keys = {**{k: v for k, v in self.single.items()}, **self.items}
        for key in sorted(keys, reverse=True):
            value = keys[key]
            text = value if isinstance(value, str) else ", ".join(str(c) for c in value)
            out += f'; {key}->"{text}"'
        return out


@dataclass
class Ruleset:
    rules: list[Rule]
    by_id: dict[str, int]

    def show(self) -> str:
        return "".join(rule.show() + "\n" for rule in self.rules)


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Join physical lines into rule lines the way postfwd's read_config_file does; each keeps
    the number of the physical line it started on."""
    lines: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.split("\n"), start=1):
        line = re.sub(r'"|#.*', "", raw.rstrip("\r"))
        if not line.strip():
            continue
        if not buffer:
            start = number
        if m := (re.match(r"(.*)\\\s*$", line) or re.match(r"(.*\{)\s*$", line)):
            buffer += m.group(1)
            continue
        buffer += line
        if lines and re.match(r"^(\}|\s+\S)", buffer):
            first, last = lines.pop()
            if not re.search(r";\s*$", last):
                last += ";"
            buffer, start = last + buffer, first
        lines.append((start, buffer))
        buffer = ""
    if buffer:  # a file ending in '\': postfwd drops the unfinished line; keep it for an error
        lines.append((start, buffer))
    return lines


class RulesetReader:
    """Builds a Ruleset from rule files and ``-r`` rules; collects every problem."""

    def __init__(self) -> None:
        self.macros: dict[str, str] = {}
        self.rules: list[Rule] = []
        self.problems: list[Problem] = []

    def add_file(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as e:
            self.problems.append(Problem(str(path), 0, f"cannot read rule file: {e.strerror}"))
            return
        for number, line in logical_lines(text):
            self.add_line(str(path), number, line)

    def add_rule_text(self, text: str) -> None:
        """A rule given on the command line (postfwd's ``-r``): one line, macros allowed."""
        self.add_line("RULE", 0, re.sub(r'"|#.*', "", text))

    def add_line(self, path: str, number: int, line: str) -> None:
        try:
            expanded = self._expand_macros(line)
            if expanded is None:
                return
            rule = self._parse_rule(expanded, path, number)
        except _LineError as e:
            self.problems.append(Problem(path, number, str(e)))
            return
        self.rules.append(rule)

    def ruleset(self) -> Ruleset:
        if self.problems:
            raise ConfigError(self.problems)
        by_id: dict[str, int] = {}
        for rule in self.rules:
            by_id[rule.id] = rule.index  # a later duplicate id wins, as in postfwd's hash
        return Ruleset(self.rules, by_id)

    def _expand_macros(self, line: str) -> str | None:
        if m := _MACRO_DEF.match(line):
            self.macros[m.group(1)] = m.group(2)
            return None
        for _ in range(_MAX_MACRO_EXPANSIONS):
            m = _MACRO_USE.search(line)
            if m is None:
                return line
            name = m.group(0)
            if name not in self.macros:
                raise _LineError(f"undefined macro '{name}' (postfwd would drop this rule)")
            line = re.sub(r"\s*" + re.escape(name) + r"\s*",
                          lambda _m, body=self.macros[name]: body, line)
        raise _LineError("macros expand without end (a macro uses itself?)")

    def _parse_rule(self, line: str, path: str, number: int) -> Rule:
        if not _VALID_LINE.search(line):
            raise _LineError(f"not a rule: expected 'item=value; ...; action=...', got "
                             f"{line.strip()[:80]!r} (postfwd would ignore this line)")
        index = len(self.rules)
        rule = Rule(index=index, id="", action="", path=path, line=number)
        parts = line.split(";")
        while parts and parts[-1] == "":  # Perl's split drops trailing empty fields
            parts.pop()
        for part in parts:
            m = _SPLIT_ITEM.match(part)
            if m is None:
                what = (f"item {part.strip()!r} has no operator (=, ==, !=, =~, <, ...)"
                        if part.strip() else "empty item after ';'")
                raise _LineError(f"{what} (postfwd would keep the rule and read this item in "
                                 f"a way nobody means: see docs/postfwd-quirks.md)")
            key, cmp, value = m.group(1), m.group(2), m.group(3)
            cmp = {"<=": "=<", ">=": "=>", "~=": "=~"}.get(cmp, cmp)
            if key in SINGLE_KEYS:
                if key == "id":
                    rule.id = value
                elif key == "action":
                    rule.action = _old_rate_syntax(value)
                else:
                    rule.single[key] = value
            elif _CSV_KEYS.match(key):
                for v in re.split(r"\s*,\s*", value):
                    rule.items.setdefault(key, []).extend(self._prepare(cmp, v, 0))
            else:
                rule.items.setdefault(key, []).extend(self._prepare(cmp, value, 0))
        if not rule.action:
            raise _LineError("rule has no action= (postfwd would ignore it)")
        if not rule.id:
            rule.id = f"R-{index}"
        return rule

    def _prepare(self, cmp: str, item: str, depth: int) -> list[Cond]:
        try:
            return prepare_item(cmp, item, depth)
        except ListError as e:
            raise _LineError(str(e)) from None


class ListError(Exception):
    """A file:/table: list that cannot be read."""


def prepare_item(cmp: str, item: str, depth: int = 0) -> list[Cond]:
    """postfwd's prepare_item: a file:/table: list becomes its items, a regex loses its
    slashes."""
    if m := _LOAD_TIME_LIST.match(item):
        return read_list(m.group(1).lower(), cmp, m.group(2), depth)
    if cmp in ("=~", "!~"):
        return [Cond(cmp, prepare_pcre(item))]
    return [Cond(cmp, item)]


def read_list(kind: str, cmp: str, name: str, depth: int = 0) -> list[Cond]:
    if depth >= _MAX_FILE_DEPTH:
        raise ListError(f"{kind}:{name}: lists include each other too deeply (a loop?)")
    try:
        text = Path(name).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as e:
        raise ListError(f"{kind}:{name}: {e.strerror} (postfwd would ignore the list "
                        f"silently)") from None
    out: list[Cond] = []
    for item in list_file_items(text, is_table=kind in ("table", "ctable", "ltable")):
        out.extend(prepare_item(cmp, item, depth + 1))
    return out


def _old_rate_syntax(action: str) -> str:
    """postfwd's check_for_old_syntax: ``rate($$item/...)`` is the pre-1.33 spelling of
    ``rate(item/...)``."""
    m = COMMAND.match(action)
    if not (m and re.match(r"^(rate|size|rcpt)(5321)?$", m.group(1), re.IGNORECASE)):
        return action
    arg = re.match(r"^\$\$(.*)$", m.group(2), re.DOTALL)
    return f"{m.group(1)}({arg.group(1)})" if arg else action


def list_file_items(text: str, is_table: bool) -> list[str]:
    """The items of a file:/table: list, as postfwd's prepare_file reads them."""
    items = []
    for raw in text.split("\n"):
        line = re.sub(r"#.*", "", raw.rstrip("\r"))
        if not line.strip():
            continue
        if is_table:  # key=value tables: the right-hand value is ignored
            line = re.sub(r"\s+[^\s]+$", "", line)
        items.append(line.strip())
    return items


def prepare_pcre(item: str) -> str:
    """postfwd's prepare_pcre: strip a negation and surrounding slashes, then negate again."""
    neg = deneg(item)
    if neg:
        item = neg
    item = re.sub(r"^/?(.*?)/?$", r"\1", item, flags=re.DOTALL)
    return f"!!({item})" if neg else item


def deneg(value: str) -> str:
    """The inside of ``!!x`` / ``!!(x)``, or '' when ``value`` is not negated."""
    m = _NEGATED.match(value)
    return m.group(1) if m else ""


class _LineError(Exception):
    pass


def load_ruleset(sources: list[tuple[str, str]]) -> Ruleset:
    """Read ``("file", path)`` and ``("rule", text)`` sources in command-line order, as postfwd
    does with ``-f`` and ``-r``; ConfigError lists every bad line."""
    reader = RulesetReader()
    for kind, value in sources:
        if kind == "file":
            reader.add_file(Path(value))
        else:
            reader.add_rule_text(value)
    return reader.ruleset()
