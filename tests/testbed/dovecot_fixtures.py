"""pytest fixtures for the real Dovecot (see ``tests/testbed/dovecot.py``).

``dovecot``: one started instance with the default users (alice, bob, carol), the guide's
X-DSPAM-Result Sieve rule as every user's personal script, and IMAPSieve wired to the recording
stand-in programs (``dovecot.reports()``), in the test's own directory on the session's private
loopback address. ``make_dovecot(**options)``: a factory for instances with other options
(``DovecotInstance`` keyword arguments), several per test if needed. Everything is stopped at
teardown, also when the test failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.testbed.dovecot import DovecotInstance

MakeDovecot = Callable[..., DovecotInstance]


@pytest.fixture
def dovecot(testbed_dir: Path, loopback: str) -> Iterator[DovecotInstance]:
    instance = DovecotInstance(testbed_dir / "dovecot", loopback, record_reports=True)
    try:
        yield instance.start()
    finally:
        instance.stop()


@pytest.fixture
def make_dovecot(testbed_dir: Path, loopback: str) -> Iterator[MakeDovecot]:
    """``make_dovecot(**DovecotInstance options)`` -> a started instance; each call gets its own
    directory, ports and base_dir."""
    started: list[DovecotInstance] = []

    def make(**options: Any) -> DovecotInstance:
        name = options.pop("name", f"dovecot{len(started) + 1}")
        instance = DovecotInstance(testbed_dir / name, loopback, name=name, **options)
        started.append(instance)
        return instance.start()

    try:
        yield make
    finally:
        errors = []
        for instance in reversed(started):
            try:
                instance.stop()
            except Exception as e:  # stop every instance even if one fails
                errors.append(e)
        if errors:
            raise errors[0]
