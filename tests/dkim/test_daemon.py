"""The postward-dkim process on its own: refusing bad config and keys at start, reloading on
SIGUSR1, surviving clients that hang up or send garbage, failing safe on DNS trouble, and its
metrics. Driven with a small milter-protocol client (tests/testbed/milter_client.py) where
Postfix would not produce the case on demand."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from postward.dkim.keys import parse_private_key
from postward.dkim.offline import sign_message
from postward.dkim.opendkim_conf import DEFAULT_OVERSIGN_HEADERS, DEFAULT_SIGN_HEADERS
from postward.dkim.signer import SigningKey
from tests.dkim.milter_fixture import ROOT, DkimDaemon, KeySpec
from tests.testbed.mail import make_message
from tests.testbed.milter_client import EomResult, MilterClient, run_message, split_message
from tests.testbed.net import free_port, wait_until

pytestmark = pytest.mark.integration

INSIDE, OUTSIDE = "127.0.0.1", "203.0.113.10"
# Milter protocol bits (SMFIP_*): steps not sent, and steps Postfix does not wait an answer for.
NO_HELO, NO_RCPT, NO_DATA = 0x2, 0x8, 0x200
NO_REPLY_CONNECT, NO_REPLY_MAIL, NO_REPLY_HEADER, NO_REPLY_EOH, NO_REPLY_BODY = (
    0x1000, 0x4000, 0x80, 0x40000, 0x80000)


def _message(subject: str = "hello", sender: str = "alice@example.test") -> bytes:
    return make_message(sender, "bob@receiver.test", subject=subject,
                        body="Hello Bob,\n\nsee you.\n").as_bytes()


def _session(daemon: DkimDaemon) -> MilterClient:
    client = MilterClient((daemon.address, daemon.port))
    client.negotiate()
    return client


def _run(daemon: DkimDaemon, message: bytes, **options) -> EomResult | str:  # type: ignore[no-untyped-def]
    client = _session(daemon)
    try:
        return run_message(client, message, **options)
    finally:
        client.close()


@pytest.fixture
def signer(make_dkim, redis_server, dkim_dns, dkim_keys, loopback):  # type: ignore[no-untyped-def]
    return make_dkim("dkim", redis_url=redis_server.url, nameserver=dkim_dns.nameserver,
                     keys=[KeySpec("example.test", dkim_keys.rsa2048.selector,
                                   dkim_keys.rsa2048.private_pem)],
                     metrics_port=free_port(loopback))


def test_signs_for_an_internal_host_and_answers_every_step(signer) -> None:  # type: ignore[no-untyped-def]
    result = _run(signer, _message(), client_ip=INSIDE)
    assert isinstance(result, EomResult) and result.reply == "c"
    (index, name, value), = result.inserted
    assert (index, name) == (0, "DKIM-Signature")
    assert b"d=example.test" in value and b"s=rsa2048" in value


def test_client_hanging_up_mid_message_does_not_hurt_the_daemon(signer) -> None:  # type: ignore[no-untyped-def]
    for cut in ("after MAIL", "in the header", "in the body"):
        client = _session(signer)
        client.connect("client.test", INSIDE)
        client.mail("alice@example.test")
        if cut != "after MAIL":
            client.rcpt("bob@receiver.test")
            client.data()
            client.header(b"From", b" alice@example.test")
        if cut == "in the body":
            client.eoh()
            client.body(b"half a bo")
        client.close()
    result = _run(signer, _message("after the hang-ups"), client_ip=INSIDE)
    assert isinstance(result, EomResult) and result.inserted, signer.log_text()
    assert signer.process.running()


def test_garbage_headers_and_malformed_signatures_are_answered(signer) -> None:  # type: ignore[no-untyped-def]
    garbage = (b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=rsa2048; b=%%%; bh=;\n"
               b"DKIM-Signature: this is not a tag list\n"
               b"X-Binary: \x00\xff\xfe\x01 garbage\n"
               + _message("garbage"))
    result = _run(signer, garbage, client_ip=OUTSIDE)
    assert isinstance(result, EomResult), result
    assert result.reply == "c"   # On-BadSignature accept: a broken signature is no signature
    results = b" ".join(result.header("Authentication-Results"))
    assert results.count(b"dkim=permerror") == 2, results
    assert signer.process.running()


def test_forged_results_with_our_authserv_id_are_removed(signer) -> None:  # type: ignore[no-untyped-def]
    forged = (f"Authentication-Results: {signer.authserv_id}; dkim=pass header.d=bank.test\n"
              "Authentication-Results: other.host.test; dkim=pass\n").encode() + _message()
    result = _run(signer, forged, client_ip=OUTSIDE)
    assert isinstance(result, EomResult)
    assert [(i, n, v) for i, n, v in result.changed] == [(1, "Authentication-Results", b"")]


def test_dns_timeout_defers_signed_mail(make_dkim, redis_server, loopback, dkim_keys) -> None:  # type: ignore[no-untyped-def]
    """A nameserver that never answers (a bound UDP socket nobody reads): the key lookup times
    out, the result is temperror and OpenDKIM's On-DNSError default (tempfail) applies."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((loopback, 0))
        daemon = make_dkim("dkim-dns-down", redis_url=redis_server.url,
                           nameserver=f"{loopback}:{silent.getsockname()[1]}",
                           extra_dkim="key_lookup_budget = 3s\n")
        signed = _run(daemon, _message(), client_ip=INSIDE)  # nothing to sign: no keys
        assert isinstance(signed, EomResult) or signed == "a"
        key = SigningKey("example.test", dkim_keys.rsa2048.selector,
                         parse_private_key(dkim_keys.rsa2048.private_pem, "test"))
        message = _message("dns down").replace(b"\n", b"\r\n")
        message = sign_message(message, [key], 1_700_000_000, DEFAULT_SIGN_HEADERS,
                               DEFAULT_OVERSIGN_HEADERS) + message
        result = _run(daemon, message, client_ip=OUTSIDE)
        assert isinstance(result, EomResult)
        assert result.reply == "y" and result.reply_text.startswith(b"451 4.7.1"), result
        assert daemon.process.running()


