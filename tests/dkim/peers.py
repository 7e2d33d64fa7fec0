"""Real DKIM implementations as test peers: OpenDKIM 2.11, Perl's Mail::DKIM, dkimpy.

postward-dkim replaces OpenDKIM, so "it verifies" is only proven when independent
implementations agree with it. This module makes each peer sign and verify one message at a
time against the test bed's DNS (never the machine's resolver), and reports per signature in
one vocabulary. Use it through :class:`DkimPeers` (the ``dkim_peers`` fixture binds one to the
session's DKIM test DNS); :func:`generate_key` makes throwaway keys.

Results: :class:`PeerVerdict` has one :class:`SignatureResult` per DKIM-Signature header, in
header order from the top (all three peers report in that order), with ``result`` normalised
to ``pass``/``fail``/``neutral``/``permerror``/``temperror`` and the peer's own words in
``detail``. A message without signatures gives an empty list (and ``passed`` is False).
Malformed signatures break the one-per-header rule in two peers: Mail::DKIM silently leaves
out a header it cannot parse at all (``DKIM-Signature: garbage``), and OpenDKIM gives up on
the whole message when a signature cannot be parsed (no ``b=``, garbage): it accepts it at
end-of-headers and evaluates nothing, which the harness reports as ``permerror`` for every
signature (detail "no result: OpenDKIM gave up ..."). Match by ``selector`` when that matters.

Facts about the peers that shape this module (Debian 12 packages, measured):

* Line endings. Every message is handed to every peer with CRLF line endings
  (:func:`to_crlf`). Mail::DKIM *requires* CRLF: fed bare LFs it does not complain but reports
  ``fail (message has been altered)`` for a good signature. ``opendkim -t`` accepts both
  (it strips one CR before each LF and re-adds CRLF); dkimpy accepts both. The signing
  functions return the message in the line-ending convention of their input (CRLF if the
  input contains any CRLF, else LF), the new DKIM-Signature header folded the same way.
* OpenDKIM offline: ``opendkim -x CONF -t -`` runs the milter callbacks on stdin, connected
  "from 127.0.0.1". It resolves keys through libunbound, configured by ``ResolverConfiguration``
  (see :func:`write_libunbound_conf`). Its one-line summary covers only *one* signature, so
  verification runs with ``-vv``, which prints the Authentication-Results header the filter
  would insert (``### INSHEADER: ... hname='Authentication-Results' hvalue='...'``); that
  header has one ``dkim=`` entry per signature and is what is parsed. OpenDKIM reports a
  revoked key (``p=``) and a missing key record as ``dkim=fail`` with reason "key revoked" /
  "key not found in DNS" (RFC 8601 would say permerror), a garbage key as ``permerror``; the
  harness keeps what OpenDKIM says. Ed25519 keys show as "0-bit key". By default it checks
  only 3 signatures: the harness raises ``MaximumSignaturesToVerify``.
* OpenDKIM signs with a KeyTable/SigningTable (``* key``: every message, whatever its From),
  RSA and Ed25519 (``SignatureAlgorithm ed25519-sha256``, key as PKCS#8 PEM). It refuses key
  files below world-writable directories such as /tmp ("RequireSafeKeys", the default): the
  harness turns that off. Without syslog a refused key only shows as ``mlfi_eoh() returned
  SMFIS_TEMPFAIL`` and exit status 70.
* Mail::DKIM 1.20230212 signs and verifies RSA only: an Ed25519 signature verifies as
  ``invalid (unsupported algorithm ed25519-sha256)`` (reported here as ``permerror`` with
  ``supported=False``), and signing with an Ed25519 key raises :class:`PeerUnsupported`
  (Mail::DKIM itself dies with "Can't call method use_no_padding"). Its ``invalid`` result
  is RFC 8601's ``permerror``. It signs with one unfolded header line and no ``t=`` tag.
* dkimpy 1.1.8 needs PyNaCl for Ed25519, signing *and* verifying (``NaClNotFoundError``), and
  PyNaCl is not installed. Ed25519 work therefore runs in a child Python process that gives
  dkimpy a tiny ``nacl`` stand-in made of ``cryptography``'s Ed25519 (same RFC 8032 primitive;
  canonicalisation, hashing and tag handling stay dkimpy's own). The stand-in never enters the
  test process, where postward's own code may use dkimpy. RSA runs in-process. dkimpy's
  ``verify`` returns False for key problems (logging the reason) and raises for a body hash
  mismatch; the harness turns both into results.
* DNS failures (timeout, SERVFAIL) come out as ``temperror`` from all three, but only dkimpy
  says so itself: OpenDKIM adds no Authentication-Results and would reply ``451 4.7.5 DKIM
  key retrieval failed`` (printed as ``### SETREPLY``), Mail::DKIM says ``invalid (public
  key: DNS query timeout ...)``. Each peer waits ``dns_timeout`` seconds for DNS.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dkim
import dkim.util
import dns.exception
import dns.resolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.testbed.dns_servers import make_resolver

Algorithm = Literal["rsa", "ed25519"]

PEER_TIMEOUT = 30.0
"""Seconds one peer run may take; DNS answers come from loopback, so ~0.02-0.4 s is normal."""
DNS_TIMEOUT = 3
"""Seconds each peer waits for DNS (OpenDKIM ``DNSTimeout``, Net::DNS and Mail::DKIM's alarm,
dnspython's lifetime). Well below PEER_TIMEOUT, so a dead DNS server gives ``temperror``
instead of the harness killing the peer."""

NORMALISED_RESULTS = frozenset({"pass", "fail", "neutral", "permerror", "temperror"})

MAIL_DKIM_SCRIPT = Path(__file__).with_name("mail_dkim.pl")
_REPO_ROOT = Path(__file__).resolve().parents[2]


class PeerError(RuntimeError):
    """A peer crashed, timed out or printed something the harness cannot read.

    The message carries the command and the peer's stderr and stdout: a peer failing is a
    harness or environment problem, never a verification result."""

    def __init__(self, peer: str, problem: str, *, argv: Sequence[str] = (),
                 returncode: int | None = None, stdout: str = "", stderr: str = "") -> None:
        self.peer = peer
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        parts = [f"{peer}: {problem}"]
        if argv:
            parts.append(f"command: {' '.join(argv)}")
        if returncode is not None:
            parts.append(f"exit status: {returncode}")
        parts.append(f"stderr:\n{_tail(stderr)}")
        parts.append(f"stdout:\n{_tail(stdout)}")
        super().__init__("\n".join(parts))


class PeerUnsupported(PeerError):
    """The peer cannot do this at all (Mail::DKIM and Ed25519): skip, do not fail."""


def _tail(text: str, limit: int = 4000) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


# --------------------------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DkimKey:
    """One signing key with everything each peer needs.

    ``pem_path``/``private_pem``: RSA as PKCS#1 ("RSA PRIVATE KEY", read by OpenDKIM,
    Mail::DKIM and dkimpy), Ed25519 as PKCS#8 ("PRIVATE KEY", read by OpenDKIM).
    ``dkimpy_private``: what ``dkim.sign`` accepts: the PEM for RSA, the base64 of the 32-byte
    seed for Ed25519. ``public_record``: the TXT record text (``v=DKIM1; k=...; p=...``).
    """

    domain: str
    selector: str
    algorithm: Algorithm
    bits: int
    pem_path: Path
    private_pem: bytes
    dkimpy_private: bytes
    public_record: str

    @property
    def record_name(self) -> str:
        """Where the public key is published: ``selector._domainkey.domain``."""
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def signature_algorithm(self) -> str:
        """The ``a=`` value this key signs with."""
        return "ed25519-sha256" if self.algorithm == "ed25519" else "rsa-sha256"

    def with_selector(self, selector: str, domain: str | None = None) -> DkimKey:
        """The same private key claiming another selector (and domain): signatures that point
        at a revoked, malformed or missing record."""
        return dataclasses.replace(self, selector=selector, domain=domain or self.domain)


def generate_key(directory: Path, domain: str, selector: str, algorithm: Algorithm = "rsa",
                 bits: int = 2048) -> DkimKey:
    """A fresh key written to ``directory/<domain>-<selector>.pem`` (mode 0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{domain}-{selector}.pem"
    if algorithm == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        pem = private.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
        der = private.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        record = f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
        dkimpy_private = pem
    elif algorithm == "ed25519":
        bits = 256
        edkey = ed25519.Ed25519PrivateKey.generate()
        pem = edkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
        seed = edkey.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                   serialization.NoEncryption())
        raw_public = edkey.public_key().public_bytes(serialization.Encoding.Raw,
                                                     serialization.PublicFormat.Raw)
        record = f"v=DKIM1; k=ed25519; p={base64.b64encode(raw_public).decode()}"
        dkimpy_private = base64.b64encode(seed)
    else:
        raise ValueError(f"unknown key algorithm {algorithm!r}")
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_bytes(pem)
    return DkimKey(domain, selector, algorithm, bits, path, pem, dkimpy_private, record)


