"""postward-dkim's signer and verifier against OpenDKIM, Mail::DKIM and dkimpy, through real DNS.

"postward signs correctly" is only proven when independent implementations verify what it
signs, and "postward verifies correctly" when it accepts what they sign and rejects what was
altered. Every key here is looked up in the session's DKIM test DNS (a real unbound, see
``tests/dkim/dkim_fixtures.py``); the peers are driven by ``tests/dkim/peers.py``.

postward is exercised two ways: the admin's command (``postward dkim sign|verify``, a
subprocess, as run by hand) and the same functions in-process (``postward.dkim.offline``,
with the CLI's dnspython key lookup) where a subprocess per message would only cost time.
The milter path through a real Postfix is tested in test_milter_postfix.py.

Differences between the peers found here (each pinned by an assertion, so a change in a peer
shows up):

* ``opendkim -t`` (test mode, what the harness runs) rebuilds every header field as
  ``Name: value``, exactly one space after the colon, whatever whitespace the field had
  there (opendkim/test.c hands the milter code the value without it, as an MTA that does
  not offer SMFIP_HDR_LEADSPC would). So under ``simple`` header canonicalization a field
  written ``Subject:<TAB>x`` or ``Subject:x`` is hashed as ``Subject: x`` (measured). In
  production OpenDKIM asks Postfix for SMFIP_HDR_LEADSPC and sees the field as it is.
* A body whose last line has no line break (possible in a file, never over SMTP):
  ``simple``: postward, dkimpy and OpenDKIM add CRLF (RFC 6376 3.4.3), Mail::DKIM does not.
  ``relaxed``: OpenDKIM refuses to sign ("CRLF at end of body missing") and reports no
  result when verifying; with trailing whitespace on that line it signs but hashes the line
  without the CRLF RFC 6376 3.4.4 adds. Mail::DKIM strips the whitespace and adds CRLF, as
  RFC 6376 3.4.4 says, and so does postward (dkimpy keeps one space before the added CRLF).
  (Only a file can end that way: Postfix always hands the milter a body ending in CRLF.)
* OpenDKIM's own Ed25519 signatures with ``simple`` header canonicalization fail in every
  verifier, OpenDKIM included: it hashes its DKIM-Signature field folded one way and writes
  it folded another. Its RSA signatures, and relaxed header canonicalization, are fine.
* Key trouble (RFC 8601: permerror): OpenDKIM says ``fail`` for a revoked key and for a
  missing key record, ``permerror`` only for a record it cannot parse.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postward.dkim.cli import _txt_lookup
from postward.dkim.keys import load_private_key
from postward.dkim.offline import sign_message, verify_message
from postward.dkim.opendkim_conf import DEFAULT_OVERSIGN_HEADERS, DEFAULT_SIGN_HEADERS
from postward.dkim.signer import SigningKey
from postward.dkim.verifier import KeyLookup, Outcome
from tests.dkim import interop_messages as msgs
from tests.dkim.interop_messages import PLAIN, altered_body, altered_subject
from tests.dkim.peers import (
    DkimKey,
    DkimPeers,
    PeerError,
    PeerVerdict,
    prepend_header,
    to_crlf,
    to_lf,
    uses_crlf,
)
from tests.dkim.test_keys import RFC8463_MESSAGE, RFC8463_PUBLIC, RFC8463_RSA_RECORD
from tests.testbed.dns_servers import LocalZone, txt

if TYPE_CHECKING:  # imported for real, the plugin module could not be assertion-rewritten
    from tests.dkim.dkim_fixtures import DkimDns, DkimKeys
    from tests.testbed.dns_fixtures import DnsTestbedFactory

pytestmark = pytest.mark.integration

CANONICALIZATIONS = ["relaxed/relaxed", "simple/simple", "relaxed/simple"]
"""What the plain message is signed with in both directions; the edge cases use the first
two (header and body algorithms each both ways)."""


# --------------------------------------------------------------------------------------------
# postward, as a command and in-process
# --------------------------------------------------------------------------------------------


def _postward_command() -> str:
    beside = Path(sys.executable).with_name("postward")
    found = str(beside) if beside.exists() else shutil.which("postward")
    if found is None:
        pytest.fail("the postward command is not installed (pip install -e .)")
    return found


@dataclass(frozen=True)
class CliSignature:
    """One ``dkim=...`` line of ``postward dkim verify``."""

    result: str
    selector: str
    algorithm: str
    line: str


@dataclass(frozen=True)
class CliVerdict:
    returncode: int
    signatures: list[CliSignature]
    output: str

    @property
    def results(self) -> list[str]:
        return [s.result for s in self.signatures]


def run_postward(args: Sequence[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run([_postward_command(), *args], input=stdin, capture_output=True,
                          timeout=60, check=False)
    assert b"Traceback" not in done.stderr, done.stderr.decode("utf-8", "replace")
    return done


def cli_sign(message: bytes, keys: Sequence[DkimKey],
             canonicalization: str = "relaxed/relaxed") -> bytes:
    """``postward dkim sign`` with one key (or two: RSA, then Ed25519 as its own selector);
    returns the signed message (CRLF line ends: the command normalises them)."""
    first = keys[0]
    args = ["dkim", "sign", "-d", first.domain, "-s", first.selector, "-k", str(first.pem_path),
            "-c", canonicalization]
    for extra in keys[1:]:
        assert extra.domain == first.domain, "the command signs every key with one -d"
        args += ["-k", str(extra.pem_path), "--ed25519-selector", extra.selector]
    done = run_postward(args, message)
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    return done.stdout


_CLI_LINE = re.compile(r"^dkim=(\w+)")


def cli_verify(message: bytes, nameserver: str, *extra: str) -> CliVerdict:
    """``postward dkim verify --nameserver NS`` on ``message``: exit status and one entry per
    ``dkim=`` line (none for an unsigned message, which prints ``dkim=none``)."""
    done = run_postward(["dkim", "verify", "--nameserver", nameserver, *extra], message)
    output = done.stdout.decode("utf-8", "replace")
    signatures = []
    for line in output.splitlines():
        match = _CLI_LINE.match(line)
        assert match is not None, f"unexpected output line {line!r}\n{output}"
        if match.group(1) == "none":
            continue
        props = dict(re.findall(r"header\.([a-z])=(\S+)", line))
        signatures.append(CliSignature(match.group(1), props.get("s", ""), props.get("a", ""),
                                       line))
    return CliVerdict(done.returncode, signatures,
                      output + done.stderr.decode("utf-8", "replace"))


def signing_key(key: DkimKey) -> SigningKey:
    """The harness key as postward's signer loads it (from the same 0600 file)."""
    return SigningKey(key.domain, key.selector, load_private_key(key.pem_path))


