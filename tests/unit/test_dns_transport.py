"""The c-ares transport keeps one UDP socket open only towards resolvers on this host."""

from __future__ import annotations

import pytest

from postward.core.dns import CaresTransport, _is_loopback


@pytest.mark.parametrize(("nameserver", "loopback"), [
    ("127.0.0.1", True),
    ("127.53.0.1:5353", True),
    ("::1", True),
    ("[::1]:53", True),
    ("192.0.2.53", False),
    ("192.0.2.53:53", False),
    ("[2001:db8::53]:53", False),
    ("2001:db8::53", False),
    ("resolver.example", False),
])
def test_loopback_nameservers_are_recognised(nameserver: str, loopback: bool) -> None:
    assert _is_loopback(nameserver) is loopback


def test_stay_open_only_when_every_resolver_is_local() -> None:
    assert CaresTransport(["127.0.0.1:53", "[::1]:53"], 1.0, 1)._stay_open
    # One remote resolver, or the system's resolv.conf (unknown servers): a port per query.
    assert not CaresTransport(["127.0.0.1:53", "192.0.2.53"], 1.0, 1)._stay_open
    assert not CaresTransport([], 1.0, 1)._stay_open
