"""``postward-classifierd`` (the daemon) and ``postward classifier ...`` (admin commands).

    postward-classifierd --config /etc/postward/postward.conf
    postward classifier train --user bob@example.com --class spam ~/Maildir/.Spam
    postward classifier train --global --class innocent /srv/corpus/ham.mbox
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from postward.core.config import DEFAULT_PATH
from postward.core.runtime import Runtime, load_config_or_exit


async def _train(args: argparse.Namespace) -> int:
    from postward.classifier.corpus import train_corpus
    from postward.classifier.service import Classifier
    from postward.classifier.store import TokenStore

    config = load_config_or_exit(args.config)
    runtime = Runtime.create(config, "cli", serve_metrics=False)
    try:
        store = TokenStore(runtime.store, config.classifier.signature_ttl)
        classifier = Classifier(store, config.classifier, runtime.clock)
        user = "" if args.global_model else args.user
        count = await train_corpus(classifier, user, args.label,
                                   [Path(p) for p in args.paths], args.source)
        totals = await store.totals(classifier_model(user))
    finally:
        await runtime.aclose()
    print(f"learnt {count} messages as {args.label}; model {classifier_model(user)} now has "
          f"{totals.spam} spam and {totals.ham} innocent")
    return 0


def classifier_model(user: str) -> str:
    from postward.classifier.store import user_model

    return user_model(user)


def add_classifier_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]
                            ) -> None:
    c = subparsers.add_parser("classifier", help="the spam classifier's admin commands")
    sub = c.add_subparsers(dest="classifier_command", required=True)
    t = sub.add_parser("train", help="learn Maildirs, mbox files or message directories")
    who = t.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="the user whose model learns")
    who.add_argument("--global", dest="global_model", action="store_true",
                     help="the global model every user falls back to")
    t.add_argument("--class", dest="label", required=True, choices=("spam", "innocent"))
    t.add_argument("--source", default="corpus", choices=("corpus", "inoculation"))
    t.add_argument("paths", nargs="+")
    t.set_defaults(func=lambda a: asyncio.run(_train(a)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="postward-classifierd", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_PATH)
    args = p.parse_args(argv)
    from postward.classifier.daemon import run_daemon

    return run_daemon(args.config)