def postward_sign(message: bytes, keys: Sequence[SigningKey],
                  canonicalization: str = "relaxed/relaxed") -> bytes:
    """``message`` with postward's signatures on top (first key topmost), in the message's
    own line-ending convention: what the CLI does, without the subprocess."""
    header_c, _, body_c = canonicalization.partition("/")
    signatures = sign_message(message, keys, int(time.time()), DEFAULT_SIGN_HEADERS,
                              DEFAULT_OVERSIGN_HEADERS, (header_c, body_c))
    return prepend_header(signatures, message)


def postward_verify(message: bytes, lookup: KeyLookup) -> list[Outcome]:
    """postward's verdicts on ``message``: what ``postward dkim verify`` prints, in-process."""
    return verify_message(message, lookup)


def outcomes_summary(outcomes: Sequence[Outcome]) -> list[tuple[str, str, str]]:
    """(result, selector, reason) per signature: compact, and readable when it differs."""
    return [(o.result, o.selector, o.reason) for o in outcomes]


def without_signature(message: bytes, selector: str) -> bytes:
    """``message`` without the DKIM-Signature field that has ``s=selector``."""
    head, sep, body = message.partition(b"\r\n\r\n" if uses_crlf(message) else b"\n\n")
    fields = re.findall(rb"[^\r\n]+\r?\n(?:[ \t][^\r\n]*\r?\n)*", head + sep[:len(sep) // 2])
    kept = [f for f in fields if not (f.lower().startswith(b"dkim-signature:")
                                      and re.search(rb"\bs=" + selector.encode() + rb";",
                                                    re.sub(rb"\s+", b"", f)))]
    assert len(kept) == len(fields) - 1, f"no single signature with s={selector}"
    return b"".join(kept) + sep[len(sep) // 2:] + body


def tag(message: bytes, name: bytes) -> bytes:
    """Tag ``name``'s value (whitespace removed) in the topmost DKIM-Signature field."""
    head = re.split(rb"\r?\n\r?\n", message)[0]
    match = re.search(rb"(?:^|;)" + name + rb"=([^;]*)", re.sub(rb"\s+", b"", head))
    assert match is not None, f"no {name.decode()}= tag"
    return match.group(1)


def signed_names(message: bytes) -> list[bytes]:
    """The h= list (lower-cased) of the topmost DKIM-Signature field."""
    return tag(message, b"h").lower().split(b":")


def assert_peer(verdict: PeerVerdict, expected: Sequence[str]) -> None:
    assert verdict.results == list(expected), (
        f"{verdict.peer}: {verdict.details}\n{verdict.raw[-3000:]}")


@pytest.fixture(scope="module")
def pw_rsa(dkim_keys: DkimKeys) -> SigningKey:
    return signing_key(dkim_keys.rsa2048)


@pytest.fixture(scope="module")
def pw_ed(dkim_keys: DkimKeys) -> SigningKey:
    return signing_key(dkim_keys.ed25519)


@pytest.fixture(scope="module")
def lookup(dkim_dns: DkimDns) -> KeyLookup:
    """The key lookup ``postward dkim verify --nameserver`` uses, aimed at the test DNS."""
    return _txt_lookup(dkim_dns.nameserver)


def test_key_files_are_private_so_the_command_accepts_them(dkim_keys: DkimKeys) -> None:
    """The fixture's key files pass postward's key-file check (no ``--unsafe-keys`` needed
    anywhere below): mode 0600, owned by the user running the tests."""
    for key in (dkim_keys.rsa2048, dkim_keys.ed25519):
        assert key.pem_path.stat().st_mode & 0o077 == 0, oct(key.pem_path.stat().st_mode)
        load_private_key(key.pem_path)  # raises KeyFileError if it is refused


# --------------------------------------------------------------------------------------------
# 1. postward signs, the peers verify
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("canonicalization", CANONICALIZATIONS)
def test_cli_signature_rsa_and_ed25519_passes_in_every_peer(
        dkim_peers: DkimPeers, dkim_keys: DkimKeys, canonicalization: str) -> None:
    """``postward dkim sign`` with an RSA 2048 and an Ed25519 key on one message: OpenDKIM
    verifies both, Mail::DKIM the RSA one (it cannot do Ed25519), dkimpy both (Ed25519 in
    its child process, RSA alone in-process); an altered body or Subject fails everywhere."""
    signed = cli_sign(PLAIN, [dkim_keys.rsa2048, dkim_keys.ed25519], canonicalization)
    assert signed.endswith(to_crlf(PLAIN))
    assert f"c={canonicalization};".encode() in signed
    rsa_only = without_signature(signed, "ed")

    opendkim = dkim_peers.opendkim_verify(signed)
    assert_peer(opendkim, ["pass", "pass"])
    assert [s.selector for s in opendkim.signatures] == ["rsa2048", "ed"]
    assert [s.algorithm for s in opendkim.signatures] == ["rsa-sha256", "ed25519-sha256"]
    mail_dkim = dkim_peers.mail_dkim_verify(signed)
    assert mail_dkim.for_selector("rsa2048").result == "pass", mail_dkim.details
    assert not mail_dkim.for_selector("ed").supported
    assert_peer(dkim_peers.dkimpy_verify(signed), ["pass", "pass"])      # child process
    assert_peer(dkim_peers.dkimpy_verify(rsa_only), ["pass"])            # in-process

    for alter in (altered_body, altered_subject):
        assert_peer(dkim_peers.opendkim_verify(alter(signed)), ["fail", "fail"])
        assert_peer(dkim_peers.mail_dkim_verify(alter(rsa_only)), ["fail"])
        assert_peer(dkim_peers.dkimpy_verify(alter(rsa_only)), ["fail"])


def test_cli_signature_on_lf_input_and_either_line_ending(
        dkim_peers: DkimPeers, dkim_keys: DkimKeys, dkim_dns: DkimDns) -> None:
    """LF-only input (a message saved on a Unix box) is signed as the CRLF message it stands
    for: the command prints CRLF, and the signature holds in every peer and in postward
    whether the file is then kept with CRLF, converted to LF, or mixed."""
    lf_signed = cli_sign(PLAIN, [dkim_keys.rsa2048])
    crlf_signed = cli_sign(to_crlf(PLAIN), [dkim_keys.rsa2048])
    assert b"\n" not in lf_signed.replace(b"\r\n", b"")    # all CRLF, no bare LF
    assert lf_signed.endswith(to_crlf(PLAIN)) and crlf_signed.endswith(to_crlf(PLAIN))
    mixed = to_lf(lf_signed).replace(b"Hello Bob,\n", b"Hello Bob,\r\n")
    # (the harness hands every peer CRLF, so the LF and mixed files are the peers' same input)
    for verdict in dkim_peers.verify_all(lf_signed).values():
        assert_peer(verdict, ["pass"])
    assert tag(lf_signed, b"bh") == tag(crlf_signed, b"bh")           # the same body
    assert tag(lf_signed, b"h") == tag(crlf_signed, b"h")
    for variant in (lf_signed, to_lf(lf_signed), mixed):
        verdict = cli_verify(variant, dkim_dns.nameserver)
        assert (verdict.returncode, verdict.results) == (0, ["pass"]), verdict.output


# --------------------------------------------------------------------------------------------
# 2. the peers sign, postward verifies
# --------------------------------------------------------------------------------------------


def opendkim_ed25519_usable(canonicalization: str) -> bool:
    """OpenDKIM's Ed25519 signatures hold only with relaxed header canonicalization (see
    test_opendkim_ed25519_simple_header_signature_is_broken)."""
    return canonicalization.startswith("relaxed")


def _sign_by_every_peer(peers: DkimPeers, keys: DkimKeys, message: bytes,
                        canonicalization: str) -> tuple[bytes, list[tuple[str, str]]]:
    """``message`` signed by OpenDKIM (RSA, Ed25519 where it works), Mail::DKIM (RSA) and
    dkimpy (RSA, Ed25519), each on top of the previous; returns it and (selector, a=) of the
    signatures top to bottom."""
    steps: list[tuple[Callable[..., bytes], DkimKey]] = [
        (peers.opendkim_sign, keys.rsa2048),
        (peers.opendkim_sign, keys.ed25519),
        (peers.mail_dkim_sign, keys.rsa2048),
        (peers.dkimpy_sign, keys.rsa2048),
        (peers.dkimpy_sign, keys.ed25519),
    ]
    if not opendkim_ed25519_usable(canonicalization):
        del steps[1]
    signed = message
    for sign, key in steps:
        signed = sign(signed, key, canonicalization=canonicalization)
    expected = [(key.selector, key.signature_algorithm) for _sign, key in reversed(steps)]
    return signed, expected


@pytest.mark.parametrize("canonicalization", CANONICALIZATIONS)
def test_cli_verifies_every_peers_signatures(dkim_peers: DkimPeers, dkim_keys: DkimKeys,
                                             dkim_dns: DkimDns, lookup: KeyLookup,
                                             canonicalization: str) -> None:
    """Up to five signatures on one message, by OpenDKIM (RSA, and Ed25519 under relaxed
    header canonicalization), Mail::DKIM (RSA) and dkimpy (RSA, Ed25519): ``postward dkim
    verify`` passes each (exit 0, one line each, top to bottom), and postward fails each
    once the body or the signed Subject is altered."""
    signed, expected = _sign_by_every_peer(dkim_peers, dkim_keys, PLAIN, canonicalization)
    count = len(expected)
    verdict = cli_verify(signed, dkim_dns.nameserver)
    assert verdict.returncode == 0, verdict.output
    assert [(s.result, s.selector, s.algorithm) for s in verdict.signatures] == [
        ("pass", selector, algorithm) for selector, algorithm in expected], verdict.output
    # the message itself is sound: an independent verifier agrees
    assert_peer(dkim_peers.opendkim_verify(signed), ["pass"] * count)

    # the same checks in-process (a failing command's exit status: see the tests below)
    for alter, reason in ((altered_body, "body hash did not verify"),
                          (altered_subject, "signature did not verify")):
        assert outcomes_summary(postward_verify(alter(signed), lookup)) == [
            ("fail", selector, reason) for selector, _a in expected]


# --------------------------------------------------------------------------------------------
# 3. edge cases, both directions
# --------------------------------------------------------------------------------------------

# (case, canonicalization) where ``opendkim -t`` cannot take part; tested on their own below.
_OPENDKIM_TEST_MODE_DIFFERS = {("tab-after-colon", "simple/simple")}
_SEPARATE = {"no-final-line-break", "unterminated-trailing-whitespace"}
EDGE_PARAMS = [pytest.param(name, canon, id=f"{name}-{canon.replace('/', '-')}")
               for name in msgs.EDGE_CASES if name not in _SEPARATE
               for canon in CANONICALIZATIONS[:2]
               if (name, canon) not in _OPENDKIM_TEST_MODE_DIFFERS]


def _assert_postward_signed_passes(peers: DkimPeers, pw_rsa: SigningKey,
                                   pw_ed: SigningKey | None, message: bytes,
                                   canonicalization: str) -> bytes:
    """Sign ``message`` with postward (RSA, and with ``pw_ed`` RSA + Ed25519): Mail::DKIM
    and dkimpy (in-process) verify the RSA signature, OpenDKIM both (no ``pw_ed``: OpenDKIM
    is left out); signing its CRLF form gives the same bh= and h=. Returns ``message`` with
    the RSA signature only."""
    rsa_only = postward_sign(message, [pw_rsa], canonicalization)
    assert rsa_only.endswith(message)
    # the CRLF form of the message is the same message to the signer
    crlf = postward_sign(to_crlf(message), [pw_rsa], canonicalization)
    assert (tag(crlf, b"bh"), tag(crlf, b"h")) == (tag(rsa_only, b"bh"), tag(rsa_only, b"h"))
    if pw_ed is not None:
        both = postward_sign(message, [pw_rsa, pw_ed], canonicalization)
        assert_peer(peers.opendkim_verify(both), ["pass", "pass"])
    assert_peer(peers.mail_dkim_verify(rsa_only), ["pass"])
    assert_peer(peers.dkimpy_verify(rsa_only), ["pass"])
    return rsa_only


@pytest.mark.parametrize(("case", "canonicalization"), EDGE_PARAMS)
def test_edge_case_signed_by_postward_passes_in_every_peer(
        dkim_peers: DkimPeers, pw_rsa: SigningKey, pw_ed: SigningKey, case: str,
        canonicalization: str) -> None:
    """Each edge case (8-bit and UTF-8 headers, a 5,000-byte folded To, a header line over
    998 bytes, an empty body, trailing whitespace and blank lines, RFC 6376 3.4.5's example,
    a tab after the colon, duplicate fields), LF-only as built, signed by postward with RSA
    and Ed25519: OpenDKIM passes both, Mail::DKIM and dkimpy the RSA signature."""
    _assert_postward_signed_passes(dkim_peers, pw_rsa, pw_ed, msgs.EDGE_CASES[case](),
                                   canonicalization)


def peer_ed25519_sign(peers: DkimPeers, message: bytes, key: DkimKey,
                      canonicalization: str) -> bytes:
    """An Ed25519 signature by OpenDKIM, or by dkimpy where OpenDKIM's would be broken."""
    if opendkim_ed25519_usable(canonicalization):
        return peers.opendkim_sign(message, key, canonicalization=canonicalization)
    return peers.dkimpy_sign(message, key, canonicalization)


@pytest.mark.parametrize(("case", "canonicalization"), EDGE_PARAMS)
def test_edge_case_signed_by_peers_passes_in_postward(
        dkim_peers: DkimPeers, dkim_keys: DkimKeys, lookup: KeyLookup, case: str,
        canonicalization: str) -> None:
    """Each edge case signed by OpenDKIM (RSA), then Ed25519 on top (OpenDKIM's, or
    dkimpy's where OpenDKIM's is broken), then Mail::DKIM (RSA), LF-only and as CRLF:
    postward passes all three signatures."""
    message = msgs.EDGE_CASES[case]()
    signed = dkim_peers.opendkim_sign(message, dkim_keys.rsa2048,
                                      canonicalization=canonicalization)
    signed = peer_ed25519_sign(dkim_peers, signed, dkim_keys.ed25519, canonicalization)
    signed = dkim_peers.mail_dkim_sign(signed, dkim_keys.rsa2048, canonicalization)
    assert not uses_crlf(signed)
    for variant in (signed, to_crlf(signed)):
        assert outcomes_summary(postward_verify(variant, lookup)) == [
            ("pass", "rsa2048", ""), ("pass", "ed", ""), ("pass", "rsa2048", "")]


def test_large_attachment_both_directions(dkim_peers: DkimPeers, dkim_keys: DkimKeys,
                                          pw_rsa: SigningKey, pw_ed: SigningKey,
                                          dkim_dns: DkimDns) -> None:
    """A 5 MB binary attachment in base64 (a 6.8 MB message): postward's streamed body hash
    matches every peer's both ways (postward signs relaxed/relaxed, RSA and Ed25519; the
    peers sign Ed25519 relaxed/relaxed and RSA simple/simple), and the command handles the
    size. One base64 character changed in the middle of the attachment fails in postward and
    in OpenDKIM."""
    message = msgs.large_attachment()
    assert len(message) > 6_000_000
    signed = _assert_postward_signed_passes(dkim_peers, pw_rsa, pw_ed, message,
                                            "relaxed/relaxed")
    middle = len(signed) // 2
    flipped = signed[:middle] + (b"A" if signed[middle:middle + 1] != b"A" else b"B") \
        + signed[middle + 1:]
    assert_peer(dkim_peers.opendkim_verify(flipped), ["fail"])

    peer_signed = dkim_peers.opendkim_sign(message, dkim_keys.ed25519)
    peer_signed = dkim_peers.mail_dkim_sign(peer_signed, dkim_keys.rsa2048, "simple/simple")
    verdict = cli_verify(peer_signed, dkim_dns.nameserver)
    assert [(s.result, s.selector) for s in verdict.signatures] == [
        ("pass", "rsa2048"), ("pass", "ed")], verdict.output
    assert verdict.returncode == 0
    verdict = cli_verify(flipped, dkim_dns.nameserver)
    assert (verdict.returncode, verdict.results) == (1, ["fail"]), verdict.output
    assert "body hash did not verify" in verdict.signatures[0].line


def test_opendkim_ed25519_simple_header_signature_is_broken(
        dkim_peers: DkimPeers, dkim_keys: DkimKeys, lookup: KeyLookup) -> None:
    """OpenDKIM 2.11 bug, pinned: with ``simple`` header canonicalization its Ed25519
    signatures verify nowhere, OpenDKIM included. It hashes its own DKIM-Signature field
    with ``h=...; b=`` on one line but writes it with a line break before ``b=``, and
    simple canonicalization hashes line breaks (its RSA signatures are written as hashed).
    postward agrees with OpenDKIM and dkimpy that the signature fails, and it and OpenDKIM
    pass it once that line is joined back."""
    signed = dkim_peers.opendkim_sign(PLAIN, dkim_keys.ed25519, canonicalization="simple/simple")
    assert [o.result for o in postward_verify(signed, lookup)] == ["fail"]
    assert_peer(dkim_peers.opendkim_verify(signed), ["fail"])
    assert_peer(dkim_peers.dkimpy_verify(signed), ["fail"])
    joined = signed.replace(b";\n\tb=", b"; b=", 1)
    assert joined != signed
    assert outcomes_summary(postward_verify(joined, lookup)) == [("pass", "ed", "")]
    assert_peer(dkim_peers.opendkim_verify(joined), ["pass"])


def test_tab_after_colon_simple_header_canonicalization(
        dkim_peers: DkimPeers, dkim_keys: DkimKeys, pw_rsa: SigningKey,
        lookup: KeyLookup) -> None:
    """``From:<TAB>``, ``To:<TAB>  `` and ``Subject:<TAB>`` under simple/simple: the field is
    hashed exactly as written (RFC 6376 3.4.1). postward, Mail::DKIM and dkimpy agree both
    ways. ``opendkim -t`` does not: it hashes ``From: Alice``, ``To: bob``, ``Subject:
    figures`` (one space after the colon; a test-mode artifact, see the module docstring:
    with Postfix, OpenDKIM negotiates SMFIP_HDR_LEADSPC and sees the real field). So
    OpenDKIM fails the others' signatures and everybody else fails OpenDKIM's, until its
    fields are written the way it hashed them."""
    message = msgs.tab_after_colon()
    canon = "simple/simple"
    signed = _assert_postward_signed_passes(dkim_peers, pw_rsa, None, message, canon)
    assert_peer(dkim_peers.opendkim_verify(signed), ["fail"])            # test-mode artifact
    for peer_signed in (dkim_peers.mail_dkim_sign(message, dkim_keys.rsa2048, canon),
                        dkim_peers.dkimpy_sign(message, dkim_keys.rsa2048, canon)):
        assert outcomes_summary(postward_verify(peer_signed, lookup)) == [
            ("pass", "rsa2048", "")]
    opendkim_signed = dkim_peers.opendkim_sign(message, dkim_keys.rsa2048,
                                               canonicalization=canon)
    assert [o.result for o in postward_verify(opendkim_signed, lookup)] == ["fail"]
    assert_peer(dkim_peers.mail_dkim_verify(opendkim_signed), ["fail"])
    assert_peer(dkim_peers.dkimpy_verify(opendkim_signed), ["fail"])
    as_hashed = (opendkim_signed.replace(b"\nFrom:\t", b"\nFrom: ")
                 .replace(b"\nTo:\t  ", b"\nTo: ").replace(b"\nSubject:\t", b"\nSubject: "))
    assert [o.result for o in postward_verify(as_hashed, lookup)] == ["pass"]


def test_body_without_final_line_break(dkim_peers: DkimPeers, dkim_keys: DkimKeys,
                                       pw_rsa: SigningKey, lookup: KeyLookup) -> None:
    """A body whose last line has no line break. simple: a CRLF is added (RFC 6376 3.4.3):
    postward, OpenDKIM and dkimpy agree both ways; Mail::DKIM hashes the body without it, so
    it fails the others' signatures and they fail its own. relaxed: postward, Mail::DKIM and
    dkimpy agree both ways; OpenDKIM refuses to sign ("CRLF at end of body missing") and
    gives no verdict at all ("message not signed")."""
    message = msgs.body_without_final_line_break()
    assert not message.endswith(b"\n")

    signed = postward_sign(message, [pw_rsa], "simple/simple")
    assert_peer(dkim_peers.opendkim_verify(signed), ["pass"])
    assert_peer(dkim_peers.dkimpy_verify(signed), ["pass"])
    assert_peer(dkim_peers.mail_dkim_verify(signed), ["fail"])          # Mail::DKIM: no CRLF
    peer_signed = dkim_peers.opendkim_sign(message, dkim_keys.rsa2048,
                                           canonicalization="simple/simple")
    assert [o.result for o in postward_verify(peer_signed, lookup)] == ["pass"]
    mail_dkim_signed = dkim_peers.mail_dkim_sign(message, dkim_keys.rsa2048, "simple/simple")
    assert [o.result for o in postward_verify(mail_dkim_signed, lookup)] == ["fail"]
    assert_peer(dkim_peers.opendkim_verify(mail_dkim_signed), ["fail"])

    signed = postward_sign(message, [pw_rsa], "relaxed/relaxed")
    assert_peer(dkim_peers.mail_dkim_verify(signed), ["pass"])
    assert_peer(dkim_peers.dkimpy_verify(signed), ["pass"])
    with pytest.raises(PeerError, match="message not signed"):
        dkim_peers.opendkim_verify(signed)
    with pytest.raises(PeerError, match="CRLF at end of body missing"):
        dkim_peers.opendkim_sign(message, dkim_keys.rsa2048)
    for peer_signed in (dkim_peers.mail_dkim_sign(message, dkim_keys.rsa2048),
                        dkim_peers.dkimpy_sign(message, dkim_keys.rsa2048)):
        assert [o.result for o in postward_verify(peer_signed, lookup)] == ["pass"]


def test_unterminated_last_line_with_trailing_whitespace_simple(
        dkim_peers: DkimPeers, dkim_keys: DkimKeys, pw_rsa: SigningKey,
        lookup: KeyLookup) -> None:
    """``last  line <TAB>`` with no line break, simple/simple: the whitespace stays and a CRLF
    is added; postward, OpenDKIM and dkimpy agree both ways (Mail::DKIM adds no CRLF, see
    test_body_without_final_line_break)."""
    message = msgs.unterminated_line_with_trailing_whitespace()
    signed = postward_sign(message, [pw_rsa], "simple/simple")
    assert_peer(dkim_peers.opendkim_verify(signed), ["pass"])
    assert_peer(dkim_peers.dkimpy_verify(signed), ["pass"])
    peer_signed = dkim_peers.opendkim_sign(message, dkim_keys.rsa2048,
                                           canonicalization="simple/simple")
    assert [o.result for o in postward_verify(peer_signed, lookup)] == ["pass"]


def test_unterminated_last_line_with_trailing_whitespace_relaxed(
        dkim_peers: DkimPeers, dkim_keys: DkimKeys, pw_rsa: SigningKey,
        lookup: KeyLookup) -> None:
    """``last  line <TAB>`` with no line break, relaxed/relaxed: RFC 6376 3.4.4 ignores
    whitespace at the end of lines and adds the missing CRLF, giving ``last line\\r\\n``.
    Mail::DKIM does exactly that; postward must then agree with it both ways. (OpenDKIM
    hashes ``last line`` without any CRLF and is no reference here.)"""
    message = msgs.unterminated_line_with_trailing_whitespace()
    # OpenDKIM: a third answer (no CRLF added); pinned so a change in OpenDKIM shows up.
    opendkim_signed = dkim_peers.opendkim_sign(message, dkim_keys.rsa2048)
    assert_peer(dkim_peers.mail_dkim_verify(opendkim_signed), ["fail"])
    mail_dkim_signed = dkim_peers.mail_dkim_sign(message, dkim_keys.rsa2048)
    assert [o.result for o in postward_verify(mail_dkim_signed, lookup)] == ["pass"]
    signed = postward_sign(message, [pw_rsa])
    assert_peer(dkim_peers.mail_dkim_verify(signed), ["pass"])


def test_duplicate_fields_are_selected_bottom_up(dkim_peers: DkimPeers, dkim_keys: DkimKeys,
                                                 pw_rsa: SigningKey,
                                                 lookup: KeyLookup) -> None:
    """Two Received and two To fields. A signer that signs To once signs the bottom one
    (RFC 6376 5.4.2): postward verifies dkimpy's and Mail::DKIM's such signatures, still
    passes when the unsigned (top) To changes or a relay adds a Received, and fails when the
    signed (bottom) To changes. postward itself signs both To fields and oversigns To, so
    every peer fails its signature once a third To is added; Received is not signed."""
    message = msgs.duplicate_headers()
    once = [dkim_peers.dkimpy_sign(message, dkim_keys.rsa2048, headers=["from", "to",
                                                                         "subject"]),
            dkim_peers.mail_dkim_sign(message, dkim_keys.rsa2048,
                                      headers={"To": 1, "Received": 0})]
    for signed in once:
        assert signed_names(signed).count(b"to") == 1
        top_changed = signed.replace(b"To: first@", b"To: mallory@")
        relayed = b"Received: from mx.example.test by inbox.example.test\n" + signed
        bottom_changed = signed.replace(b"To: second@", b"To: mallory@")
        for variant, result in ((signed, "pass"), (top_changed, "pass"), (relayed, "pass"),
                                (bottom_changed, "fail")):
            assert [o.result for o in postward_verify(variant, lookup)] == [result]
        assert_peer(dkim_peers.opendkim_verify(top_changed), ["pass"])
        assert_peer(dkim_peers.opendkim_verify(bottom_changed), ["fail"])

    signed = postward_sign(message, [pw_rsa])
    names = signed_names(signed)
    assert names.count(b"to") == 3 and b"received" not in names      # 2 present + oversigned
    relayed = b"Received: from mx.example.test by inbox.example.test\n" + signed
    for verdict in dkim_peers.verify_all(relayed).values():
        assert_peer(verdict, ["pass"])
    third_to = signed.replace(b"Subject: figures\n", b"Subject: figures\nTo: eve@example.com\n")
    for verdict in dkim_peers.verify_all(third_to).values():
        assert_peer(verdict, ["fail"])


def test_whitespace_before_colon(dkim_peers: DkimPeers, dkim_keys: DkimKeys,
                                 dkim_dns: DkimDns) -> None:
    """RFC 6376 3.4.5's ``B : Y`` field (obsolete syntax, still met in old mail), signed by
    OpenDKIM: OpenDKIM and Mail::DKIM pass it (dkimpy refuses to parse the message); the
    command must give a verdict, not a traceback, and should pass it like the other two."""
    message = msgs.space_before_colon()
    signed = dkim_peers.opendkim_sign(message, dkim_keys.rsa2048, sign_headers=["from", "b"])
    assert_peer(dkim_peers.opendkim_verify(signed), ["pass"])
    assert_peer(dkim_peers.mail_dkim_verify(signed), ["pass"])
    assert_peer(dkim_peers.dkimpy_verify(signed), [])       # dkimpy: MessageFormatError
    verdict = cli_verify(signed, dkim_dns.nameserver)       # asserts: no traceback
    assert (verdict.returncode, verdict.results) == (0, ["pass"]), verdict.output


# --------------------------------------------------------------------------------------------
# 4. key problems in real DNS
# --------------------------------------------------------------------------------------------


def test_key_problems_are_permerrors(dkim_peers: DkimPeers, dkim_keys: DkimKeys,
                                     pw_rsa: SigningKey, dkim_dns: DkimDns) -> None:
    """A good signature and three whose key record is revoked (``p=``), not a key, or absent
    (NXDOMAIN): ``postward dkim verify`` says pass, then permerror for each with its reason,
    exit 1 (RFC 8601 2.7.1: a key that cannot be used is permerror). The peers never pass them
    either, but word it differently: OpenDKIM says ``fail`` for the revoked and the missing
    key and ``permerror`` only for the unparsable one; Mail::DKIM says ``invalid``
    (permerror) for all three, dkimpy (in the harness) permerror."""
    keys = [pw_rsa] + [SigningKey(k.domain, k.selector, pw_rsa.key)
                       for k in (dkim_keys.revoked, dkim_keys.broken, dkim_keys.missing)]
    signed = postward_sign(PLAIN, keys)
    verdict = cli_verify(signed, dkim_dns.nameserver)
    assert verdict.returncode == 1, verdict.output
    assert [(s.result, s.selector) for s in verdict.signatures] == [
        ("pass", "rsa2048"), ("permerror", "revoked"), ("permerror", "broken"),
        ("permerror", "nokey")], verdict.output
    reasons = [s.line for s in verdict.signatures]
    assert "key revoked" in reasons[1]
    assert "key record at broken._domainkey.example.test" in reasons[2]
    assert "no key published at nokey._domainkey.example.test" in reasons[3]

    verdicts = dkim_peers.verify_all(signed)
    opendkim = verdicts["opendkim"]
    assert_peer(opendkim, ["pass", "fail", "permerror", "fail"])
    assert "key revoked" in opendkim.details[1]
    assert "key not found in DNS" in opendkim.details[3]
    assert_peer(verdicts["Mail::DKIM"], ["pass", "permerror", "permerror", "permerror"])
    assert_peer(verdicts["dkimpy"], ["pass", "permerror", "permerror", "permerror"])


def test_short_key_and_minimum_key_bits(dkim_peers: DkimPeers, dkim_keys: DkimKeys,
                                        dkim_dns: DkimDns) -> None:
    """A 1024-bit RSA key passes by default in postward and OpenDKIM (both default to a
    1024-bit minimum); ``--minimum-key-bits 2048`` turns it into a permerror."""
    signed = postward_sign(PLAIN, [signing_key(dkim_keys.rsa1024)])
    assert_peer(dkim_peers.opendkim_verify(signed), ["pass"])
    verdict = cli_verify(signed, dkim_dns.nameserver)
    assert (verdict.returncode, verdict.results) == (0, ["pass"]), verdict.output
    assert "1024-bit key" in verdict.signatures[0].line
    verdict = cli_verify(signed, dkim_dns.nameserver, "--minimum-key-bits", "2048")
    assert (verdict.returncode, verdict.results) == (1, ["permerror"]), verdict.output
    assert "key too short" in verdict.signatures[0].line


# --------------------------------------------------------------------------------------------
# 5. RFC 8463's example through real DNS
# --------------------------------------------------------------------------------------------


@pytest.fixture
def football_dns(dns_testbed_factory: DnsTestbedFactory) -> Iterator[str]:
    """A DNS test bed publishing RFC 8463 Appendix A's two keys at football.example.com."""
    from tests.testbed.dns_fixtures import DEFAULT_LOCAL_ZONES

    zone = LocalZone("football.example.com", [
        txt("brisbane._domainkey.football.example.com",
            f"v=DKIM1; k=ed25519; p={RFC8463_PUBLIC}"),
        txt("test._domainkey.football.example.com", RFC8463_RSA_RECORD),
    ])
    bed = dns_testbed_factory(local_zones=[*DEFAULT_LOCAL_ZONES, zone])
    yield bed.nameserver


def test_rfc8463_example_through_real_dns(football_dns: str, tmp_path: Path) -> None:
    """RFC 8463 Appendix A's message (Ed25519 and RSA signatures, both relaxed/relaxed, each
    signing From, Subject and Date twice), keys published in DNS: ``postward dkim verify``
    passes both, as OpenDKIM and dkimpy do (Mail::DKIM: the RSA one). test_sign_verify.py
    checks the same with an in-memory lookup; this is the command and the peers on it."""
    message = RFC8463_MESSAGE
    verdict = cli_verify(message, football_dns)
    assert verdict.returncode == 0, verdict.output
    assert [(s.result, s.selector) for s in verdict.signatures] == [
        ("pass", "brisbane"), ("pass", "test")], verdict.output
    peers = DkimPeers(football_dns, tmp_path)
    assert_peer(peers.opendkim_verify(message), ["pass", "pass"])
    assert_peer(peers.dkimpy_verify(message), ["pass", "pass"])
    mail_dkim = peers.mail_dkim_verify(message)
    assert mail_dkim.for_selector("test").result == "pass", mail_dkim.details


# --------------------------------------------------------------------------------------------
# random shapes
# --------------------------------------------------------------------------------------------

_TEXT = st.sampled_from([b"a", b"figures", b"\xc3\xa9", b"\xe9", b".", b"=", b"\"x\""])
_WSP = st.sampled_from([b" ", b"\t", b"  ", b" \t "])


@st.composite
def _header_value(draw: st.DrawFn, leading: st.SearchStrategy[bytes]) -> bytes:
    """A field value: a lead-in after the colon, words and whitespace, maybe folded (each
    continuation line starts with WSP and holds text), maybe trailing whitespace."""
    words = draw(st.lists(_TEXT, min_size=1, max_size=6))
    out = draw(leading)
    for i, word in enumerate(words):
        if i:
            out += draw(st.sampled_from([b" ", b"\t", b"   ", b"\r\n ", b"\r\n\t", b"\r\n  "]))
        out += word
    return out + draw(st.sampled_from([b"", b"", b" ", b"\t "]))


@st.composite
def _messages(draw: st.DrawFn, leading: st.SearchStrategy[bytes],
              final_crlf: bool) -> bytes:
    """A CRLF message: From, then random fields (duplicates possible), then a random body."""
    names = st.sampled_from([b"To", b"Subject", b"Cc", b"Received", b"X-Figures",
                             b"Reply-To", b"Date"])
    fields = [b"From:" + draw(leading) + b"Alice <alice@example.test>"]
    for _ in range(draw(st.integers(0, 6))):
        fields.append(draw(names) + b":" + draw(_header_value(leading)))
    pieces = st.one_of(_TEXT, _WSP, st.just(b"\r\n"), st.just(b"\r\n\r\n"))
    body = b"".join(draw(st.lists(pieces, max_size=30)))
    if body and not body.endswith(b"\r\n"):
        # An unterminated last line ending in whitespace is where dkimpy parts from
        # RFC 6376 3.4.4 (and from postward; see the test above): left out here.
        body = body + b"\r\n" if final_crlf else body.rstrip(b" \t")
    return b"\r\n".join(fields) + b"\r\n\r\n" + body


_CANONICALIZATION = st.sampled_from(["relaxed/relaxed", "simple/simple", "relaxed/simple",
                                     "simple/relaxed"])


@settings(max_examples=50, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(message=_messages(st.sampled_from([b" ", b"", b"\t", b"  ", b"\r\n "]),
                         final_crlf=False),
       canonicalization=_CANONICALIZATION)
def test_random_shapes_agree_with_dkimpy(dkim_peers: DkimPeers, dkim_keys: DkimKeys,
                                         pw_rsa: SigningKey, lookup: KeyLookup,
                                         message: bytes, canonicalization: str) -> None:
    """Random header shapes (folding, whitespace around values and after the colon,
    duplicates, 8-bit bytes) and bodies (whitespace runs, blank lines, no final line
    break), all four canonicalizations: dkimpy verifies what postward signs and postward
    verifies what dkimpy signs, keys from the test DNS (50 examples)."""
    signed = postward_sign(message, [pw_rsa], canonicalization)
    assert_peer(dkim_peers.dkimpy_verify(signed), ["pass"])
    peer_signed = dkim_peers.dkimpy_sign(message, dkim_keys.rsa2048, canonicalization)
    assert [o.result for o in postward_verify(peer_signed, lookup)] == ["pass"]


@settings(max_examples=20, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(message=_messages(st.just(b" "), final_crlf=True), canonicalization=_CANONICALIZATION)
def test_random_shapes_agree_with_opendkim(dkim_peers: DkimPeers, pw_rsa: SigningKey,
                                           message: bytes, canonicalization: str) -> None:
    """The same shapes, kept to what ``opendkim -t`` hashes faithfully (one space after each
    colon, a final line break): OpenDKIM, an implementation sharing no code with postward,
    verifies what postward signs (20 examples)."""
    signed = postward_sign(message, [pw_rsa], canonicalization)
    assert_peer(dkim_peers.opendkim_verify(signed), ["pass"])

