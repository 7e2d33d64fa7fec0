"""``postward postfix-config`` against real Postfix configuration directories.

The starting point is the guide's wiring (postfwd's check_policy_service and the FILTER map in
smtpd_client_restrictions, OpenDKIM's milter on inet:127.0.0.1:8891, the dspam pipe service),
in a test-bed config directory with a private queue, so ``postfix check`` really runs. What is
proven: the printed script, run by sh, gives the same main.cf and master.cf as ``--apply``;
``--apply`` wires everything in, says what it replaces and passes ``postfix check``; a second
``--apply`` touches no file; ``--only``, an admin's own address and map are respected; broken
snippets are exit 2 and a failing ``postfix check`` exit 1.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postward.cli import main
from postward.wiring import locate
from postward.wiring.postfix_lists import contains, items, replacement
from postward.wiring.snippets import SnippetError
from tests.testbed.net import wait_until
from tests.testbed.postfix import PostfixInstance
from tests.testbed.postfix_fixtures import SNIPPETS

GUIDE_MAP = "/./   FILTER dspam:unix:/run/dspam/dspam.sock\n"
GUIDE_DSPAM = ("dspam     unix  -       n       n       -       10      pipe\n"
               "  flags=Ru user=dspam argv=/usr/bin/dspam --deliver=innocent,spam "
               "--user $recipient -i -f $sender -- $recipient\n")


def _guide_params(config_dir: Path) -> dict[str, str]:
    """The guide's main.cf lines postward replaces (its map lives in this config directory)."""
    return {
        "smtpd_milters": "inet:127.0.0.1:8891",
        "non_smtpd_milters": "$smtpd_milters",
        "milter_default_action": "accept",
        "dspam_destination_recipient_limit": "1",
        "smtpd_client_restrictions": (
            f"permit_sasl_authenticated check_client_access pcre:{config_dir}/dspam_filter_access"
            " check_policy_service inet:127.0.0.1:10040"),
    }


def _guide_instance(directory: Path, address: str) -> PostfixInstance:
    """A configured (not started) Postfix with the guide's wiring."""
    guide_master = directory.parent / f"{directory.name}-guide.master.cf"
    guide_master.write_text(GUIDE_DSPAM)
    instance = PostfixInstance(directory, address, snippets=[guide_master])
    instance.configure()
    instance.update(_guide_params(instance.config_dir), reload=False)
    (instance.config_dir / "dspam_filter_access").write_text(GUIDE_MAP)
    return instance


@pytest.fixture
def make_guide(testbed_dir: Path, loopback: str) -> Iterator[Callable[[str], PostfixInstance]]:
    """``make_guide(name)``: a configured guide-like instance in the test's directory."""
    made: list[PostfixInstance] = []

    def make(name: str) -> PostfixInstance:
        made.append(_guide_instance(testbed_dir / name, loopback))
        return made[-1]

    try:
        yield make
    finally:
        for instance in made:
            instance.stop()  # also removes the queue link configure() made in /tmp


@pytest.fixture
def guide(make_guide: Callable[[str], PostfixInstance]) -> PostfixInstance:
    return make_guide("guide")


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["postfix-config", "--snippets", str(SNIPPETS), *args])
    out, err = capsys.readouterr()
    return code, out, err


def _files(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(directory.iterdir()) if p.is_file()}


def _postconf(config_dir: Path, *args: str) -> str:
    return subprocess.run(["postconf", "-c", str(config_dir), *args], capture_output=True,
                          text=True, check=True).stdout.strip()


# --------------------------------------------------------------------------------------------
# Lists, without Postfix


