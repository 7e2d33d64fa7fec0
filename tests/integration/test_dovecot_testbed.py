"""The real-Dovecot test bed itself: LDA and LMTP delivery, the guide's X-DSPAM-Result Sieve rule,
IMAP, IMAPSieve retraining hooks, parallel instances, teardown. If these fail, every test of the
spam classifier's delivery and retraining would fail for the wrong reason."""

from __future__ import annotations

import email
import email.policy
import imaplib
import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.testbed.dovecot import (
    EX_NOUSER,
    EX_OK,
    EX_TEMPFAIL,
    STANDIN_REPORT_SPAM_SIEVE,
    DovecotInstance,
    read_reports,
    recording_program,
)
from tests.testbed.net import wait_until

if TYPE_CHECKING:
    # Not imported at run time: pytest must import the plugin module itself first (below), or
    # it warns that it cannot rewrite its asserts.
    from tests.testbed.dovecot_fixtures import MakeDovecot

# Registered here so this module also runs before tests/conftest.py lists the plugin; pytest
# imports a plugin once, so listing it in both places is harmless.
pytest_plugins = ["tests.testbed.dovecot_fixtures"]


def _message(subject: str = "test-bed message", headers: dict[str, str] | None = None,
             body: str = "Hello from the postward test bed.\n") -> tuple[bytes, str]:
    """A small RFC 5322 message (LF line ends, as Postfix's pipe hands it to the LDA) and its
    unique Message-ID."""
    msgid = f"<{uuid.uuid4().hex}@sender.test>"
    lines = [
        "From: sender@sender.test",
        "To: alice@example.test",
        f"Subject: {subject}",
        f"Message-ID: {msgid}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
        "",
        body,
    ]
    return "\n".join(lines).encode(), msgid


def _msgids(messages: list[bytes]) -> list[str]:
    return [str(email.message_from_bytes(m, policy=email.policy.default)["Message-ID"])
            for m in messages]


def _uid_of(imap: imaplib.IMAP4, msgid: str) -> bytes:
    typ, data = imap.uid("SEARCH", "HEADER", "Message-ID", msgid)
    assert typ == "OK", data
    uids = data[0].split()
    assert len(uids) == 1, (msgid, data)
    return uids[0]


def _pgrep(pattern: str) -> list[str]:
    proc = subprocess.run(["pgrep", "-a", "-f", pattern], capture_output=True, text=True)
    return proc.stdout.splitlines()


# --------------------------------------------------------------------------------------------
# LDA


def test_lda_delivers_to_inbox(dovecot: DovecotInstance) -> None:
    raw, msgid = _message()
    assert dovecot.deliver_lda("alice", raw, sender="sender@sender.test") == EX_OK
    [stored] = dovecot.wait_for("alice", "INBOX", 1)
    assert _msgids([stored]) == [msgid]
    # The LDA stores the message as given: Return-Path and Delivered-To are the caller's job
    # (the guide's Postfix pipe has flags=DR for that), -f and -d add nothing.
    assert stored == raw
    assert "stored mail into mailbox 'INBOX'" in dovecot.log_text()
    assert dovecot.mailbox_messages("bob") == []


def test_lda_unknown_user_is_ex_nouser(dovecot: DovecotInstance) -> None:
    raw, _ = _message()
    assert dovecot.deliver_lda("nobody-here", raw) == EX_NOUSER == 67


def test_lda_unwritable_home_is_tempfail(dovecot: DovecotInstance) -> None:
    """A mail store the user cannot write is a temporary failure (Postfix retries), not a
    bounce, and nothing is stored."""
    home = dovecot.home("bob")
    os.chown(home, 0, 0)
    home.chmod(0o555)  # the mail user can no longer create ~/Maildir
    raw, _ = _message()
    result = dovecot.run_lda("bob", raw)
    assert result.returncode == EX_TEMPFAIL == 75, (result, dovecot.log_tail())
    assert "Permission denied" in dovecot.log_text()
    assert dovecot.mailbox_messages("bob") == []


