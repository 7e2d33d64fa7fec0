"""``postward``: the admin's command. Each daemon adds its subcommands here as it lands."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from postward.classifier.cli import add_classifier_commands
from postward.core.config import DEFAULT_PATH, describe
from postward.core.runtime import Runtime, load_config_or_exit
from postward.dkim.cli import add_dkim_commands
from postward.schema import SCHEMA
from postward.wiring.cli import add_wiring_commands


def _check_config(args: argparse.Namespace) -> int:
    load_config_or_exit(args.config)
    print(f"{args.config}: ok")
    return 0


def _config_reference(args: argparse.Namespace) -> int:
    sys.stdout.write(describe(SCHEMA))
    return 0


async def _dns(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config)
    rt = Runtime.create(config, "cli", serve_metrics=False)
    try:
        answer = await rt.resolver.query(args.name, args.type.upper())
    finally:
        await rt.aclose()
    source = "cache" if answer.from_cache else "nameserver"
    print(f"{answer.name} {answer.rtype} {answer.rcode} ttl={answer.ttl} from={source}")
    for record in answer.records:
        print(f"  {record}")
    return 0 if answer.definite else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="postward", description=__doc__)
    p.add_argument("--config", type=Path, default=DEFAULT_PATH,
                   help=f"config file (default {DEFAULT_PATH})")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check-config", help="check the config file; print each error as "
                                            "file:line: reason and exit 2 if there is one")
    c.set_defaults(func=_check_config)
    r = sub.add_parser("config-reference", help="print every section and key with its default")
    r.set_defaults(func=_config_reference)
    d = sub.add_parser("dns", help="look a name up through postward's resolver and shared cache")
    d.add_argument("name")
    d.add_argument("type", nargs="?", default="A")
    d.set_defaults(func=lambda a: asyncio.run(_dns(a)))
    add_dkim_commands(sub)
    add_classifier_commands(sub)
    add_wiring_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
