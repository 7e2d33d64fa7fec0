"""The signer and verifier on whole messages: against dkimpy, RFC 8463's example, and broken
input. Keys are answered from a dict here (the key lookup is a parameter); the same paths
against real DNS and real peers are in test_interop.py and test_milter_postfix.py."""

from __future__ import annotations

import re
import time

import dkim
import pytest

from postward.dkim.keys import generate_private_key, parse_private_key
from postward.dkim.offline import sign_message, verify_message, with_crlf
from postward.dkim.opendkim_conf import DEFAULT_OVERSIGN_HEADERS, DEFAULT_SIGN_HEADERS
from postward.dkim.signer import SigningKey
from postward.dkim.verifier import KeyAnswer
from tests.dkim.test_keys import RFC8463_MESSAGE, RFC8463_PUBLIC, RFC8463_RSA_RECORD

MESSAGE = with_crlf(
    b"From: Alice <alice@example.test>\n"
    b"To: bob@other.test\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= and a very long subject that will need folding when "
    b"it is\n\t continued on the next line\n"
    b"Date: Wed, 25 Nov 2026 10:00:00 +0000\n"
    b"Message-ID: <1@example.test>\n"
    b"X-Eight-Bit: \xc3\xa9t\xc3\xa9\n"
    b"\n"
    b"Hello  Bob,\t \n\nbody text\n\n\n"
)


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {"rsa": SigningKey("example.test", "rsa", generate_private_key("rsa", 2048)),
            "ed": SigningKey("example.test", "ed", generate_private_key("ed25519"))}


def _dns(keys: dict[str, SigningKey]) -> dict[str, str]:
    return {f"{k.selector}._domainkey.{k.domain}": k.key.public_record() for k in keys.values()}


def _lookup(records: dict[str, str]):  # type: ignore[no-untyped-def]
    return lambda name: KeyAnswer(tuple(r for r in [records.get(name)] if r))


def _sign(keys: list[SigningKey], message: bytes = MESSAGE,
          canon: tuple[str, str] = ("relaxed", "relaxed")) -> bytes:
    sigs = sign_message(message, keys, int(time.time()), DEFAULT_SIGN_HEADERS,
                        DEFAULT_OVERSIGN_HEADERS, canon)
    return sigs + message


@pytest.mark.parametrize("canon", [("relaxed", "relaxed"), ("simple", "simple"),
                                   ("relaxed", "simple"), ("simple", "relaxed")])
def test_rsa_and_ed25519_in_one_message_pass(keys, canon) -> None:  # type: ignore[no-untyped-def]
    signed = _sign([keys["rsa"], keys["ed"]], canon=canon)
    outcomes = verify_message(signed, _lookup(_dns(keys)))
    assert [(o.result, o.algorithm) for o in outcomes] == [
        ("pass", "rsa-sha256"), ("pass", "ed25519-sha256")]


def test_dkimpy_verifies_what_we_sign(keys) -> None:  # type: ignore[no-untyped-def]
    signed = _sign([keys["rsa"]])
    records = _dns(keys)
    dnsfunc = lambda name, timeout=5: records[name.decode().rstrip(".")].encode()  # noqa: E731
    assert dkim.verify(signed, dnsfunc=dnsfunc)


def test_we_verify_what_dkimpy_signs(keys) -> None:  # type: ignore[no-untyped-def]
    pem = keys["rsa"].key.to_pem()
    signature = dkim.sign(MESSAGE, b"rsa", b"example.test", pem,
                          canonicalize=(b"relaxed", b"simple"))
    outcomes = verify_message(signature + MESSAGE, _lookup(_dns(keys)))
    assert [o.result for o in outcomes] == ["pass"]


def test_rfc8463_example_verifies() -> None:
    records = {"brisbane._domainkey.football.example.com":
               f"v=DKIM1; k=ed25519; p={RFC8463_PUBLIC}",
               "test._domainkey.football.example.com": RFC8463_RSA_RECORD}
    outcomes = verify_message(RFC8463_MESSAGE if isinstance(RFC8463_MESSAGE, bytes)
                              else RFC8463_MESSAGE.encode(), _lookup(records))
    assert [(o.result, o.selector) for o in outcomes] == [("pass", "brisbane"),
                                                          ("pass", "test")]


