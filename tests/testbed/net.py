"""Private loopback addresses and ports, so two test runs on one machine never collide.

Linux routes all of 127.0.0.0/8 to ``lo``: each test session picks a random address in it and
binds every daemon there, on ports the kernel hands out.
"""

from __future__ import annotations

import contextlib
import random
import socket
import time


def private_loopback() -> str:
    """A random 127.x.y.z address nobody on this machine is likely to use (not 127.0.0.x)."""
    rng = random.SystemRandom()
    while True:
        addr = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((addr, 0))
            except OSError:
                continue
        return addr


def free_port(host: str, kind: int = socket.SOCK_STREAM) -> int:
    """A port free on ``host`` for both TCP and UDP (DNS servers want both)."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, other) as s2:
            try:
                s2.bind((host, port))
            except OSError:
                continue
        return port


def wait_for_tcp(host: str, port: int, timeout: float = 20.0) -> None:
    """Poll until something accepts on host:port (raises TimeoutError with what was tried)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")
        time.sleep(0.05)


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value, and return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout}s")
        time.sleep(interval)
