"""Signing and verifying a whole message held in memory: ``postward dkim sign|verify``.

The same signer, verifier and body hashers as the milter, fed from one byte string, so what an
admin checks by hand is what the milter does. LF line ends are taken as CRLF (a message saved
on a Unix box), as OpenDKIM's and dkimpy's tools do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dkim import rfc822_parse

from postward.dkim import verifier
from postward.dkim.canonical import BodyHashes
from postward.dkim.signer import SigningKey, headers_to_sign, make_signature

_LINE_END = re.compile(rb"\r?\n")


def split_message(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Header fields in dkimpy form and the body with CRLF line ends."""
    headers, body = rfc822_parse(data)
    return [(bytes(n), bytes(v)) for n, v in headers], body


def sign_message(data: bytes, keys: Sequence[SigningKey], timestamp: int,
                 sign: Sequence[str], oversign: Sequence[str],
                 canonicalization: tuple[str, str] = ("relaxed", "relaxed")) -> bytes:
    """The DKIM-Signature fields (one per key, CRLF-terminated) for ``data``."""
    fields, body = split_message(data)
    hashes = BodyHashes()
    hashes.want(canonicalization[1])
    hashes.update(body)
    include = headers_to_sign(fields, sign, oversign)
    out = []
    for key in keys:
        value = make_signature(fields, hashes.digest(canonicalization[1]), key, include,
                               timestamp, canonicalization)
        out.append(b"DKIM-Signature:" + value + b"\r\n")
    return b"".join(out)


def verify_message(data: bytes, lookup: verifier.KeyLookup, max_signatures: int = 10,
                   minimum_bits: int = 1024) -> list[verifier.Outcome]:
    """One outcome per DKIM-Signature field (none: the message is unsigned)."""
    fields, body = split_message(data)
    hashes = BodyHashes()
    signatures = verifier.prepare(fields, max_signatures, hashes)
    hashes.update(body)
    return [verifier.check(s, fields, hashes, lookup, minimum_bits) for s in signatures]


def with_crlf(data: bytes) -> bytes:
    return _LINE_END.sub(b"\r\n", data)
