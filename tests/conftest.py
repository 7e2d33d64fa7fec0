"""Fixtures shared by all tests. The daemons themselves live in ``tests/testbed/``."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testbed.net import private_loopback

pytest_plugins = [
    "tests.testbed.redis_fixtures",
    "tests.testbed.dns_fixtures",
    "tests.testbed.postfix_fixtures",
    "tests.policyd.daemon_fixture",
    "tests.dkim.dkim_fixtures",
    "tests.dkim.milter_fixture",
    "tests.testbed.dovecot_fixtures",
    "tests.classifier.daemon_fixture",
]


@pytest.fixture(scope="session")
def loopback() -> str:
    """This session's private loopback address: every test-bed daemon binds here."""
    return private_loopback()


@pytest.fixture(scope="session")
def testbed_root() -> Iterator[Path]:
    """A world-traversable directory for daemon state (pytest's tmp dirs are 0700 to root, which
    Postfix's and rbldnsd's unprivileged users could not enter)."""
    root = Path(tempfile.mkdtemp(prefix="postward-testbed-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def testbed_dir(testbed_root: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh, world-traversable directory for one test."""
    # Only safe characters: Redis and unbound read their config paths as glob patterns.
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name[:40])
    d = Path(tempfile.mkdtemp(prefix=safe + "-", dir=testbed_root))
    d.chmod(0o755)
    return d
