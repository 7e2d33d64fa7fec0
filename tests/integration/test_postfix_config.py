"""``postward postfix-config`` against real Postfix configuration directories.

The starting point is the guide's wiring (postfwd's check_policy_service and the FILTER map in
smtpd_client_restrictions, OpenDKIM's milter on inet:127.0.0.1:8891, the dspam pipe service),
in a test-bed config directory with a private queue, so ``postfix check`` really runs. What is
proven: the printed script, run by sh, gives the same main.cf and master.cf as ``--apply``;
``--apply`` wires everything in, respelling the guide's addresses in place, says old -> new per
parameter and passes ``postfix check``; a list of the admin's keeps every entry (a second
milter, ``permit_mynetworks``, ``reject_rbl_client``, a final ``permit``) with postward's
merged in once; an unset list gets the snippet's value; an explicit ``milter_default_action``
is kept; a second ``--apply`` touches no file; ``--only``, an admin's own address and map are
respected; broken snippets are exit 2 and a failing ``postfix check`` exit 1.
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
from postward.wiring.postfix_lists import (
    LIST_PARAMS,
    Merged,
    items,
    join,
    merge,
    snippet_entries,
)
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


SNIPPET_LISTS = {
    "smtpd_client_restrictions": (
        "policyd.main.cf",
        "permit_sasl_authenticated check_policy_service $postward_policy_service"),
    "smtpd_data_restrictions": (
        "classifier.main.cf",
        "permit_sasl_authenticated check_client_access $postward_filter_access"),
    "smtpd_milters": ("dkim.main.cf", "$postward_dkim_milter"),
    "non_smtpd_milters": ("dkim.main.cf", "$smtpd_milters"),
}
ADDRESSES = {"postward_policy_service": "inet:127.0.0.1:10040",
             "postward_filter_access": "pcre:/etc/postfix/dspam_filter_access",
             "postward_dkim_milter": "inet:127.0.0.1:8891"}


def _merge(name: str, old: str, elsewhere: dict[str, str] | None = None) -> tuple[str, Merged]:
    """``merge`` as the plan calls it for the snippets' lists, with their default addresses."""
    lists = {n: v for n, (_, v) in SNIPPET_LISTS.items()}
    own = {n: snippet_entries(n, v, LIST_PARAMS[n], snippet, lists)
           for n, (snippet, v) in SNIPPET_LISTS.items()}
    kind = LIST_PARAMS[name]
    known = [e for n, es in own.items() if LIST_PARAMS[n] == kind and n != "non_smtpd_milters"
             for e in es]
    merged = merge(name, old, kind, own[name], known, elsewhere or {}, ADDRESSES)
    return join(merged.items, old), merged


