"""A Debian 12 tree to boot with systemd-nspawn: debootstrap once, then reuse it.

The tree holds what an admin's mail server already has before postward arrives (systemd,
Postfix, Dovecot, Redis) and what the package depends on, so installing the .deb inside the
booted container needs no network. Building it takes about two minutes (debootstrap ~55 s, then
apt in the tree), so it is kept in a cache directory keyed by the package list and reused by
later runs on the same machine; a fresh CI machine builds it once per run. Each test boots an
overlay over it and never writes to it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What debootstrap's minbase lacks for booting (notes: testbed-notes.md).
BOOT_PACKAGES = ("systemd", "systemd-sysv", "dbus", "iproute2", "libnss-systemd")
# The admin's existing mail server, and postward's dependencies (python3.11, libmilter).
SERVER_PACKAGES = (
    "postfix", "postfix-pcre",
    "dovecot-core", "dovecot-imapd", "dovecot-lmtpd", "dovecot-sieve", "ssl-cert",
    "redis-server",
    "python3", "python3.11", "libmilter1.0.1", "ca-certificates", "procps",
)
CACHE_ROOT = Path(os.environ.get("POSTWARD_SYSTEM_CACHE", "/var/cache/postward-tests"))


class TreeBuildFailed(RuntimeError):
    """debootstrap or apt in the tree failed; the message carries the log's tail."""


def _key(packages: tuple[str, ...]) -> str:
    text = "\n".join([SUITE, MIRROR, *BOOT_PACKAGES, *packages])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _run_logged(argv: list[str], log: Path, timeout: float) -> None:
    with log.open("ab") as out:
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise TreeBuildFailed(f"{argv[0]} exited {result.returncode}:\n" + "\n".join(tail))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder at a time: parallel sessions wait for the first one's tree."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build(target: Path, log: Path, packages: tuple[str, ...]) -> None:
    _run_logged(["debootstrap", "--variant=minbase", f"--include={','.join(BOOT_PACKAGES)}",
                 SUITE, str(target), MIRROR], log, timeout=900)
    if not packages:
        return
    # Postfix asks debconf questions; "No configuration" leaves main.cf to the test, as on a
    # server whose admin configures Postfix by hand.
    script = (
        "set -e; export DEBIAN_FRONTEND=noninteractive;"
        " echo 'postfix postfix/main_mailer_type select No configuration'"
        " | debconf-set-selections;"
        " apt-get update -q;"
        f" apt-get install -y -q --no-install-recommends {' '.join(packages)};"
        " apt-get clean"
    )
    _run_logged(["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D", str(target),
                 "--resolv-conf=copy-host", "sh", "-c", script], log, timeout=1200)


def _tree(kind: str, packages: tuple[str, ...]) -> Path:
    final = CACHE_ROOT / f"{SUITE}-{kind}-{_key(packages)}"
    with _locked(CACHE_ROOT / f"{final.name}.lock"):
        # A tree gets its final name only by the rename after a complete build; an interrupted
        # one stays ".building" and is made again.
        if final.is_dir():
            return final
        building = CACHE_ROOT / f"{final.name}.building"
        shutil.rmtree(building, ignore_errors=True)
        log = CACHE_ROOT / f"{final.name}.log"
        log.unlink(missing_ok=True)
        _build(building, log, packages)
        building.rename(final)
    return final


def base_tree() -> Path:
    """The mail server before postward: systemd, Postfix, Dovecot, Redis, postward's
    dependencies (the booted container's lower layer)."""
    return _tree("server", SERVER_PACKAGES)


def fresh_tree() -> Path:
    """A fresh Debian 12 (minbase and systemd): what `apt install ./postward_*.deb` must cope
    with, fetching the package's dependencies itself."""
    return _tree("fresh", ())
