"""postfwd 1.35 alone: the harness works, and postfwd still gives the recorded (golden) answers.

The golden files ``golden/<corpus>.<dns|nodns>.txt`` hold postfwd's answer to every request of
every corpus (requests.py), run against the DNS test bed or with ``-n``. They are the answers
postward-policyd must give too (test_differential.py). Regenerate them after changing a corpus:

    POSTWARD_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/policyd/test_postfwd_peer.py

The other tests pin the postfwd behaviours that docs/postfwd-quirks.md describes.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.policyd.postfwd_peer import (
    POSTFWD,
    PeerError,
    PolicyRun,
    closed_port,
    endpoint,
    policy_server,
    port_is_open,
    postfwd_unavailable,
    run_postfwd,
    run_postfwd_raw,
)
from tests.policyd.requests import (
    Corpus,
    ask_server_answer,
    cache_key,
    corpora,
    expected_now_answer,
    now_rule_file,
    now_rules,
    postfix_request,
    probe,
    render,
)
from tests.testbed.dns_fixtures import CLIENT_CLEAN, CLIENT_ON_ONE, CLIENT_ON_THREE
from tests.testbed.dns_servers import DnsTestbed

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(postfwd_unavailable() is not None, reason=postfwd_unavailable() or ""),
]

REGEN = os.environ.get("POSTWARD_REGEN_GOLDEN") == "1"
GUIDE_ASK_TARGET = ("127.0.0.1", 10023)  # the guide's ask(127.0.0.1:10023): postgrey's port


def nameserver(bed: DnsTestbed) -> tuple[str, int]:
    return (bed.address, bed.port)


def rules(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.cf"
    path.write_text(text)
    return path


# --- the harness ----------------------------------------------------------------------------

def test_answers_every_request_in_order(tmp_path: Path) -> None:
    path = rules(tmp_path, "id=A; sender==a@example.test; action=REJECT [A] $$client_address\n"
                           "id=B; action=DUNNO [B]\n")
    requests = [postfix_request(sender="a@example.test"), postfix_request(),
                postfix_request(sender="a@example.test", client=CLIENT_ON_ONE)]
    run = run_postfwd_raw(path, requests, nodns=True, nameserver=None)
    assert run.answers == (f"action=REJECT [A] {CLIENT_CLEAN}", "action=DUNNO [B]",
                           f"action=REJECT [A] {CLIENT_ON_ONE}")
    assert run.returncode == 0
    # -L: postfwd's log lines come on stdout and are kept apart from the answers
    assert any("id=A" in line for line in run.logs[0])


def test_dns_rules_hit_through_the_test_bed(tmp_path: Path, module_dns_testbed: DnsTestbed) -> None:
    path = rules(tmp_path, "id=RBL; rbl=dnsbl-a.test; action=REJECT [RBL] $$rblcount $$dnsbltext\n"
                           "id=HELO; helo_address=192.0.2.0/24; action=REJECT [HELO]\n")
    requests = [postfix_request(client=CLIENT_ON_THREE),
                postfix_request(client=CLIENT_CLEAN, helo="mail.example.test"),
                postfix_request(client=CLIENT_CLEAN, helo="nowhere.example.test")]
    with_dns = run_postfwd(path, requests, nodns=False, nameserver=nameserver(module_dns_testbed))
    assert with_dns == [
        "action=REJECT [RBL] 1 rbl:dnsbl-a.test:<Listed by dnsbl-a: 192.0.2.66  see "
        "https://dnsbl-a.test/q?ip=192.0.2.66>",
        "action=REJECT [HELO]",
        "action=DUNNO",
    ]
    # -n: helo_address cannot match; rbl items are skipped, so the RBL rule matches everything
    without = run_postfwd(path, requests, nodns=True, nameserver=nameserver(module_dns_testbed))
    assert without == ["action=REJECT [RBL] 0 "] * 3


def test_without_a_nameserver_dns_goes_nowhere(tmp_path: Path) -> None:
    path = rules(tmp_path, "id=RBL; rbl=dnsbl-a.test; action=REJECT [RBL]\n")
    started = time.monotonic()
    run = run_postfwd_raw(path, [postfix_request(client=CLIENT_ON_THREE)], nodns=False,
                          nameserver=None, extra_args=["--dns_timeout=1"])
    assert run.answers == ("action=DUNNO",)
    assert any("timeout" in line for line in run.logs[0])
    assert time.monotonic() - started < 20


def test_machine_resolv_conf_is_left_alone(tmp_path: Path, module_dns_testbed: DnsTestbed) -> None:
    before = Path("/etc/resolv.conf").read_bytes()
    path = rules(tmp_path, "id=RBL; rbl=dnsbl-a.test; action=REJECT\n")
    run_postfwd(path, [postfix_request()], nodns=False, nameserver=nameserver(module_dns_testbed))
    assert Path("/etc/resolv.conf").read_bytes() == before


def test_environment_nameservers_kill_postfwd_under_taint(
        tmp_path: Path, module_dns_testbed: DnsTestbed) -> None:
    """Why the harness bind-mounts a resolv.conf: RES_NAMESERVERS is tainted data under -T."""
    path = rules(tmp_path, "id=RBL; rbl=dnsbl-a.test; action=REJECT\n")
    env = {"PATH": "/usr/bin:/bin", "RES_NAMESERVERS": module_dns_testbed.address,
           "RES_OPTIONS": f"port:{module_dns_testbed.port}", "HOME": str(tmp_path)}
    done = subprocess.run([str(POSTFWD), "-L", "-f", str(path)], input=_one_request(), env=env,
                          capture_output=True, timeout=30, check=False)
    assert done.returncode != 0
    assert b"Insecure dependency while running with -T switch" in done.stderr
    assert b"action=" not in done.stdout


def _one_request() -> bytes:
    return b"request=smtpd_access_policy\nclient_address=192.0.2.66\nclient_name=x.test\n\n"


def test_a_hung_postfwd_is_killed(tmp_path: Path) -> None:
    """$$(name) of an attribute the request lacks makes postfwd 1.35 loop forever."""
    path = rules(tmp_path, "id=HANG; action=REJECT $$(x_not_sent)\n")
    started = time.monotonic()
    with pytest.raises(PeerError, match="did not finish within 3s"):
        run_postfwd_raw(path, [postfix_request()], nodns=True, nameserver=None, timeout=3)
    assert time.monotonic() - started < 10


def test_incomplete_answers_raise(tmp_path: Path) -> None:
    path = rules(tmp_path, "id=Q; sender==quit@example.test; action=quit(3)\n")
    requests = [postfix_request(), postfix_request(sender="quit@example.test"), postfix_request()]
    with pytest.raises(PeerError, match="did not answer every request"):
        run_postfwd(path, requests, nodns=True, nameserver=None)


def test_protocol_cannot_carry_line_breaks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be sent"):
        run_postfwd(rules(tmp_path, "action=DUNNO\n"), [{"sender": "a\nb"}], nodns=True,
                    nameserver=None)


# --- postfwd behaviours (docs/postfwd-quirks.md) --------------------------------------------

def test_request_cache_answers_repeats_with_old_answers(tmp_path: Path) -> None:
    """With postfwd's default cache an identical request gets the first answer again, even when
    the ruleset's state changed (a score threshold set by the first request); the harness runs
    --cache=0."""
    path = rules(tmp_path, "id=P; action=score(+3)\nid=T; score=2.0; action=REJECT [T]\n")
    same = [postfix_request(), postfix_request()]
    assert run_postfwd(path, same, nodns=True, nameserver=None) == [
        "action=DUNNO", "action=REJECT [T]"]
    assert run_postfwd(path, same, nodns=True, nameserver=None, extra_args=["--cache=600"]) == [
        "action=DUNNO", "action=DUNNO"]


def test_bad_dnsbl_query_name_kills_postfwd(tmp_path: Path, module_dns_testbed: DnsTestbed) -> None:
    path = rules(tmp_path, "id=H; rhsbl_helo=rhsbl.test; action=REJECT [H]\n")
    requests = [postfix_request(helo="a..b.example"), postfix_request()]
    run = run_postfwd_raw(path, requests, nodns=False, nameserver=nameserver(module_dns_testbed))
    assert run.answers == ()
    assert run.returncode != 0
    assert 'empty label in "a..b.example.rhsbl.test"' in run.stderr


def test_invalid_regex_kills_postfwd_when_first_used(tmp_path: Path) -> None:
    path = rules(tmp_path, "id=R; sender==bad@example.test; helo_name=~(unclosed; action=REJECT\n"
                           "id=D; action=DUNNO [D]\n")
    requests = [postfix_request(), postfix_request(sender="bad@example.test"), postfix_request()]
    run = run_postfwd_raw(path, requests, nodns=True, nameserver=None)
    assert run.answers in (("action=DUNNO [D]",), ())  # items are tried in Perl hash order
    assert run.returncode != 0
    assert "Unmatched ( in regex" in run.stderr


def test_request_without_request_attribute(tmp_path: Path) -> None:
    """No answer, and its attributes stay for the next request."""
    path = rules(tmp_path, "id=C; action=REJECT <$$sasl_username>\n")
    requests = [{"sasl_username": "carried"},
                {"request": "smtpd_access_policy", "client_address": CLIENT_CLEAN}]
    run = run_postfwd_raw(path, requests, nodns=True, nameserver=None)
    assert run.answers == ("action=REJECT <carried>",)


def test_values_are_cut_at_512_bytes(tmp_path: Path) -> None:
    path = rules(tmp_path, "id=C; action=REJECT <$$sasl_username>\n")
    long_ascii = postfix_request(sasl_username="x" * 600)
    long_utf8 = postfix_request(sasl_username="é" * 300)
    answers = run_postfwd(path, [long_ascii, long_utf8], nodns=True, nameserver=None)
    assert answers[0] == "action=REJECT <" + "x" * 512 + ">"
    assert answers[1] == "action=REJECT <" + "é" * 256 + ">"


@pytest.mark.parametrize(("seed", "answer"), [("0", "action=DUNNO"), ("11", "action=REJECT [T]")])
def test_score_item_with_other_items_depends_on_hash_order(tmp_path: Path, seed: str,
                                                           answer: str) -> None:
    """A score= rule with another item registers its threshold only if Perl's hash order puts
    score= before the failing item: the outcome follows PERL_HASH_SEED (random by default), so
    the corpora keep score= rules alone."""
    path = rules(tmp_path, "id=T; score=2.0; sender==nobody@x.test; action=REJECT [T]\n"
                           "id=P; action=score(+3)\n")
    env = {"PERL_HASH_SEED": seed, "PERL_PERTURB_KEYS": "0"}
    for _ in range(2):
        run = run_postfwd_raw(path, [postfix_request()], nodns=True, nameserver=None,
                              extra_env=env)
        assert run.answers == (answer,)


# --- golden answers --------------------------------------------------------------------------

def golden_text(corpus: Corpus, dns: bool, run: PolicyRun) -> str:
    mode = "against the DNS test bed" if dns else "with -n"
    args = f" {' '.join(corpus.extra_args)}" if corpus.extra_args else ""
    lines = [f"# postfwd 1.35 answers to requests.py:{corpus.name} for rules/{corpus.name}.cf, "
             f"{mode}{args}"]
    for i in range(len(corpus.requests)):
        lines.append(f"{i:03d} {run.answers[i] if i < len(run.answers) else '<no answer>'}")
    if corpus.partial:
        lines.append(f"# exit status {run.returncode}")
    return "\n".join(lines) + "\n"


def read_golden(path: Path) -> list[str]:
    """The answers of a golden file (None-free: '<no answer>' stays as it is)."""
    return [line[4:] for line in path.read_text().splitlines() if not line.startswith("#")]


@pytest.fixture(scope="module")
def ask_servers(loopback: str) -> Iterator[dict[str, str]]:
    with policy_server(loopback, ask_server_answer) as server:
        yield {"@ASK@": endpoint(server), "@DEAD@": closed_port(loopback)}


def run_corpus(corpus: Corpus, dns: bool, bed: DnsTestbed, substitutions: dict[str, str],
               directory: Path) -> PolicyRun:
    rule_file = corpus.rule_file
    if corpus.template:
        rule_file = render(corpus, directory, substitutions)
    return run_postfwd_raw(rule_file, list(corpus.requests), nodns=not dns,
                           nameserver=nameserver(bed), extra_args=corpus.extra_args)


def _guide_ask_target_busy(corpus: Corpus) -> bool:
    return "ask(127.0.0.1:10023)" in corpus.rule_file.read_text() and port_is_open(
        *GUIDE_ASK_TARGET)


@pytest.mark.parametrize("dns", [True, False], ids=["dns", "nodns"])
@pytest.mark.parametrize("corpus", corpora(), ids=lambda c: c.name)
def test_postfwd_gives_the_golden_answers(corpus: Corpus, dns: bool, tmp_path: Path,
                                          module_dns_testbed: DnsTestbed,
                                          ask_servers: dict[str, str]) -> None:
    if _guide_ask_target_busy(corpus):
        pytest.skip("something listens on 127.0.0.1:10023, the guide's ask() target")
    run = run_corpus(corpus, dns, module_dns_testbed, ask_servers, tmp_path)
    assert corpus.partial or run.complete, run.describe()
    text = golden_text(corpus, dns, run)
    golden = corpus.golden_file(dns)
    if REGEN:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no {golden.name}: run with POSTWARD_REGEN_GOLDEN=1"
    assert text == golden.read_text(), f"postfwd's answers changed for {golden.name}"


def test_clock_dependent_rules_decide_no_golden_answer(module_dns_testbed: DnsTestbed) -> None:
    """Debian's sample greylists by weekday and hour; its requests must all be decided earlier,
    by a logged rule, so that the golden answers hold at any time."""
    for corpus in (c for c in corpora() if c.clock_dependent):
        for dns in (True, False):
            run = run_corpus(corpus, dns, module_dns_testbed, {}, Path("."))
            deciding = [_deciding_rule(logs) for logs in run.logs[:len(run.answers)]]
            assert None not in deciding, f"{corpus.name}: a request fell through every rule"
            late = {d for d in deciding if d in ("GREY_006", "GREY_007")}
            assert not late, f"{corpus.name}: decided by clock-dependent rules {late}"


def _deciding_rule(logs: Sequence[str]) -> str | None:
    for line in reversed(logs):
        m = re.search(r"\[(?:RULES|CACHE)\] rule=\d+, id=([^,]+),", line)
        if m:
            return m.group(1)
    return None


def test_ask_forwards_the_original_request_mangled(tmp_path: Path, loopback: str) -> None:
    """ask() sends the request as postfwd received it (not its own additions), but every empty
    or "0" value goes out as Perl's "ARRAY(0x...)" (str_to_hash on an empty value)."""
    corpus = next(c for c in corpora() if c.name == "ask")
    with policy_server(loopback, ask_server_answer) as server:
        path = render(corpus, tmp_path, {"@ASK@": endpoint(server),
                                         "@DEAD@": closed_port(loopback)})
        request = probe("k_ask", client_address=CLIENT_ON_ONE, x_extra="1")
        assert run_postfwd(path, [request], nodns=True, nameserver=None) == [
            "action=DEFER_IF_PERMIT Greylisted, see http://postgrey.example.test/"]
    (seen,) = server.seen
    assert seen.keys() == request.keys()
    for name, value in request.items():
        if value in ("", "0"):
            assert re.fullmatch(r"ARRAY\(0x[0-9a-f]+\)", seen[name]), (name, seen[name])
        else:
            assert seen[name] == value, name