def _metrics(daemon: DkimDaemon, port: int) -> str:
    with urllib.request.urlopen(f"http://{daemon.address}:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_metrics_count_signatures_and_verifications(make_dkim, redis_server, dkim_dns,  # type: ignore[no-untyped-def]
                                                     dkim_keys, loopback) -> None:
    port = free_port(loopback)
    daemon = make_dkim("dkim-metrics", redis_url=redis_server.url,
                       nameserver=dkim_dns.nameserver, metrics_port=port,
                       keys=[KeySpec("example.test", dkim_keys.rsa2048.selector,
                                     dkim_keys.rsa2048.private_pem)])
    signed = _run(daemon, _message(), client_ip=INSIDE)
    assert isinstance(signed, EomResult)
    value = signed.inserted[0][2].replace(b"\n", b"\r\n")
    _run(daemon, b"DKIM-Signature:" + value + b"\r\n" + _message().replace(b"\n", b"\r\n"),
         client_ip=OUTSIDE)
    _run(daemon, _message("unsigned"), client_ip=OUTSIDE)
    text = _metrics(daemon, port)
    assert 'postward_dkim_signatures_total{algorithm="rsa",domain="example.test"} 1.0' in text
    assert 'postward_dkim_verifications_total{result="pass"} 1.0' in text
    assert 'postward_dkim_verifications_total{result="none"} 1.0' in text
    assert 'postward_dkim_key_lookups_total{source="dns"} 1.0' in text
    assert 'postward_dkim_callback_seconds_count{callback="eom"}' in text


def _start_fails(daemon: DkimDaemon) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "postward.dkim", "--config",
                           str(daemon.config)], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