def test_list_items_and_merging_postwards_entries_in() -> None:
    guide = ("permit_sasl_authenticated, check_client_access pcre:/etc/postfix/dspam_filter_access"
             ", check_policy_service inet:127.0.0.1:10040")
    assert items(guide, "restrictions") == [
        "permit_sasl_authenticated", "check_client_access pcre:/etc/postfix/dspam_filter_access",
        "check_policy_service inet:127.0.0.1:10040"]
    assert items("{ inet:a:1, default_action=accept }, inet:b:2", "milters") == [
        "{ inet:a:1, default_action=accept }", "inet:b:2"]
    # The guide: postfwd's and the FILTER's addresses respelled in place, nothing added.
    value, merged = _merge("smtpd_client_restrictions", guide)
    assert value == ("permit_sasl_authenticated, check_client_access $postward_filter_access, "
                     "check_policy_service $postward_policy_service")
    assert merged.changes == [
        "check_client_access pcre:/etc/postfix/dspam_filter_access is now check_client_access "
        "$postward_filter_access (the same: $postward_filter_access = "
        "pcre:/etc/postfix/dspam_filter_access)",
        "check_policy_service inet:127.0.0.1:10040 is now check_policy_service "
        "$postward_policy_service (the same: $postward_policy_service = inet:127.0.0.1:10040)"]
    assert _merge("smtpd_client_restrictions", value)[0] == value  # again: the same
    # The FILTER already acts from smtpd_client_restrictions: not a second time from DATA.
    value, merged = _merge("smtpd_data_restrictions", "", {"smtpd_client_restrictions": guide})
    assert (value, merged.changes) == ("", [])
    assert merged.notes == ["postward's check_client_access $postward_filter_access is in "
                            "smtpd_client_restrictions already: not added to "
                            "smtpd_data_restrictions"]
    # An admin's own entries stay, in order; postward's check goes before the final permit,
    # with the snippet's permit_sasl_authenticated the list lacks.
    extra = "permit_mynetworks reject_unauth_pipelining reject_rbl_client zen.spamhaus.org permit"
    value, merged = _merge("smtpd_client_restrictions", extra)
    assert value == ("permit_mynetworks reject_unauth_pipelining reject_rbl_client "
                     "zen.spamhaus.org permit_sasl_authenticated check_policy_service "
                     "$postward_policy_service permit")
    assert merged.changes[0].startswith(
        "added permit_sasl_authenticated check_policy_service $postward_policy_service before "
        "your final permit")
    assert _merge("smtpd_client_restrictions", value)[0] == value
    # ... only the check, when the list has the guard; at the end without a final permit.
    assert _merge("smtpd_data_restrictions", "permit_sasl_authenticated, reject_unauth_pipelining"
                  )[0] == ("permit_sasl_authenticated, reject_unauth_pipelining, "
                           "check_client_access $postward_filter_access")
    # After a final reject the check is never reached, before it it could let clients in.
    value, merged = _merge("smtpd_client_restrictions", "permit_mynetworks, reject")
    assert value == "permit_mynetworks, reject" and not merged.changes
    assert merged.warnings[0].startswith("smtpd_client_restrictions ends in an unconditional "
                                         "reject: postward's permit_sasl_authenticated")
    # Milters: OpenDKIM's address respelled in place (a group keeps its settings), a second
    # milter kept; postward's milter appended where it is missing.
    assert _merge("smtpd_milters", "{ inet:127.0.0.1:8891, default_action=accept }, "
                  "inet:127.0.0.1:11332")[0] == (
        "{ $postward_dkim_milter, default_action=accept }, inet:127.0.0.1:11332")
    assert _merge("smtpd_milters", "inet:127.0.0.1:11332")[0] == (
        "inet:127.0.0.1:11332 $postward_dkim_milter")
    # non_smtpd_milters = $smtpd_milters stands for postward's milter.
    assert _merge("non_smtpd_milters", "$smtpd_milters")[0] == "$smtpd_milters"
    assert _merge("non_smtpd_milters", "inet:127.0.0.1:11332")[0] == (
        "inet:127.0.0.1:11332 $postward_dkim_milter")
    assert _merge("non_smtpd_milters", "inet:127.0.0.1:8891")[0] == "$postward_dkim_milter"


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
    # The wiring, as postconf reads it: postfwd's policy service and the guide's FILTER stay
    # where they were, under postward's parameters (the same addresses); OpenDKIM's milter too.
    assert _postconf(etc, "-h", "smtpd_client_restrictions") == (
        "permit_sasl_authenticated check_client_access $postward_filter_access "
        "check_policy_service $postward_policy_service")
    assert _postconf(etc, "-hx", "smtpd_client_restrictions") == (
        f"permit_sasl_authenticated check_client_access pcre:{etc}/dspam_filter_access "
        "check_policy_service inet:127.0.0.1:10040")
    assert _postconf(etc, "-hx", "smtpd_milters", "non_smtpd_milters") == (
        "inet:127.0.0.1:8891\ninet:127.0.0.1:8891")
    # The FILTER acts from smtpd_client_restrictions already: not a second time from DATA.
    assert _postconf(etc, "-n", "smtpd_data_restrictions") == ""
    # The guide's explicit "accept" is the admin's choice: kept, with postward's advice.
    assert _postconf(etc, "-h", "milter_default_action") == "accept"
    assert "argv=/opt/postward/bin/python -I -S /opt/postward/lib/postward-filter.py" in (
        _postconf(etc, "-M", "dspam/unix"))
    # The admin's map has the same rule as postward's: kept as it was.
    assert (etc / "dspam_filter_access").read_text() == GUIDE_MAP
    # What it said: old -> new per parameter, and why, entry by entry.
    assert ("set smtpd_client_restrictions: permit_sasl_authenticated check_client_access "
            f"pcre:{etc}/dspam_filter_access check_policy_service inet:127.0.0.1:10040 -> "
            "permit_sasl_authenticated check_client_access $postward_filter_access "
            "check_policy_service $postward_policy_service\n") in out
    assert ("  check_policy_service inet:127.0.0.1:10040 is now check_policy_service "
            "$postward_policy_service (the same: $postward_policy_service = "
            "inet:127.0.0.1:10040)\n") in out
    assert (f"  check_client_access pcre:{etc}/dspam_filter_access is now check_client_access "
            "$postward_filter_access (the same: $postward_filter_access = "
            f"pcre:{etc}/dspam_filter_access)\n") in out
    assert ("kept: postward's check_client_access $postward_filter_access is in "
            "smtpd_client_restrictions already: not added to smtpd_data_restrictions") in out
    assert ("set smtpd_milters: inet:127.0.0.1:8891 -> $postward_dkim_milter\n"
            "  inet:127.0.0.1:8891 is now $postward_dkim_milter") in out
    assert ("kept: milter_default_action = accept is yours: kept (postward's snippet has "
            "tempfail: ") in out
    assert "set postward_policy_service: (not set) -> inet:127.0.0.1:10040" in out
    assert "warning" not in out
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
    # The copy's main.cf names its own files (the guide's FILTER map among them).
    main_cf = printed / "etc" / "main.cf"
    main_cf.write_text(main_cf.read_text().replace(str(applied.directory), str(printed)))
    code, script, _ = _run(capsys, "-c", str(printed / "etc"))
    assert code == 0
    etc = printed / "etc"
    assert f"postconf -c {etc} -e 'smtpd_milters = $postward_dkim_milter'" in script
    assert f"postconf -c {etc} -Me 'dspam/unix = dspam unix - n n - 10 pipe " in script
    assert "# was: smtpd_client_restrictions = permit_sasl_authenticated" in script
    assert "#   check_policy_service inet:127.0.0.1:10040 is now" in script
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


