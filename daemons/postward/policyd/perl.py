"""The bits of Perl semantics postfwd's rule language leans on, so answers match postfwd's.

postfwd compares with Perl's loose typing: a string is false when empty or "0", a string used as a
number is its leading numeric part ("12abc" is 12, "abc" is 0), and numbers print with up to 15
significant digits (0.1 + 0.2 prints as 0.3). Regexes are Perl's; Python's ``re`` reads the
patterns rule files use the same way, and the few Perl-only escapes are translated here.
"""

from __future__ import annotations

import functools
import re
import warnings

_NUMERIC_PREFIX = re.compile(r"^\s*([+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))")
_SPECIAL = re.compile(r"^\s*([+-]?)(nan|inf(?:inity)?)", re.IGNORECASE)


def truthy(value: str | None) -> bool:
    """Perl truth of a scalar string: undef, "" and "0" are false."""
    return value is not None and value != "" and value != "0"


def num(value: str | float | int | None) -> float:
    """Perl's numeric value of a scalar: the leading number, else 0."""
    if value is None:
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    m = _NUMERIC_PREFIX.match(value)
    if not m:
        if special := _SPECIAL.match(value):  # Perl reads "nan" and "inf" as numbers too
            number = float("nan") if special.group(2).lower() == "nan" else float("inf")
            return -number if special.group(1) == "-" else number
        return 0.0
    try:
        return float(m.group(1))
    except ValueError:  # pragma: no cover - the pattern only admits numbers
        return 0.0


def num_str(value: float) -> str:
    """How Perl prints a number: integers plainly, others with %.15g."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.15g}"


# Perl escapes Python's re lacks or reads differently (an escaped backslash is kept as it is).
_PERL_ESCAPES = re.compile(r"\\(\\|z|Z|h)")
_PYTHON_FOR = {"\\": "\\\\", "z": "\\Z", "Z": "(?=\\n?\\Z)", "h": "[ \\t]"}


def _translate(pattern: str) -> str:
    return _PERL_ESCAPES.sub(lambda m: _PYTHON_FOR[m.group(1)], pattern)


@functools.lru_cache(maxsize=4096)
def regex(pattern: str) -> re.Pattern[str] | None:
    """A compiled case-insensitive pattern, or None if Perl would refuse it too."""
    try:
        with warnings.catch_warnings():  # "possible nested set": Perl reads [[ literally too
            warnings.simplefilter("ignore", FutureWarning)
            return re.compile(_translate(pattern), re.IGNORECASE)
    except (re.error, RecursionError, OverflowError):
        return None


@functools.lru_cache(maxsize=4096)
def regex_cs(pattern: str) -> re.Pattern[str] | None:
    """Case-sensitive variant (DNSBL answer filters are matched as written)."""
    try:
        return re.compile(pattern)
    except (re.error, RecursionError, OverflowError):
        return None


def search(pattern: str, text: str) -> bool:
    compiled = regex(pattern)
    return compiled is not None and compiled.search(text) is not None