def test_guide_ask_target_down_means_dunno(tmp_path: Path) -> None:
    if port_is_open(*GUIDE_ASK_TARGET):
        pytest.skip("something listens on 127.0.0.1:10023")
    path = rules(tmp_path, "id=GREYLIST ; action=ask(127.0.0.1:10023) ; HIT_dnsbls>=1\n"
                           "id=AFTER; action=REJECT [AFTER]\n")
    run = run_postfwd_raw(path, [postfix_request(HIT_dnsbls="1")], nodns=True, nameserver=None)
    assert run.answers == ("action=REJECT [AFTER]",)
    assert any("Could not open socket to '127.0.0.1:10023'" in line for line in run.logs[0])


def test_golden_files_match_the_corpora() -> None:
    expected = {c.golden_file(dns).name for c in corpora() for dns in (True, False)}
    present = {p.name for p in corpora()[0].golden_file(True).parent.glob("*.txt")}
    assert present == expected


@pytest.mark.parametrize("corpus", corpora(), ids=lambda c: c.name)
def test_corpus_requests_never_meet_the_request_cache(corpus: Corpus) -> None:
    """No two requests of a corpus look alike to postfwd's request cache, so a postward that
    caches like postfwd (default 600 s) gives the same answers as postfwd with --cache=0."""
    if corpus.name == "limits":
        pytest.skip("rate limits switch postfwd's request cache off by themselves")
    keys = [cache_key(r) for r in corpus.requests]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("corpus", [c for c in corpora() if c.never_hit is not None],
                         ids=lambda c: c.name)
