"""Signing and verifying a whole message held in memory: ``postward dkim sign|verify``.

The same signer, verifier and body hashers as the milter, fed from one byte string, so what an
admin checks by hand is what the milter does. LF line ends are taken as CRLF (a message saved
on a Unix box), as OpenDKIM's and dkimpy's tools do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from postward.dkim import verifier
from postward.dkim.canonical import BodyHashes
from postward.dkim.signer import SigningKey, headers_to_sign, make_signature

_LINE_END = re.compile(rb"\r?\n")
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")


def split_message(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Header fields in dkimpy form (name exactly as written, value + CRLF) and the body with
    CRLF line ends. Unlike dkimpy's parser it takes RFC 5322's obsolete ``Name : value`` (white
    space before the colon, RFC 6376 3.4.2 canonicalizes it) and skips a leading mbox
    ``From `` line and lines that are no header field, instead of refusing the message."""
    lines = _LINE_END.split(data)
    fields: list[list[bytes]] = []
    i = 0
    for i, line in enumerate(lines):  # noqa: B007 (i is where the body starts)
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if fields:
                fields[-1][1] += line + b"\r\n"
            continue
        name, colon, value = line.partition(b":")
        if colon and name.strip() and _FIELD_NAME.fullmatch(name.rstrip(b" \t")):
            fields.append([name, value + b"\r\n"])
    else:
        i = len(lines)
    return [(n, v) for n, v in fields], b"\r\n".join(lines[i + 1:])


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
