"""Finding the snippet files (``postfix-snippets/``) at run time.

``pip install`` puts them in ``<prefix>/share/postward/postfix-snippets`` (setup.cfg's
data_files), so the venv of the Debian package has them in
/opt/postward/share/postward/postfix-snippets. In order:

1. ``--snippets DIR``: the admin's choice, and nothing else is tried;
2. ``sys.prefix/share/postward/postfix-snippets``: this install's own copy;
3. ``/usr/share/postward/postfix-snippets``: a distribution's copy;
4. the checkout an editable install runs from (``postfix-snippets/`` beside ``daemons/``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import postward
from postward.wiring.snippets import SnippetError

SHARE_SUBDIR = Path("share/postward/postfix-snippets")
SYSTEM_DIR = Path("/usr/share") / SHARE_SUBDIR.relative_to("share")


def candidates() -> list[Path]:
    """Where the snippets are looked for when no directory is given, in order."""
    source_tree = Path(postward.__file__).resolve().parents[2] / "postfix-snippets"
    return [Path(sys.prefix) / SHARE_SUBDIR, SYSTEM_DIR, source_tree]


def find_snippets(given: Path | None = None, marker: str = "policyd.main.cf") -> Path:
    """The snippet directory: ``given`` if any (it must exist), else the first candidate that
    holds ``marker``. SnippetError says where it looked."""
    if given is not None:
        if not given.is_dir():
            raise SnippetError(f"{given}: not a directory (--snippets)")
        return given
    for directory in candidates():
        if (directory / marker).is_file():
            return directory
    looked = ", ".join(str(d) for d in candidates())
    raise SnippetError(f"no postfix-snippets directory with {marker} found (looked in {looked});"
                       " name one with --snippets DIR")
