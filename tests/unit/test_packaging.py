"""The Debian package is built with pinned Python dependencies (debian/constraints.txt): every
runtime dependency setup.cfg names must be pinned there, or a later build would take whatever
PyPI has that day instead of what the system tests ran against."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_every_runtime_dependency_is_pinned_for_the_package() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    required = {_name(r) for r in cfg["options"]["install_requires"].splitlines() if r.strip()}
    pins = {}
    for line in (REPO / "debian" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not pinned with ==: {line}"
            pins[_name(name)] = version
    assert required <= pins.keys(), f"not pinned: {sorted(required - pins.keys())}"
