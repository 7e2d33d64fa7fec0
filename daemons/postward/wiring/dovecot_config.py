"""``postward dovecot-config``: the Dovecot side of the classifier, from postfix-snippets/dovecot.

    postward dovecot-config              # print where each file goes and the commands
    postward dovecot-config --apply      # install them (idempotent), sievec, doveconf -n

IMAPSieve retraining in place of the guide's dovecot-antispam: 90-postward.conf (conf.d/), the
report scripts (sieve/, compiled with sievec) and postward-retrain (the sieve pipe directory),
plus the guide's Spam-folder rule dspam.sieve. A file that is already there with the same bytes
is left alone; one that differs is refused unless --force (which keeps a backup).
Exit codes: 0 done, 1 refused or sievec/doveconf failed, 2 bad usage or snippets.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from postward.wiring.dovecot_files import (
    DOVECOT_DIR,
    SIEVE_PIPE_DIR,
    SOCKET_GROUP,
    Item,
    antispam_leftovers,
    compiled_is_current,
    placement,
    plan,
)
from postward.wiring.files import FileState, absolute_path, backup
from postward.wiring.locate import find_snippets
from postward.wiring.snippets import SnippetError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--apply", action="store_true",
                   help="install the files, compile the scripts and check with doveconf")
    p.add_argument("--force", action="store_true",
                   help="with --apply: replace files that differ (each is backed up first)")
    p.add_argument("--dovecot-dir", type=absolute_path, default=DOVECOT_DIR,
                   help=f"Dovecot's configuration directory (default {DOVECOT_DIR})")
    p.add_argument("--sieve-pipe-dir", type=absolute_path, default=SIEVE_PIPE_DIR,
                   help=f"sieve_pipe_bin_dir (default {SIEVE_PIPE_DIR})")
    p.add_argument("--socket-group", default=SOCKET_GROUP,
                   help="the group of postward-classifierd's socket, given to IMAP processes "
                        f"so postward-retrain reaches it (default {SOCKET_GROUP})")


def run(args: argparse.Namespace) -> int:
    if args.force and not args.apply:
        print("postward dovecot-config: --force needs --apply", file=sys.stderr)
        return EXIT_USAGE
    try:
        snippets = find_snippets(args.snippets, marker="dovecot/90-postward.conf")
        items = plan(snippets, args.dovecot_dir, args.sieve_pipe_dir, args.socket_group)
    except SnippetError as e:
        print(f"postward dovecot-config: {e}", file=sys.stderr)
        return EXIT_USAGE
    tools = Tools(args.dovecot_dir)
    if not args.apply:
        sys.stdout.write("".join(f"{line}\n" for line in script(items, snippets, tools)))
        return EXIT_OK
    return apply(items, tools, args.force)


# --------------------------------------------------------------------------------------------
# sievec and doveconf


class Tools:
    """sievec and doveconf, pointed at the Dovecot configuration being changed."""

    def __init__(self, dovecot_dir: Path) -> None:
        self.conf = dovecot_dir / "dovecot.conf"
        # Always named: without -c, a running Dovecot's config service answers instead, with
        # the settings it started with (before the files just installed), and sievec then
        # refuses the report scripts ("unknown Sieve capability imapsieve").
        self.config_args = ["-c", str(self.conf)]
        self.sievec = shutil.which("sievec")
        self.doveconf = shutil.which("doveconf")

    def sievec_argv(self, script: Path) -> list[str]:
        return ["sievec", *self.config_args, str(script)]

    def doveconf_argv(self) -> list[str]:
        return ["doveconf", *self.config_args, "-n"]

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        program = self.sievec if argv[0] == "sievec" else self.doveconf
        return subprocess.run([str(program), *argv[1:]], capture_output=True, text=True,
                              timeout=120, check=False)


# --------------------------------------------------------------------------------------------
# Printing


def script(items: list[Item], snippets: Path, tools: Tools) -> Iterator[str]:
    dovecot_dir = tools.conf.parent
    yield f"# postward dovecot-config: IMAPSieve retraining and the Spam rule for {dovecot_dir}"
    yield f"# from {snippets / 'dovecot'}; run as root, or: postward dovecot-config --apply"
    for item in items:
        yield f"# {item.shipped.name}: {item.shipped.what}"
        if item.state is FileState.DIFFERS:
            yield (f"# {item.file.target} differs from postward's: kept (compare them; "
                   "--apply --force replaces it)")
        elif item.state is FileState.SAME:
            yield f"# already installed: {item.file.target}"
        elif item.state is FileState.NOT_EXECUTABLE:
            yield shlex.join(["chmod", f"{item.shipped.mode:04o}", str(item.file.target)])
        else:
            yield item.file.shell()
        if item.shipped.compile and not (item.state is FileState.SAME
                                         and compiled_is_current(item.file.target)):
            yield shlex.join(tools.sievec_argv(item.file.target))
        where = placement(item, dovecot_dir)
        if where:
            yield f"#   {where}"
    for leftover in antispam_leftovers(dovecot_dir):
        yield f"# warning: the guide's dovecot-antispam is still configured: {leftover}"
    yield f"{shlex.join(tools.doveconf_argv())} >/dev/null"
    yield "# then, for the running Dovecot to use it: doveadm reload"


# --------------------------------------------------------------------------------------------
# Applying


def apply(items: list[Item], tools: Tools, force: bool) -> int:
    dovecot_dir = tools.conf.parent
    print(f"postward dovecot-config: {dovecot_dir}")
    differing = [i for i in items if i.state is FileState.DIFFERS]
    if differing and not force:
        for item in differing:
            print(f"refused: {item.file.target} differs from postward's {item.file.source} "
                  "(compare them; --force replaces it, keeping a backup)", file=sys.stderr)
        return EXIT_FAILED
    changed = [i for i in items if i.state is not FileState.SAME]
    scripts = [i.file.target for i in items if i.shipped.compile]
    if not changed and all(compiled_is_current(script) for script in scripts):
        print("nothing to change")
    try:
        for item in changed:
            if item.state is FileState.DIFFERS:
                print(f"backup: {item.file.target} -> {backup(item.file.target)}")
            item.file.install()
            print(f"installed {item.file.target}")
    except OSError as e:
        print(f"postward dovecot-config: cannot write {e.filename}: {e.strerror}",
              file=sys.stderr)
        return EXIT_FAILED
    for item in items:
        where = placement(item, dovecot_dir)
        if where:
            print(f"note: {item.shipped.name}: {where}")
    for leftover in antispam_leftovers(dovecot_dir):
        print(f"warning: the guide's dovecot-antispam is still configured: {leftover}")
    # The configuration first: sievec reads it too, and doveconf says best what is wrong.
    if not _doveconf_check(tools) or not all(_compile(script, tools) for script in scripts):
        return EXIT_FAILED
    if changed:
        print("not reloaded: run `doveadm reload` for the running Dovecot to use it")
    return EXIT_OK


def _compile(script: Path, tools: Tools) -> bool:
    if compiled_is_current(script):
        return True
    if tools.sievec is None:
        print(f"note: sievec not found: {script} not compiled (Dovecot compiles it on use, "
              "and complains that it cannot save the result)")
        return True
    if not tools.conf.is_file():
        print(f"note: no {tools.conf}: {script} not compiled")
        return True
    result = tools.run(tools.sievec_argv(script))
    if result.returncode != 0:
        print(f"sievec {script} failed (exit {result.returncode}):\n"
              f"{result.stdout}{result.stderr}", file=sys.stderr)
        return False
    print(f"compiled {script.with_suffix('.svbin')}")
    return True


def _doveconf_check(tools: Tools) -> bool:
    if tools.doveconf is None or not tools.conf.is_file():
        print(f"note: doveconf or {tools.conf} not found: configuration not checked")
        return True
    result = tools.run(tools.doveconf_argv())
    if result.returncode != 0:
        print(f"doveconf -n FAILED (exit {result.returncode}): Dovecot would refuse this "
              f"configuration:\n{result.stderr.strip()}", file=sys.stderr)
        return False
    print("doveconf -n: ok")
    return True
