"""``postward dkim genkey`` and ``postward dkim testkey``: opendkim-genkey/opendkim-testkey.

Both keep the OpenDKIM tools' file names and options where they make sense, so guides written
for OpenDKIM (``opendkim-genkey -D /etc/dkimkeys -d example.com -s mail``, then
``mv mail.private mail``) still work word for word with ``postward dkim`` in front. Where the
OpenDKIM tools mislead they do not copy them: no ``h=rsa-sha256`` (the hash is ``sha256``), and
testkey says which of "record missing", "malformed", "revoked", "key mismatch" or "too short"
went wrong instead of one generic error.

The lead wires these into the ``postward`` CLI with :func:`add_keytool_commands`; for testing
and for hosts without the full CLI, ``python -m postward.dkim.keytool genkey|testkey ...``
runs them too.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import pwd
import re
import secrets
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.resolver

from postward.dkim.keys import (
    MIN_RSA_BITS,
    KeyFileError,
    KeyRecordError,
    PrivateKey,
    PublicKey,
    check_key_file_permissions,
    generate_private_key,
    load_private_key,
    parse_public_record,
    user_ids,
    write_private_key,
    zone_file_text,
)

# Looks a name up and returns its TXT records, each one's strings joined; [] when there is none
# (NXDOMAIN or no TXT); raises DnsLookupError when the answer could not be had (timeout,
# SERVFAIL). A parameter so tests and callers can answer from anywhere.
Lookup = Callable[[str], list[str]]

# Who reads keys in the usual OpenDKIM setup (its Debian package's UserID); only used in hints.
DEFAULT_DAEMON_USER = "opendkim"
# RFC 8301: receivers must accept RSA keys of 1024 to 4096 bits; need not accept larger ones.
MAX_PORTABLE_RSA_BITS = 4096
MAX_RSA_BITS = 8192
DEFAULT_TIMEOUT = 5.0

# RFC 6376 3.1: selectors are dot-separated DNS labels. Underscores occur in practice. This
# also keeps "/" and ".." out of the file names genkey builds from the selector.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


class DnsLookupError(Exception):
    """The key record could not be looked up (timeout, SERVFAIL, refused): try again later."""


class UsageError(Exception):
    """A bad argument; the CLI prints it and exits 2."""


# --------------------------------------------------------------------------------------------
# DNS
# --------------------------------------------------------------------------------------------


def parse_nameserver(text: str) -> tuple[str, int]:
    """``IP``, ``IP:PORT``, ``[IPv6]:PORT`` or a bare IPv6 address -> (address, port)."""
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise UsageError(f"bad --nameserver {text!r}: expected [IPv6]:PORT")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(port_text, text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"bad --nameserver {text!r}: {host!r} is not an IP address") from None
    return host, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"bad --nameserver {whole!r}: {text!r} is not a port number")
    return int(text)


def dns_txt_lookup(nameserver: str | None = None,
                   timeout: float = DEFAULT_TIMEOUT) -> Lookup:
    """A :data:`Lookup` through dnspython: the given ``IP:PORT`` only, else /etc/resolv.conf.

    dnspython's resolver retries over TCP when a UDP answer is truncated, which a 2048-bit
    (or bigger) key record without EDNS needs.
    """
    try:
        resolver = dns.resolver.Resolver(configure=nameserver is None)
    except dns.resolver.NoResolverConfiguration:
        raise UsageError("no nameserver in /etc/resolv.conf; give --nameserver IP[:PORT]") \
            from None
    if nameserver is not None:
        address, port = parse_nameserver(nameserver)
        resolver.nameservers = [address]
        resolver.port = port
    resolver.timeout = timeout
    resolver.lifetime = timeout
    servers = ", ".join(str(s) for s in resolver.nameservers)

    def lookup(name: str) -> list[str]:
        try:
            answer = resolver.resolve(name.rstrip(".") + ".", "TXT", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.resolver.LifetimeTimeout:
            raise DnsLookupError(f"no answer from {servers} within {timeout:g} s") from None
        except dns.resolver.NoNameservers as e:
            raise DnsLookupError(f"every nameserver failed ({servers}): {e}") from None
        except dns.exception.DNSException as e:
            raise DnsLookupError(str(e) or type(e).__name__) from None
        return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]

    return lookup


# --------------------------------------------------------------------------------------------
# testkey
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyCheck:
    """The outcome of comparing a published record with a private key: ``problems`` empty means
    the key works; ``notes`` are worth knowing but do not stop it working."""

    name: str
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def key_record_name(selector: str, domain: str) -> str:
    return f"{selector.rstrip('.')}._domainkey.{domain.rstrip('.')}"


def check_published_key(domain: str, selector: str, key: PrivateKey | None,
                        lookup: Lookup) -> KeyCheck:
    """Look up ``selector._domainkey.domain`` and check that receivers can verify ``key``'s
    signatures with it (or, with ``key=None``, that the record is usable at all)."""
    name = key_record_name(selector, domain)
    try:
        records = lookup(name)
    except DnsLookupError as e:
        return KeyCheck(name, (f"{name}: DNS lookup failed: {e}",))
    if not records:
        return KeyCheck(name, (f"{name}: record not found (no TXT record at that name)",))
    if len(records) > 1:
        return KeyCheck(name, (f"{name}: {len(records)} TXT records; receivers pick any one "
                               "of them, so publish exactly one",))
    try:
        public = parse_public_record(records[0])
    except KeyRecordError as e:
        return KeyCheck(name, (f"{name}: malformed record: {e}",))
    if public.revoked:
        return KeyCheck(name, (f"{name}: key revoked (the record's p= is empty)",))
    problems: list[str] = []
    notes: list[str] = []
    if public.algorithm == "rsa" and public.bits < MIN_RSA_BITS:
        problems.append(f"{name}: key too short: {public.bits}-bit RSA; receivers ignore RSA "
                        f"keys under {MIN_RSA_BITS} bits (RFC 8301)")
    elif public.algorithm == "rsa" and public.bits < 2048:
        notes.append(f"{name}: {public.bits}-bit RSA works, but 2048 bits is recommended "
                     "(RFC 8301)")
    if not public.allows_email:
        problems.append(f"{name}: s={':'.join(public.services)} restricts the key to other "
                        "services than email")
    if not public.allows_hash("sha256"):
        problems.append(f"{name}: h={':'.join(public.hashes)} does not allow sha256, the only "
                        "hash postward signs with (h= lists hash names, e.g. h=sha256)")
    if public.testing:
        notes.append(f"{name}: testing mode (t=y): receivers treat failures like unsigned mail")
    if key is not None:
        problems += _compare(name, key, public)
    return KeyCheck(name, tuple(problems), tuple(notes))


def _compare(name: str, key: PrivateKey, public: PublicKey) -> list[str]:
    if public.algorithm != key.algorithm:
        return [f"{name}: key mismatch: the record has k={public.algorithm} but "
                f"{key.source} is an {key.algorithm} key"]
    if not key.matches(public):
        return [f"{name}: key mismatch: the published public key is not the public half of "
                f"{key.source}"]
    digest = secrets.token_bytes(32)
    if not public.verify_digest(key.sign_digest(digest), digest):
        return [f"{name}: a test signature made with {key.source} does not verify"]
    return []


def run_testkey(args: argparse.Namespace, lookup: Lookup | None = None) -> int:
    """``postward dkim testkey``: exit 0 when the key works, 1 when not, 2 on bad arguments."""
    try:
        _check_name(args.domain, "domain")
        _check_name(args.selector, "selector")
        daemon = _daemon_ids(args.user)
        if lookup is None:
            lookup = dns_txt_lookup(args.nameserver, args.timeout)
    except UsageError as e:
        print(f"testkey: {e}", file=sys.stderr)
        return 2
    problems: list[str] = []
    key: PrivateKey | None = None
    if args.key is not None:
        try:
            key = load_private_key(args.key, require_safe=False)
        except KeyFileError as e:
            print(e, file=sys.stderr)
            return 1
        problems += _permission_problems(args.key, *daemon)
    result = check_published_key(args.domain, args.selector, key, lookup)
    for note in result.notes:
        print(note)
    problems += result.problems
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print("key OK" if key is not None else
          "record OK (give -k KEYFILE to check it against the private key)")
    return 0


def _daemon_ids(user: str | None) -> tuple[int | None, set[int] | None]:
    """The ids to check the key file for. Without ``--user`` they are unknown: running as root
    says nothing about the daemon, so only the rules that hold for every user are checked."""
    if user is None:
        return None, None
    try:
        return user_ids(user)
    except ValueError as e:
        raise UsageError(f"bad --user: {e}") from None


def _permission_problems(path: Path, uid: int | None, gids: set[int] | None) -> list[str]:
    """What would make the daemon refuse the key file (see check_key_file_permissions)."""
    try:
        check_key_file_permissions(path, uid, gids)
    except KeyFileError as e:
        return [f"key not secure: {e}"]
    return []


# --------------------------------------------------------------------------------------------
# genkey
# --------------------------------------------------------------------------------------------


def _check_name(value: str, what: str) -> None:
    if len(value) > 253 or not _NAME.fullmatch(value):
        raise UsageError(f"bad {what} {value!r}: expected dot-separated DNS labels")


def run_genkey(args: argparse.Namespace) -> int:
    """``postward dkim genkey``: write SELECTOR.private and SELECTOR.txt like opendkim-genkey.

    The zone text goes to stdout (so ``> zone-snippet`` captures just the record); what was
    written where and the chown/chmod the daemon needs go to stderr.
    """
    try:
        _check_name(args.domain, "domain")
        _check_name(args.selector, "selector")
        if args.algorithm == "rsa" and not MIN_RSA_BITS <= args.bits <= MAX_RSA_BITS:
            raise UsageError(f"RSA keys need {MIN_RSA_BITS} to {MAX_RSA_BITS} bits, "
                             f"not {args.bits} (RFC 8301: at least {MIN_RSA_BITS}, "
                             "2048 recommended)")
    except UsageError as e:
        print(f"genkey: {e}", file=sys.stderr)
        return 2
    directory = Path(args.directory)
    if not directory.is_dir():
        print(f"genkey: {directory}: no such directory", file=sys.stderr)
        return 1
    selector = args.selector.rstrip(".")
    domain = args.domain.rstrip(".")
    private_path = directory / f"{selector}.private"
    txt_path = directory / f"{selector}.txt"
    if not args.force:
        existing = [str(p) for p in (private_path, txt_path) if p.exists() or p.is_symlink()]
        if existing:
            print(f"genkey: not overwriting {', '.join(existing)} (use --force)",
                  file=sys.stderr)
            return 1
    key = generate_private_key(args.algorithm, args.bits)
    record = key.public_record(hash_tag=args.hash, flags="y" if args.testmode else "",
                               service="email" if args.restrict else "")
    zone = zone_file_text(selector, domain, record)
    try:
        write_private_key(key, private_path, force=args.force)
        _write_public_text(txt_path, zone)
    except (KeyFileError, OSError) as e:
        print(f"genkey: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(zone)
    sys.stderr.write(_genkey_notes(key, private_path, txt_path, selector, domain, args.user))
    return 0


def _write_public_text(path: Path, text: str) -> None:
    """The .txt is public (0644), written via a temporary file so --force replaces it whole."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _genkey_notes(key: PrivateKey, private_path: Path, txt_path: Path, selector: str,
                  domain: str, user: str) -> str:
    q = shlex.quote
    key_file = q(str(private_path))
    lines = [
        f"wrote the private key to {private_path} (mode 0600, owner "
        f"{_owner_name(private_path)}) and the DNS record to {txt_path}.",
        f"Publish the record above as TXT at {key_record_name(selector, domain)}, then check "
        "it with:",
        f"  postward dkim testkey -d {q(domain)} -s {q(selector)} -k {key_file}",
        f"The daemon reads the key as its user ({user}), so give it the file (0600: the "
        f"group {user} is also given to Dovecot's IMAP processes for retraining):",
        f"  chown {q(user)}: {key_file}",
    ]
    if key.algorithm == "ed25519":
        lines.append("Ed25519 (RFC 8463) is not verified by every receiver yet: sign with an "
                     "RSA key under a second selector as well.")
    elif key.bits > MAX_PORTABLE_RSA_BITS:
        lines.append(f"Receivers need only accept RSA keys up to {MAX_PORTABLE_RSA_BITS} bits "
                     "(RFC 8301); some will ignore this one.")
    return "\n".join(lines) + "\n"


