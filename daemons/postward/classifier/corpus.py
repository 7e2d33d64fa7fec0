"""Initial training from existing mail: ``postward classifier train``.

Reads Maildir folders (``cur/`` and ``new/``) and mbox files, and learns each message as the
class given, straight into Redis (no daemon needed), a few messages at a time.
"""

from __future__ import annotations

import asyncio
import mailbox
from collections.abc import Iterator
from pathlib import Path

from postward.classifier.service import Classifier


def messages_in(path: Path) -> Iterator[bytes]:
    """Every message under ``path``: a Maildir (has cur/ or new/), a directory of message
    files, or an mbox file."""
    if path.is_dir():
        if (path / "cur").is_dir() or (path / "new").is_dir():
            for sub in ("new", "cur"):
                folder = path / sub
                if folder.is_dir():
                    for f in sorted(folder.iterdir()):
                        if f.is_file():
                            yield f.read_bytes()
            return
        for f in sorted(path.iterdir()):
            if f.is_file():
                yield _strip_from_line(f.read_bytes())
        return
    box = mailbox.mbox(str(path), create=False)
    try:
        for key in box.iterkeys():
            yield box.get_bytes(key)
    finally:
        box.close()


def _strip_from_line(data: bytes) -> bytes:
    """A message file that starts with an mbox "From " line (as the SpamAssassin corpus
    does) without it."""
    if data.startswith(b"From "):
        end = data.find(b"\n")
        return data[end + 1:] if end >= 0 else b""
    return data


async def train_corpus(classifier: Classifier, user: str, label: str, paths: list[Path],
                       source: str = "corpus", parallel: int = 8) -> int:
    """Learn every message under ``paths`` as ``label``; returns how many."""
    semaphore = asyncio.Semaphore(parallel)
    count = 0

    async def one(message: bytes) -> None:
        nonlocal count
        async with semaphore:
            await classifier.retrain(user, label, source, None, message, mode="teft")
            count += 1

    pending: set[asyncio.Task[None]] = set()
    for path in paths:
        for message in messages_in(path):
            task = asyncio.ensure_future(one(message))
            pending.add(task)
            if len(pending) >= parallel * 4:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for d in done:
                    d.result()
    if pending:
        for d in (await asyncio.wait(pending))[0]:
            d.result()
    return count
