"""Parsers for config values. Each takes the raw text and returns a typed value or raises
ValueError with a message an admin can act on (the caller adds file, line and key)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

_TRUE = {"yes", "true", "on", "1"}
_FALSE = {"no", "false", "off", "0"}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def boolean(text: str) -> bool:
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise ValueError(f"expected yes or no, got {text!r}")


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}, got {value}")
        return value

    return parse


def duration(minimum: float = 0.0, maximum: float | None = None) -> Callable[[str], float]:
    """'500ms', '2s', '5m', '1h', '1d' or a bare number of seconds -> seconds as float."""

    def parse(text: str) -> float:
        m = _DURATION.match(text.strip().lower())
        if not m:
            raise ValueError(f"expected a duration such as 500ms, 2s, 5m, 1h or 1d, got {text!r}")
        value = float(m.group(1)) * _UNITS[m.group(2)]
        if value < minimum:
            raise ValueError(f"must be at least {minimum:g}s, got {text.strip()}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum:g}s, got {text.strip()}")
        return value

    return parse


def choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        t = text.strip().lower()
        if t not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {text!r}")
        return t

    return parse


def words(text: str) -> tuple[str, ...]:
    """A list separated by commas and/or white space."""
    return tuple(w for w in re.split(r"[\s,]+", text.strip()) if w)


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def host_port(default_port: int | None = None) -> Callable[[str], HostPort]:
    """'127.0.0.1:53', '[::1]:53', 'host:port'; a bare host takes ``default_port`` if given."""

    def parse(text: str) -> HostPort:
        t = text.strip()
        if m := re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", t):
            host, port = m.group(1), m.group(2)
        elif t.count(":") == 1:
            host, port = t.split(":")
        elif t.count(":") > 1:  # a bare IPv6 address
            host, port = t, None
        else:
            host, port = t, None
        if not host:
            raise ValueError(f"expected host:port, got {text!r}")
        if port is None:
            if default_port is None:
                raise ValueError(f"expected host:port (the port is required), got {text!r}")
            return HostPort(host, default_port)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"port must be 1-65535, got {port!r} in {text!r}")
        return HostPort(host, int(port))

    return parse


def ip_host_port(default_port: int) -> Callable[[str], HostPort]:
    """Like host_port, but the host must be an IP address (nameservers are never names)."""
    inner = host_port(default_port)

    def parse(text: str) -> HostPort:
        hp = inner(text)
        try:
            ipaddress.ip_address(hp.host)
        except ValueError:
            raise ValueError(f"expected an IP address, got {hp.host!r}") from None
        return hp

    return parse


def list_of(item: Callable[[str], object]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        return tuple(item(w) for w in words(text))

    return parse


def redis_url(text: str) -> str:
    t = text.strip()
    parts = urlsplit(t)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {text!r}")
    if parts.scheme == "unix" and not parts.path:
        raise ValueError(f"a unix:// URL needs a socket path, as in unix:///run/redis.sock, "
                         f"got {text!r}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"the URL names no host: {text!r}")
    return t


def non_empty(text: str) -> str:
    t = text.strip()
    if not t:
        raise ValueError("must not be empty")
    return t


def text(value: str) -> str:
    return value.strip()
