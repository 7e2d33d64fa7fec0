"""``postward-dkim`` (the milter) and ``postward dkim ...`` (the admin's key and test tools).

    postward-dkim -x /etc/opendkim.conf                 # the milter, as opendkim -x
    postward dkim genkey -d example.com -s mail         # SELECTOR.private + SELECTOR.txt
    postward dkim testkey -d example.com -s mail -k /etc/opendkim/mail
    postward dkim sign -d example.com -s mail -k KEY < message > signed
    postward dkim verify [--nameserver IP:PORT] < message
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from postward.core.config import DEFAULT_PATH
from postward.dkim import authres
from postward.dkim.keys import KeyFileError, load_private_key
from postward.dkim.keytool import (
    DnsLookupError,
    UsageError,
    add_keytool_commands,
    dns_txt_lookup,
)
from postward.dkim.offline import sign_message, verify_message, with_crlf
from postward.dkim.opendkim_conf import DEFAULT_OVERSIGN_HEADERS, DEFAULT_SIGN_HEADERS
from postward.dkim.signer import SigningKey
from postward.dkim.verifier import PASS, KeyAnswer, KeyLookup


def _canonicalization(text: str) -> tuple[str, str]:
    header, _, body = text.partition("/")
    if header not in ("simple", "relaxed") or (body or "simple") not in ("simple", "relaxed"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected simple|relaxed[/simple|relaxed]")
    return header, body or "simple"


def _run_sign(args: argparse.Namespace) -> int:
    keys = []
    try:
        for path in args.key:
            keys.append(SigningKey(args.domain, args.selector if len(keys) == 0 else
                                   args.ed25519_selector or args.selector,
                                   load_private_key(Path(path), require_safe=args.safe_keys)))
    except KeyFileError as e:
        print(f"postward dkim sign: {e}", file=sys.stderr)
        return 2
    message = with_crlf(sys.stdin.buffer.read())
    signatures = sign_message(message, keys, int(time.time()), DEFAULT_SIGN_HEADERS,
                              DEFAULT_OVERSIGN_HEADERS, args.canonicalization)
    sys.stdout.buffer.write(signatures + message)
    return 0


def _txt_lookup(nameserver: str | None) -> KeyLookup:
    lookup = dns_txt_lookup(nameserver)

    def key_lookup(name: str) -> KeyAnswer:
        try:
            return KeyAnswer(tuple(r for r in lookup(name) if "p=" in r))
        except DnsLookupError:
            return KeyAnswer((), transient=True)

    return key_lookup


def _run_verify(args: argparse.Namespace) -> int:
    try:
        lookup = _txt_lookup(args.nameserver)
    except UsageError as e:
        print(f"postward dkim verify: {e}", file=sys.stderr)
        return 2
    outcomes = verify_message(with_crlf(sys.stdin.buffer.read()), lookup,
                              minimum_bits=args.minimum_key_bits)
    for outcome in outcomes:
        print(authres.dkim_result(outcome))
    if not outcomes:
        print("dkim=none")
    return 0 if outcomes and all(o.result == PASS for o in outcomes) else 1


def add_dkim_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``postward dkim genkey|testkey|sign|verify``."""
    dkim = subparsers.add_parser("dkim", help="DKIM keys and offline signing/verifying")
    sub = dkim.add_subparsers(dest="dkim_command", required=True)
    add_keytool_commands(sub)
    s = sub.add_parser("sign", help="sign the message on stdin; print it with its signature(s)")
    s.add_argument("-d", "--domain", required=True)
    s.add_argument("-s", "--selector", required=True)
    s.add_argument("-k", "--key", required=True, action="append",
                   help="private key file; give -k twice (RSA, then Ed25519) for two signatures")
    s.add_argument("--ed25519-selector", default="",
                   help="selector of the second key (default: -s)")
    s.add_argument("-c", "--canonicalization", type=_canonicalization,
                   default=("relaxed", "relaxed"), help="default relaxed/relaxed")
    s.add_argument("--unsafe-keys", dest="safe_keys", action="store_false",
                   help="do not refuse a key file others can read")
    s.set_defaults(func=_run_sign)
    v = sub.add_parser("verify", help="verify the message on stdin; exit 0 if every "
                                      "signature passes")
    v.add_argument("--nameserver", default=None, metavar="IP[:PORT]",
                   help="ask this DNS server (default: /etc/resolv.conf's)")
    v.add_argument("--minimum-key-bits", type=int, default=1024)
    v.set_defaults(func=_run_verify)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="postward-dkim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-x", dest="opendkim_conf", type=Path, default=None,
                   help="OpenDKIM config file (default: [dkim] opendkim_conf)")
    p.add_argument("--config", type=Path, default=DEFAULT_PATH,
                   help=f"postward.conf (default {DEFAULT_PATH})")
    p.add_argument("-p", "--socket", default="",
                   help="listen here instead (OpenDKIM Socket syntax: inet:PORT@HOST, "
                        "local:/path)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from postward.dkim.daemon import run_daemon

    return run_daemon(args.config, args.opendkim_conf, args.socket)


if __name__ == "__main__":
    raise SystemExit(main())
