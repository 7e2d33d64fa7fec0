"""``postward postfix-config`` and ``postward dovecot-config``: the wiring commands."""

from __future__ import annotations

import argparse

from postward.wiring import dovecot_config, postfix_config
from postward.wiring.files import absolute_path


def add_wiring_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]
                        ) -> None:
    for name, module, summary in (
        ("postfix-config", postfix_config,
         "print (or --apply) the postconf commands that wire postward into Postfix"),
        ("dovecot-config", dovecot_config,
         "print (or --apply) the Dovecot files for IMAP retraining and the Spam folder rule"),
    ):
        p = subparsers.add_parser(name, help=summary, description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.add_argument("--snippets", type=absolute_path, default=None, metavar="DIR",
                       help="the postfix-snippets directory (default: the installed one, "
                            "see postward.wiring.locate)")
        p.set_defaults(func=module.run)
