"""Checking a message's DKIM-Signature fields (RFC 6376 section 6), body hashes streamed.

A signature is read when the header ends (:func:`prepare`), which tells the body hashes it
needs; those are computed while the body streams (``BodyHashes``); at the end each signature is
checked (:func:`check`). dkimpy parses and validates the tags and hashes the header fields; the
public-key operation and key-record parsing are OpenSSL's (via ``postward.dkim.keys``), which
also covers Ed25519 without PyNaCl.

Results are RFC 8601's: pass, fail, neutral (a signature we do not evaluate), temperror (DNS
trouble: try again later), permerror (a broken signature or key record).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import dkim
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.util import InvalidTagValueList, parse_tag_value

from postward.dkim.canonical import BodyHashes
from postward.dkim.header_hash import hash_signed_fields
from postward.dkim.headers import unfold
from postward.dkim.keys import KeyRecordError, PublicKey, parse_public_record

PASS, FAIL, NEUTRAL, TEMPERROR, PERMERROR = "pass", "fail", "neutral", "temperror", "permerror"

_HASHES = {b"rsa-sha256": ("rsa", "sha256"), b"ed25519-sha256": ("ed25519", "sha256")}
_WHITESPACE = re.compile(rb"\s+")
_H_SEPARATOR = re.compile(rb"\s*:\s*")


@dataclass(frozen=True)
class KeyAnswer:
    """What a key lookup found: TXT strings (each record joined) or why there are none."""

    records: tuple[str, ...]
    transient: bool = False      # timeout / SERVFAIL: temperror, not permerror
    from_cache: bool = False
    ttl: int = 0


KeyLookup = Callable[[str], KeyAnswer]


@dataclass(frozen=True)
class Signature:
    """One DKIM-Signature field, parsed at end of header."""

    index: int                       # 0 = topmost DKIM-Signature field
    field: tuple[bytes, bytes]       # (name, value) as in the message
    tags: dict[bytes, bytes]
    problem: str = ""                # set: permerror without looking further

    @property
    def domain(self) -> str:
        return self.tags.get(b"d", b"").decode("ascii", "replace").lower()

    @property
    def selector(self) -> str:
        return self.tags.get(b"s", b"").decode("ascii", "replace")

    @property
    def algorithm(self) -> str:
        return self.tags.get(b"a", b"").decode("ascii", "replace").lower()

    @property
    def body_key(self) -> tuple[str, str, int | None]:
        _h, body = self.tags.get(b"c", b"simple/simple").decode().partition("/")[::2]
        length = self.tags.get(b"l")
        return (body or "simple", _HASHES[self.tags[b"a"]][1],
                int(length) if length is not None else None)


@dataclass(frozen=True)
class Outcome:
    """The verdict on one signature, with what the Authentication-Results header reports."""

    result: str
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    identity: str = ""
    header_b: str = ""
    key_bits: int = 0
    reason: str = ""
    testing: bool = False


def prepare(fields: Sequence[tuple[bytes, bytes]], limit: int, body: BodyHashes) -> list[Signature]:
    """Parse the first ``limit`` DKIM-Signature fields and register their body hashes."""
    found: list[Signature] = []
    for name, value in fields:
        if name.lower() != b"dkim-signature":
            continue
        if len(found) >= limit:
            break
        sig = _parse(len(found), (name, value))
        if not sig.problem:
            body.want(*sig.body_key)
        found.append(sig)
    return found


def _parse(index: int, field: tuple[bytes, bytes]) -> Signature:
    try:
        tags = parse_tag_value(unfold(field[1]))
    except InvalidTagValueList as e:
        return Signature(index, field, {}, f"bad tag list: {e}")
    try:
        dkim.validate_signature_fields(tags)
    except dkim.ValidationError as e:
        return Signature(index, field, tags, str(e))
    if tags[b"a"] not in _HASHES:
        # rsa-sha1 must not be accepted (RFC 8301 3.1).
        return Signature(index, field, tags, f"algorithm {tags[b'a'].decode()} not accepted")
    signed = [h.strip().lower() for h in tags[b"h"].split(b":")]
    if b"from" not in signed:
        return Signature(index, field, tags, "h= does not list From (RFC 6376 5.4)")
    try:
        CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError:
        return Signature(index, field, tags, "unknown canonicalization c=")
    return Signature(index, field, tags)


def check(sig: Signature, fields: Sequence[tuple[bytes, bytes]], body: BodyHashes,
          lookup: KeyLookup, minimum_bits: int = 1024) -> Outcome:
    """The verdict on ``sig`` for a message with header ``fields`` and streamed ``body``."""
    base = {"domain": sig.domain, "selector": sig.selector, "algorithm": sig.algorithm,
            "identity": sig.tags.get(b"i", b"").decode("utf-8", "replace"),
            "header_b": _WHITESPACE.sub(b"", sig.tags.get(b"b", b""))[:8].decode("ascii",
                                                                                 "replace")}
    if sig.problem:
        return Outcome(PERMERROR, reason=sig.problem, **base)
    key_type, hash_name = _HASHES[sig.tags[b"a"]]
    name = f"{sig.selector}._domainkey.{sig.domain}"
    answer = lookup(name)
    if not answer.records:
        if answer.transient:
            return Outcome(TEMPERROR, reason=f"key lookup for {name} failed", **base)
        return Outcome(PERMERROR, reason=f"no key published at {name}", **base)
    try:
        key = _parsed_record(answer.records[0])
    except KeyRecordError as e:
        return Outcome(PERMERROR, reason=f"key record at {name}: {e}", **base)
    problem = _key_problem(sig, key, key_type, hash_name, minimum_bits)
    if problem:
        return Outcome(PERMERROR, reason=problem, key_bits=key.bits, **base)
    extra = {"key_bits": key.bits, "testing": key.testing}
    expected = _b64(sig.tags[b"bh"])
    if expected is None or body.digest(*sig.body_key) != expected:
        return Outcome(FAIL, reason="body hash did not verify", **base, **extra)
    signature = _b64(sig.tags[b"b"])
    if signature is None:
        return Outcome(PERMERROR, reason="b= is not base64", **base, **extra)
    if not key.verify_digest(signature, _header_digest(sig, fields)):
        return Outcome(FAIL, reason="signature did not verify", **base, **extra)
    return Outcome(PASS, **base, **extra)


@lru_cache(maxsize=1024)
def _parsed_record(text: str) -> PublicKey:
    """Records repeat (the same few keys sign most mail): parse each text once."""
    return parse_public_record(text)


def _key_problem(sig: Signature, key: PublicKey, key_type: str, hash_name: str,
                 minimum_bits: int) -> str:
    if key.key is None:
        return "key revoked (empty p=)"
    if key.algorithm != key_type:
        return f"key type {key.algorithm} does not match a={sig.algorithm}"
    if key.hashes and hash_name not in key.hashes:
        return f"key allows only h={':'.join(key.hashes)}"
    if key.services and not {"*", "email"} & set(key.services):
        return "key is not for email (s=)"
    if key.algorithm == "rsa" and key.bits < minimum_bits:
        return f"key too short ({key.bits} bits, MinimumKeyBits {minimum_bits})"
    if key.strict and b"i" in sig.tags:
        identity_domain = sig.tags[b"i"].rpartition(b"@")[2].decode("utf-8", "replace").lower()
        if identity_domain != sig.domain:
            return "key has t=s but i= is a subdomain of d="
    return ""


def _header_digest(sig: Signature, fields: Sequence[tuple[bytes, bytes]]) -> bytes:
    policy = CanonicalizationPolicy.from_c_value(sig.tags.get(b"c", b"simple/simple"))
    include = [h.lower() for h in _H_SEPARATOR.split(sig.tags[b"h"].strip())]
    if b"from" in include:
        # Hash every From field, as dkimpy does: a second, unsigned From: must break the
        # signature rather than be shown to the reader (dkimpy bug #644046).
        include.append(b"from")
    hasher = hashlib.sha256()
    hash_signed_fields(hasher, policy, fields, include, sig.field)
    return hasher.digest()


def _b64(value: bytes) -> bytes | None:
    try:
        return base64.b64decode(_WHITESPACE.sub(b"", value), validate=True)
    except (binascii.Error, ValueError):
        return None
