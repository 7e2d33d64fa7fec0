"""postward-dkim in real Postfixes wired with postfix-snippets/dkim.main.cf.

A sending Postfix (its postward-dkim has the guide's opendkim.conf, KeyTable, SigningTable and
TrustedHosts, with an RSA and an Ed25519 key for example.test) relays to a receiving Postfix
whose own postward-dkim verifies, with the keys published in the test DNS. What arrives is
also checked by the independent verifiers (OpenDKIM, Mail::DKIM, dkimpy).

Clients appear to the sending Postfix through XCLIENT (allowed from the test's own address):
ADDR= plays an outside client, LOGIN= a SASL-authenticated one.
"""

from __future__ import annotations

import re
import smtplib
import subprocess

import pytest

from tests.dkim.milter_fixture import KeySpec
from tests.testbed.mail import StoredMessage, make_message
from tests.testbed.net import wait_until
from tests.testbed.postfix_fixtures import SNIPPETS

pytestmark = pytest.mark.integration

OUTSIDE_CLIENT = "203.0.113.10"


def xclient_send(postfix, sender: str, recipient: str, message: bytes, *,  # type: ignore[no-untyped-def]
                 addr: str | None = None, login: str | None = None) -> tuple[int, str]:
    """One transaction; returns the reply to the end of DATA (or the first failure)."""
    host, port = postfix.smtp_service.rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=60) as s:
        s.ehlo("client.sender.test")
        if addr or login:
            attrs = [f"ADDR={addr}" if addr else "", f"LOGIN={login}" if login else ""]
            code, text = s.docmd("XCLIENT", " ".join(a for a in attrs if a))
            assert code == 220, (code, text)
            s.ehlo("client.sender.test")
        code, text = s.mail(sender)
        if code != 250:
            return code, text.decode()
        code, text = s.rcpt(recipient)
        if code != 250:
            return code, text.decode()
        code, text = s.data(message)
        return code, text.decode()


def _message(subject: str, body: str = "Hello Bob,\n\nthe report is attached.\n") -> bytes:
    return make_message("alice@example.test", "bob@receiver.test", subject=subject,
                        body=body).as_bytes()


@pytest.fixture
def pair(make_postfix, make_dkim, redis_server, dkim_dns, dkim_keys, loopback):  # type: ignore[no-untyped-def]
    """(sender postfix, receiver postfix, sender dkim, receiver dkim)."""
    rx_dkim = make_dkim("dkim-rx", redis_url=redis_server.url, nameserver=dkim_dns.nameserver)
    receiver = make_postfix(name="rx", domains=["receiver.test"],
                            snippets=[SNIPPETS / "dkim.main.cf"],
                            overrides={"postward_dkim_milter": rx_dkim.milter,
                                       "smtpd_authorized_xclient_hosts": "127.0.0.0/8"})
    tx_dkim = make_dkim(
        "dkim-tx", redis_url=redis_server.url, nameserver=dkim_dns.nameserver,
        keys=[KeySpec("example.test", dkim_keys.rsa2048.selector, dkim_keys.rsa2048.private_pem),
              KeySpec("example.test", dkim_keys.ed25519.selector,
                      dkim_keys.ed25519.private_pem, "ed25519")],
        trusted_hosts=["127.0.0.1", loopback])
    sender = make_postfix(name="tx", domains=["sender.test"],
                          relay_routes={"receiver.test": receiver.nexthop},
                          snippets=[SNIPPETS / "dkim.main.cf"],
                          overrides={"postward_dkim_milter": tx_dkim.milter,
                                     "smtpd_authorized_xclient_hosts": "127.0.0.0/8"})
    return sender, receiver, tx_dkim, rx_dkim


def _arrived(receiver, subject: str) -> StoredMessage:  # type: ignore[no-untyped-def]
    """The delivered message with ``subject``, once it is there (others may arrive first)."""
    def found() -> list[StoredMessage]:
        return receiver.maildir.find(lambda m: m.message["Subject"] == subject)

    wait_until(found, timeout=30, what=f"a message with Subject {subject!r}")
    return found()[0]


