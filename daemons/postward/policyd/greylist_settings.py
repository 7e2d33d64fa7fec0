"""[greylist]: postgrey's command-line options as postward.conf keys, with postgrey's defaults.

Option ``--foo-bar`` of postgrey 1.37 is key ``foo_bar`` here; durations take postward's usual
units (``5m``, ``35d``, ``6h``) where postgrey took seconds (--delay) or days (--max-age,
--retry-window). See docs/greylisting.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from postward.core import config_values as v
from postward.core.config import setting

DEBIAN_CLIENT_FILES = ("/etc/postgrey/whitelist_clients", "/etc/postgrey/whitelist_clients.local")
DEBIAN_RECIPIENT_FILES = ("/etc/postgrey/whitelist_recipients",
                          "/etc/postgrey/whitelist_recipients.local")

_UNITS = (("d", 86400), ("h", 3600), ("m", 60))
# A header name is printable ASCII but ':' (RFC 5322 ftext); Postfix's PREPEND wants "Name: value".
_HEADER = re.compile(r"^[\x21-\x39\x3b-\x7e]+:")


class Seconds(int):
    """Whole seconds, printed in the largest unit that divides them exactly (``35d``, ``5m``), so
    ``postward config-reference`` shows a value an admin would write and the parser reads back."""

    def __str__(self) -> str:
        for unit, size in _UNITS:
            if self and self % size == 0:
                return f"{self // size}{unit}"
        return f"{int(self)}s"


def whole_seconds(minimum: float, maximum: float) -> Callable[[str], Seconds]:
    """A duration that is a whole number of seconds: greylisting counts in seconds, as postgrey
    did, and the %s / %t substitutions print whole seconds."""
    inner = v.duration(minimum, maximum)

    def parse(text: str) -> Seconds:
        value = inner(text)
        if value != int(value):
            raise ValueError(f"must be a whole number of seconds, got {text.strip()}")
        return Seconds(int(value))

    return parse


def one_line(text: str) -> str:
    """Text that goes into a policy answer: one non-empty line (a newline would end the answer)."""
    t = v.non_empty(text)
    if any(ord(c) < 32 or ord(c) == 127 for c in t):
        raise ValueError("must be one line of printable text")
    return t


def header_line(text: str) -> str:
    t = one_line(text)
    if not _HEADER.match(t):
        raise ValueError(f"must be a header, 'Name: value', got {t!r}")
    return t


def absolute_path(text: str) -> str:
    t = text.strip()
    if not t.startswith("/"):
        raise ValueError(f"expected an absolute path, got {t!r}")
    return t


@dataclass(frozen=True)
class GreylistSettings:
    delay: int = setting(Seconds(300), whole_seconds(1, 7 * 86400),
                         "how long a new triplet is deferred (postgrey --delay)")
    max_age: int = setting(Seconds(35 * 86400), whole_seconds(3600, 3650 * 86400),
                           "forget a triplet or client not seen for this long (--max-age)")
    retry_window: int = setting(Seconds(2 * 86400), whole_seconds(1, 3650 * 86400),
                                "time allowed for the first retry (--retry-window)")
    auto_whitelist_clients: int = setting(5, v.integer(0, 1_000_000),
                                          "passes (an hour apart) that whitelist a client; "
                                          "0: never (--auto-whitelist-clients)")
    lookup_by_subnet: bool = setting(True, v.boolean,
                                     "key triplets by the client's subnet; no: by its address")
    ipv4cidr: int = setting(24, v.integer(1, 32), "IPv4 subnet size for lookup_by_subnet")
    ipv6cidr: int = setting(64, v.integer(1, 128), "IPv6 subnet size for lookup_by_subnet")
    whitelist_clients: tuple = setting(DEBIAN_CLIENT_FILES, v.list_of(absolute_path),
                                       "postgrey client whitelist files (absent ones skipped)")
    whitelist_recipients: tuple = setting(DEBIAN_RECIPIENT_FILES, v.list_of(absolute_path),
                                          "postgrey recipient whitelist files "
                                          "(absent ones skipped)")
    greylist_action: str = setting("DEFER_IF_PERMIT", one_line,
                                   "answer to Postfix for a greylisted mail")
    greylist_text: str = setting("Greylisted, see https://postgrey.schweikert.ch/help/%r.html",
                                 one_line,
                                 "text after the action; %r: recipient domain, "
                                 "%s: seconds left")
    x_greylist_header: str = setting("X-Greylist: delayed %t seconds by postgrey-%v at %h; %d",
                                     header_line,
                                     "header added once a triplet passes; %t: seconds delayed, "
                                     "%v: 1.37, %h: hostname, %d: date")
    hostname: str = setting("", v.text, "%h in x_greylist_header; empty: this host's name")

    def check(self) -> list[tuple[str, str]]:
        problems = []
        # An unconfirmed triplet restarts when its first retry comes later than retry_window
        # or after max_age of silence: either one below delay and no mail could ever pass.
        if self.retry_window <= self.delay:
            problems.append(("retry_window", f"must be longer than delay ({self.delay}), "
                                             f"or no mail could ever pass"))
        if self.max_age <= self.delay:
            problems.append(("max_age", f"must be longer than delay ({self.delay})"))
        return problems
