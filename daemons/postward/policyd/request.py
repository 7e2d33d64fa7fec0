"""A policy request as the rules see it: Postfix's attributes plus postfwd's derived items."""

from __future__ import annotations

import re
from collections.abc import Mapping
from itertools import repeat

VERSION_ITEM = "postfwd 1.35"  # what rules testing 'version' expect (see docs/policyd.md)
_ADDRESS = re.compile(r"(.*)@([^@]*)$")
_MAX_NAME, _MAX_VALUE = 512, 512


def parse_attribute(line: str) -> tuple[str, str] | None:
    """``name=value`` as postfwd reads it (see :func:`parse_attribute_bytes`)."""
    return parse_attribute_bytes(line.encode("utf-8", "surrogateescape"))


def parse_attribute_bytes(line: bytes) -> tuple[str, str] | None:
    """``name=value`` as postfwd reads it: a name of 1 to 512 bytes up to the first '=', the
    value cut at 512 bytes. postfwd counts bytes, not characters; names and values are decoded
    with surrogateescape, so a cut through a UTF-8 sequence keeps the exact bytes (and they go
    back out unchanged)."""
    eq = line.find(b"=")
    if not 0 < eq <= _MAX_NAME:
        return None
    return (line[:eq].decode("utf-8", "surrogateescape"),
            line[eq + 1:eq + 1 + _MAX_VALUE].decode("utf-8", "surrogateescape"))


def parse_request(block: bytes) -> tuple[dict[str, str], list[bytes]]:
    """A request's lines (without its final empty line) as attributes, as
    :func:`parse_attribute_bytes` reads each; and the lines that are not ``name=value``.
    Empty lines are skipped; a later attribute of the same name wins."""
    attrs: dict[str, str] = {}
    garbage: list[bytes] = []
    if block.isascii():
        # Every Postfix request in practice: one decode for the whole request, and bytes
        # counted as characters. First all lines at once, in C; checked after.
        lines = block.decode("ascii").split("\n")
        try:
            attrs = dict(map(str.split, lines, repeat("="), repeat(1)))
        except ValueError:  # a line without '=', or an empty one: line by line below
            attrs = {}
        else:
            if attrs and "" not in attrs and max(map(len, attrs)) <= _MAX_NAME \
                    and max(map(len, attrs.values())) <= _MAX_VALUE:
                return attrs, garbage
            attrs = {}
        for line in lines:
            if not line:
                continue
            name, eq, value = line.partition("=")
            if eq and len(name) <= _MAX_NAME and name:
                attrs[name] = value[:_MAX_VALUE]
            else:
                garbage.append(line.encode("ascii"))
        return attrs, garbage
    return parse_request_lines(block)


def parse_request_lines(block: bytes) -> tuple[dict[str, str], list[bytes]]:
    """:func:`parse_request` the plain way: each line by :func:`parse_attribute_bytes`."""
    attrs: dict[str, str] = {}
    garbage: list[bytes] = []
    for raw in block.split(b"\n"):
        if not raw:
            continue
        pair = parse_attribute_bytes(raw)
        if pair is None:
            garbage.append(raw)
        else:
            attrs[pair[0]] = pair[1]
    return attrs, garbage


def with_derived_items(attrs: Mapping[str, str]) -> dict[str, str]:
    """postfwd's request preparation: empty sender becomes '<>', then the builtin items. A new
    dict: ``attrs`` is not changed.

    Faithful to a Perl detail: a recipient without '@' inherits the sender's local part and
    domain (postfwd reads $1/$2 of the last successful match)."""
    request = dict(attrs)
    if not request.get("sender"):
        request["sender"] = "<>"
    derived: dict[str, str] = {"version": VERSION_ITEM}
    last: tuple[str, str] = ("", "")
    if m := _ADDRESS.match(request["sender"]):
        last = (m.group(1), m.group(2))
    derived["sender_localpart"], derived["sender_domain"] = last
    if m := _ADDRESS.match(request.get("recipient", "")):
        last = (m.group(1), m.group(2))
    derived["recipient_localpart"], derived["recipient_domain"] = last
    derived["reverse_address"] = ".".join(reversed(request.get("client_address", "").split(".")))
    for item in ("sender_ns_names", "sender_ns_addrs", "sender_mx_names", "sender_mx_addrs"):
        derived[item] = derived["sender_domain"]
    derived["helo_address"] = request.get("helo_name", "")
    request.update(derived)
    return request