def test_list_items_and_what_replacing_them_means() -> None:
    guide = ("permit_sasl_authenticated check_client_access pcre:/etc/postfix/dspam_filter_access"
             " check_policy_service inet:127.0.0.1:10040")
    assert items(guide, "restrictions") == [
        "permit_sasl_authenticated", "check_client_access pcre:/etc/postfix/dspam_filter_access",
        "check_policy_service inet:127.0.0.1:10040"]
    assert items("{ inet:a:1, default_action=accept }, inet:b:2", "milters") == [
        "{ inet:a:1, default_action=accept }", "inet:b:2"]
    new = "permit_sasl_authenticated check_policy_service $postward_policy_service"
    assert contains(f"{new}, reject_unknown_client_hostname", new, "restrictions")
    assert not contains(guide, new, "restrictions")
    params = {"postward_policy_service": "inet:127.0.0.1:10040",
              "postward_filter_access": "pcre:/etc/postfix/dspam_filter_access"}
    lines = replacement(guide, new, "restrictions", params, {
        "smtpd_data_restrictions": "permit_sasl_authenticated check_client_access "
                                   "$postward_filter_access"})
    assert lines == [
        "check_client_access pcre:/etc/postfix/dspam_filter_access: moved to "
        "smtpd_data_restrictions",
        "check_policy_service inet:127.0.0.1:10040 is now check_policy_service "
        "$postward_policy_service (the same: $postward_policy_service = inet:127.0.0.1:10040)",
    ]
    assert replacement("reject_rbl_client zen.example", new, "restrictions", params, {}) == [
        "reject_rbl_client zen.example: no longer in it",
        "permit_sasl_authenticated: added",
        "check_policy_service $postward_policy_service: added",
    ]


def test_snippets_are_found_installed_then_in_the_checkout(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    installed = tmp_path / "share/postward/postfix-snippets"
    installed.mkdir(parents=True)
    (installed / "policyd.main.cf").write_text("")
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    assert locate.find_snippets() == installed
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "elsewhere"))
    # (no /usr/share/postward on a test machine) the checkout an editable install runs from
    assert locate.find_snippets() == SNIPPETS
    with pytest.raises(SnippetError, match="not a directory"):
        locate.find_snippets(tmp_path / "missing")


# --------------------------------------------------------------------------------------------
# A real Postfix configuration


@pytest.mark.integration
def test_apply_wires_everything_in_and_a_second_apply_changes_nothing(
        guide: PostfixInstance, capsys: pytest.CaptureFixture[str]) -> None:
    etc = guide.config_dir
    before = {name: content for name, (content, _) in _files(etc).items()}
    code, out, err = _run(capsys, "-c", str(etc), "--apply")
    assert code == 0, err
    # Backups of exactly what was there, once each.
    backups = sorted(p.name for p in etc.glob("*.postward-*"))
    assert [re.sub(r"\d{14}", "STAMP", b) for b in backups] == [
        "main.cf.postward-STAMP", "master.cf.postward-STAMP"]
    for backup in backups:
        assert (etc / backup).read_bytes() == before[backup.split(".postward-")[0]]
    # The wiring, as postconf reads it.
    assert _postconf(etc, "-h", "smtpd_client_restrictions") == (
        "permit_sasl_authenticated check_policy_service $postward_policy_service")
    assert _postconf(etc, "-hx", "smtpd_client_restrictions") == (
        "permit_sasl_authenticated check_policy_service inet:127.0.0.1:10040")
    assert _postconf(etc, "-hx", "smtpd_milters", "non_smtpd_milters") == (
        "inet:127.0.0.1:8891\ninet:127.0.0.1:8891")
    assert _postconf(etc, "-hx", "smtpd_data_restrictions") == (
        f"permit_sasl_authenticated check_client_access pcre:{etc}/dspam_filter_access")
    assert _postconf(etc, "-h", "milter_default_action") == "tempfail"
    assert "argv=/opt/postward/bin/python -I -S /opt/postward/lib/postward-filter.py" in (
        _postconf(etc, "-M", "dspam/unix"))
    # The admin's map has the same rule as postward's: kept as it was.
    assert (etc / "dspam_filter_access").read_text() == GUIDE_MAP
    # What it said: the replaced lists with their old values, old -> new per parameter.
    assert ("warning: smtpd_client_restrictions was 'permit_sasl_authenticated "
            f"check_client_access pcre:{etc}/dspam_filter_access check_policy_service "
            "inet:127.0.0.1:10040'") in out
    assert ("check_policy_service inet:127.0.0.1:10040 is now check_policy_service "
            "$postward_policy_service (the same: $postward_policy_service = "
            "inet:127.0.0.1:10040)") in out
    assert (f"check_client_access pcre:{etc}/dspam_filter_access: moved to "
            "smtpd_data_restrictions") in out
    assert "warning: smtpd_milters was 'inet:127.0.0.1:8891'" in out
    assert "set milter_default_action: accept -> tempfail" in out
    assert "set postward_policy_service: (not set) -> inet:127.0.0.1:10040" in out
    assert "kept: " in out and "same rules" in out
    assert "postfix check: ok" in out
    assert "not reloaded" in out
    assert "non_smtpd_milters" not in out  # the guide's value is the snippet's
    subprocess.run(["postfix", "-c", str(etc), "check"], check=True)

    # Again: nothing changes, not even an mtime, and no second backup.
    files = _files(etc)
    code, out, err = _run(capsys, "-c", str(etc), "--apply")
    assert code == 0, err
    assert "nothing to change" in out and "postfix check: ok" in out
    assert "set " not in out and "warning" not in out and "backup" not in out
    assert _files(etc) == files