def _in_order(old: list[str], new: list[str]) -> bool:
    """Whether every entry of ``old`` is in ``new``, in the same order."""
    rest = iter(new)
    return all(any(entry == have for have in rest) for entry in old)


def _apply_twice(capsys: pytest.CaptureFixture[str], etc: Path) -> str:
    """--apply, then again: the second changes nothing (not a byte, not an mtime)."""
    code, out, err = _run(capsys, "-c", str(etc), "--apply")
    assert code == 0, err
    assert "postfix check: ok" in out
    files = _files(etc)
    code, again, err = _run(capsys, "-c", str(etc), "--apply")
    assert code == 0, err
    assert "nothing to change" in again and "set " not in again and "backup" not in again
    assert _files(etc) == files
    return out


@pytest.mark.integration
def test_an_admins_other_entries_are_kept(guide: PostfixInstance,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    etc = guide.config_dir
    client = ("permit_mynetworks, reject_unauth_pipelining, reject_rbl_client zen.spamhaus.org, "
              "permit")
    data = "reject_unauth_pipelining"
    # OpenDKIM with a setting of the admin's, and a second milter (rspamd).
    milters = "{ inet:127.0.0.1:8891, default_action=accept }, inet:127.0.0.1:11332"
    guide.update({"smtpd_client_restrictions": client, "smtpd_data_restrictions": data,
                  "smtpd_milters": milters}, reload=False)
    out = _apply_twice(capsys, etc)
    # Every entry of the admin's is still there, in its order; postward's once, before the
    # final permit, after the snippet's permit_sasl_authenticated.
    got = _postconf(etc, "-h", "smtpd_client_restrictions")
    assert got == ("permit_mynetworks, reject_unauth_pipelining, reject_rbl_client "
                   "zen.spamhaus.org, permit_sasl_authenticated, check_policy_service "
                   "$postward_policy_service, permit")
    assert _in_order(items(client, "restrictions"), items(got, "restrictions"))
    assert ("  added permit_sasl_authenticated check_policy_service $postward_policy_service "
            "before your final permit (nothing after an unconditional permit is evaluated)"
            ) in out
    got = _postconf(etc, "-h", "smtpd_data_restrictions")
    assert got == ("reject_unauth_pipelining permit_sasl_authenticated check_client_access "
                   "$postward_filter_access")
    # OpenDKIM's address respelled inside the admin's group, rspamd kept.
    assert _postconf(etc, "-h", "smtpd_milters") == (
        "{ $postward_dkim_milter, default_action=accept }, inet:127.0.0.1:11332")
    expanded = _postconf(etc, "-hx", "smtpd_milters")
    assert expanded == "{ inet:127.0.0.1:8891, default_action=accept }, inet:127.0.0.1:11332"
    assert _postconf(etc, "-hx", "non_smtpd_milters") == expanded
    assert _postconf(etc, "-h", "milter_default_action") == "accept"
    assert "warning" not in out and "no longer" not in out


@pytest.mark.integration
def test_unset_lists_get_the_snippets_and_an_entry_elsewhere_counts(
        guide: PostfixInstance, capsys: pytest.CaptureFixture[str]) -> None:
    etc = guide.config_dir
    # postfwd in smtpd_recipient_restrictions, no client restrictions, rspamd alone as a
    # milter, non_smtpd_milters and milter_default_action not set.
    recipient = ("permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination, "
                 "check_policy_service inet:127.0.0.1:10040")
    guide.update({"smtpd_recipient_restrictions": recipient,
                  "smtpd_milters": "inet:127.0.0.1:11332"}, reload=False)
    subprocess.run(["postconf", "-c", str(etc), "-X", "smtpd_client_restrictions",
                    "non_smtpd_milters", "milter_default_action"], check=True)
    out = _apply_twice(capsys, etc)
    # The policy service already acts from smtpd_recipient_restrictions: respelled there, and
    # not called a second time from smtpd_client_restrictions.
    assert _postconf(etc, "-h", "smtpd_recipient_restrictions") == recipient.replace(
        "inet:127.0.0.1:10040", "$postward_policy_service")
    assert _postconf(etc, "-n", "smtpd_client_restrictions") == ""
    assert ("kept: postward's check_policy_service $postward_policy_service is in "
            "smtpd_recipient_restrictions already: not added to smtpd_client_restrictions") in out
    # Not set: the snippet's value.
    assert _postconf(etc, "-h", "smtpd_data_restrictions") == (
        "permit_sasl_authenticated check_client_access $postward_filter_access")
    assert _postconf(etc, "-h", "smtpd_milters") == "inet:127.0.0.1:11332 $postward_dkim_milter"
    assert _postconf(etc, "-h", "non_smtpd_milters") == "$smtpd_milters"
    assert ("  $smtpd_milters brings your inet:127.0.0.1:11332 to non_smtpd_milters as well"
            ) in out
    # Postfix's default is postward's tempfail: nothing written. Set to accept on purpose
    # afterwards, it stays.
    assert _postconf(etc, "-n", "milter_default_action") == ""
    guide.update({"milter_default_action": "accept"}, reload=False)
    files = _files(etc)
    code, again, _err = _run(capsys, "-c", str(etc), "--apply")
    assert code == 0 and "nothing to change" in again
    assert "kept: milter_default_action = accept is yours" in again
    assert _files(etc) == files


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
