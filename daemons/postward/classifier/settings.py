"""The [classifier] section of postward.conf (postward-classifierd and postward-filter)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from postward.core import config_values as v
from postward.core.config import setting


def number(minimum: float, maximum: float):  # type: ignore[no-untyped-def]
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if not minimum <= value <= maximum:
            raise ValueError(f"{value} is outside {minimum}..{maximum}")
        return value

    parse.plain_number = True  # type: ignore[attr-defined]  # the reference shows no unit
    return parse


def delivery_agent(text: str) -> str:
    """A command (``%u`` user, ``%s`` sender, ``%r`` recipient) or ``lmtp:unix:/path`` /
    ``lmtp:HOST:PORT``."""
    t = text.strip()
    if t.startswith("lmtp:"):
        target = t[5:]
        if not (target.startswith("unix:/") or v.host_port()(target)):
            raise ValueError(f"{t!r}: expected lmtp:unix:/path or lmtp:HOST:PORT")
        return t
    try:
        argv = shlex.split(t)
    except ValueError as e:
        raise ValueError(f"{t!r}: {e}") from None
    if not argv or not argv[0].startswith("/"):
        raise ValueError(f"{t!r}: the delivery agent must start with an absolute path "
                         f"(Postfix runs the filter with an empty PATH)")
    return t


@dataclass(frozen=True)
class ClassifierSettings:
    socket: str = setting("/run/postward/classifierd.sock", v.non_empty,
                          "the unix socket postward-classifierd listens on and postward-filter "
                          "connects to")
    socket_mode: str = setting("0660", v.non_empty,
                               "permissions of the socket (the filter runs as Postfix's pipe "
                               "user; give it the daemon's group)")
    delivery_agent: str = setting("/usr/sbin/sendmail -G -i -f %s -- %r", delivery_agent,
                                  "how a classified message is handed on: a command (%u user, "
                                  "%s sender, %r recipient; e.g. the guide's "
                                  "'/usr/lib/dovecot/deliver -d %u') or lmtp:unix:/path")
    training_mode: str = setting("teft", v.choice("teft", "toe", "tum", "notrain"),
                                 "dspam's TrainingMode: teft (train every message), toe (only "
                                 "on error), tum (every message until 2,500 innocent ones), "
                                 "notrain")
    signature_ttl: float = setting(14 * 86400.0, v.duration(3600, 365 * 86400),
                                   "how long X-DSPAM-Signature retraining data is kept")
    spam_cutoff: float = setting(0.95, number(0.5, 1.0), "probability at or above: spam")
    unsure: bool = setting(False, v.boolean,
                           "an 'Unsure' verdict between ham_cutoff and spam_cutoff")
    ham_cutoff: float = setting(0.05, number(0.0, 0.5),
                                "probability at or below: innocent (with unsure = yes)")
    min_dev: float = setting(0.3, number(0.0, 0.49),
                             "a token counts as evidence when its probability is this far "
                             "from 0.5")
    robs: float = setting(0.005, number(0.0001, 10.0), "Robinson's s (prior strength)")
    robx: float = setting(0.52, number(0.0, 1.0), "Robinson's x (an unknown token's "
                                                  "probability)")
    max_message_size: int = setting(10 * 1024 * 1024, v.integer(1024, 1 << 31),
                                    "bytes the daemon accepts for one message (Postfix's "
                                    "message_size_limit is 10 MB by default)")
    fallback: str = setting("tempfail", v.choice("tempfail", "inprocess"),
                            "what postward-filter does when the daemon is unreachable: exit 75 "
                            "(Postfix retries) or classify in its own process")
    request_timeout: float = setting(60.0, v.duration(1, 3600),
                                     "longest the daemon works on one request")
    global_training: bool = setting(False, v.boolean,
                                    "also train the global model on every user's mail")
    global_cache_entries: int = setting(500_000, v.integer(0, 100_000_000),
                                        "global model token counts each daemon process keeps "
                                        "in memory (~90 bytes each), so Redis reads only the "
                                        "rest; 0 or global_training = yes: none")
    workers: int = setting(1, v.integer(1, 64),
                           "processes answering on the same socket (one per core for a busy "
                           "MX: the models are in Redis, workers share nothing)")
