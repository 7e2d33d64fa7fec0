"""``postward postfix-config``: wire postward's daemons into Postfix from the shipped snippets.

    postward postfix-config                    # print the commands (a shell script to review)
    postward postfix-config --apply            # apply them; again: "nothing to change"
    postward postfix-config --only policyd,dkim -c /etc/postfix-out --apply --reload

Everything goes through ``postconf`` (``-e`` for main.cf, ``-Me`` for master.cf); main.cf and
master.cf are backed up once, before the first change, and only when something changes.
Exit codes: 0 done, 1 postconf or ``postfix check`` failed, 2 bad usage or snippets.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

from postward.wiring.files import absolute_path, backup, backup_path
from postward.wiring.locate import find_snippets
from postward.wiring.postfix_plan import (
    COMPONENTS,
    Action,
    MapStep,
    ParamStep,
    Plan,
    Wiring,
    build_plan,
    load_wiring,
)
from postward.wiring.postfix_state import postconf_argv, postfix_argv, read_state
from postward.wiring.postfix_tools import PostfixCommandError, run_checked, run_tool
from postward.wiring.snippets import SnippetError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def components(text: str) -> list[str]:
    """``--only``'s comma-separated names, in the order they are applied."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {', '.join(unknown) or repr(text)}: expected a comma-separated list of "
            f"{', '.join(COMPONENTS)}")
    return [n for n in COMPONENTS if n in names]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", type=components, default=list(COMPONENTS),
                   help=f"comma-separated subset of {','.join(COMPONENTS)} (default: all)")
    p.add_argument("-c", dest="config_dir", type=absolute_path, default=None,
                   help="Postfix configuration directory (default: postconf's, /etc/postfix)")
    p.add_argument("--apply", action="store_true",
                   help="apply through postconf (backs main.cf/master.cf up first) and run "
                        "postfix check, instead of printing the commands")
    p.add_argument("--reload", action="store_true",
                   help="with --apply: postfix reload afterwards, if Postfix is running")


