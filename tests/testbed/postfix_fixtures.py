"""pytest fixtures for the real Postfix (see ``tests/testbed/postfix.py``).

``postfix``: one started instance with the base configuration, in the test's own directory, on
the session's private loopback address. ``make_postfix``: a factory for instances with snippets
and overrides (several per test if needed). ``smtp_sink``: a started smtp-sink to relay to.
Everything is stopped at teardown, also when the test failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.testbed.postfix import PostfixInstance, SmtpSink

# Snippets shipped with postward, for tests that say make_postfix(snippets=[SNIPPETS / "x"]).
SNIPPETS = Path(__file__).resolve().parents[2] / "postfix-snippets"

MakePostfix = Callable[..., PostfixInstance]


@pytest.fixture
def postfix(testbed_dir: Path, loopback: str) -> Iterator[PostfixInstance]:
    instance = PostfixInstance(testbed_dir / "postfix", loopback)
    try:
        yield instance.start()
    finally:
        instance.stop()


@pytest.fixture
def make_postfix(testbed_dir: Path, loopback: str) -> Iterator[MakePostfix]:
    """``make_postfix(snippets=[...], overrides={...}, **PostfixInstance options)`` -> a started
    instance; each call gets its own directory and port."""
    started: list[PostfixInstance] = []

    def make(
        snippets: Sequence[Path] = (),
        overrides: Mapping[str, str] | None = None,
        **options: Any,
    ) -> PostfixInstance:
        name = options.pop("name", f"postfix{len(started) + 1}")
        instance = PostfixInstance(testbed_dir / name, loopback, snippets=snippets,
                                   overrides=overrides, name=name, **options)
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


@pytest.fixture
def smtp_sink(testbed_dir: Path, loopback: str) -> Iterator[SmtpSink]:
    sink = SmtpSink(testbed_dir / "smtp-sink", loopback)
    try:
        yield sink.start()
    finally:
        sink.stop()
