"""How a rule item is compared with a request value: postfwd 1.35's %postfwd_compare.

Each function takes the operator, the rule's value, the request's value and returns a match.
The item's name picks the function (client_address: cidr; size: numeric; ...), anything else
is the "default" string comparison, where ``=`` is an unanchored case-insensitive regex.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from postward.policyd import perl

_IPV4 = re.compile(r"^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$")
_CIDR = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+)/(\d+)$")

MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}
WEEKDAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}

Compare = Callable[[str, str, str], bool]


def default(cmp: str, val: str, item: str) -> bool:
    if cmp == "==":
        return perl.truthy(item) and item.lower() == val.lower()
    if cmp == "!=":
        return perl.truthy(item) and item.lower() != val.lower()
    numeric = {"=<": lambda a, b: a <= b, "<": lambda a, b: a < b,
               "!<": lambda a, b: not a <= b, "=>": lambda a, b: a >= b,
               ">": lambda a, b: a > b, "!>": lambda a, b: not a >= b}
    if cmp in numeric:
        return numeric[cmp](perl.num(item or "0"), perl.num(val))
    if cmp == "=~":
        return perl.search(val, item)
    if cmp == "!~":
        compiled = perl.regex(val)
        return compiled is not None and compiled.search(item) is None
    # '=' (and anything else): a regex, with optional surrounding slashes
    return perl.search(re.sub(r"^/?(.*?)/?$", r"\1", val, flags=re.DOTALL), item)


def numeric(cmp: str, val: str, item: str) -> bool:
    a = perl.num(item if perl.truthy(item) else "0")
    b = perl.num(val if perl.truthy(val) else "0")
    return {"==": a == b, "=<": a <= b, "=>": a >= b, "<": a < b, ">": a > b,
            "!=": a != b, "!<": not a <= b, "!>": not a >= b}.get(cmp, a >= b)


def _cidr_parse(text: str) -> tuple[int, int] | None:
    m = _CIDR.match(text)
    if not m:
        return None
    *octets, bits = (int(g) for g in m.groups())
    if any(o >= 256 for o in octets) or bits > 32:
        return None
    net = (octets[0] << 24) + (octets[1] << 16) + (octets[2] << 8) + octets[3]
    mask = ~((1 << (32 - bits)) - 1) & 0xFFFFFFFF
    return net & mask, mask


def cidr_match(val: str, address: str) -> bool:
    """True if IPv4 ``address`` is inside ``val`` (a network, or one address)."""
    if not re.search(r"/\d{1,2}$", val):
        val += "/32"
    parsed = _cidr_parse(val)
    if parsed is None:
        return False
    net, mask = parsed
    a, b, c, d = (int(x) for x in address.split("."))
    return (((a << 24) + (b << 16) + (c << 8) + d) & mask) == net


def cidr(cmp: str, val: str, item: str) -> bool:
    result = perl.truthy(val) and perl.truthy(item)
    if result:
        result = val == "0.0.0.0/0"
        if not result:
            if not _IPV4.match(item):
                # postfwd's cidr type knows IPv4 only; anything else is compared as a string
                return default(cmp, val, item)
            result = cidr_match(val, item)
    return not result if cmp == "!=" else result


def _range(val: str) -> tuple[str | None, str | None]:
    parts = re.split(r"\s*-\s*", val)
    while parts and parts[-1] == "":  # Perl's split drops trailing empty fields
        parts.pop()
    return (parts[0] if parts else None), (parts[1] if len(parts) > 1 else None)


def _bounds(val: str, now: int, name_to_number: Callable[[str], float]) -> tuple[float, float]:
    low, high = _range(val)
    lo = name_to_number(low) if perl.truthy(low) else now  # type: ignore[arg-type]
    if perl.truthy(high):
        return lo, name_to_number(high)  # type: ignore[arg-type]
    return lo, (now if "-" in val else lo)


def _calendar(table: dict[str, int]) -> Callable[[str], float]:
    def to_number(name: str) -> float:
        if re.fullmatch(r"\d", name):  # postfwd takes one digit as a number, else a name
            return float(name)
        # postfwd's tables spell each name three ways: Jan, jan, JAN; others count as 0
        if name in (name.capitalize(), name.lower(), name.upper()):
            return float(table.get(name.lower(), 0))
        return 0.0

    return to_number


def _date_fields(item: str) -> list[int]:
    return [int(x) for x in item.split(",")]


def _in_range(cmp: str, lo: float, hi: float, now: float) -> bool:
    result = lo <= now <= hi
    return not result if cmp == "!=" else result


def months(cmp: str, val: str, item: str) -> bool:
    now = _date_fields(item)[4]
    lo, hi = _bounds(val, now, _calendar(MONTHS))
    return _in_range(cmp, lo, hi, now)


def days(cmp: str, val: str, item: str) -> bool:
    now = _date_fields(item)[6]
    lo, hi = _bounds(val, now, _calendar(WEEKDAYS))
    return _in_range(cmp, lo, hi, now)


def date(cmp: str, val: str, item: str) -> bool:
    _sec, _min, _hour, mday, mon, year, *_ = _date_fields(item)
    today = f"{year + 1900}{mon + 1:02d}{mday:02d}"
    lo, hi = _bounds(val, int(today), lambda d: perl.num("".join(reversed(d.split(".")))))
    return _in_range(cmp, lo, hi, int(today))


def time_of_day(cmp: str, val: str, item: str) -> bool:
    sec, minute, hour, *_ = _date_fields(item)
    now = int(f"{hour:02d}{minute:02d}{sec:02d}")
    lo, hi = _bounds(val, now, lambda t: perl.num("".join(t.split(":"))))
    return _in_range(cmp, lo, hi, now)


# Items with their own comparison; DNS-based ones (rbl, rhsbl*, helo_address, sender_*_names
# and sender_*_addrs) are handled by the engine, which has the resolver.
BY_ITEM: dict[str, Compare] = {
    "cidr": cidr,
    "numeric": numeric,
    "default": default,
    "client_address": cidr,
    "encryption_keysize": numeric,
    "size": numeric,
    "recipient_count": numeric,
    "request_score": numeric,
    "months": months,
    "days": days,
    "date": date,
    "time": time_of_day,
}

DNS_ITEMS = frozenset({"helo_address", "sender_ns_names", "sender_mx_names", "sender_ns_addrs",
                       "sender_mx_addrs"})
DATE_ITEMS = frozenset({"date", "time", "days", "months"})