def run(args: argparse.Namespace) -> int:
    if args.reload and not args.apply:
        print("postward postfix-config: --reload needs --apply", file=sys.stderr)
        return EXIT_USAGE
    try:
        directory = find_snippets(args.snippets)
        wiring = load_wiring(directory, args.only)
    except SnippetError as e:
        print(f"postward postfix-config: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        state = read_state(args.config_dir, wiring.param_names)
    except PostfixCommandError as e:
        print(f"postward postfix-config: cannot read the Postfix configuration: {e}",
              file=sys.stderr)
        return EXIT_FAILED
    plan = build_plan(state, wiring, args.only)
    if not args.apply:
        sys.stdout.write("".join(f"{line}\n" for line in script(plan, directory,
                                                                args.config_dir)))
        return EXIT_OK
    return apply(plan, wiring, args.config_dir, args.reload)


# --------------------------------------------------------------------------------------------
# Printing: a shell script


def script(plan: Plan, snippets: Path, config_dir: Path | None) -> Iterator[str]:
    """The commands that make the plan, as a reviewable shell script (comments say why)."""
    yield (f"# postward postfix-config: wire {', '.join(plan.components)} into "
           f"{plan.config_dir}")
    yield f"# from {snippets}; run as root, or: postward postfix-config --apply"
    if not plan.changes_anything:
        yield "# nothing to change"
    for changed, name in ((plan.main_cf_changes, "main.cf"),
                          (plan.master_cf_changes, "master.cf")):
        if changed:
            path = plan.config_dir / name
            yield shlex.join(["cp", "-p", str(path), str(backup_path(path))])
    for step in plan.params:
        yield from (f"# warning: {line}" for line in step.warnings)
        if step.action is Action.SET:
            if step.old is not None:
                yield f"# was: {step.name} = {step.old}"
            yield from (f"#   {line}" for line in step.changes)
            yield shlex.join([*_short(postconf_argv(config_dir, "-e")),
                              f"{step.name} = {step.new}"])
        elif step.action is Action.SAME:
            how = "already set" if step.old is not None else "Postfix's default already"
            yield f"# {how}: {step.name} = {step.new}"
        yield from (f"# kept: {note}" for note in step.notes)
    for service in plan.services:
        if service.action is Action.SET:
            if service.old is not None:
                yield f"# was: {service.old}"
            yield shlex.join([*_short(postconf_argv(config_dir, "-Me")),
                              f"{service.key} = {service.new}"])
        else:
            yield f"# already set: {service.key}"
    for m in plan.maps:
        yield from _map_lines(m, comment=True)
    yield from (f"# note: {note}" for note in plan.notes)
    if plan.changes_anything:
        yield shlex.join(_short(postfix_argv(config_dir, "check")))
        yield "# then, for the running Postfix to use it: postfix reload"


def _short(argv: list[str]) -> list[str]:
    """The program by name, as an admin types it (root's PATH has /usr/sbin)."""
    return [Path(argv[0]).name, *argv[1:]]


def _map_lines(m: MapStep, comment: bool) -> Iterator[str]:
    target, source = m.file.target, m.file.source
    if m.action is Action.SET:
        yield m.file.shell() if comment else f"installed {target} (from {source})"
    elif m.action is Action.SAME:
        yield f"{'# ' if comment else ''}already installed: {target}"
    elif m.same_rules:
        yield (f"{'# ' if comment else ''}kept: {target} is yours and has the same rules as "
               f"postward's {source}")
    else:
        yield (f"{'# ' if comment else ''}warning: {target} differs from postward's {source}: "
               "yours is kept (compare them)")


# --------------------------------------------------------------------------------------------
# Applying


def apply(plan: Plan, wiring: Wiring, config_dir: Path | None, reload: bool) -> int:
    print(f"postward postfix-config: {plan.config_dir} ({', '.join(plan.components)})")
    if not plan.changes_anything:
        print("nothing to change")
    try:
        for changed, name in ((plan.main_cf_changes, "main.cf"),
                              (plan.master_cf_changes, "master.cf")):
            if changed:
                path = plan.config_dir / name
                print(f"backup: {path} -> {backup(path)}")
        for m in plan.map_installs:
            m.file.install()
    except OSError as e:
        print(f"postward postfix-config: cannot write {e.filename}: {e.strerror}",
              file=sys.stderr)
        return EXIT_FAILED
    try:
        # One postconf per setting, as the printed script: postconf appends new parameters in
        # an order of its own when given several, and both must give the same main.cf.
        for p in plan.main_cf_changes:
            run_checked(postconf_argv(config_dir, "-e", f"{p.name} = {p.new}"))
        for s in plan.master_cf_changes:
            run_checked(postconf_argv(config_dir, "-Me", f"{s.key} = {s.new}"))
        if plan.changes_anything:
            _verify(plan, wiring, config_dir)
    except PostfixCommandError as e:
        print(f"postward postfix-config: postconf failed (the backups above are the files as "
              f"they were): {e}", file=sys.stderr)
        return EXIT_FAILED
    for line in _report(plan):
        print(line)
    if not _check(config_dir):
        return EXIT_FAILED
    return _reload(config_dir) if reload else _not_reloaded(plan)


def _report(plan: Plan) -> Iterator[str]:
    for step in plan.params:
        yield from (f"warning: {line}" for line in step.warnings)
        if step.action is Action.SET:
            yield f"set {step.name}: {_was(step)} -> {step.new}"
            yield from (f"  {line}" for line in step.changes)
        yield from (f"kept: {note}" for note in step.notes)
    for service in plan.master_cf_changes:
        yield f"set {service.key}: {service.old or '(no such service)'}"
        yield f"    -> {service.new}"
    for m in plan.maps:
        if m.action is not Action.SAME:
            yield from _map_lines(m, comment=False)
    yield from (f"note: {note}" for note in plan.notes)


def _was(step: ParamStep) -> str:
    if step.old is not None:
        return step.old
    return f"(default: {step.effective})" if step.effective else "(not set)"


def _verify(plan: Plan, wiring: Wiring, config_dir: Path | None) -> None:
    """Read the result back: anything still to change means postconf did not do what the plan
    said (a value it rewrites, say), and a second run would not be a no-op."""
    after = build_plan(read_state(config_dir, wiring.param_names), wiring, plan.components)
    left = [p.name for p in after.main_cf_changes] + [s.key for s in after.master_cf_changes]
    if left:
        raise PostfixCommandError(f"still different after postconf: {', '.join(left)}")


def _check(config_dir: Path | None) -> bool:
    result = run_tool(postfix_argv(config_dir, "check"))
    output = (result.stdout + result.stderr).strip()
    if result.ok:
        print("postfix check: ok" + (f"\n{output}" if output else ""))
        return True
    print(f"postfix check FAILED (exit {result.returncode}); the configuration has a problem "
          f"Postfix would refuse:\n{output}", file=sys.stderr)
    return False


def _reload(config_dir: Path | None) -> int:
    if not run_tool(postfix_argv(config_dir, "status")).ok:
        print("Postfix is not running: not reloaded (it reads the new settings when it starts)")
        return EXIT_OK
    result = run_tool(postfix_argv(config_dir, "reload"))
    if not result.ok:
        print(f"postfix reload failed:\n{result.failure()}", file=sys.stderr)
        return EXIT_FAILED
    print("postfix reload: done")
    return EXIT_OK


def _not_reloaded(plan: Plan) -> int:
    if plan.changes_anything:
        print("not reloaded: run `postfix reload` (or use --reload) for Postfix to use it")
    return EXIT_OK
