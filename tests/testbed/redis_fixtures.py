"""pytest fixtures for Redis: a plain server, one with an ACL user, and a Sentinel setup."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testbed.redis_server import RedisSentinel, RedisServer


@pytest.fixture
def redis_server(testbed_dir: Path, loopback: str) -> Iterator[RedisServer]:
    """A private redis-server with no password, on ``loopback`` and a unix socket."""
    d = testbed_dir / "redis"
    d.mkdir()
    server = RedisServer(d, loopback).start()
    yield server
    server.stop()


@pytest.fixture
def redis_acl_server(testbed_dir: Path, loopback: str) -> Iterator[RedisServer]:
    """A private redis-server whose only user is ACL user ``postward`` with a random password."""
    d = testbed_dir / "redis-acl"
    d.mkdir()
    server = RedisServer(d, loopback, user="postward", password=secrets.token_hex(16)).start()
    yield server
    server.stop()


@pytest.fixture
def redis_sentinel(redis_server: RedisServer, testbed_dir: Path,
                   loopback: str) -> Iterator[RedisSentinel]:
    d = testbed_dir / "sentinel"
    d.mkdir()
    sentinel = RedisSentinel(d, loopback, redis_server).start()
    yield sentinel
    sentinel.stop()
