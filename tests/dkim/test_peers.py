"""The DKIM peer harness works: OpenDKIM, Mail::DKIM and dkimpy verify each other's signatures
through the test DNS, and every one of them rejects what it must reject.

If these fail, interop tests of postward-dkim built on the harness prove nothing, so each
direction the harness offers is exercised once against the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.dkim.peers import (
    DkimKey,
    DkimPeers,
    PeerError,
    PeerUnsupported,
    parse_opendkim_results,
    to_crlf,
    uses_crlf,
)
from tests.testbed.net import free_port

if TYPE_CHECKING:  # imported for real, the plugin module could not be assertion-rewritten
    from tests.dkim.dkim_fixtures import DkimKeys

# Harmless once tests/conftest.py lists the plugin too: pytest registers a plugin only once.
pytest_plugins = ["tests.dkim.dkim_fixtures"]
pytestmark = pytest.mark.integration

MESSAGE = (
    b"From: Alice Example <alice@example.test>\n"
    b"To: Bob <bob@example.com>\n"
    b"Subject: Quarterly figures\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\n"
    b"Message-ID: <figures-1@example.test>\n"
    b"MIME-Version: 1.0\n"
    b"Content-Type: text/plain; charset=us-ascii\n"
    b"\n"
    b"Hello Bob,\n"
    b"\n"
    b"the figures  are attached.   Trailing spaces here:   \n"
    b"\n"
    b"Alice\n"
)


def altered_body(message: bytes) -> bytes:
    return message.replace(b"the figures", b"the FIGURES")


def altered_header(message: bytes) -> bytes:
    return message.replace(b"Subject: Quarterly figures", b"Subject: Quarterly losses")


def assert_all_pass(peers: DkimPeers, message: bytes) -> None:
    for verdict in peers.verify_all(message).values():
        assert verdict.passed, f"{verdict.peer}: {verdict.details}\n{verdict.raw}"


# -- OpenDKIM signs -----------------------------------------------------------------------------


def test_opendkim_rsa_signature_passes_in_every_peer(dkim_peers: DkimPeers,
                                                     dkim_keys: DkimKeys) -> None:
    signed = dkim_peers.opendkim_sign(MESSAGE, dkim_keys.rsa2048)
    assert signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    assert signed.endswith(MESSAGE) and not uses_crlf(signed)
    verdicts = dkim_peers.verify_all(signed)
    assert set(verdicts) == {"opendkim", "Mail::DKIM", "dkimpy"}
    for verdict in verdicts.values():
        assert verdict.results == ["pass"], f"{verdict.peer}: {verdict.details}\n{verdict.raw}"
        assert verdict.signatures[0].selector == "rsa2048"
        assert verdict.signatures[0].domain == "example.test"


@pytest.mark.parametrize("alter", [altered_body, altered_header])
def test_altered_message_fails_in_every_peer(dkim_peers: DkimPeers, dkim_keys: DkimKeys,
                                             alter: Callable[[bytes], bytes]) -> None:
    tampered = alter(dkim_peers.opendkim_sign(MESSAGE, dkim_keys.rsa2048))
    for verdict in dkim_peers.verify_all(tampered).values():
        assert verdict.results == ["fail"], f"{verdict.peer}: {verdict.details}\n{verdict.raw}"
    mail_dkim = dkim_peers.mail_dkim_verify(tampered).details[0]
    expected = "body has been altered" if alter is altered_body else "message has been altered"
    assert expected in mail_dkim


def test_crlf_message_stays_crlf_and_verifies(dkim_peers: DkimPeers,
                                              dkim_keys: DkimKeys) -> None:
    crlf = to_crlf(MESSAGE)
    signed = dkim_peers.opendkim_sign(crlf, dkim_keys.rsa2048, timestamp=1_700_000_000)
    assert signed.endswith(crlf) and b"t=1700000000;" in signed
    assert b"\n" not in signed.replace(b"\r\n", b"")  # no bare LF anywhere
    assert_all_pass(dkim_peers, signed)
    assert_all_pass(dkim_peers, signed.replace(b"\r\n", b"\n"))  # same signature, LF file


def test_opendkim_signs_and_verifies_ed25519(dkim_peers: DkimPeers,
                                             dkim_keys: DkimKeys) -> None:
    signed = dkim_peers.opendkim_sign(MESSAGE, dkim_keys.ed25519)
    assert b"a=ed25519-sha256;" in signed
    assert dkim_peers.opendkim_verify(signed).results == ["pass"]
    assert dkim_peers.dkimpy_verify(signed).results == ["pass"]  # dkimpy child process
    mail_dkim = dkim_peers.mail_dkim_verify(signed)
    assert mail_dkim.results == ["permerror"] and not mail_dkim.signatures[0].supported
    tampered = altered_body(signed)
    assert dkim_peers.opendkim_verify(tampered).results == ["fail"]
    assert dkim_peers.dkimpy_verify(tampered).results == ["fail"]


def test_one_result_per_signature_in_header_order(dkim_peers: DkimPeers,
                                                  dkim_keys: DkimKeys) -> None:
    signed = dkim_peers.opendkim_sign(MESSAGE, dkim_keys.rsa2048)
    signed = dkim_peers.opendkim_sign(signed, dkim_keys.revoked)
    signed = dkim_peers.opendkim_sign(signed, dkim_keys.ed25519)   # top: ed, revoked, rsa2048
    verdicts = dkim_peers.verify_all(signed)
    for verdict in verdicts.values():
        assert [s.selector for s in verdict.signatures] == ["ed", "revoked", "rsa2048"]
        assert verdict.results[2] == "pass" and verdict.results[1] != "pass"
        assert not verdict.passed
    assert verdicts["opendkim"].results[0] == "pass"
    assert verdicts["dkimpy"].results[0] == "pass"
    assert not verdicts["Mail::DKIM"].signatures[0].supported


# -- Mail::DKIM and dkimpy sign --------------------------------------------------------------


@pytest.mark.parametrize("canonicalization", ["relaxed/relaxed", "simple/simple",
                                              "relaxed/simple"])
def test_mail_dkim_signature_passes_in_every_peer(dkim_peers: DkimPeers, dkim_keys: DkimKeys,
                                                  canonicalization: str) -> None:
    signed = dkim_peers.mail_dkim_sign(MESSAGE, dkim_keys.rsa2048, canonicalization)
    assert f"c={canonicalization};".encode() in signed
    assert_all_pass(dkim_peers, signed)
    for verdict in dkim_peers.verify_all(altered_body(signed)).values():
        assert verdict.results == ["fail"], f"{verdict.peer}: {verdict.details}"


def test_mail_dkim_oversigning(dkim_peers: DkimPeers, dkim_keys: DkimKeys) -> None:
    signed = dkim_peers.mail_dkim_sign(MESSAGE, dkim_keys.other, headers={"From": "+"})
    assert b"d=other.test;" in signed and b":from:from:" in signed  # h= is sorted
    assert_all_pass(dkim_peers, signed)
    second_from = signed.replace(b"To: Bob", b"From: mallory@example.test\nTo: Bob")
    for verdict in dkim_peers.verify_all(second_from).values():
        assert not verdict.passed, verdict.peer


def test_mail_dkim_cannot_sign_ed25519(dkim_peers: DkimPeers, dkim_keys: DkimKeys) -> None:
    with pytest.raises(PeerUnsupported, match="RSA only"):
        dkim_peers.mail_dkim_sign(MESSAGE, dkim_keys.ed25519)


@pytest.mark.parametrize("key_name", ["rsa2048", "rsa1024", "other"])
def test_dkimpy_rsa_signature_passes_in_every_peer(dkim_peers: DkimPeers, dkim_keys: DkimKeys,
                                                   key_name: str) -> None:
    key: DkimKey = getattr(dkim_keys, key_name)
    signed = dkim_peers.dkimpy_sign(MESSAGE, key)
    assert signed.endswith(MESSAGE) and not uses_crlf(signed)
    assert_all_pass(dkim_peers, signed)


def test_dkimpy_ed25519_signature_passes_in_opendkim(dkim_peers: DkimPeers,
                                                     dkim_keys: DkimKeys) -> None:
    signed = dkim_peers.dkimpy_sign(MESSAGE, dkim_keys.ed25519)
    assert b"a=ed25519-sha256;" in signed
    assert dkim_peers.opendkim_verify(signed).results == ["pass"]
    assert dkim_peers.opendkim_verify(altered_body(signed)).results == ["fail"]


# -- what must not pass ------------------------------------------------------------------------


@pytest.mark.parametrize("key_name", ["revoked", "broken", "missing"])
def test_unusable_key_record_never_passes(dkim_peers: DkimPeers, dkim_keys: DkimKeys,
                                          key_name: str) -> None:
    key: DkimKey = getattr(dkim_keys, key_name)
    for sign in (dkim_peers.opendkim_sign, dkim_peers.mail_dkim_sign, dkim_peers.dkimpy_sign):
        signed = sign(MESSAGE, key)
        for verdict in dkim_peers.verify_all(signed).values():
            assert len(verdict.results) == 1, verdict.peer
            assert verdict.results[0] in {"fail", "permerror"}, (
                f"{verdict.peer}: {verdict.details}\n{verdict.raw}")


NO_B_TAG = (b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.test; "
            b"s=rsa2048; h=from; bh=AAAA\n")
UNSIGNED_FROM = (b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.test; "
                 b"s=rsa2048; h=subject; bh=AAAA; b=AAAA\n")


def test_malformed_signature_beside_a_good_one(dkim_peers: DkimPeers,
                                               dkim_keys: DkimKeys) -> None:
    """How each peer treats an unusable signature on top of a valid one: never a pass for
    it, and OpenDKIM gives up on the whole message when it cannot parse one."""
    signed = dkim_peers.opendkim_sign(MESSAGE, dkim_keys.rsa2048)
    verdicts = dkim_peers.verify_all(NO_B_TAG + signed)
    opendkim = verdicts["opendkim"]
    assert opendkim.results == ["permerror", "permerror"]
    assert opendkim.details[0].startswith("no result: OpenDKIM gave up")
    assert verdicts["Mail::DKIM"].results == ["fail", "pass"]
    assert verdicts["dkimpy"].results == ["permerror", "pass"]

    verdicts = dkim_peers.verify_all(UNSIGNED_FROM + signed)  # h= must contain From
    assert verdicts["opendkim"].results == ["permerror", "pass"]
    for verdict in verdicts.values():
        assert verdict.results[0] != "pass" and verdict.results[1] == "pass", verdict.peer

    verdicts = dkim_peers.verify_all(b"DKIM-Signature: garbage\n" + signed)
    assert verdicts["Mail::DKIM"].results == ["pass"]  # the garbage header is just dropped
    assert verdicts["dkimpy"].results == ["permerror", "pass"]
    assert not verdicts["opendkim"].passed


def test_dead_dns_is_temperror_in_every_peer(dkim_peers: DkimPeers, dkim_keys: DkimKeys,
                                             loopback: str, tmp_path: Path) -> None:
    signed = dkim_peers.opendkim_sign(MESSAGE, dkim_keys.rsa2048)
    dead = DkimPeers(f"{loopback}:{free_port(loopback)}", tmp_path, dns_timeout=1)
    # The three peers wait out their DNS timeouts side by side: ~1 s instead of ~3 s.
    with ThreadPoolExecutor(3) as pool:
        verdicts = list(pool.map(lambda verify: verify(signed),
                                 [dead.opendkim_verify, dead.mail_dkim_verify,
                                  dead.dkimpy_verify]))
    for verdict in verdicts:
        assert verdict.results == ["temperror"], f"{verdict.peer}: {verdict.details}"


def test_unsigned_message_has_no_results(dkim_peers: DkimPeers) -> None:
    for verdict in dkim_peers.verify_all(MESSAGE).values():
        assert verdict.results == [] and not verdict.passed, verdict.peer


def test_signature_for_another_domain_key_fails(dkim_peers: DkimPeers,
                                                dkim_keys: DkimKeys) -> None:
    # The rsa2048 private key claiming other.test's selector: the published key differs.
    impostor = dkim_keys.rsa2048.with_selector("sel", domain="other.test")
    signed = dkim_peers.opendkim_sign(MESSAGE, impostor)
    for verdict in dkim_peers.verify_all(signed).values():
        assert verdict.results == ["fail"], f"{verdict.peer}: {verdict.details}"


# -- the harness itself ------------------------------------------------------------------------


def test_peer_failure_raises_with_stderr(dkim_peers: DkimPeers, dkim_keys: DkimKeys,
                                         tmp_path: Path) -> None:
    gone = dataclasses.replace(dkim_keys.rsa2048, pem_path=tmp_path / "absent.pem")
    with pytest.raises(PeerError, match="opendkim: signing failed") as caught:
        dkim_peers.opendkim_sign(MESSAGE, gone)
    assert "exit status: 70" in str(caught.value)
    with pytest.raises(PeerError, match="perl script failed") as caught:
        dkim_peers.mail_dkim_sign(MESSAGE, gone)
    assert "absent.pem" in caught.value.stderr


def test_parse_opendkim_authentication_results() -> None:
    output = (
        "### INSHEADER: idx=0 hname='Authentication-Results' hvalue='postward-peer;\n"
        '\tdkim=fail reason="key revoked; really" header.d=example.test '
        "header.i=@example.test header.a=rsa-sha256 header.s=revoked header.b=rmK5dj3O;\n"
        "\tdkim=pass (2048-bit key; unprotected) header.d=example.test header.a=rsa-sha256 "
        "header.s=rsa2048 header.b=RtZX/fso;\n"
        "\tdkim-atps=neutral'\n"
        "opendkim: (stdin): verification (s=revoked d=example.test, 0-bit key, insecure) "
        "failed: key revoked\n"
    )
    results = parse_opendkim_results(output)
    assert results is not None
    assert [(r.result, r.selector, r.algorithm) for r in results] == [
        ("fail", "revoked", "rsa-sha256"), ("pass", "rsa2048", "rsa-sha256")]
    assert results[0].detail == "fail (key revoked; really)"
    assert parse_opendkim_results("opendkim: (stdin): message not signed\n") is None
