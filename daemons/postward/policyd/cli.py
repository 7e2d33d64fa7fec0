"""``postward-policyd``: postfwd's command-line habits.

    postward-policyd -f /etc/postfix/postfwd.cf -C        # print the parsed rules, as postfwd -C
    postward-policyd -f /etc/postfix/postfwd.cf < req     # answer requests on stdin, as postfwd
    postward-policyd --daemon --config /etc/postward/postward.conf   # the policy server

A rule file with errors prints every one as ``file:line: reason`` and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from pathlib import Path
from typing import TextIO

from postward.core.config_file import ConfigError
from postward.core.config_values import HostPort, ip_host_port
from postward.core.dns import Resolver
from postward.core.metrics import Metrics
from postward.core.settings import DnsSettings
from postward.policyd.actions import Actions, QuitRequested
from postward.policyd.ask import ask_policy_server
from postward.policyd.engine import DEFAULT_SCORES, Engine
from postward.policyd.ratelimit import MemoryRates
from postward.policyd.request import parse_attribute
from postward.policyd.ruleset import Ruleset, load_ruleset


class _Sources(argparse.Action):
    """-f and -r keep their command-line order, as postfwd reads them."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        kind = "file" if option_string in ("-f", "--file") else "rule"
        namespace.sources = [*(namespace.sources or []), (kind, values)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="postward-policyd", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-f", "--file", action=_Sources, dest="sources", metavar="FILE",
                   help="read rules from FILE (repeatable)")
    p.add_argument("-r", "--rule", action=_Sources, dest="sources", metavar="RULE",
                   help="add one rule (repeatable)")
    p.add_argument("-C", "--showconfig", action="store_true", help="print the parsed rules")
    p.add_argument("-n", "--nodns", action="store_true", help="no DNS lookups")
    p.add_argument("-s", "--scores", action="append", default=[], metavar="SCORE=ACTION",
                   help="answer ACTION once a request's score reaches SCORE (repeatable)")
    p.add_argument("--nameserver", action="append", default=[], metavar="IP[:PORT]",
                   help="DNS server for the stdin mode (default: /etc/resolv.conf's)")
    p.add_argument("-d", "--daemon", action="store_true",
                   help="run the policy server configured in --config")
    p.add_argument("--config", type=Path, default=Path("/etc/postward/postward.conf"),
                   help="postward.conf for --daemon")
    return p


def parse_scores(pairs: list[str]) -> dict[str, str]:
    scores = dict(DEFAULT_SCORES)
    for pair in pairs:
        score, _, action = pair.partition("=")
        scores[score] = action
    return scores


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.daemon:
        from postward.policyd.daemon import run_daemon

        return run_daemon(args.config)
    if not args.sources:
        print("postward-policyd: no rules: give -f FILE or -r RULE", file=sys.stderr)
        return 2
    try:
        ruleset = load_ruleset(args.sources)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 2
    if args.showconfig:
        sys.stdout.write(ruleset.show())
        return 0
    try:
        nameservers = tuple(ip_host_port(53)(ns) for ns in args.nameserver)
    except ValueError as e:
        print(f"postward-policyd: --nameserver: {e}", file=sys.stderr)
        return 2
    # Bytes in, bytes out: postfwd does not decode, and neither may a round trip change them.
    stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape",
                             newline="\n")
    stdout = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", errors="surrogateescape",
                              newline="\n")
    return asyncio.run(answer_stdin(ruleset, args.nodns, nameservers,
                                    parse_scores(args.scores), stdin, stdout))


async def answer_stdin(ruleset: Ruleset, nodns: bool, nameservers: tuple[HostPort, ...],
                       scores: dict[str, str], stdin: TextIO, stdout: TextIO) -> int:
    """postfwd's command-line loop: requests on stdin, answers on stdout, state in memory."""
    resolver = None
    if not nodns:
        resolver = Resolver(DnsSettings(nameservers=nameservers, cache=False), Metrics("cli"))
    engine = Engine(ruleset, resolver, Actions(MemoryRates(), ask_policy_server), scores=scores)
    attrs: dict[str, str] = {}
    try:
        for raw in stdin:
            line = raw.rstrip("\n").rstrip("\r")
            if line:
                if (pair := parse_attribute(line)) is not None:
                    attrs[pair[0]] = pair[1]
                continue
            if attrs.get("request") != "smtpd_access_policy":
                continue
            try:
                decision = await engine.decide(attrs)
            except QuitRequested:
                return 0
            stdout.write(f"action={decision.action}\n\n")
            stdout.flush()
            attrs = {}
    finally:
        if resolver is not None:
            await resolver.close()
    return 0