def test_key_readable_by_everyone_refuses_the_start(testbed_dir, loopback, dkim_keys) -> None:  # type: ignore[no-untyped-def]
    daemon = DkimDaemon(testbed_dir / "d", loopback, redis_url="redis://127.0.0.1:1/0",
                        nameserver="127.0.0.1:53",
                        keys=[KeySpec("example.test", "rsa2048", dkim_keys.rsa2048.private_pem)])
    key = testbed_dir / "d" / "keys" / "example.test.rsa2048"
    key.chmod(0o644)
    done = _start_fails(daemon)
    assert done.returncode == 2
    out = done.stdout + done.stderr
    assert f"{testbed_dir / 'd' / 'KeyTable'}:1:" in out
    assert str(key) in out and "0644" in out, out


def test_unknown_and_unimplemented_options_refuse_the_start(testbed_dir, loopback) -> None:  # type: ignore[no-untyped-def]
    daemon = DkimDaemon(testbed_dir / "d", loopback, redis_url="redis://127.0.0.1:1/0",
                        nameserver="127.0.0.1:53",
                        extra_opendkim="SigningTabel refile:/x\nStatistics /var/tmp/stats\n")
    done = _start_fails(daemon)
    out = done.stdout + done.stderr
    assert done.returncode == 2
    assert "SigningTabel" in out and "SigningTable" in out    # did you mean
    assert "Statistics" in out and "not implement" in out, out


def test_sigusr1_reloads_and_keeps_the_old_config_when_the_new_one_is_bad(signer) -> None:  # type: ignore[no-untyped-def]
    conf = signer.opendkim_conf
    good = conf.read_text()
    conf.write_text(good + "NoSuchOption yes\n")
    os.kill(signer.process.pid, signal.SIGUSR1)
    wait_until(lambda: "reload_kept_running_config" in signer.log_text(), timeout=10)
    result = _run(signer, _message(), client_ip=INSIDE)
    assert isinstance(result, EomResult) and result.inserted       # still signing
    # A good change: stop signing (Mode v) — takes effect for new connections.
    conf.write_text(good.replace("Mode                    sv", "Mode                    v"))
    os.kill(signer.process.pid, signal.SIGUSR1)
    wait_until(lambda: "event=reloaded" in signer.log_text(), timeout=10)
    result = _run(signer, _message(), client_ip=INSIDE)
    assert result == "a" or (isinstance(result, EomResult) and not result.inserted)


def test_sigterm_stops_cleanly(signer) -> None:  # type: ignore[no-untyped-def]
    assert signer.stop() == 0, signer.log_text()


def test_unix_socket_verifies_with_fewer_steps(make_dkim, redis_server, dkim_dns,  # type: ignore[no-untyped-def]
                                               dkim_keys) -> None:
    """On a local: socket the milter asks Postfix to skip HELO/RCPT/DATA and not to wait for
    an answer to MAIL FROM, per header field or per body chunk; signing and verifying work the
    same."""

    daemon = make_dkim("dkim-unix-v", redis_url=redis_server.url,
                       nameserver=dkim_dns.nameserver, unix_socket=True, umask="000",
                       keys=[KeySpec("example.test", dkim_keys.rsa2048.selector,
                                     dkim_keys.rsa2048.private_pem)])
    client = MilterClient(str(daemon.socket_path))
    try:
        _actions, protocol = client.negotiate(0x1FFFFF)  # every step Postfix can skip, as it offers
        skipped = NO_HELO | NO_RCPT | NO_DATA | NO_REPLY_MAIL | NO_REPLY_HEADER | NO_REPLY_BODY
        assert protocol & skipped == skipped
        assert protocol & (NO_REPLY_CONNECT | NO_REPLY_EOH) == 0   # these may end the message
        assert client.connect("client.test", INSIDE) == "c"
        client.send(b"M", b"<alice@example.test>\0")   # no reply asked
        fields, body = split_message(_message("over unix"))
        for name, value in fields:
            client.send(b"L", name + b"\0" + value + b"\0")   # no reply asked
        assert client.eoh() == "c"
        client.send(b"B", body)   # no reply asked
        signed = client.eom()
    finally:
        client.close()
    value = signed.inserted[0][2].replace(b"\n", b"\r\n")
    verified = _run_unix(daemon, b"DKIM-Signature:" + value + b"\r\n" +
                         _message("over unix").replace(b"\n", b"\r\n"))
    assert b"dkim=pass" in b" ".join(verified.header("Authentication-Results"))


