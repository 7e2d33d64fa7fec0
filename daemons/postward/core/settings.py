"""The sections every daemon shares: [redis], [dns], [metrics], [logging]."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from postward.core import config_values as v
from postward.core.config import setting


def _secret_file(text: str) -> str:
    """A path whose file holds a secret; read at load so a missing file fails the start."""
    if not text.strip():
        return ""
    path = Path(text.strip())
    try:
        mode = path.stat().st_mode
        path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    if mode & 0o004:
        raise ValueError(f"{path} is readable by everyone (mode {mode & 0o777:04o}); "
                         f"chmod o-r it")
    return str(path)


@dataclass(frozen=True)
class RedisSettings:
    url: str = setting("redis://127.0.0.1:6379/0", v.redis_url,
                       "redis://, rediss:// (TLS) or unix:///path?db=N")
    username: str = setting("", v.text, "ACL user (Redis 6+); empty: the default user")
    password_file: str = setting("", _secret_file,
                                 "file holding the password (not world-readable); "
                                 "empty: no password")
    key_prefix: str = setting("postward:", v.non_empty,
                              "prefix of every key, so one Redis can serve other programs too")
    pool_size: int = setting(32, v.integer(1, 1024), "connections per daemon process, at most")
    connect_timeout: float = setting(1.0, v.duration(0.01, 60), "time to open a connection")
    timeout: float = setting(0.5, v.duration(0.01, 60), "time for one command's answer")
    retries: int = setting(2, v.integer(0, 10), "reconnect attempts per command after an error")
    backoff_base: float = setting(0.02, v.duration(0, 10), "first wait before a reconnect")
    backoff_cap: float = setting(0.5, v.duration(0, 60), "longest wait between reconnects")
    sentinels: tuple = setting((), v.list_of(v.host_port(26379)),
                               "Sentinel host:port list; when set, url gives only db and TLS")
    sentinel_master: str = setting("", v.text, "the master's name known to the Sentinels")
    sentinel_username: str = setting("", v.text, "ACL user for the Sentinels themselves")
    sentinel_password_file: str = setting("", _secret_file, "password file for the Sentinels")
    tls_ca_file: str = setting("", v.text, "CA bundle for rediss://; empty: system CAs")

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.sentinels and not self.sentinel_master:
            problems.append(("sentinels", "needs sentinel_master, the name of the master"))
        if self.sentinel_master and not self.sentinels:
            problems.append(("sentinel_master", "needs sentinels, the host:port list"))
        if self.backoff_cap < self.backoff_base:
            problems.append(("backoff_cap", "must not be below backoff_base"))
        return problems


@dataclass(frozen=True)
class DnsSettings:
    nameservers: tuple = setting((), v.list_of(v.ip_host_port(53)),
                                 "IP or IP:port list; empty: those of /etc/resolv.conf")
    timeout: float = setting(2.0, v.duration(0.01, 60), "time for one query")
    tries: int = setting(1, v.integer(1, 5), "attempts per query and server")
    cache: bool = setting(True, v.boolean, "share answers in Redis, kept for their TTL")
    cache_min_ttl: float = setting(0.0, v.duration(0, 86400), "keep answers at least this long")
    cache_max_ttl: float = setting(86400.0, v.duration(1, 7 * 86400),
                                   "keep answers at most this long")
    negative_ttl: float = setting(300.0, v.duration(0, 86400),
                                  "how long 'no such name' is kept (most DNSBL answers)")
    local_cache_ttl: float = setting(10.0, v.duration(0, 3600),
                                     "also keep answers in each process this long at most "
                                     "(saves a Redis round trip per lookup); 0: off")
    local_cache_size: int = setting(20000, v.integer(0, 10_000_000),
                                    "answers kept in each process at most")

    def check(self) -> list[tuple[str, str]]:
        if self.cache_max_ttl < self.cache_min_ttl:
            return [("cache_max_ttl", "must not be below cache_min_ttl")]
        return []


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = setting(True, v.boolean, "serve Prometheus metrics over HTTP")
    policyd: v.HostPort = setting(v.HostPort("127.0.0.1", 9740), v.host_port(),
                                  "where postward-policyd serves /metrics")
    dkim: v.HostPort = setting(v.HostPort("127.0.0.1", 9741), v.host_port(),
                               "where postward-dkim serves /metrics")
    classifierd: v.HostPort = setting(v.HostPort("127.0.0.1", 9742), v.host_port(),
                                      "where postward-classifierd serves /metrics")
    allow_non_loopback: bool = setting(False, v.boolean,
                                       "allow a non-loopback address (metrics are unauthenticated)")

    def address_for(self, daemon: str) -> v.HostPort:
        return getattr(self, daemon)

    def check(self) -> list[tuple[str, str]]:
        if self.allow_non_loopback:
            return []
        return [(name, f"{getattr(self, name)} is not a loopback address; metrics have no "
                       f"authentication (set allow_non_loopback = yes to insist)")
                for name in ("policyd", "dkim", "classifierd")
                if not getattr(self, name).is_loopback]


@dataclass(frozen=True)
class LoggingSettings:
    level: str = setting("info", v.choice("debug", "info", "warning", "error"),
                         "least severe level written")