def _our_results(message: StoredMessage, authserv_id: str) -> list[str]:
    values = [str(v) for v in message.message.get_all("Authentication-Results", [])]
    ours = [v for v in values if v.split(";")[0].strip().lower() == authserv_id]
    return re.findall(r"dkim=(\w+)", " ".join(ours))


def test_internal_client_mail_is_signed_and_verifies_at_the_receiver(pair, dkim_peers) -> None:  # type: ignore[no-untyped-def]
    sender, receiver, _tx, rx = pair
    code, text = xclient_send(sender, "alice@example.test", "bob@receiver.test",
                              _message("signed via smtpd"))
    assert code == 250, text
    got = _arrived(receiver, "signed via smtpd")
    signatures = got.message.get_all("DKIM-Signature", [])
    assert len(signatures) == 2
    assert _our_results(got, rx.authserv_id) == ["pass", "pass"]
    # Independent verifiers agree (Mail::DKIM does not know Ed25519: only its RSA result counts).
    verdicts = dkim_peers.verify_all(got.raw)
    assert verdicts["opendkim"].results == ["pass", "pass"], verdicts["opendkim"].raw
    assert verdicts["dkimpy"].passed, verdicts["dkimpy"].raw
    assert verdicts["Mail::DKIM"].for_selector("rsa2048").result == "pass"


def test_authenticated_client_is_signed_outside_client_is_not(pair) -> None:  # type: ignore[no-untyped-def]
    sender, receiver, _tx, rx = pair
    code, _ = xclient_send(sender, "alice@example.test", "bob@receiver.test",
                           _message("sasl client"), addr=OUTSIDE_CLIENT, login="alice")
    assert code == 250
    code, _ = xclient_send(sender, "alice@example.test", "bob@receiver.test",
                           _message("outside client"), addr=OUTSIDE_CLIENT)
    assert code == 250
    assert _our_results(_arrived(receiver, "sasl client"), rx.authserv_id) == ["pass", "pass"]
    unsigned = _arrived(receiver, "outside client")
    assert unsigned.message.get_all("DKIM-Signature") is None


def test_local_submission_is_signed(pair) -> None:  # type: ignore[no-untyped-def]
    sender, receiver, _tx, rx = pair
    subprocess.run(["/usr/sbin/sendmail", "-C", str(sender.config_dir), "-f",
                    "alice@example.test", "bob@receiver.test"],
                   input=_message("via sendmail"), check=True, timeout=30)
    assert _our_results(_arrived(receiver, "via sendmail"), rx.authserv_id) == ["pass", "pass"]


def test_mail_reinjected_by_the_classifier_is_not_signed(pair) -> None:  # type: ignore[no-untyped-def]
    """postward-filter hands classified inbound mail back to sendmail (the guide's
    re-injection), which is local submission to the milter: a stranger's forged
    From: alice@example.test must not come out with our signature."""
    sender, receiver, _tx, _rx = pair
    forged = _message("forged, classified, re-injected").replace(
        b"\n\n", b"\nX-DSPAM-Result: Innocent\n\n", 1)
    subprocess.run(["/usr/sbin/sendmail", "-C", str(sender.config_dir), "-f",
                    "alice@example.test", "bob@receiver.test"],
                   input=forged, check=True, timeout=30)
    got = _arrived(receiver, "forged, classified, re-injected")
    assert got.message.get_all("DKIM-Signature") is None
    # A SASL user's message that keeps an old X-DSPAM-Result (a redirect) is still signed.
    redirected = _message("redirected by a user").replace(
        b"\n\n", b"\nX-DSPAM-Result: Innocent\n\n", 1)
    code, _ = xclient_send(sender, "alice@example.test", "bob@receiver.test", redirected,
                           addr=OUTSIDE_CLIENT, login="alice")
    assert code == 250
    assert len(_arrived(receiver, "redirected by a user").message.get_all("DKIM-Signature")) == 2