@pytest.mark.integration
def test_printed_script_gives_what_apply_gives(make_guide: Callable[[str], PostfixInstance],
                                               testbed_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    applied = make_guide("applied")
    printed = testbed_dir / "printed"
    shutil.copytree(applied.directory, printed, symlinks=True)
    code, script, _ = _run(capsys, "-c", str(printed / "etc"))
    assert code == 0
    etc = printed / "etc"
    assert f"postconf -c {etc} -e 'smtpd_milters = $postward_dkim_milter'" in script
    assert f"postconf -c {etc} -Me 'dspam/unix = dspam unix - n n - 10 pipe " in script
    assert "# warning: smtpd_client_restrictions was" in script
    # Only comments and commands: sh runs it as it is (set -e: every command succeeds).
    subprocess.run(["sh", "-ec", script], check=True, capture_output=True)
    assert _run(capsys, "-c", str(applied.config_dir), "--apply")[0] == 0
    for name in ("main.cf", "master.cf", "dspam_filter_access"):
        got = (printed / "etc" / name).read_text().replace(str(printed), str(applied.directory))
        assert got == (applied.config_dir / name).read_text(), name
    # Printed again, the script has nothing left to do.
    _code, again, _ = _run(capsys, "-c", str(printed / "etc"))
    assert "# nothing to change" in again
    assert [line for line in again.splitlines() if not line.startswith("#")] == []


@pytest.mark.integration
def test_only_wires_the_named_daemons(guide: PostfixInstance,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    etc = guide.config_dir
    master = (etc / "master.cf").read_bytes()
    code, out, err = _run(capsys, "-c", str(etc), "--only", "dkim", "--apply")
    assert code == 0, err
    assert _postconf(etc, "-h", "smtpd_milters") == "$postward_dkim_milter"
    assert "check_policy_service inet:127.0.0.1:10040" in _postconf(
        etc, "-h", "smtpd_client_restrictions")
    assert (etc / "master.cf").read_bytes() == master
    assert not list(etc.glob("master.cf.postward-*"))
    assert "smtpd_client_restrictions" not in out
    with pytest.raises(SystemExit) as usage:
        _run(capsys, "--only", "policyd,spamassassin")
    assert usage.value.code == 2
    assert "--only: unknown spamassassin" in capsys.readouterr().err


@pytest.mark.integration
def test_an_admins_address_and_map_are_kept(guide: PostfixInstance,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    etc = guide.config_dir
    guide.update({"postward_policy_service": "inet:127.0.0.9:10040"}, reload=False)
    own_map = "/^192\\.0\\.2\\./ FILTER dspam:unix:/run/dspam/dspam.sock\n"
    (etc / "dspam_filter_access").write_text(own_map)
    code, out, err = _run(capsys, "-c", str(etc), "--apply")
    assert code == 0, err
    assert _postconf(etc, "-h", "postward_policy_service") == "inet:127.0.0.9:10040"
    assert "kept: postward_policy_service = inet:127.0.0.9:10040 is yours" in out
    assert (etc / "dspam_filter_access").read_text() == own_map
    assert f"warning: {etc}/dspam_filter_access differs from postward's" in out


@pytest.mark.integration
def test_a_missing_map_is_installed(guide: PostfixInstance,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    etc = guide.config_dir
    (etc / "dspam_filter_access").unlink()
    code, out, err = _run(capsys, "-c", str(etc), "--apply")
    assert code == 0, err
    assert (etc / "dspam_filter_access").read_bytes() == (
        SNIPPETS / "dspam_filter_access").read_bytes()
    assert f"installed {etc}/dspam_filter_access" in out
    # Postfix reads the installed map: the guide's FILTER for every client.
    assert _postconf(etc, "-hx", "postward_filter_access") == f"pcre:{etc}/dspam_filter_access"
    got = subprocess.run(["postmap", "-c", str(etc), "-q", "192.0.2.1",
                          f"pcre:{etc}/dspam_filter_access"], capture_output=True, text=True)
    assert got.stdout.strip() == "FILTER dspam:unix:/run/dspam/dspam.sock"


@pytest.mark.integration
def test_broken_snippets_are_exit_2_naming_the_file(guide: PostfixInstance, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    etc = guide.config_dir
    files = _files(etc)
    broken = tmp_path / "snippets"
    shutil.copytree(SNIPPETS, broken)
    with (broken / "dkim.main.cf").open("a") as f:
        f.write("this is not a parameter\n")
    code = main(["postfix-config", "--snippets", str(broken), "-c", str(etc), "--apply"])
    _out, err = capsys.readouterr()
    assert code == 2
    assert re.search(rf"{re.escape(str(broken / 'dkim.main.cf'))}:\d+: expected 'name = value'",
                     err)
    (broken / "dkim.main.cf").unlink()
    code = main(["postfix-config", "--snippets", str(broken), "-c", str(etc)])
    _out, err = capsys.readouterr()
    assert code == 2 and f"{broken / 'dkim.main.cf'}: cannot read" in err
    assert main(["postfix-config", "--snippets", str(tmp_path / "none")]) == 2
    assert _files(etc) == files


@pytest.mark.integration
def test_a_failing_postfix_check_is_exit_1(guide: PostfixInstance,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    guide.update({"mail_owner": "postward-no-such-user"}, reload=False)
    code, _out, err = _run(capsys, "-c", str(guide.config_dir), "--apply")
    assert code == 1
    assert "postfix check FAILED" in err and "postward-no-such-user" in err
    code, _out, err = _run(capsys, "-c", str(guide.directory / "nowhere"), "--apply")
    assert code == 1 and "cannot read the Postfix configuration" in err


@pytest.mark.integration
def test_reload_only_when_asked_and_running(make_guide: Callable[[str], PostfixInstance],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    postfix = make_guide("mx")
    etc = str(postfix.config_dir)
    code, out, err = _run(capsys, "-c", etc, "--only", "policyd", "--apply", "--reload")
    assert code == 0, err
    assert "Postfix is not running: not reloaded" in out
    postfix.start()
    reloads = postfix.log_text().count("reload -- version")
    code, out, err = _run(capsys, "-c", etc, "--only", "dkim", "--apply")
    assert code == 0, err
    assert "not reloaded: run `postfix reload`" in out
    assert postfix.log_text().count("reload -- version") == reloads
    code, out, err = _run(capsys, "-c", etc, "--only", "classifier", "--apply", "--reload")
    assert code == 0, err
    assert "postfix reload: done" in out
    wait_until(lambda: postfix.log_text().count("reload -- version") > reloads, timeout=20,
               what="Postfix reloaded")
