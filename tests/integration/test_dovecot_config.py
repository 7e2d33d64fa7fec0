"""``postward dovecot-config`` into a private Dovecot configuration directory.

The files are installed where the command says, the Sieve scripts compiled by sievec, and a real
Dovecot whose configuration includes the installed conf.d/90-postward.conf runs them: the guide's
rule (as the ``sieve_before`` the command suggests) files spam into Spam, and moving mail into
and out of Spam over IMAP runs the installed report scripts, which pipe to postward-retrain
(replaced here by a program that records its arguments). A second ``--apply`` changes nothing;
a file that differs is refused unless ``--force``; a configuration Dovecot refuses is exit 1.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from postward.cli import main
from tests.testbed.dovecot import DovecotInstance, read_reports, recording_program
from tests.testbed.mail import make_message
from tests.testbed.net import wait_until
from tests.testbed.postfix_fixtures import SNIPPETS

pytestmark = pytest.mark.integration

USER = "alice"


def _run(capsys: pytest.CaptureFixture[str], dovecot: DovecotInstance,
         *args: str) -> tuple[int, str, str]:
    # The test bed's mail user is "mail"; this machine may have no group postward.
    code = main(["dovecot-config", "--snippets", str(SNIPPETS), "--dovecot-dir",
                 str(dovecot.config_dir), "--sieve-pipe-dir", str(dovecot.pipe_bin_dir),
                 "--socket-group", "mail", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _tree(*roots: Path) -> dict[str, tuple[bytes, int, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
            for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def dovecot(testbed_dir: Path, loopback: str) -> Iterator[DovecotInstance]:
    """A configured, not yet started Dovecot whose dovecot.conf includes conf.d/*.conf (as
    Debian's does) and runs the installed dspam.sieve before every user's (none here)."""
    etc = testbed_dir / "dovecot" / "etc"
    instance = DovecotInstance(
        testbed_dir / "dovecot", loopback, users=[USER], user_sieve=None,
        extra_config=("!include_try conf.d/*.conf\n"
                      f"plugin {{\n  sieve_before = {etc}/sieve/dspam.sieve\n}}\n"))
    instance.configure()
    try:
        yield instance
    finally:
        instance.stop()  # also removes the runtime directory configure() made in /tmp


def _move(dovecot: DovecotInstance, source: str, target: str, subject: str) -> None:
    imap = dovecot.imap(USER)
    try:
        imap.select(source)
        _typ, data = imap.uid("SEARCH", None, "SUBJECT", subject)
        [uid] = data[0].split()
        assert imap.uid("MOVE", uid, target)[0] == "OK"
    finally:
        imap.logout()


def test_apply_installs_compiles_and_dovecot_runs_the_installed_files(
        dovecot: DovecotInstance, capsys: pytest.CaptureFixture[str]) -> None:
    etc, pipe = dovecot.config_dir, dovecot.pipe_bin_dir
    code, script, _ = _run(capsys, dovecot)
    assert code == 0
    source = SNIPPETS / "dovecot" / "report-spam.sieve"
    assert f"install -D -m 0644 {source} {etc}/sieve/report-spam.sieve" in script
    assert f"sievec -c {etc}/dovecot.conf {etc}/sieve/report-spam.sieve" in script
    assert f"doveconf -c {etc}/dovecot.conf -n >/dev/null" in script
    assert f"sieve_before = {etc}/sieve/dspam.sieve" in script

    code, out, err = _run(capsys, dovecot, "--apply")
    assert code == 0, err
    assert "doveconf -n: ok" in out
    conf = (etc / "conf.d" / "90-postward.conf").read_text()
    # Paths made this machine's: the report scripts and the pipe directory given.
    assert f"imapsieve_mailbox1_before = file:{etc}/sieve/report-spam.sieve" in conf
    assert f"sieve_pipe_bin_dir = {pipe}" in conf
    # IMAP processes get the group that reaches classifierd's socket (here the test bed's).
    assert "mail_access_groups = $mail_access_groups mail\n" in conf
    for name in ("report-spam", "report-ham", "dspam"):
        assert (etc / "sieve" / f"{name}.sieve").read_bytes() == (
            SNIPPETS / "dovecot" / f"{name}.sieve").read_bytes()
        assert (etc / "sieve" / f"{name}.svbin").is_file(), f"{name} compiled"
    retrain = pipe / "postward-retrain"
    assert os.access(retrain, os.X_OK)
    assert "/opt/postward/bin/python -I -S /opt/postward/lib/postward-filter.py" in (
        retrain.read_text())

    # Again: not one file touched.
    tree = _tree(etc, pipe)
    code, out, err = _run(capsys, dovecot, "--apply")
    assert code == 0, err
    assert "nothing to change" in out
    assert "installed /" not in out and "compiled /" not in out
    assert _tree(etc, pipe) == tree

    # Dovecot with the installed files; postward-retrain records what it is given instead.
    reports = dovecot.directory / "retrain-reports"
    reports.mkdir()
    os.chown(reports, dovecot.mail_user.pw_uid, dovecot.mail_user.pw_gid)
    retrain.write_text(recording_program(reports, "retrain"))
    dovecot.start()
    try:
        for subject, verdict in (("offer", "Spam"), ("notes", "Innocent")):
            message = make_message(subject=subject, headers={"X-DSPAM-Result": verdict})
            assert dovecot.deliver_lda(USER, message.as_bytes()) == 0
        [filed] = dovecot.mailbox_messages(USER, "Spam")               # by dspam.sieve
        assert b"Subject: offer" in filed
        _move(dovecot, "INBOX", "Spam", "notes")
        wait_until(lambda: len(read_reports(reports)) == 1, timeout=20, what="spam report")
        _move(dovecot, "Spam", "INBOX", "notes")
        wait_until(lambda: len(read_reports(reports)) == 2, timeout=20, what="ham report")
    finally:
        dovecot.stop()
    spam_report, ham_report = read_reports(reports)
    assert spam_report.argv == ("--user", USER, "--class=spam", "--source=error")
    assert ham_report.argv == ("--user", USER, "--class=innocent", "--source=error")
    assert b"Subject: notes" in spam_report.message and b"Subject: notes" in ham_report.message


def test_a_differing_file_is_refused_unless_forced(dovecot: DovecotInstance,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, dovecot, "--apply")[0] == 0
    conf = dovecot.config_dir / "conf.d" / "90-postward.conf"
    conf.write_text(conf.read_text().replace("= Spam", "= Junk"))
    tree = _tree(dovecot.config_dir, dovecot.pipe_bin_dir)
    code, out, err = _run(capsys, dovecot, "--apply")
    assert code == 1
    assert f"refused: {conf} differs from postward's" in err
    assert _tree(dovecot.config_dir, dovecot.pipe_bin_dir) == tree   # nothing installed
    code, script, _ = _run(capsys, dovecot)
    assert code == 0 and f"# {conf} differs from postward's: kept" in script
    code, out, err = _run(capsys, dovecot, "--apply", "--force")
    assert code == 0, err
    assert "= Spam" in conf.read_text() and f"installed {conf}" in out
    [backup] = conf.parent.glob("90-postward.conf.postward-*")
    assert "= Junk" in backup.read_text()
    # Dovecot reads every *.conf of conf.d: the backup's name must not end in .conf.
    assert not backup.name.endswith(".conf")


def test_a_configuration_dovecot_refuses_is_exit_1(dovecot: DovecotInstance,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (dovecot.config_dir / "conf.d").mkdir()
    (dovecot.config_dir / "conf.d" / "10-broken.conf").write_text("no_such_setting = 1\n")
    code, _out, err = _run(capsys, dovecot, "--apply")
    assert code == 1
    assert "doveconf -n FAILED" in err and "no_such_setting" in err


def test_guide_antispam_leftovers_are_pointed_out(dovecot: DovecotInstance,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (dovecot.config_dir / "conf.d").mkdir()
    plugin = dovecot.config_dir / "conf.d" / "90-plugin.conf"
    plugin.write_text("plugin {\n  #setting_name = value\n  antispam_backend = dspam\n}\n")
    code, script, _ = _run(capsys, dovecot)
    assert code == 0
    assert (f"# warning: the guide's dovecot-antispam is still configured: {plugin}:3: "
            "antispam_backend = dspam") in script


def test_doveconf_parses_the_shipped_90_postward_conf_as_it_is(tmp_path: Path) -> None:
    """The file unadjusted, as it lands in /etc/dovecot/conf.d, is valid Dovecot syntax."""
    conf = tmp_path / "dovecot.conf"
    conf.write_text(f"!include {SNIPPETS}/dovecot/90-postward.conf\n")
    parsed = subprocess.run(["doveconf", "-c", str(conf), "-n"], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr
    assert "sieve_pipe_bin_dir = /usr/lib/dovecot/sieve-pipe" in parsed.stdout
    assert "mail_access_groups = \" postward\"" in parsed.stdout