def test_altered_body_and_header_fail(keys) -> None:  # type: ignore[no-untyped-def]
    signed = _sign([keys["rsa"]])
    body_changed = signed.replace(b"body text", b"body text!")
    header_changed = signed.replace(b"To: bob@other.test", b"To: eve@other.test")
    lookup = _lookup(_dns(keys))
    assert verify_message(body_changed, lookup)[0].reason == "body hash did not verify"
    assert verify_message(header_changed, lookup)[0].reason == "signature did not verify"


def test_added_oversigned_header_breaks_the_signature(keys) -> None:  # type: ignore[no-untyped-def]
    signed = _sign([keys["rsa"]])
    added = signed.replace(b"\r\n\r\n", b"\r\nSubject: a second subject\r\n\r\n", 1)
    assert verify_message(added, _lookup(_dns(keys)))[0].result == "fail"


def test_relaxed_survives_refolding_and_whitespace(keys) -> None:  # type: ignore[no-untyped-def]
    signed = _sign([keys["rsa"]])
    refolded = signed.replace(b"To: bob@other.test", b"To:   bob@other.test  ")
    refolded = refolded.replace(b"Hello  Bob,", b"Hello Bob,")
    assert verify_message(refolded, _lookup(_dns(keys)))[0].result == "pass"


def test_empty_body_and_lf_only_message(keys) -> None:  # type: ignore[no-untyped-def]
    bare = b"From: a@example.test\nSubject: nothing\n\n"
    for canon in (("relaxed", "relaxed"), ("simple", "simple")):
        signed = _sign([keys["rsa"]], with_crlf(bare), canon)
        assert verify_message(signed, _lookup(_dns(keys)))[0].result == "pass"


@pytest.mark.parametrize(("tamper", "result", "reason"), [
    (lambda s: s.replace(b"a=rsa-sha256", b"a=rsa-sha1"), "permerror", "not accepted"),
    (lambda s: s.replace(b"v=1;", b"v=2;"), "permerror", "v= value is not 1"),
    (lambda s: s.replace(b"DKIM-Signature: v=1;", b"DKIM-Signature: v=1; v=1;"),
     "permerror", "bad tag list"),
    (lambda s: s.replace(b" d=example.test;", b" d=nokey.test;"), "permerror",
     "no key published"),
    (lambda s: re.sub(rb"\bh=[^;]+;", b"h=to:subject;", s), "permerror", "does not list From"),
    (lambda s: s.replace(b"c=relaxed/relaxed", b"c=fancy/relaxed"), "permerror",
     "canonicalization"),
])
def test_malformed_signatures_are_permerrors(keys, tamper, result, reason) -> None:  # type: ignore[no-untyped-def]
    signed = tamper(_sign([keys["rsa"]]))
    outcome = verify_message(signed, _lookup(_dns(keys)))[0]
    assert (outcome.result, reason in outcome.reason) == (result, True), outcome


def test_dns_failure_is_temperror_and_revoked_key_permerror(keys) -> None:  # type: ignore[no-untyped-def]
    signed = _sign([keys["rsa"]])
    assert verify_message(signed, lambda n: KeyAnswer((), transient=True))[0].result == \
        "temperror"
    revoked = {"rsa._domainkey.example.test": "v=DKIM1; k=rsa; p="}
    outcome = verify_message(signed, _lookup(revoked))[0]
    assert (outcome.result, outcome.reason) == ("permerror", "key revoked (empty p=)")


def test_short_key_is_refused_below_minimum_bits() -> None:
    short = SigningKey("example.test", "short", generate_private_key("rsa", 1024))
    signed = _sign([short])
    records = {"short._domainkey.example.test": short.key.public_record()}
    assert verify_message(signed, _lookup(records), minimum_bits=1024)[0].result == "pass"
    assert verify_message(signed, _lookup(records), minimum_bits=2048)[0].result == "permerror"


def test_ed25519_seed_form_signs() -> None:
    from tests.dkim.test_keys import RFC8463_SEED

    key = SigningKey("football.example.com", "brisbane",
                     parse_private_key(RFC8463_SEED.encode(), "rfc8463"))
    signed = _sign([key])
    records = {"brisbane._domainkey.football.example.com":
               f"v=DKIM1; k=ed25519; p={RFC8463_PUBLIC}"}
    assert verify_message(signed, _lookup(records))[0].result == "pass"
