"""ARC in postward-dkim: chains sealed by dkimpy are checked (arc= in Authentication-Results),
and a forwarding host's seal verifies with dkimpy, also as the second link of a chain. Keys are
looked up in the real test DNS."""

from __future__ import annotations

import dkim
import pytest

from postward.dkim.arc import dnsfunc_from
from postward.dkim.cli import _txt_lookup
from tests.dkim.milter_fixture import DkimDaemon
from tests.dkim.test_daemon import OUTSIDE, _message, _run
from tests.testbed.milter_client import EomResult

pytestmark = pytest.mark.integration


def _as_received(result: EomResult, message: bytes) -> bytes:
    """The message as it leaves the milter: inserted fields on top (last inserted first),
    removed ones gone (none here)."""
    top = b"".join(name.encode() + b":" + value.replace(b"\n", b"\r\n") + b"\r\n"
                   for _i, name, value in reversed(result.inserted))
    return top + message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _forwarded(message: bytes, key_pem: bytes, srv_id: bytes = b"forwarder.test") -> bytes:
    """``message`` as a forwarder that checked it and sealed it (instance 1) passes it on."""
    message = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    with_ar = b"Authentication-Results: " + srv_id + b"; dkim=none; arc=none\r\n" + message
    fields = dkim.arc_sign(with_ar, b"rsa2048", b"example.test", key_pem, srv_id)
    return b"".join(fields) + with_ar


@pytest.fixture
def arc_daemon(make_dkim, redis_server, dkim_dns, dkim_keys, testbed_dir):  # type: ignore[no-untyped-def]
    key = testbed_dir / "arc.key"
    key.write_bytes(dkim_keys.rsa2048.private_pem)
    key.chmod(0o600)
    return make_dkim("dkim-arc", redis_url=redis_server.url, nameserver=dkim_dns.nameserver,
                     extra_dkim=f"arc_seal_key = {key}\narc_seal_domain = example.test\n"
                                f"arc_seal_selector = {dkim_keys.rsa2048.selector}\n")


def test_a_chain_sealed_elsewhere_is_checked(make_dkim, redis_server, dkim_dns, dkim_keys) -> None:  # type: ignore[no-untyped-def]
    daemon: DkimDaemon = make_dkim("dkim-v", redis_url=redis_server.url,
                                   nameserver=dkim_dns.nameserver)
    sealed = _forwarded(_message("via a list"), dkim_keys.rsa2048.private_pem)
    result = _run(daemon, sealed, client_ip=OUTSIDE)
    assert isinstance(result, EomResult)
    assert b"arc=pass (i=1)" in b" ".join(result.header("Authentication-Results"))
    broken = sealed.replace(b"see you.", b"see you!")
    result = _run(daemon, broken, client_ip=OUTSIDE)
    assert isinstance(result, EomResult)
    assert b"arc=fail" in b" ".join(result.header("Authentication-Results"))


def test_our_seal_verifies_with_dkimpy_as_first_and_second_link(arc_daemon, dkim_dns,  # type: ignore[no-untyped-def]
                                                                 dkim_keys) -> None:
    dnsfunc = dnsfunc_from(_txt_lookup(dkim_dns.nameserver))
    original = _message("sealed by postward")
    result = _run(arc_daemon, original, client_ip=OUTSIDE)
    assert isinstance(result, EomResult)
    assert [n for _i, n, _v in result.inserted] == [
        "Authentication-Results", "ARC-Authentication-Results", "ARC-Message-Signature",
        "ARC-Seal"]
    out = _as_received(result, original)
    cv, _results, reason = dkim.arc_verify(out, dnsfunc=dnsfunc)
    assert cv == dkim.CV_Pass, reason
    # Second link: a chain sealed by a list server first, then by us.
    upstream = _forwarded(_message("two hops"), dkim_keys.rsa2048.private_pem)
    result = _run(arc_daemon, upstream, client_ip=OUTSIDE)
    assert isinstance(result, EomResult)
    out = _as_received(result, upstream)
    assert b"i=2" in b" ".join(result.header("ARC-Seal"))
    cv, _results, reason = dkim.arc_verify(out, dnsfunc=dnsfunc)
    assert cv == dkim.CV_Pass, reason


def test_messages_over_the_size_cap_pass_without_arc(make_dkim, redis_server, dkim_dns,  # type: ignore[no-untyped-def]
                                                      dkim_keys) -> None:
    daemon = make_dkim("dkim-cap", redis_url=redis_server.url, nameserver=dkim_dns.nameserver,
                       extra_dkim="arc_max_message_size = 1000\n")
    big = _forwarded(_message("big", ) + b"x" * 5000 + b"\n", dkim_keys.rsa2048.private_pem)
    result = _run(daemon, big, client_ip=OUTSIDE)
    assert isinstance(result, EomResult) and result.reply == "c"
    assert b"arc=" not in b" ".join(result.header("Authentication-Results"))