def _owner_name(path: Path) -> str:
    uid = path.stat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# --------------------------------------------------------------------------------------------
# argparse
# --------------------------------------------------------------------------------------------


def add_keytool_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``genkey`` and ``testkey`` to a subparsers object; each sets ``func``."""
    g = subparsers.add_parser(
        "genkey", help="make a DKIM key pair: SELECTOR.private and SELECTOR.txt "
                       "(like opendkim-genkey)",
        description="Write DIR/SELECTOR.private (PEM, mode 0600) and DIR/SELECTOR.txt (the DNS "
                    "record as a zone-file entry, also printed), the names opendkim-genkey "
                    "uses.")
    g.add_argument("-d", "--domain", required=True, help="the signing domain (d=)")
    g.add_argument("-s", "--selector", required=True, help="the selector (s=), e.g. mail")
    g.add_argument("-a", "--algorithm", choices=("rsa", "ed25519"), default="rsa",
                   help="key type (default rsa; ed25519 is RFC 8463)")
    g.add_argument("-b", "--bits", type=int, default=2048,
                   help=f"RSA key size (default 2048, at least {MIN_RSA_BITS})")
    g.add_argument("-D", "--directory", type=Path, default=Path("."),
                   help="where to write the files (default: the current directory)")
    g.add_argument("-r", "--restrict", action="store_true",
                   help="restrict the key to email (s=email)")
    g.add_argument("-t", "--testmode", action="store_true",
                   help="mark the key as testing (t=y)")
    g.add_argument("--hash", action="store_true",
                   help="add h=sha256 (not needed: without h= every hash is allowed)")
    g.add_argument("--user", default=DEFAULT_DAEMON_USER,
                   help=f"the daemon's user, for the chown hint (default {DEFAULT_DAEMON_USER})")
    g.add_argument("--force", action="store_true", help="overwrite existing files")
    g.set_defaults(func=run_genkey)

    t = subparsers.add_parser(
        "testkey", help="check a published key record against the private key "
                        "(like opendkim-testkey)",
        description="Look up SELECTOR._domainkey.DOMAIN, parse it and check that it is the "
                    "public half of KEYFILE. Prints 'key OK' and exits 0, or says what is "
                    "wrong and exits 1.")
    t.add_argument("-d", "--domain", required=True, help="the signing domain (d=)")
    t.add_argument("-s", "--selector", required=True, help="the selector (s=)")
    t.add_argument("-k", "--key", type=Path, help="the private key file to compare with")
    t.add_argument("--nameserver", metavar="IP[:PORT]",
                   help="ask this nameserver only (default: /etc/resolv.conf)")
    t.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"DNS timeout in seconds (default {DEFAULT_TIMEOUT:g})")
    t.add_argument("--user", help="also check that this daemon user may own and read the key "
                                  "file (without it only the rules for every user are checked)")
    t.set_defaults(func=run_testkey)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="postward dkim",
                                     description="DKIM key tools: genkey and testkey")
    add_keytool_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
