"""postward-policyd behind a real Postfix wired with postfix-snippets/policyd.main.cf, running
the guide's postfwd.cf (test-bed DNSBLs; greylist() in place of ask(127.0.0.1:10023)).

SMTP clients appear to Postfix as the test bed's listed addresses through XCLIENT, which the
test Postfix allows from its own loopback address only.
"""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from tests.testbed.dns_fixtures import CLIENT_CLEAN, CLIENT_ON_ONE, CLIENT_ON_THREE
from tests.testbed.dns_servers import DnsTestbed
from tests.testbed.mail import make_message
from tests.testbed.net import wait_until
from tests.testbed.postfix import PostfixInstance
from tests.testbed.postfix_fixtures import SNIPPETS
from tests.testbed.redis_server import RedisServer

pytestmark = pytest.mark.integration

GUIDE_TESTBED = Path(__file__).parent / "rules" / "guide_testbed.cf"


def guide_rules_with_greylist() -> str:
    """The guide's rules, with the one-line migration from postgrey to built-in greylisting."""
    text = GUIDE_TESTBED.read_text()
    assert "action=ask(127.0.0.1:10023)" in text
    return text.replace("action=ask(127.0.0.1:10023)", "action=greylist()")


def smtp_as(postfix: PostfixInstance, client: str, recipient: str) -> tuple[int, str]:
    """One SMTP transaction from ``client`` (via XCLIENT); the RCPT reply, and the message is
    sent when RCPT is accepted."""
    host, port = postfix.smtp_service.rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=30) as s:
        s.ehlo("client.sender.test")
        code, msg = s.docmd("XCLIENT", f"ADDR={client} NAME=[UNAVAILABLE] HELO=client.sender.test")
        assert code == 220, (code, msg)
        s.ehlo("client.sender.test")
        s.mail("someone@sender.test")
        code, msg = s.rcpt(recipient)
        if code == 250:
            s.data(make_message("someone@sender.test", recipient,
                                subject=f"from {client}").as_bytes())
        return code, msg.decode()


@pytest.fixture
def wired(make_postfix, make_policyd, redis_server: RedisServer,
          dns_testbed: DnsTestbed, loopback: str):
    policyd = make_policyd(guide_rules_with_greylist(), redis_server, dns_testbed)
    postfix = make_postfix(
        snippets=[SNIPPETS / "policyd.main.cf"],
        overrides={"postward_policy_service": policyd.service,
                   "smtpd_authorized_xclient_hosts": "127.0.0.0/8"})
    return postfix, policyd


def test_snippet_wires_the_policy_service(wired) -> None:
    postfix, policyd = wired
    assert postfix.postconf("postward_policy_service") == policyd.service
    assert "check_policy_service $postward_policy_service" in " ".join(
        postfix.postconf("smtpd_client_restrictions").split())


def test_client_on_three_lists_is_rejected_with_the_guides_text(wired) -> None:
    postfix, _ = wired
    code, text = smtp_as(postfix, CLIENT_ON_THREE, "bob@example.test")
    assert code == 554
    # postfwd's text exactly: the undefined $$DSBL_count stays, TXT commas become spaces
    assert ("Client host rejected: blocked using $$DSBL_count dnsbls, INFOL ["
            "rbl:dnsbl-a.test:<Listed by dnsbl-a: 192.0.2.66 see https://dnsbl-a.test/q?ip="
            "192.0.2.66>; rbl:dnsbl-b.test:<Open proxy 192.0.2.66>; rbl:dnsbl-c.test:<>]"
            ) in " ".join(text.split())


def test_client_on_one_list_is_greylisted_then_accepted_with_x_greylist(wired) -> None:
    postfix, _ = wired
    code, text = smtp_as(postfix, CLIENT_ON_ONE, "carol@example.test")
    assert code == 450 and "Greylisted" in text, (code, text)

    # The delay is 1 s: retry, as an MTA would, until Postfix accepts.
    def accepted() -> bool:
        return smtp_as(postfix, CLIENT_ON_ONE, "carol@example.test")[0] == 250

    wait_until(accepted, timeout=30, interval=0.5, what="greylisted client accepted on retry")
    [delivered] = postfix.maildir.wait_for(1, timeout=30, recipient="carol@example.test")
    assert delivered.message["X-Greylist"].startswith("delayed ")
    assert "at mx.test" in delivered.message["X-Greylist"]


def test_clean_client_passes_at_once(wired) -> None:
    postfix, _ = wired
    code, _ = smtp_as(postfix, CLIENT_CLEAN, "dave@example.test")
    assert code == 250
    [delivered] = postfix.maildir.wait_for(1, timeout=30, recipient="dave@example.test")
    assert delivered.message["X-Greylist"] is None