def _run_unix(daemon: DkimDaemon, message: bytes) -> EomResult:

    client = MilterClient(str(daemon.socket_path))
    try:
        client.negotiate(0x1FFFFF)  # every step Postfix can skip, as it offers
        client.connect("client.test", OUTSIDE)
        client.send(b"M", b"<alice@example.test>\0")
        fields, body = split_message(message)
        for name, value in fields:
            client.send(b"L", name + b"\0" + value + b"\0")
        client.eoh()
        client.send(b"B", body)
        return client.eom()
    finally:
        client.close()


def test_unix_failure_in_a_step_without_answer_is_answered_at_end_of_message(
        testbed_dir, loopback, redis_server, dkim_dns) -> None:  # type: ignore[no-untyped-def]
    """Postfix does not wait for an answer to a body chunk on a unix socket, so a failure there
    (here: ARC's body spool cannot roll over to its TemporaryDirectory, removed after the
    start) must not be answered at once — Postfix would read that answer as the one to its
    next command — but at end of message: 451, the message kept (and only logged when the
    message is aborted instead). The session stays in step and the next message is looked
    at."""
    spool = testbed_dir / "spool"
    spool.mkdir()
    daemon = DkimDaemon(testbed_dir / "dkim-unix-fail", loopback, redis_url=redis_server.url,
                        nameserver=dkim_dns.nameserver, unix_socket=True)
    conf = daemon.opendkim_conf.read_text()
    daemon.opendkim_conf.write_text(conf.replace("TemporaryDirectory      /var/tmp",
                                                 f"TemporaryDirectory      {spool}"))
    daemon.start()
    try:
        spool.rmdir()
        arc_set = b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=example.test; s=x; b=AAAA\n"
        big = arc_set + _message("big").rstrip(b"\n") + b"\n" + b"0123456789" * 120_000 + b"\n"
        client = MilterClient(str(daemon.socket_path))
        try:
            _actions, protocol = client.negotiate(0x1FFFFF)
            assert protocol & NO_REPLY_BODY
            assert client.connect("client.test", OUTSIDE) == "c"
            client.send(b"M", b"<alice@example.test>\0")
            fields, body = split_message(big)
            for name, value in fields:
                client.send(b"L", name + b"\0" + value + b"\0")
            assert client.eoh() == "c"
            for i in range(0, len(body), 65535):
                client.send(b"B", body[i:i + 65535])
            result = client.eom()
            assert result.reply == "y" and result.reply_text.startswith(b"451 4.7.1"), result
            assert not result.inserted
            client.send(b"A")   # what Postfix sends after a rejected message
            # A failure followed by an abort (the client went away) has no answer to give:
            # it is still logged.
            client.send(b"M", b"<alice@example.test>\0")
            for name, value in fields:
                client.send(b"L", name + b"\0" + value + b"\0")
            assert client.eoh() == "c"
            for i in range(0, len(body), 65535):
                client.send(b"B", body[i:i + 65535])
            client.send(b"A")
            # The same session, in step: the next message is looked at normally.
            client.send(b"M", b"<alice@example.test>\0")
            fields, body = split_message(_message("small"))
            for name, value in fields:
                client.send(b"L", name + b"\0" + value + b"\0")
            reply = client.eoh()
            assert reply in ("a", "c"), reply   # unsigned: accepted or answered at the end
        finally:
            client.close()
        log = daemon.log_text()
        failures = [line for line in log.splitlines() if "callback_failed" in line]
        assert len(failures) == 2 and all("stage=body" in f for f in failures), log
        assert daemon.process.running()
    finally:
        daemon.stop()
