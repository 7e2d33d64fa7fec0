"""Installing a shipped file (a Postfix map, a Dovecot config file, a Sieve script) without
ever overwriting an admin's own version by surprise.

A target that does not exist is written; one with the same bytes is left alone (not even its
mtime changes); one that differs is kept unless the caller forces it. Writes are atomic (a
temporary file in the target's directory, renamed over it), so Postfix or Dovecot never read
half a file.
"""

from __future__ import annotations

import enum
import os
import re
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_HEREDOC_END = "POSTWARD_EOF"
_ABSOLUTE_PATH = re.compile(r"(?<![\w$/.-])/[\w.+-][\w./+-]*")


def absolute_path(text: str) -> Path:
    """A directory option as an absolute path: it ends up in postconf -c and config files."""
    return Path(text).absolute()


class FileState(enum.Enum):
    ABSENT = "absent"
    SAME = "same"            # byte for byte, and executable if it should be
    NOT_EXECUTABLE = "mode"  # same bytes, but a program without its x bits
    DIFFERS = "differs"


@dataclass(frozen=True)
class FileInstall:
    source: Path   # the shipped file
    target: Path
    content: bytes  # what belongs in target: the source's bytes, paths adjusted if needed
    mode: int = 0o644

    def state(self) -> FileState:
        try:
            current = self.target.read_bytes()
        except FileNotFoundError:
            return FileState.ABSENT
        if current != self.content:
            return FileState.DIFFERS
        if self.mode & 0o111 and not self.target.stat().st_mode & 0o111:
            return FileState.NOT_EXECUTABLE
        return FileState.SAME

    def current_text(self) -> str:
        return self.target.read_text(errors="replace")

    def install(self) -> None:
        """Write ``content`` to ``target`` (atomically, with ``mode``), making its directory."""
        self.target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{self.target.name}.", dir=self.target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.content)
            os.chmod(temporary, self.mode)
            os.replace(temporary, self.target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def shell(self) -> str:
        """The shell command that does what :meth:`install` does."""
        mode = f"{self.mode:04o}"
        if self.content == _read(self.source):
            return shlex.join(["install", "-D", "-m", mode, str(self.source), str(self.target)])
        # Content adjusted for this machine (another directory, say): a here-document.
        body = self.content.decode()
        body += "" if body.endswith("\n") else "\n"
        target = shlex.quote(str(self.target))
        return (f"install -d -m 0755 {shlex.quote(str(self.target.parent))} && "
                f"cat > {target} <<'{_HEREDOC_END}' && chmod {mode} {target}\n"
                f"{body}{_HEREDOC_END}")


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def missing_paths(text: str) -> list[str]:
    """Absolute paths named outside comments (a program and its script, say) that do not exist
    on this machine: what a shipped file needs installed besides itself."""
    missing = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        missing += [path for path in _ABSOLUTE_PATH.findall(line)
                    if not Path(path).exists() and path not in missing]
    return missing


def backup_path(path: Path) -> Path:
    """Where :func:`backup` copies ``path``: ``path.postward-YYYYmmddHHMMSS``, never an earlier
    backup. The suffix keeps a backup out of globs such as Dovecot's conf.d/*.conf."""
    stamp = time.strftime("%Y%m%d%H%M%S")
    copy, n = path.with_name(f"{path.name}.postward-{stamp}"), 1
    while copy.exists():  # a second run within the same second
        n += 1
        copy = path.with_name(f"{path.name}.postward-{stamp}-{n}")
    return copy


def backup(path: Path) -> Path:
    """Copy ``path`` (with its mode and times) beside itself; return the copy's path."""
    copy = backup_path(path)
    shutil.copy2(path, copy)
    return copy