def test_lda_unwritable_maildir_is_tempfail(dovecot: DovecotInstance) -> None:
    """The same once the Maildir exists: its new/ and tmp/ made read-only."""
    raw, _ = _message()
    assert dovecot.deliver_lda("bob", raw) == EX_OK
    for sub in ("tmp", "new", "cur"):
        path = dovecot.maildir("bob") / sub
        os.chown(path, 0, 0)
        path.chmod(0o555)
    result = dovecot.run_lda("bob", raw)
    assert result.returncode == EX_TEMPFAIL, (result, dovecot.log_tail())
    assert len(dovecot.mailbox_messages("bob")) == 1


def test_lda_as_the_mail_user(dovecot: DovecotInstance) -> None:
    """The guide's Postfix pipe runs the LDA as mail:mail, which is also the mail's owner: no
    root needed, and it still logs into the instance's log."""
    raw, msgid = _message()
    result = dovecot.run_lda("carol", raw, as_user="mail")
    assert result.returncode == EX_OK, (result, dovecot.log_tail())
    assert result.stderr == b""  # no stats-writer permission error (see the config)
    assert _msgids(dovecot.wait_for("carol")) == [msgid]
    assert "lda(carol)" in dovecot.log_text()


def test_lda_as_another_user_is_tempfail(dovecot: DovecotInstance) -> None:
    """Not root and not the mail's owner: the LDA cannot even open the log file (nor switch to
    the mail user) and exits 75, saying why on stderr only."""
    raw, _ = _message()
    result = dovecot.run_lda("alice", raw, as_user="nobody")
    assert result.returncode == EX_TEMPFAIL, result
    assert b"Can't open log file" in result.stderr
    assert dovecot.mailbox_messages("alice") == []


def test_lda_while_dovecot_is_down_is_tempfail(dovecot: DovecotInstance) -> None:
    """The LDA needs the running Dovecot's auth-userdb socket for -d: without it, 75."""
    dovecot.stop()
    raw, _ = _message()
    assert dovecot.deliver_lda("alice", raw) == EX_TEMPFAIL
    assert "auth-userdb) failed" in dovecot.log_text()


def test_lda_into_a_given_mailbox(dovecot: DovecotInstance) -> None:
    raw, msgid = _message()
    assert dovecot.deliver_lda("alice", raw, mailbox="Archive") == EX_OK
    assert _msgids(dovecot.wait_for("alice", "Archive")) == [msgid]


# --------------------------------------------------------------------------------------------
# LMTP


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
def test_lmtp_delivery(dovecot: DovecotInstance, unix: bool) -> None:
    raw, msgid = _message()
    reply = dovecot.lmtp_deliver("bob", raw, unix=unix)
    assert reply.ok, reply
    assert reply.stage == "data"
    [stored] = dovecot.wait_for("bob")
    assert _msgids([stored]) == [msgid]
    # LMTP records the envelope, unlike the LDA without -a/-f.
    assert b"Delivered-To: bob" in stored
    assert b"Return-Path: <sender@sender.test>" in stored


def test_lmtp_unknown_user_is_refused_at_rcpt(dovecot: DovecotInstance) -> None:
    raw, _ = _message()
    reply = dovecot.lmtp_deliver("nobody-here", raw)
    assert (reply.code, reply.stage) == (550, "rcpt"), reply
    assert "5.1.1" in reply.text


def test_lmtp_listens_only_on_the_private_address(dovecot: DovecotInstance) -> None:
    assert dovecot.lmtp_nexthop == f"lmtp:inet:[{dovecot.address}]:{dovecot.lmtp_port}"
    with open("/proc/net/tcp") as f:
        listening = [line.split()[1] for line in f if line.split()[3] == "0A"]
    ours = {f"{p:04X}" for p in (dovecot.imap_port, dovecot.lmtp_port)}
    for local in listening:
        _ip, port = local.split(":")
        if port in ours:
            assert local != f"00000000:{port}"  # not 0.0.0.0


