"""The Authentication-Results header (RFC 8601) postward-dkim adds, and spotting forged ones.

Downstream filters (Sieve, the user's client) trust an Authentication-Results field only when
it carries their own host's authserv-id, so a sender must never be able to supply one: fields
with our id that arrived with the message are removed before ours is added (RFC 8601 5).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from postward.dkim.verifier import Outcome

_AUTHSERV_ID = re.compile(rb"^\s*(?:\([^)]*\)\s*)*([^\s;()]+)")
_VALUE_SAFE = re.compile(r"^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.@]+$")


def authserv_id_of(value: bytes) -> str:
    """The authserv-id an Authentication-Results value starts with ('' if none)."""
    m = _AUTHSERV_ID.match(value.replace(b"\r\n", b" ").replace(b"\n", b" "))
    return m.group(1).decode("utf-8", "replace").lower() if m else ""


def forged_indexes(fields: Sequence[tuple[bytes, bytes]], authserv_id: str) -> list[int]:
    """1-based positions, among Authentication-Results fields, of those claiming our id (what
    the milter protocol's change-header call wants)."""
    ours = authserv_id.lower()
    found = []
    position = 0
    for name, value in fields:
        if name.lower() == b"authentication-results":
            position += 1
            if authserv_id_of(value) == ours:
                found.append(position)
    return found


def _pvalue(text: str) -> str:
    """A property value, quoted when it holds characters a token may not."""
    if _VALUE_SAFE.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dkim_result(outcome: Outcome) -> str:
    """One ``dkim=`` resinfo, as OpenDKIM writes it (with header.s and header.a added)."""
    parts = [f"dkim={outcome.result}"]
    comment = []
    if outcome.key_bits:
        comment.append(f"{outcome.key_bits}-bit key")
    if outcome.testing:
        comment.append("test mode")
    if outcome.reason:
        comment.append(outcome.reason.replace("(", "[").replace(")", "]"))
    if comment:
        parts.append("(" + "; ".join(comment) + ")")
    if outcome.domain:
        parts.append(f"header.d={_pvalue(outcome.domain)}")
    if outcome.identity:
        parts.append(f"header.i={_pvalue(outcome.identity)}")
    if outcome.selector:
        parts.append(f"header.s={_pvalue(outcome.selector)}")
    if outcome.algorithm:
        parts.append(f"header.a={_pvalue(outcome.algorithm)}")
    if outcome.header_b:
        parts.append(f"header.b={_pvalue(outcome.header_b)}")
    return " ".join(parts)


def header_value(authserv_id: str, outcomes: Sequence[Outcome],
                 extra: Sequence[str] = ()) -> str:
    """The value of our Authentication-Results field; ``dkim=none`` when nothing was signed;
    ``extra`` resinfo (``arc=...``) follow."""
    results = [dkim_result(o) for o in outcomes] or ["dkim=none"]
    results += extra
    return f" {authserv_id};\n\t" + ";\n\t".join(results)
