"""A real postward-classifierd for tests: its own postward.conf (test Redis, a unix socket in
the test's directory that Postfix's pipe user and Dovecot's mail user may use)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testbed.process import ManagedProcess

ROOT = Path(__file__).resolve().parents[2]
# The pipe client runs as an unprivileged user (Postfix's pipe user=, Dovecot's mail user),
# who may not be able to enter the checkout (a clone in a 0700 directory): it runs with the
# system interpreter (it needs only the standard library) from a copy in a world-readable
# directory, as an installed /opt/postward/lib/postward-filter.py would be.
PYTHON = "/usr/bin/python3"
FILTER = str(ROOT / "daemons" / "postward" / "classifier" / "filter_client.py")


class ClassifierDaemon:
    def __init__(self, directory: Path, redis_url: str, delivery_agent: str,
                 extra: str = "") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
        self.directory = directory
        # Short: a unix socket path may hold 107 bytes, and test directories are long.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="pwc-"))
        self.socket_dir.chmod(0o755)
        self.socket_path = self.socket_dir / "classifierd.sock"
        self.filter_path = self.socket_dir / "postward-filter.py"
        shutil.copyfile(FILTER, self.filter_path)
        self.filter_path.chmod(0o644)
        self.config = directory / "postward.conf"
        self.config.write_text(
            f"[redis]\nurl = {redis_url}\ntimeout = 300ms\nconnect_timeout = 300ms\n"
            f"retries = 0\n\n[metrics]\nenabled = no\n\n"
            f"[classifier]\nsocket = {self.socket_path}\nsocket_mode = 0666\n"
            f"delivery_agent = {delivery_agent}\n{extra}")
        self.process = ManagedProcess(
            "postward-classifierd",
            [sys.executable, "-m", "postward.classifier", "--config", str(self.config)],
            directory / "classifierd.log", cwd=ROOT)

    def filter_argv(self, *args: str) -> list[str]:
        """The pipe client as Postfix runs it (-I -S: no site-packages, fast start)."""
        return [PYTHON, "-I", "-S", str(self.filter_path), f"--socket={self.socket_path}",
                *args]

    def start(self) -> ClassifierDaemon:
        self.process.start(ready=lambda: _accepts(self.socket_path))
        return self

    def stop(self) -> int | None:
        return self.process.stop()

    def remove(self) -> None:
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def train(self, label: str, directory: Path, user: str | None = None) -> str:
        who = ["--user", user] if user else ["--global"]
        done = subprocess.run([sys.executable, "-m", "postward.cli", "--config",
                               str(self.config), "classifier", "train", *who, "--class",
                               label, str(directory)], capture_output=True, text=True,
                              timeout=120, cwd=ROOT, check=True)
        return done.stdout

    def log_text(self) -> str:
        path = self.directory / "classifierd.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _accepts(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
        return True
    except OSError:
        return False


@pytest.fixture
def make_classifierd(testbed_dir: Path) -> Iterator:  # type: ignore[type-arg]
    started: list[ClassifierDaemon] = []

    def make(name: str = "classifierd", **options) -> ClassifierDaemon:  # type: ignore[no-untyped-def]
        daemon = ClassifierDaemon(testbed_dir / name, **options)
        started.append(daemon)
        return daemon.start()

    try:
        yield make
    finally:
        for daemon in reversed(started):
            daemon.stop()
            daemon.remove()