# --------------------------------------------------------------------------------------------
# The guide's Sieve rule


@pytest.mark.parametrize("via", ["lda", "lmtp"])
def test_guide_sieve_rule_files_spam(dovecot: DovecotInstance, via: str) -> None:
    """X-DSPAM-Result: Spam (or Virus, Blacklisted) goes to Spam, created and subscribed on
    first use and marked \\Seen; Innocent stays in INBOX, and so does spam a user retrained as
    innocent (X-DSPAM-Reclassified: Innocent)."""
    cases = {
        "Spam": ("Spam", {"X-DSPAM-Result": "Spam"}),
        "Virus": ("Spam", {"X-DSPAM-Result": "Virus"}),
        "Blacklisted": ("Spam", {"X-DSPAM-Result": "Blacklisted"}),
        "Innocent": ("INBOX", {"X-DSPAM-Result": "Innocent"}),
        "Reclassified": ("INBOX", {"X-DSPAM-Result": "Spam",
                                   "X-DSPAM-Reclassified": "Innocent"}),
        "Untagged": ("INBOX", {}),
    }
    expected: dict[str, list[str]] = {"Spam": [], "INBOX": []}
    for subject, (mailbox, headers) in cases.items():
        raw, msgid = _message(subject, headers)
        expected[mailbox].append(msgid)
        if via == "lda":
            assert dovecot.deliver_lda("alice", raw) == EX_OK
        else:
            assert dovecot.lmtp_deliver("alice", raw).ok
    for mailbox, msgids in expected.items():
        assert sorted(_msgids(dovecot.wait_for("alice", mailbox, len(msgids)))) == sorted(msgids)

    with dovecot.imap("alice") as imap:
        typ, data = imap.lsub('""', "*")
        assert typ == "OK"
        assert any(line.endswith(b' "Spam"') or line.endswith(b" Spam") for line in data), data
        typ, _ = imap.select("Spam", readonly=True)
        assert typ == "OK"
        typ, data = imap.uid("SEARCH", "UNSEEN")
        assert data == [b""], "the guide's rule marks filed spam as read"
    assert "stored mail into mailbox 'Spam'" in dovecot.log_text()


def test_global_sieve_before(make_dovecot: MakeDovecot) -> None:
    """A global sieve_before script is compiled with sievec and runs before the user's."""
    before = ('require ["fileinto"];\n'
              'if header :contains "Subject" "[quarantine]" { fileinto "Quarantine"; stop; }\n')
    dc = make_dovecot(sieve_before=before)
    assert (dc.global_sieve_dir / "before.svbin").is_file()
    raw, msgid = _message("[quarantine] please")
    assert dc.deliver_lda("alice", raw) == EX_OK
    assert _msgids(dc.wait_for("alice", "Quarantine")) == [msgid]


def test_broken_global_script_fails_at_start(testbed_dir: Path, loopback: str) -> None:
    dc = DovecotInstance(testbed_dir / "broken", loopback, sieve_before="fileinto 'x';\n")
    with pytest.raises(ValueError, match="sievec"):
        dc.start()
    dc.stop()


# --------------------------------------------------------------------------------------------
# IMAP and IMAPSieve


def test_imap_login(dovecot: DovecotInstance) -> None:
    with dovecot.imap("alice") as imap:
        typ, data = imap.select("INBOX")
        assert typ == "OK"
        assert data == [b"0"]
    with pytest.raises(imaplib.IMAP4.error):
        dovecot.imap("alice", password="wrong")


def _deliver_to_inbox(dovecot: DovecotInstance, user: str,
                      subject: str = "retrain me") -> tuple[bytes, str]:
    raw, msgid = _message(subject)
    assert dovecot.deliver_lda(user, raw) == EX_OK
    return raw, msgid


