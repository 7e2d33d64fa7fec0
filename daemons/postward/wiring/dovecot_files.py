"""The Dovecot files of postfix-snippets/dovecot: where each goes, and what it needs besides.

The shipped files name Debian's paths (/etc/dovecot, /usr/lib/dovecot/sieve-pipe); installed
elsewhere, those paths inside them are changed to match, so 90-postward.conf points at the
report scripts and the pipe directory that were really installed.
"""

from __future__ import annotations

import grp
import re
from dataclasses import dataclass
from pathlib import Path

from postward.wiring.files import FileInstall, FileState, missing_paths
from postward.wiring.snippets import read_text

DOVECOT_DIR = Path("/etc/dovecot")
SIEVE_PIPE_DIR = Path("/usr/lib/dovecot/sieve-pipe")


@dataclass(frozen=True)
class Shipped:
    name: str
    subdir: str | None  # below the Dovecot directory; None: the sieve pipe directory
    mode: int
    compile: bool
    what: str


SHIPPED = (
    Shipped("90-postward.conf", "conf.d", 0o644, False,
            "Pigeonhole settings: imap_sieve, sieve_extprograms and the two IMAPSieve rules "
            "(replaces the guide's antispam_* block)"),
    Shipped("report-spam.sieve", "sieve", 0o644, True,
            "run when a message is moved or appended into Spam: learn spam"),
    Shipped("report-ham.sieve", "sieve", 0o644, True,
            "run when a message is moved out of Spam (not to Trash): learn innocent"),
    Shipped("postward-retrain", None, 0o755, False,
            "the program both report scripts pipe the message to"),
    Shipped("dspam.sieve", "sieve", 0o644, True,
            "the guide's rule filing X-DSPAM-Result: Spam into Spam"),
)


@dataclass(frozen=True)
class Item:
    shipped: Shipped
    file: FileInstall
    state: FileState


SOCKET_GROUP = "postward"
_ACCESS_GROUPS = "mail_access_groups = $mail_access_groups "


def content(path: Path, dovecot_dir: Path, pipe_dir: Path,
            socket_group: str = SOCKET_GROUP) -> bytes:
    """A shipped file's bytes with its Dovecot paths and the classifier socket's group made
    this machine's ones."""
    text = read_text(path)
    if socket_group != SOCKET_GROUP:
        text = text.replace(_ACCESS_GROUPS + SOCKET_GROUP, _ACCESS_GROUPS + socket_group)
    if pipe_dir != SIEVE_PIPE_DIR:
        text = text.replace(str(SIEVE_PIPE_DIR), str(pipe_dir))
    if dovecot_dir != DOVECOT_DIR:
        text = text.replace(f"{DOVECOT_DIR}/", f"{dovecot_dir}/")
    return text.encode()


def plan(snippets: Path, dovecot_dir: Path, pipe_dir: Path,
         socket_group: str = SOCKET_GROUP) -> list[Item]:
    """Each shipped file with its target and how the target stands (SnippetError if one
    cannot be read)."""
    items = []
    for shipped in SHIPPED:
        source = snippets / "dovecot" / shipped.name
        target_dir = pipe_dir if shipped.subdir is None else dovecot_dir / shipped.subdir
        install = FileInstall(source, target_dir / shipped.name,
                              content(source, dovecot_dir, pipe_dir, socket_group),
                              shipped.mode)
        items.append(Item(shipped, install, install.state()))
    return items


def compiled_is_current(script: Path) -> bool:
    """Whether sievec's ``.svbin`` beside ``script`` is at least as new as the script."""
    binary = script.with_suffix(".svbin")
    try:
        return binary.stat().st_mtime_ns >= script.stat().st_mtime_ns
    except FileNotFoundError:
        return False


def placement(item: Item, dovecot_dir: Path) -> str:
    """Where a file takes effect, when installing it is not all there is to it."""
    if item.shipped.name == "dspam.sieve":
        return (f"each user's ~/.dovecot.sieve, as the guide has it (users who have it keep "
                f"theirs); or, for every user, add to 90-postward.conf's plugin section: "
                f"sieve_before = {item.file.target}")
    if item.shipped.name == "postward-retrain":
        needs = missing_paths(item.file.content.decode())
        return f"needs {' and '.join(needs)}, not installed yet" if needs else ""
    if item.shipped.name == "90-postward.conf":
        group = re.search(re.escape(_ACCESS_GROUPS) + r"(\S+)", item.file.content.decode())
        if group and not _group_exists(group.group(1)):
            return (f"gives IMAP processes group {group.group(1)}, which does not exist yet "
                    f"(the package makes it; Dovecot refuses IMAP logins until it exists)")
    return ""


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def antispam_leftovers(dovecot_dir: Path) -> list[str]:
    """The guide's dovecot-antispam settings: with the plugin package gone Dovecot would not
    start, and with it kept every move would be learnt twice."""
    found = []
    for path in [dovecot_dir / "dovecot.conf", *sorted((dovecot_dir / "conf.d").glob("*.conf"))]:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        found += [f"{path}:{n}: {line.strip()}" for n, line in enumerate(lines, start=1)
                  if "antispam" in line and not line.lstrip().startswith("#")]
    return found