def write_libunbound_conf(path: Path, address: str, port: int) -> Path:
    """The file OpenDKIM's ``ResolverConfiguration`` names: libunbound forwarding everything to
    the test DNS. libunbound would otherwise never query 127/8 (``do-not-query-localhost``)
    and would answer NXDOMAIN itself for the reserved ``test.`` TLD (its default local zone)."""
    path.write_text(
        "server:\n"
        "    do-not-query-localhost: no\n"
        '    local-zone: "test." nodefault\n'
        "forward-zone:\n"
        '    name: "."\n'
        f"    forward-addr: {address}@{port}\n"
    )
    return path


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureResult:
    """One signature as one peer judged it. ``supported`` is False when the peer cannot check
    this kind of signature at all (Mail::DKIM and Ed25519), so tests can tell "refused to
    try" from "tried and failed"."""

    result: str
    detail: str
    domain: str | None = None
    selector: str | None = None
    algorithm: str | None = None
    supported: bool = True


@dataclass(frozen=True)
class PeerVerdict:
    """What one peer said about one message."""

    peer: str
    signatures: list[SignatureResult]
    raw: str = field(repr=False)

    @property
    def results(self) -> list[str]:
        """Normalised result per signature, in header order."""
        return [s.result for s in self.signatures]

    @property
    def details(self) -> list[str]:
        return [s.detail for s in self.signatures]

    @property
    def passed(self) -> bool:
        """At least one signature, and every one passed."""
        return bool(self.signatures) and all(s.result == "pass" for s in self.signatures)

    def for_selector(self, selector: str) -> SignatureResult:
        """The (first) signature with ``s=selector``."""
        for signature in self.signatures:
            if signature.selector == selector:
                return signature
        raise KeyError(f"{self.peer} reported no signature with s={selector}: {self.signatures}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PeerVerdict:
        data = json.loads(text)
        return cls(data["peer"], [SignatureResult(**s) for s in data["signatures"]], data["raw"])


# --------------------------------------------------------------------------------------------
# line endings
# --------------------------------------------------------------------------------------------


def to_crlf(message: bytes) -> bytes:
    """Every line ending (LF or CRLF) as CRLF; a lone CR is left alone."""
    return re.sub(rb"\r?\n", b"\r\n", message)


def to_lf(message: bytes) -> bytes:
    return message.replace(b"\r\n", b"\n")


def uses_crlf(message: bytes) -> bool:
    return b"\r\n" in message


def prepend_header(header: bytes, message: bytes) -> bytes:
    """``header`` (one field, possibly folded with LF or CRLF, with or without a final line
    ending) put on top of ``message``, in the message's own line-ending convention."""
    eol = b"\r\n" if uses_crlf(message) else b"\n"
    lines = re.split(rb"\r?\n", header.rstrip(b"\r\n"))
    return eol.join(lines) + eol + message


# --------------------------------------------------------------------------------------------
# running peers
# --------------------------------------------------------------------------------------------


def _run(peer: str, argv: Sequence[str], stdin: bytes, timeout: float,
         cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=timeout,
                              cwd=cwd, check=False)
    except subprocess.TimeoutExpired as exc:
        raise PeerError(peer, f"no answer after {timeout} s", argv=argv,
                        stdout=_text(exc.stdout), stderr=_text(exc.stderr)) from None
    except FileNotFoundError as exc:
        raise PeerError(peer, f"not installed: {exc}", argv=argv) from None
    return done


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", "replace")


def _failed(peer: str, problem: str, argv: Sequence[str],
            done: subprocess.CompletedProcess[bytes]) -> PeerError:
    return PeerError(peer, problem, argv=argv, returncode=done.returncode,
                     stdout=_text(done.stdout), stderr=_text(done.stderr))


# -- OpenDKIM --------------------------------------------------------------------------------

_AR_HEADER = re.compile(
    r"^### (?:INS|ADD)HEADER: (?:idx=\d+ )?hname='Authentication-Results' hvalue='(.*?)'\n"
    r"(?=### |\S+: |\Z)", re.DOTALL | re.MULTILINE)
_AR_RESULT = re.compile(r"^\s*dkim\s*=\s*([A-Za-z]+)(.*)$", re.DOTALL)
_AR_REASON = re.compile(r'reason\s*=\s*"((?:[^"\\]|\\.)*)"')
_OPENDKIM_MAP = {"pass": "pass", "fail": "fail", "neutral": "neutral",
                 "permerror": "permerror", "temperror": "temperror",
                 "policy": "fail"}  # policy: valid but refused locally (e.g. key too small)


def _split_resinfo(value: str) -> list[str]:
    """An Authentication-Results value split on ``;`` outside quotes and comments."""
    parts, current, quoted, depth = [], [], False, 0
    for char in value:
        if char == '"' and depth == 0:
            quoted = not quoted
        elif char == "(" and not quoted:
            depth += 1
        elif char == ")" and not quoted and depth:
            depth -= 1
        if char == ";" and not quoted and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_opendkim_results(output: str) -> list[SignatureResult] | None:
    """The ``dkim=`` entries of the Authentication-Results header ``opendkim -t -vv`` prints,
    or None if it printed none. ``dkim=none`` (unsigned message) gives no entry."""
    match = _AR_HEADER.search(output)
    if match is None:
        return None
    results = []
    for resinfo in _split_resinfo(match.group(1))[1:]:  # [0] is the authserv-id
        entry = _AR_RESULT.match(resinfo)
        if entry is None:
            continue  # dkim-atps=..., dkim-adsp=...
        raw_result, rest = entry.group(1).lower(), entry.group(2)
        if raw_result == "none":
            continue
        props = dict(re.findall(r"header\.([a-z])=(\S+)", rest))
        reason = _AR_REASON.search(rest)
        detail = raw_result + (f" ({reason.group(1)})" if reason else "")
        results.append(SignatureResult(
            _OPENDKIM_MAP.get(raw_result, raw_result), detail, props.get("d"), props.get("s"),
            props.get("a")))
    return results


_OPENDKIM_GAVE_UP = "mlfi_eoh() returned SMFIS_ACCEPT"
_OPENDKIM_TEMPFAIL = re.compile(
    r"^### SETREPLY: rcode='(4\d\d)' xcode='([^']*)' replytxt='([^']*)'", re.MULTILINE)
_OPENDKIM_SUMMARY_FAILURE = re.compile(r"^\S+: \S+: verification .* failed: (.*)$", re.MULTILINE)


def _opendkim_without_results(message: bytes, stdout: str,
                              stderr: str) -> list[SignatureResult] | None:
    """Results for the two cases where OpenDKIM adds no Authentication-Results header at all,
    one entry per DKIM-Signature header, or None if neither applies:

    * it gave up on the message at end-of-headers (it does when a DKIM-Signature cannot be
      parsed, e.g. no ``b=``; test mode then exits with status 70): ``permerror`` for every
      signature, the good ones included, since none got a result;
    * a key lookup failed (DNS timeout, SERVFAIL): it would answer ``451 4.7.5 DKIM key
      retrieval failed`` (``On-DNSError`` defaults to tempfail): ``temperror`` for all.
    """
    if _OPENDKIM_GAVE_UP in stderr:
        result = "permerror"
        detail = ("no result: OpenDKIM gave up on the message (mlfi_eoh() returned "
                  "SMFIS_ACCEPT), as it does when a signature cannot be parsed")
    elif reply := _OPENDKIM_TEMPFAIL.search(stdout):
        result = "temperror"
        summary = _OPENDKIM_SUMMARY_FAILURE.search(stdout)
        detail = (f"no result: OpenDKIM would reply {' '.join(reply.groups())}"
                  + (f" ({summary.group(1)})" if summary else ""))
    else:
        return None
    try:
        headers = _dkimpy_signature_headers(to_crlf(message))
    except dkim.DKIMException:
        headers = []
    return [SignatureResult(result, detail, _tag(tags, b"d"), _tag(tags, b"s"),
                            _tag(tags, b"a")) for tags in headers]


# Mail::DKIM reports a DNS timeout as "invalid (public key: DNS query timeout for ...)", and
# SERVFAIL as "invalid (public key: DNS error: SERVFAIL)"; RFC 8601 calls that temperror.
_MAIL_DKIM_TRANSIENT = re.compile(r"DNS query timeout|DNS error|SERVFAIL")


# -- dkimpy ------------------------------------------------------------------------------------


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _dkimpy_dnsfunc(resolver: dns.resolver.Resolver) -> Callable[..., bytes | None]:
    """dkimpy's ``dnsfunc(name, timeout=5)``: the TXT record's strings joined, None when the
    name has none; a transient failure raises ``dkim.DnsTimeoutError`` (dkimpy's temperror)."""

    def get_txt(name: bytes | str, timeout: float = 5) -> bytes | None:
        qname = name.decode() if isinstance(name, bytes) else name
        try:
            answer = resolver.resolve(qname, "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise dkim.DnsTimeoutError(f"{qname}: {exc}") from exc
        return b"".join(answer[0].strings)

    return get_txt


def _signature_tags(value: bytes) -> dict[bytes, bytes]:
    try:
        return dkim.util.parse_tag_value(re.sub(rb"\s+", b"", value))
    except dkim.util.InvalidTagValueList:
        return {}


def _dkimpy_signature_headers(message: bytes) -> list[dict[bytes, bytes]]:
    parsed = dkim.DKIM(message)
    return [_signature_tags(value) for name, value in parsed.headers
            if name.lower() == b"dkim-signature"]


def _dkimpy_verify_here(message: bytes, address: str, port: int,
                        dns_timeout: float) -> PeerVerdict:
    """dkimpy in this process; for Ed25519 signatures this needs the ``nacl`` stand-in, so
    :meth:`DkimPeers.dkimpy_verify` calls it here only for RSA-only messages."""
    resolver = make_resolver(address, port, lifetime=dns_timeout)
    dnsfunc = _dkimpy_dnsfunc(resolver)
    # A logger of its own per call, outside logging's registry: concurrent calls (threads)
    # never see each other's records, and nothing reaches the root logger.
    logger = logging.Logger("dkimpy-peer", logging.DEBUG)
    handler = _ListHandler()
    logger.addHandler(handler)
    raw_lines: list[str] = []
    signatures: list[SignatureResult] = []
    try:
        try:
            verifier = dkim.DKIM(message, logger=logger, timeout=max(1, round(dns_timeout)))
        except dkim.DKIMException as exc:
            return PeerVerdict("dkimpy", [], f"message rejected: {exc}")
        tags_list = [_signature_tags(v) for n, v in verifier.headers
                     if n.lower() == b"dkim-signature"]
        for index, tags in enumerate(tags_list):
            handler.records.clear()
            result, detail = _dkimpy_one(verifier, index, dnsfunc, handler)
            signatures.append(SignatureResult(
                result, detail, _tag(tags, b"d"), _tag(tags, b"s"), _tag(tags, b"a")))
            raw_lines.append(f"signature {index}: {detail}")
            raw_lines += [f"  {r.levelname}: {r.getMessage()}" for r in handler.records
                          if r.levelno >= logging.INFO]
    finally:
        logger.removeHandler(handler)
    return PeerVerdict("dkimpy", signatures,
                       "\n".join(raw_lines) if raw_lines else "no DKIM-Signature header")


def _dkimpy_one(verifier: dkim.DKIM, index: int, dnsfunc: Callable[..., bytes | None],
                handler: _ListHandler) -> tuple[str, str]:
    try:
        ok = verifier.verify(index, dnsfunc=dnsfunc)
    except dkim.ValidationError as exc:
        # body hash mismatch is a failed check; other ValidationErrors (expired x=, bad
        # tags, tlsrpt rules) mean the signature cannot be evaluated.
        text = str(exc)
        return ("fail" if "body hash mismatch" in text else "permerror"), text
    except dkim.DnsTimeoutError as exc:
        return "temperror", str(exc)
    except dkim.DKIMException as exc:
        return "permerror", f"{type(exc).__name__}: {exc}"
    if ok:
        return "pass", "pass"
    errors = [r.getMessage() for r in handler.records if r.levelno >= logging.ERROR]
    if any("DnsTimeoutError" in e for e in errors):
        return "temperror", "; ".join(errors)
    if errors:  # dkimpy logs key problems (missing, revoked, unparsable) and returns False
        return "permerror", "; ".join(errors)
    return "fail", "signature did not verify"


def _tag(tags: Mapping[bytes, bytes], name: bytes) -> str | None:
    value = tags.get(name)
    return value.decode("ascii", "replace") if value is not None else None


def _dkimpy_sign_here(message: bytes, key: Mapping[str, Any], canonicalization: str,
                      headers: Sequence[str] | None) -> bytes:
    """The DKIM-Signature header dkimpy makes (CRLF-folded, CRLF-terminated)."""
    header_c, _, body_c = canonicalization.partition("/")
    private = key["dkimpy_private"]
    return dkim.sign(
        message, key["selector"].encode(), key["domain"].encode(),
        private if isinstance(private, bytes) else private.encode(),
        canonicalize=(header_c.encode(), (body_c or "simple").encode()),
        signature_algorithm=key["signature_algorithm"].encode(),
        include_headers=[h.encode() for h in headers] if headers is not None else None)


def _install_nacl_standin() -> None:
    """Give dkimpy a ``nacl`` built on ``cryptography``'s Ed25519. Child processes only: in
    the test process it would hide a missing PyNaCl from postward's own use of dkimpy."""
    import types

    from cryptography.exceptions import InvalidSignature

    class NaclValueError(ValueError):
        pass

    class BadSignatureError(Exception):
        pass

    def raw_bytes(data: bytes | str, encoder: object, size: int) -> bytes:
        try:
            raw = base64.b64decode(data, validate=True) if encoder is not None else bytes(data)
        except (ValueError, TypeError) as exc:
            raise NaclValueError(str(exc)) from exc
        if len(raw) != size:
            raise NaclValueError(f"expected {size} bytes, got {len(raw)}")
        return raw

    class SignedMessage:
        def __init__(self, signature: bytes) -> None:
            self.signature = signature

    class SigningKey:
        def __init__(self, seed: bytes, encoder: object = None) -> None:
            self._key = ed25519.Ed25519PrivateKey.from_private_bytes(
                raw_bytes(seed, encoder, 32))

        def sign(self, message: bytes) -> SignedMessage:
            return SignedMessage(self._key.sign(message))

    class VerifyKey:
        def __init__(self, key: bytes, encoder: object = None) -> None:
            self._key = ed25519.Ed25519PublicKey.from_public_bytes(raw_bytes(key, encoder, 32))

        def verify(self, message: bytes, signature: bytes) -> bytes:
            try:
                self._key.verify(signature, message)
            except InvalidSignature:
                raise BadSignatureError("signature was forged or corrupt") from None
            return message

    dkim.nacl = types.SimpleNamespace(  # type: ignore[attr-defined]
        signing=types.SimpleNamespace(SigningKey=SigningKey, VerifyKey=VerifyKey),
        encoding=types.SimpleNamespace(Base64Encoder=object()),
        exceptions=types.SimpleNamespace(ValueError=NaclValueError,
                                         BadSignatureError=BadSignatureError),
    )


def _child_main() -> None:
    """Entry point of the dkimpy child process: request JSON in argv[1], message on stdin."""
    request = json.loads(sys.argv[1])
    message = sys.stdin.buffer.read()
    _install_nacl_standin()
    if request["op"] == "verify":
        verdict = _dkimpy_verify_here(message, request["address"], request["port"],
                                      request["dns_timeout"])
        sys.stdout.write(verdict.to_json())
    else:
        header = _dkimpy_sign_here(message, request["key"], request["canonicalization"],
                                   request["headers"])
        sys.stdout.write(json.dumps({"signature": header.decode("ascii")}))


# --------------------------------------------------------------------------------------------
# the harness
# --------------------------------------------------------------------------------------------


class DkimPeers:
    """The three peers bound to one test DNS server (``nameserver`` = "ADDR:PORT").

    ``workdir`` receives OpenDKIM's configuration files (and the libunbound file, unless
    ``resolver_conf`` names one already written by :func:`write_libunbound_conf`). Every call
    is one short-lived peer process (dkimpy RSA: none), so instances are cheap and stateless
    apart from those files; ``timeout`` bounds each peer run, ``dns_timeout`` each peer's wait
    for DNS (keep it well below ``timeout``: a dead server must give ``temperror``, not a
    :class:`PeerError`).
    """

    def __init__(self, nameserver: str, workdir: Path, *, resolver_conf: Path | None = None,
                 timeout: float = PEER_TIMEOUT, dns_timeout: int = DNS_TIMEOUT) -> None:
        address, _, port = nameserver.rpartition(":")
        self.address = address
        self.port = int(port)
        self.workdir = workdir
        self.timeout = timeout
        self.dns_timeout = dns_timeout
        workdir.mkdir(parents=True, exist_ok=True)
        self.resolver_conf = resolver_conf or write_libunbound_conf(
            workdir / "libunbound.conf", self.address, self.port)
        self._verify_conf = self._write_conf("verify", [
            "Mode v",
            "AuthservID postward-peer",
            "AlwaysAddARHeader yes",           # "dkim=none" rather than no header at all
            "MaximumSignaturesToVerify 50",    # default 3: later signatures get no result
        ])

    @property
    def nameserver(self) -> str:
        return f"{self.address}:{self.port}"

    # -- OpenDKIM ------------------------------------------------------------------------------

    def _write_conf(self, purpose: str, lines: Sequence[str]) -> Path:
        text = "\n".join([
            "Syslog no",
            f"ResolverConfiguration {self.resolver_conf}",
            f"DNSTimeout {self.dns_timeout}",
            *lines,
        ]) + "\n"
        # Named by content: repeated calls with the same settings reuse one file.
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        path = self.workdir / f"opendkim-{purpose}-{digest}.conf"
        if not path.exists():
            path.write_text(text)
        return path

    def opendkim_verify(self, message: bytes) -> PeerVerdict:
        """OpenDKIM's verdict per signature (parsed from the Authentication-Results header
        it would add; ``raw`` has everything it printed)."""
        argv = ["opendkim", "-x", str(self._verify_conf), "-vv", "-t", "-"]
        done = _run("opendkim", argv, to_crlf(message), self.timeout)
        stdout, stderr = _text(done.stdout), _text(done.stderr)
        results = parse_opendkim_results(stdout)
        if results is None:
            results = _opendkim_without_results(message, stdout, stderr)
        if results is None:
            problem = ("verification run failed" if done.returncode != 0
                       else "printed no Authentication-Results header")
            raise _failed("opendkim", problem, argv, done)
        return PeerVerdict("opendkim", results, stdout + stderr)

    def opendkim_sign(self, message: bytes, key: DkimKey, *,
                      canonicalization: str = "relaxed/relaxed",
                      sign_headers: Sequence[str] | None = None,
                      oversign_headers: Sequence[str] | None = None,
                      timestamp: int | None = None) -> bytes:
        """``message`` with OpenDKIM's DKIM-Signature on top (RSA or Ed25519).

        ``sign_headers``/``oversign_headers``: OpenDKIM's ``SignHeaders``/``OversignHeaders``
        (default: its own list, no oversigning). ``timestamp``: a fixed ``t=`` (``-F``)."""
        table = self.workdir / f"keytable-{key.domain}-{key.selector}"
        table.write_text(f"peerkey {key.domain}:{key.selector}:{key.pem_path}\n")
        signing_table = self.workdir / "signingtable"
        if not signing_table.exists():
            signing_table.write_text("* peerkey\n")
        lines = [
            "Mode s",
            f"Canonicalization {canonicalization}",
            f"SignatureAlgorithm {key.signature_algorithm}",
            f"KeyTable refile:{table}",
            f"SigningTable refile:{signing_table}",
            "RequireSafeKeys no",   # keys live below /tmp, which OpenDKIM calls unsafe
        ]
        if sign_headers is not None:
            lines.append(f"SignHeaders {','.join(sign_headers)}")
        if oversign_headers is not None:
            lines.append(f"OversignHeaders {','.join(oversign_headers)}")
        conf = self._write_conf("sign", lines)
        argv = ["opendkim", "-x", str(conf)]
        if timestamp is not None:
            argv += ["-F", str(timestamp)]
        argv += ["-t", "-"]
        done = _run("opendkim", argv, to_crlf(message), self.timeout)
        out = _text(done.stdout)
        start = out.find("DKIM-Signature:")
        if done.returncode != 0 or start < 0:
            raise _failed("opendkim", "signing failed (a refused key shows as "
                          "mlfi_eoh() SMFIS_TEMPFAIL, exit 70)", argv, done)
        return prepend_header(out[start:].encode("ascii"), message)

    # -- Mail::DKIM ----------------------------------------------------------------------------

    def mail_dkim_verify(self, message: bytes) -> PeerVerdict:
        """Mail::DKIM::Verifier's result per signature (DomainKeys signatures are left out)."""
        argv = ["perl", str(MAIL_DKIM_SCRIPT), "verify", self.address, str(self.port),
                str(self.dns_timeout)]
        done = _run("Mail::DKIM", argv, to_crlf(message), self.timeout)
        data = self._perl_json(argv, done)
        signatures = []
        for sig in data["signatures"]:
            if sig.get("kind") != "Mail::DKIM::Signature":
                continue
            raw_result = (sig.get("result") or "none").lower()
            detail = sig.get("detail") or raw_result
            supported = not detail.startswith("invalid (unsupported algorithm")
            result = {"invalid": "permerror"}.get(raw_result, raw_result)
            if result == "permerror" and _MAIL_DKIM_TRANSIENT.search(detail):
                result = "temperror"
            signatures.append(SignatureResult(result, detail, sig.get("domain"),
                                              sig.get("selector"), sig.get("algorithm"),
                                              supported))
        return PeerVerdict("Mail::DKIM", signatures, _text(done.stdout) + _text(done.stderr))

    def mail_dkim_sign(self, message: bytes, key: DkimKey,
                       canonicalization: str = "relaxed/relaxed",
                       headers: Sequence[str] | Mapping[str, int | str] | None = None, *,
                       timestamp: int | None = None) -> bytes:
        """``message`` with Mail::DKIM::Signer's rsa-sha256 signature on top.

        ``headers``: a list adds field names to Mail::DKIM's default list (fields absent from
        the message are not signed); a mapping sets exact counts (``{"From": "+"}`` oversigns,
        ``"*"`` all present, ``0`` never). ``timestamp`` adds ``t=``."""
        if key.algorithm != "rsa":
            raise PeerUnsupported("Mail::DKIM", f"Mail::DKIM {key.signature_algorithm} signing "
                                  "is not supported (RSA only)")
        header_option: str | dict[str, int | str] | None
        if headers is None:
            header_option = None
        elif isinstance(headers, Mapping):
            header_option = dict(headers)
        else:
            header_option = ":".join(headers)
        options = {"key_file": str(key.pem_path), "domain": key.domain,
                   "selector": key.selector, "method": canonicalization,
                   "headers": header_option, "timestamp": timestamp}
        argv = ["perl", str(MAIL_DKIM_SCRIPT), "sign", json.dumps(options)]
        done = _run("Mail::DKIM", argv, to_crlf(message), self.timeout)
        data = self._perl_json(argv, done)
        return prepend_header(data["signature"].encode("ascii"), message)

    @staticmethod
    def _perl_json(argv: Sequence[str], done: subprocess.CompletedProcess[bytes]) -> Any:
        if done.returncode != 0:
            raise _failed("Mail::DKIM", "perl script failed", argv, done)
        try:
            return json.loads(done.stdout)
        except ValueError:
            raise _failed("Mail::DKIM", "printed no JSON", argv, done) from None

    # -- dkimpy --------------------------------------------------------------------------------

    def dkimpy_verify(self, message: bytes) -> PeerVerdict:
        """dkimpy's verdict per signature; in-process unless some signature is Ed25519."""
        crlf = to_crlf(message)
        try:
            algorithms = [tags.get(b"a", b"") for tags in _dkimpy_signature_headers(crlf)]
        except dkim.DKIMException:
            algorithms = []
        if not any(a.lower().startswith(b"ed25519") for a in algorithms):
            return _dkimpy_verify_here(crlf, self.address, self.port, self.dns_timeout)
        request = {"op": "verify", "address": self.address, "port": self.port,
                   "dns_timeout": self.dns_timeout}
        return PeerVerdict.from_json(self._dkimpy_child(request, crlf))

    def dkimpy_sign(self, message: bytes, key: DkimKey,
                    canonicalization: str = "relaxed/relaxed",
                    headers: Sequence[str] | None = None) -> bytes:
        """``message`` with dkimpy's signature on top. ``headers``: the exact ``h=`` list
        (default: dkimpy's own, its should-sign fields present, From/Subject/... oversigned)."""
        crlf = to_crlf(message)
        key_fields = {"domain": key.domain, "selector": key.selector,
                      "signature_algorithm": key.signature_algorithm,
                      "dkimpy_private": key.dkimpy_private.decode("ascii")}
        if key.algorithm == "rsa":
            try:
                header = _dkimpy_sign_here(crlf, key_fields, canonicalization, headers)
            except dkim.DKIMException as exc:
                raise PeerError("dkimpy", f"signing failed: {exc!r}") from exc
        else:
            request = {"op": "sign", "key": key_fields, "canonicalization": canonicalization,
                       "headers": list(headers) if headers is not None else None}
            header = json.loads(self._dkimpy_child(request, crlf))["signature"].encode("ascii")
        return prepend_header(header, message)

    def _dkimpy_child(self, request: Mapping[str, Any], message: bytes) -> str:
        argv = [sys.executable, "-c",
                "from tests.dkim.peers import _child_main; _child_main()", json.dumps(request)]
        done = _run("dkimpy", argv, message, self.timeout, cwd=_REPO_ROOT)
        if done.returncode != 0:
            raise _failed("dkimpy", "child process failed", argv, done)
        return _text(done.stdout)

    # -- all -----------------------------------------------------------------------------------

    def verify_all(self, message: bytes) -> dict[str, PeerVerdict]:
        """Every peer's verdict, keyed "opendkim", "Mail::DKIM", "dkimpy"."""
        verdicts = [self.opendkim_verify(message), self.mail_dkim_verify(message),
                    self.dkimpy_verify(message)]
        return {verdict.peer: verdict for verdict in verdicts}
