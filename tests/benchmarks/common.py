"""What every benchmark script shares: a scratch directory, SIGTERM as an interrupt (so the
daemons a run started are stopped in its finally blocks), and writing a generated block of
docs/benchmarks.md between its markers."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def workdir(keep: bool, prefix: str) -> Iterator[Path]:
    """A world-traversable temporary directory (daemons drop privileges), removed afterwards
    unless ``keep``."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        if keep:
            print(f"logs and data kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


def write_docs_block(docs: Path, start: str, end: str, section: str, block: str) -> None:
    """Replace the text from ``start`` to ``end`` in ``docs`` by ``block`` (which carries both
    markers), or append ``section`` and ``block`` when the markers are not there yet; what
    follows the end marker (hand-written text) is kept."""
    text = docs.read_text()
    first, last = text.find(start), text.find(end)
    if first >= 0 and last > first:
        text = text[:first] + block + text[last + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n{section}\n\n" + block + "\n"
    docs.write_text(text.rstrip("\n") + "\n")
