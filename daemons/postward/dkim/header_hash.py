"""Hashing the signed header fields (RFC 6376 3.7), as dkimpy's ``hash_headers`` does, faster.

Three differences in how, none in what: only the fields the signature names are
canonicalized (dkimpy canonicalizes the whole header first); ``b=`` is emptied by a tag-list
split instead of dkimpy's ``RE_BTAG``, whose per-character folding pattern took ~150 µs on a
2048-bit signature — a quarter of verifying a small message; and relaxed canonicalization
unfolds with bytes methods and skips the whitespace regex where there is nothing to compress
(dkimpy's ``\r?\n`` regex alone took ~12 µs on a signature field). Tests compare both ways.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from dkim.canonicalization import Relaxed

from postward.dkim.headers import unfold

_FWS = b" \t\r\n"
_WSP_RUN = re.compile(rb"[\t ]+")


def without_b(value: bytes) -> bytes:
    """A DKIM-Signature value with the ``b=`` tag's data removed (RFC 6376 3.5: hashed with
    an empty b=), whitespace around it kept as dkimpy keeps it."""
    parts = value.split(b";")
    for i, part in enumerate(parts):
        # dkimpy's pattern per tag: ([FWS]* b [FWS]* =)(data)([FWS]* at the end).
        name = part.lstrip(_FWS)
        if name[:1] != b"b":
            continue
        after_b = name[1:].lstrip(_FWS)
        if after_b[:1] != b"=":
            continue
        start = len(part) - len(after_b) + 1          # just past the '='
        data_end = len(part.rstrip(_FWS))
        head, data, tail = part[:start], part[start:max(start, data_end)], part[max(
            start, data_end):]
        if i == len(parts) - 1 and tail in (b"\r\n", b"\n"):
            tail = b""   # dkimpy drops a line break that ends the field right after b=
        parts[i] = head + (b"" if data.strip() else data) + tail
        break
    return b";".join(parts)


def relaxed_headers(fields: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """dkimpy's ``Relaxed.canonicalize_headers``, byte for byte: name lowercased without
    trailing whitespace; value unfolded, runs of WSP made one space, stripped, CRLF-ended."""
    out = []
    for name, value in fields:
        value = unfold(value)
        if b"\t" in value or b"  " in value:
            value = _WSP_RUN.sub(b" ", value)
        out.append((name.lower().rstrip(), value.strip() + b"\r\n"))
    return out


def canonical_fields(policy: Any, fields: Sequence[tuple[bytes, bytes]]
                     ) -> list[tuple[bytes, bytes]]:
    if policy.header_algorithm is Relaxed:
        return relaxed_headers(fields)
    return list(policy.canonicalize_headers(fields))


def select(fields: Sequence[tuple[bytes, bytes]], include: Sequence[bytes]
           ) -> list[tuple[bytes, bytes]]:
    """dkimpy's ``select_headers``: for each name in ``include``, the next field of that name
    from the bottom up (field names compared as relaxed canonicalization sees them)."""
    names = [n.lower().rstrip() for n, _v in fields]
    chosen = []
    last: dict[bytes, int] = {}
    for h in include:
        i = last.get(h, len(fields))
        while i > 0:
            i -= 1
            if names[i] == h:
                chosen.append(fields[i])
                break
        last[h] = i
    return chosen


def hash_signed_fields(hasher: Any, policy: Any, fields: Sequence[tuple[bytes, bytes]],
                       include: Sequence[bytes], signature_field: tuple[bytes, bytes]) -> None:
    """Feed ``hasher`` the canonicalized fields named by ``include`` and the signature field
    itself with b= empty and no final line break."""
    chosen = canonical_fields(policy, select(fields, include))
    name, value = signature_field
    [(sname, svalue)] = canonical_fields(policy, [(name, without_b(value))])
    for n, v in [*chosen, (sname, svalue.rstrip())]:
        hasher.update(n)
        hasher.update(b":")
        hasher.update(v)
