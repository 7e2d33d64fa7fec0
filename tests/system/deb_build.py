"""Build postward's .deb from this checkout with Debian's standard tools (dpkg-buildpackage).

The build runs in a copy of the checkout's files (tracked and new, not ignored ones: no .venv,
no caches), so the checkout is never touched and dpkg-buildpackage's output (written to the
parent of the source directory) stays in the test's directory. The built package is kept in
the cache directory under a hash of the files that went into it: a re-run with the same
sources on the same machine reuses it; any change builds anew. ``POSTWARD_DEB=/path/x.deb``
tests a package built elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from tests.system.debian_tree import CACHE_ROOT, _locked

REPO = Path(__file__).resolve().parents[2]


class DebBuildFailed(RuntimeError):
    pass


def _source_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, check=True)
    names = [n for n in out.stdout.decode().split("\0") if n]
    # A deleted-but-tracked file is still listed by --cached.
    # The tests are not in the package: editing them does not call for a new build.
    return sorted(n for n in names if not n.startswith("tests/")
                  and ((REPO / n).exists() or (REPO / n).is_symlink()))


def _digest(files: list[str]) -> str:
    h = hashlib.sha256()
    for name in files:
        path = REPO / name
        h.update(name.encode() + b"\0")
        h.update(os.readlink(path).encode() if path.is_symlink() else path.read_bytes())
    return h.hexdigest()[:16]


def build_deb(workdir: Path) -> Path:
    given = os.environ.get("POSTWARD_DEB")
    if given:
        return Path(given)
    files = _source_files()
    out_dir = CACHE_ROOT / "debs" / _digest(files)
    with _locked(CACHE_ROOT / "debs" / "build.lock"):
        built = sorted(out_dir.glob("postward_*.deb"))
        if built:
            return built[-1]
        source = workdir / "src" / "postward"
        for name in files:
            target = source / name
            target.parent.mkdir(parents=True, exist_ok=True)
            src = REPO / name
            if src.is_symlink():
                target.symlink_to(os.readlink(src))
            else:
                shutil.copy2(src, target)
        log = workdir / "dpkg-buildpackage.log"
        with log.open("wb") as out:
            result = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=source,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, timeout=1800, check=False)
        if result.returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-40:]
            raise DebBuildFailed("dpkg-buildpackage failed:\n" + "\n".join(tail))
        [deb] = (workdir / "src").glob("postward_*.deb")
        out_dir.mkdir(parents=True, exist_ok=True)
        final = out_dir / deb.name
        # Copied under another name and renamed: an interrupted copy is never taken for a
        # package by the next run.
        partial = out_dir / f".{deb.name}.partial"
        shutil.copy2(deb, partial)
        os.replace(partial, final)
        return final
