"""The [policyd] section of postward.conf."""

from __future__ import annotations

from dataclasses import dataclass

from postward.core import config_values as v
from postward.core.config import setting


def listen_address(text: str) -> str:
    """``host:port`` (TCP) or ``unix:/path`` (a socket, e.g. inside Postfix's queue directory)."""
    t = text.strip()
    if t.startswith("unix:"):
        if not t[5:].startswith("/"):
            raise ValueError(f"a unix socket needs an absolute path, as in "
                             f"unix:/var/spool/postfix/private/postward-policy, got {t!r}")
        return t
    v.host_port()(t)
    return t


@dataclass(frozen=True)
class PolicydSettings:
    listen: tuple = setting(("127.0.0.1:10040",), v.list_of(listen_address),
                            "where Postfix reaches the policy service (host:port or unix:/path)")
    rules: tuple = setting(("/etc/postfix/postfwd.cf",), v.list_of(v.non_empty),
                           "postfwd rule files, read in order")
    nodns: bool = setting(False, v.boolean, "no DNS lookups (postfwd's --nodns)")
    default_action: str = setting("DUNNO", v.non_empty,
                                  "the answer when postward cannot decide (Redis down, ...)")
    request_budget: float = setting(10.0, v.duration(0.1, 90),
                                    "longest a request may take; keep it below Postfix's "
                                    "smtpd_policy_service_timeout (100s)")
    dns_budget: float = setting(5.0, v.duration(0.05, 60),
                                "longest the DNSBL lookups of one rule may take")
    max_line_length: int = setting(8192, v.integer(512, 1 << 20),
                                   "longest request line before the client is disconnected")
    max_attributes: int = setting(256, v.integer(16, 10000),
                                  "most attributes in one request before disconnecting")
    idle_timeout: float = setting(600.0, v.duration(1, 86400),
                                  "close a connection idle this long (Postfix's own "
                                  "smtpd_policy_service_max_idle is 300s)")
    request_cache: float = setting(60.0, v.duration(0, 3600),
                                   "give a request the answer an identical request got this "
                                   "recently (postfwd's request cache; 0: off); decisions "
                                   "that used Redis state, ask(), the clock or live lists are "
                                   "never kept")
    workers: int = setting(1, v.integer(1, 64),
                           "processes answering on the same sockets (one per core is right "
                           "for a busy MX: all state is in Redis)")
    max_wait: float = setting(30.0, v.duration(0, 300), "longest a wait() action sleeps")
    allow_non_loopback: bool = setting(False, v.boolean,
                                       "allow listening on a non-loopback address")

    def check(self) -> list[tuple[str, str]]:
        if self.allow_non_loopback:
            return []
        bad = [a for a in self.listen
               if not a.startswith("unix:") and not v.host_port()(a).is_loopback]
        return [("listen", f"{', '.join(bad)}: not a loopback address; the policy protocol "
                           f"has no authentication (set allow_non_loopback = yes to insist)")
                ] if bad else []