def test_altered_message_fails_and_forged_results_are_removed(pair) -> None:  # type: ignore[no-untyped-def]
    sender, receiver, _tx, rx = pair
    xclient_send(sender, "alice@example.test", "bob@receiver.test", _message("to be altered"))
    original = _arrived(receiver, "to be altered").raw
    # Replay it with the body changed, as a forwarder that edits mail would, carrying a forged
    # "pass" under the receiver's own authserv-id.
    head, _, body = original.partition(b"\n\n")
    kept = [line for line in re.split(rb"\n(?![ \t])", head)
            if not line.lower().startswith((b"received:", b"return-path:", b"delivered-to:",
                                            b"authentication-results:"))]
    kept = [b"Authentication-Results: " + rx.authserv_id.encode() + b"; dkim=pass",
            *(k.replace(b"to be altered", b"altered") for k in kept)]
    replay = b"\n".join(kept) + b"\n\n" + body.replace(b"report", b"invoice")
    code, text = xclient_send(receiver, "alice@example.test", "bob@receiver.test", replay,
                              addr=OUTSIDE_CLIENT)
    assert code == 250, text
    got = _arrived(receiver, "altered")
    # The subject was changed too, so both signatures fail; the forged pass is gone.
    assert _our_results(got, rx.authserv_id) == ["fail", "fail"]


def test_milter_down_defers_the_message(pair) -> None:  # type: ignore[no-untyped-def]
    sender, receiver, tx, _rx = pair
    tx.stop()
    code, text = xclient_send(sender, "alice@example.test", "bob@receiver.test",
                              _message("while the milter is down"))
    assert 400 <= code < 500, (code, text)
    tx.start()
    code, _ = xclient_send(sender, "alice@example.test", "bob@receiver.test",
                           _message("after the milter is back"))
    assert code == 250
    assert _arrived(receiver, "after the milter is back").message.get_all("DKIM-Signature")


def test_unix_socket(make_postfix, make_dkim, redis_server, dkim_dns, dkim_keys, loopback):  # type: ignore[no-untyped-def]
    """Signing, then verifying, over a unix socket, where Postfix negotiates away the answers
    to MAIL FROM, header fields and body chunks."""
    dkim = make_dkim("dkim-unix", redis_url=redis_server.url, nameserver=dkim_dns.nameserver,
                     keys=[KeySpec("example.test", dkim_keys.rsa2048.selector,
                                   dkim_keys.rsa2048.private_pem)],
                     trusted_hosts=["127.0.0.1", loopback], unix_socket=True,
                     # Postfix's smtpd runs as another user: it must be able to write to it.
                     umask="000")
    postfix = make_postfix(name="unix", domains=["receiver.test"],
                           snippets=[SNIPPETS / "dkim.main.cf"],
                           overrides={"postward_dkim_milter": dkim.milter,
                                      "smtpd_authorized_xclient_hosts": "127.0.0.0/8"})
    code, text = xclient_send(postfix, "alice@example.test", "bob@receiver.test",
                              _message("unix socket"))
    assert code == 250, text
    got = _arrived(postfix, "unix socket")
    assert "d=example.test" in str(got.message["DKIM-Signature"])
    # The signed message again, from outside and with a forged result under our authserv-id:
    # verified, the forgery removed.
    head, _, body = got.raw.partition(b"\n\n")
    kept = [line for line in re.split(rb"\n(?![ \t])", head)
            if not line.lower().startswith((b"received:", b"return-path:", b"delivered-to:"))]
    replay = (b"Authentication-Results: " + dkim.authserv_id.encode() + b"; dkim=fail\n"
              + b"\n".join(kept) + b"\n\n" + body)
    code, text = xclient_send(postfix, "alice@example.test", "bob@receiver.test", replay,
                              addr=OUTSIDE_CLIENT)
    assert code == 250, text

    def verified() -> list[StoredMessage]:
        return postfix.maildir.find(lambda m: m.message["Subject"] == "unix socket"
                                    and _our_results(m, dkim.authserv_id))

    wait_until(verified, timeout=30, what="the replayed message, verified")
    assert _our_results(verified()[0], dkim.authserv_id) == ["pass"]