def test_move_into_spam_and_back_runs_the_report_programs(dovecot: DovecotInstance) -> None:
    """The retraining hooks: IMAP MOVE INBOX -> Spam pipes the message to report-spam, MOVE
    Spam -> INBOX to report-ham; each gets the user, the target mailbox and the cause."""
    _, msgid = _deliver_to_inbox(dovecot, "alice")
    with dovecot.imap("alice") as imap:
        assert imap.create("Spam")[0] == "OK"
        imap.select("INBOX")
        typ, data = imap.uid("MOVE", _uid_of(imap, msgid), "Spam")
        assert typ == "OK", data
        [spam] = dovecot.wait_for_reports("spam", 1)
        assert spam.argv == ("alice", "Spam", "COPY")
        assert f"Message-ID: {msgid}".encode() in spam.message
        assert b"Subject: retrain me" in spam.message
        assert dovecot.reports("ham") == []

        imap.select("Spam")
        typ, data = imap.uid("MOVE", _uid_of(imap, msgid), "INBOX")
        assert typ == "OK", data
        [ham] = dovecot.wait_for_reports("ham", 1)
        assert ham.argv == ("alice", "INBOX", "COPY")
        assert f"Message-ID: {msgid}".encode() in ham.message
    assert len(dovecot.reports("spam")) == 1
    assert _msgids(dovecot.mailbox_messages("alice")) == [msgid]
    assert dovecot.mailbox_messages("alice", "Spam") == []


def test_copy_and_expunge_counts_as_a_move(dovecot: DovecotInstance) -> None:
    """Clients without MOVE copy, flag \\Deleted and expunge: the same hooks run."""
    _, msgid = _deliver_to_inbox(dovecot, "bob")
    with dovecot.imap("bob") as imap:
        imap.create("Spam")
        imap.select("INBOX")
        uid = _uid_of(imap, msgid)
        assert imap.uid("COPY", uid, "Spam")[0] == "OK"
        imap.uid("STORE", uid, "+FLAGS", "(\\Deleted)")
        imap.expunge()
        [spam] = dovecot.wait_for_reports("spam", 1)
        assert spam.argv == ("bob", "Spam", "COPY")
        assert f"Message-ID: {msgid}".encode() in spam.message

        imap.select("Spam")
        uid = _uid_of(imap, msgid)
        assert imap.uid("COPY", uid, "INBOX")[0] == "OK"
        [ham] = dovecot.wait_for_reports("ham", 1)
        assert ham.argv == ("bob", "INBOX", "COPY")


def test_append_into_spam_reports_spam(dovecot: DovecotInstance) -> None:
    raw, msgid = _message("appended")
    with dovecot.imap("carol") as imap:
        imap.create("Spam")
        typ, data = imap.append("Spam", None, None, raw.replace(b"\n", b"\r\n"))
        assert typ == "OK", data
    [spam] = dovecot.wait_for_reports("spam", 1)
    assert spam.argv == ("carol", "Spam", "APPEND")
    assert f"Message-ID: {msgid}".encode() in spam.message


def test_spam_filed_by_sieve_is_not_reported(dovecot: DovecotInstance) -> None:
    """Delivery into Spam by the LDA's Sieve rule is not an IMAP action: no report (else every
    classified spam would be fed back as a retraining)."""
    raw, _ = _message("tagged", {"X-DSPAM-Result": "Spam"})
    assert dovecot.deliver_lda("alice", raw) == EX_OK
    dovecot.wait_for("alice", "Spam")
    # Move out of Spam to Trash: the stand-in ham script ignores deletion.
    with dovecot.imap("alice") as imap:
        imap.create("Trash")
        imap.select("Spam")
        _, data = imap.uid("SEARCH", "ALL")
        assert imap.uid("MOVE", data[0], "Trash")[0] == "OK"
    dovecot.wait_for("alice", "Trash")
    assert dovecot.reports() == []
    assert "Error" not in dovecot.log_text()


