"""The guide's dspam wiring with postward-filter, through a real Postfix and a real Dovecot:
the guide's master.cf line (only the argv changed), its dspam_filter_access map and its Sieve
rule, from postfix-snippets/ (install paths replaced by the test's). Trained spam lands in
Spam, ham in INBOX; moving a message over IMAP retrains (IMAPSieve -> postward-retrain); with
the daemon or Redis stopped the message waits in Postfix's queue and arrives once they are back.
"""

from __future__ import annotations

import shlex
import smtplib
from pathlib import Path

import pytest
import redis

from tests.classifier.daemon_fixture import FILTER, PYTHON, ClassifierDaemon
from tests.classifier.test_pipe_filter import HAM_WORDS, SPAM_WORDS, USER, corpus, message
from tests.testbed.net import wait_until
from tests.testbed.postfix_fixtures import SNIPPETS

pytestmark = pytest.mark.integration

INSTALLED = "/opt/postward/bin/python -I -S /opt/postward/lib/postward-filter.py"


def _installed_here(text: str, daemon: ClassifierDaemon) -> str:
    """A shipped snippet with /opt/postward replaced by this checkout and the test socket."""
    assert INSTALLED in text
    return text.replace(INSTALLED, f"{PYTHON} -I -S {daemon.filter_path} "
                                   f"--socket={daemon.socket_path}")


@pytest.fixture
def mailhost(make_postfix, make_dovecot, make_classifierd, redis_server, testbed_dir):  # type: ignore[no-untyped-def]
    dovecot_dir = SNIPPETS / "dovecot"
    dovecot = make_dovecot(
        name="dovecot", users=[USER], user_sieve=(dovecot_dir / "dspam.sieve").read_text(),
        report_spam_sieve=dovecot_dir / "report-spam.sieve",
        report_ham_sieve=dovecot_dir / "report-ham.sieve")
    # The guide's UntrustedDeliveryAgent, "/usr/lib/dovecot/deliver -d %u", for this Dovecot.
    agent = shlex.join([*dovecot.lda_command, "-f", "%s", "-d", "%u"])
    daemon: ClassifierDaemon = make_classifierd(redis_url=redis_server.url,
                                                delivery_agent=agent)
    # The retrain program needs the daemon's socket; Dovecot runs it only when mail moves.
    retrain = dovecot.pipe_bin_dir / "postward-retrain"
    retrain.write_text(_installed_here((dovecot_dir / "postward-retrain").read_text(), daemon))
    retrain.chmod(0o755)
    master = testbed_dir / "classifier.master.cf"
    master.write_text(_installed_here((SNIPPETS / "classifier.master.cf").read_text(), daemon)
                      .replace("user=postward", "user=mail"))
    access = testbed_dir / "dspam_filter_access"
    access.write_text((SNIPPETS / "dspam_filter_access").read_text())
    postfix = make_postfix(name="mx", domains=["receiver.test"],
                           snippets=[SNIPPETS / "classifier.main.cf", master],
                           overrides={"postward_filter_access": f"pcre:{access}"})
    daemon.train("spam", corpus(testbed_dir / "spam", SPAM_WORDS))
    daemon.train("innocent", corpus(testbed_dir / "ham", HAM_WORDS))
    return postfix, dovecot, daemon


def _send(postfix, subject: str, words: str) -> None:  # type: ignore[no-untyped-def]
    host, port = postfix.smtp_service.rsplit(":", 1)
    with smtplib.SMTP(host, int(port), timeout=30) as s:
        s.sendmail("someone@sender.test", [USER], message(subject, words))


def _totals(redis_url: str) -> tuple[int, int]:
    client = redis.Redis.from_url(redis_url)
    spam, ham = client.hmget(f"postward:cls:m:user:{USER}", ["spam", "ham"])
    return int(spam or 0), int(ham or 0)


def test_spam_to_spam_ham_to_inbox_and_imap_moves_retrain(mailhost, redis_server) -> None:  # type: ignore[no-untyped-def]
    postfix, dovecot, _daemon = mailhost
    _send(postfix, "great offer", SPAM_WORDS)
    _send(postfix, "meeting notes", HAM_WORDS)
    [spam] = dovecot.wait_for(USER, "Spam", 1, timeout=30)
    [ham] = dovecot.wait_for(USER, "INBOX", 1, timeout=30)
    assert b"X-DSPAM-Result: Spam" in spam and b"X-DSPAM-Result: Innocent" in ham
    assert _totals(redis_server.url) == (1, 1)          # TEFT: both learnt on arrival
    # The user moves the ham into Spam: IMAPSieve pipes it to postward-retrain.
    imap = dovecot.imap(USER)
    try:
        imap.select("INBOX")
        _typ, data = imap.uid("SEARCH", None, "ALL")
        [uid] = data[0].split()
        typ, _ = imap.uid("MOVE", uid, "Spam")
        assert typ == "OK"
    finally:
        imap.logout()
    wait_until(lambda: _totals(redis_server.url) == (2, 0), timeout=20,
               what="the moved message relearnt as spam")
    # And back out of Spam: innocent again.
    imap = dovecot.imap(USER)
    try:
        imap.select("Spam")
        _typ, data = imap.uid("SEARCH", None, "SUBJECT", "meeting")
        [uid] = data[0].split()
        assert imap.uid("MOVE", uid, "INBOX")[0] == "OK"
    finally:
        imap.logout()
    wait_until(lambda: _totals(redis_server.url) == (1, 1), timeout=20,
               what="the message moved out of Spam relearnt as innocent")


@pytest.mark.parametrize("outage", ["daemon", "redis"])
def test_outage_keeps_mail_queued_until_it_can_be_classified(mailhost, redis_server,  # type: ignore[no-untyped-def]
                                                             outage) -> None:
    postfix, dovecot, daemon = mailhost
    (daemon if outage == "daemon" else redis_server).stop()
    _send(postfix, "during the outage", HAM_WORDS)
    postfix.wait_for_log(r"status=deferred", timeout=30)
    assert postfix.queue_ids(), postfix.log_tail()
    assert dovecot.mailbox_messages(USER, "INBOX") == []
    (daemon if outage == "daemon" else redis_server).start()
    postfix.flush()
    [got] = dovecot.wait_for(USER, "INBOX", 1, timeout=60)
    assert b"X-DSPAM-Result: Innocent" in got and b"during the outage" in got
    postfix.wait_for_empty_queue(timeout=30)


def test_snippet_paths_are_the_install_paths() -> None:
    """What the admin installs names /opt/postward (the test above replaced it)."""
    for name in ("classifier.master.cf", "dovecot/postward-retrain"):
        assert INSTALLED in (SNIPPETS / name).read_text()
    assert Path(FILTER).is_file()