def test_every_rule_hits_somewhere(corpus: Corpus) -> None:
    """Each [RULE_ID] in an action shows up in some golden answer, except the rules the corpus
    declares never to hit (dropped by the parser, or ranges that never match)."""
    tokens = set(re.findall(r"\[([A-Za-z][\w]*)\]", corpus.rule_file.read_text()))
    answers = "\n".join(read_golden(corpus.golden_file(True)) + read_golden(
        corpus.golden_file(False)))
    missing = {t for t in tokens if f"[{t}]" not in answers}
    assert missing == set(corpus.never_hit)


# --- date/time rules written for the current moment -----------------------------------------

def test_rules_for_this_moment_give_the_expected_answers(tmp_path: Path) -> None:
    rules = now_rules(datetime.now(UTC))
    assert len(rules) >= 4
    path = tmp_path / "dates_now.cf"
    path.write_text(now_rule_file(rules))
    answers = run_postfwd(path, [probe(r.context) for r in rules], nodns=True, nameserver=None)
    assert answers == [expected_now_answer(r) for r in rules]


@pytest.mark.parametrize(("moment", "today", "this_month", "time_window"), [
    ("2024-12-31T23:55:00", False, False, False),  # day, month and year end within the margin
    ("2025-03-02T00:04:00", False, True, False),
    ("2025-06-15T12:00:00", True, True, True),
    ("2025-06-15T23:40:00", True, True, False),  # the +-30 min window would wrap at midnight
])
def test_rules_for_a_moment_leave_out_what_could_flip(moment: str, today: bool, this_month: bool,
                                                      time_window: bool) -> None:
    contexts = {r.context for r in now_rules(datetime.fromisoformat(moment))}
    assert ("n_date_today" in contexts) is today
    assert ("n_months_this" in contexts) is this_month
    assert ("n_time_window" in contexts) is time_window
    assert "n_date_around" in contexts
