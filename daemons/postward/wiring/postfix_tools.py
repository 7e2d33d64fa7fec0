"""Running Postfix's own commands (postconf, postfix) and keeping what they say.

Postfix commands print their warnings and fatal errors on stderr only when it is a terminal;
otherwise they go to the maillog (or, if logging itself fails, nowhere, and the command just
exits 1). So stderr is a pseudo-terminal here and its text is kept: ``postfix check`` on a
broken main.cf then says why instead of failing silently.
"""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Where Debian puts postconf and postfix; an admin's non-root PATH often lacks /usr/sbin.
_SBIN_DIRS = ("/usr/sbin", "/usr/lib/postfix/sbin", "/usr/libexec/postfix")


class PostfixCommandError(RuntimeError):
    """A Postfix command (postconf, postfix, postqueue) failed; the message has its output."""


@dataclass(frozen=True)
class ToolResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str  # what the command wrote to its terminal

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def failure(self) -> str:
        return (f"{' '.join(self.argv)} exited with {self.returncode}:\n"
                f"{self.stdout}{self.stderr}")


def sbin_tool(name: str) -> str:
    """Path of a Postfix program: on PATH, else in /usr/sbin and the like, else the bare name
    (running it then fails with FileNotFoundError, which callers report)."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN_DIRS:
        if (Path(directory) / name).is_file():
            return str(Path(directory) / name)
    return name


def tool_env() -> dict[str, str]:
    # A MAIL_CONFIG inherited from the caller would fight with -c.
    return {k: v for k, v in os.environ.items() if k != "MAIL_CONFIG"}


def run_tool(argv: Sequence[str], timeout: float = 60.0) -> ToolResult:
    """Run a Postfix command with stderr on a pseudo-terminal; never raises for its exit code."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=terminal, env=tool_env())
    finally:
        os.close(terminal)
    errors: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(controller, errors), daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        reader.join(5)
        os.close(controller)
    err = b"".join(errors).decode(errors="replace").replace("\r\n", "\n")
    return ToolResult(tuple(argv), proc.returncode, out.decode(errors="replace"), err)


def run_checked(argv: Sequence[str], timeout: float = 60.0) -> str:
    """Run a Postfix command and return its stdout; PostfixCommandError if it fails."""
    result = run_tool(argv, timeout)
    if not result.ok:
        raise PostfixCommandError(result.failure())
    return result.stdout


def _drain(fd: int, into: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every holder of the terminal side has closed it
            return
        if not chunk:
            return
        into.append(chunk)