def test_classifier_scripts_from_files(make_dovecot: MakeDovecot, testbed_dir: Path) -> None:
    """Scripts and programs given as files (as the classifier's will be, from postfix-snippets/)
    are copied in and compiled there: nothing is written next to the originals."""
    source = testbed_dir / "snippets"
    source.mkdir()
    (source / "report-spam.sieve").write_text(STANDIN_REPORT_SPAM_SIEVE)
    reports = testbed_dir / "reports"
    reports.mkdir()
    reports.chmod(0o777)  # the program runs as the mail user
    (source / "report-spam").write_text(recording_program(reports, "spam"))
    dc = make_dovecot(report_spam_sieve=source / "report-spam.sieve",
                      pipe_programs={"report-spam": source / "report-spam"})
    assert sorted(p.name for p in source.iterdir()) == ["report-spam", "report-spam.sieve"]
    _, msgid = _deliver_to_inbox(dc, "alice")
    with dc.imap("alice") as imap:
        imap.create("Spam")
        imap.select("INBOX")
        assert imap.uid("MOVE", _uid_of(imap, msgid), "Spam")[0] == "OK"
    [spam] = wait_until(lambda: read_reports(reports, "spam"), what="spam report")
    assert f"Message-ID: {msgid}".encode() in spam.message


def test_a_failing_report_program_does_not_fail_the_move(make_dovecot: MakeDovecot) -> None:
    """The move succeeds even if the program fails (its stderr and exit code are logged): a
    broken classifier never stops users from sorting their mail."""
    failing = "#!/bin/sh\ncat >/dev/null\necho 'classifier is down' >&2\nexit 3\n"
    dc = make_dovecot(report_spam_sieve=STANDIN_REPORT_SPAM_SIEVE,
                      pipe_programs={"report-spam": failing})
    _, msgid = _deliver_to_inbox(dc, "alice")
    with dc.imap("alice") as imap:
        imap.create("Spam")
        imap.select("INBOX")
        assert imap.uid("MOVE", _uid_of(imap, msgid), "Spam")[0] == "OK"
    assert _msgids(dc.wait_for("alice", "Spam")) == [msgid]
    log = dc.wait_for_log("failed to execute to program `report-spam'")
    assert "classifier is down" in log
    assert "Terminated with non-zero exit code 3" in log


# --------------------------------------------------------------------------------------------
# Isolation and teardown


def test_two_instances_in_parallel(make_dovecot: MakeDovecot) -> None:
    one = make_dovecot(record_reports=True)
    two = make_dovecot(users=["alice", "dave@example.test"])
    assert {one.imap_port, one.lmtp_port}.isdisjoint({two.imap_port, two.lmtp_port})
    assert one.base_dir != two.base_dir
    raw1, id1 = _message("to one")
    raw2, id2 = _message("to two")
    assert one.deliver_lda("alice", raw1) == EX_OK
    assert two.deliver_lda("alice", raw2) == EX_OK
    assert two.lmtp_deliver("dave@example.test", raw2).ok
    assert _msgids(one.wait_for("alice")) == [id1]
    assert _msgids(two.wait_for("alice")) == [id2]
    assert _msgids(two.wait_for("dave@example.test")) == [id2]
    assert two.deliver_lda("bob", raw2) == EX_NOUSER  # two has no bob
    with one.imap("alice") as imap:
        assert imap.select("INBOX")[1] == [b"1"]
    with two.imap("dave@example.test") as imap:
        assert imap.select("INBOX")[1] == [b"1"]


def test_stop_leaves_nothing_behind(testbed_dir: Path, loopback: str) -> None:
    dc = DovecotInstance(testbed_dir / "short-lived", loopback).start()
    base_dir = dc.base_dir
    marker = f"postward-{dc.name}-{dc.imap_port}"
    with dc.imap("alice"):
        pass
    assert wait_until(lambda: _pgrep(marker), what="processes named after the instance")
    dc.stop()
    assert not base_dir.exists()
    assert wait_until(lambda: not _pgrep(marker), what="instance processes gone")
    # the started-up line is the instance's own, in its own log
    assert re.search(r"master: Info: Dovecot v\S+ .*starting up", dc.log_text())
