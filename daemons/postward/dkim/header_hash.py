"""Hashing the signed header fields (RFC 6376 3.7), as dkimpy's ``hash_headers`` does, faster.

Two differences in how, none in what: only the fields the signature names are canonicalized
(dkimpy canonicalizes the whole header first), and ``b=`` is emptied by a tag-list split
instead of dkimpy's ``RE_BTAG``, whose per-character folding pattern took ~150 µs on a 2048-bit
signature — a quarter of verifying a small message. Tests compare both ways.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_B_TAG = re.compile(rb"^([ \t\r\n]*b[ \t\r\n]*=)(.*?)([ \t\r\n]*)$", re.DOTALL)


def without_b(value: bytes) -> bytes:
    """A DKIM-Signature value with the ``b=`` tag's data removed (RFC 6376 3.5: hashed with
    an empty b=), whitespace around it kept as dkimpy keeps it."""
    parts = value.split(b";")
    for i, part in enumerate(parts):
        m = _B_TAG.match(part)
        if m:
            tail = m.group(3)
            if i == len(parts) - 1 and tail in (b"\r\n", b"\n"):
                tail = b""   # dkimpy drops a line break that ends the field right after b=
            parts[i] = m.group(1) + (b"" if m.group(2).strip() else m.group(2)) + tail
            break
    return b";".join(parts)


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
    chosen = policy.canonicalize_headers(select(fields, include))
    name, value = signature_field
    [(sname, svalue)] = policy.canonicalize_headers([(name, without_b(value))])
    for n, v in [*chosen, (sname, svalue.rstrip())]:
        hasher.update(n)
        hasher.update(b":")
        hasher.update(v)
