"""postward-policyd against postfwd 1.35: the same rules and requests must give the same answers.

Both programs read the same request stream in stdin mode (``-f RULEFILE [-n]``), request by
request answers are compared, and a mismatch prints the rule file, the request and both answers
(with postfwd's log lines for that request, which name the rule it used).

* every corpus of requests.py, against the DNS test bed and with -n (the goldens of
  test_postfwd_peer.py are the same answers, recorded);
* hypothesis-generated request runs on every corpus that can take them (POSTWARD_FUZZ_EXAMPLES
  examples each, default 8);
* date/time rules written for the current moment (requests.py:now_rules), whose outcome cannot
  change within ten minutes of the run.

Time: postfwd reads the real clock. The corpora only use ranges that match at any moment or at
none; rules that depend on the weekday or hour run here only, with both programs started within
the same seconds and TZ=UTC. Rate limits count real seconds too: their windows are an hour, far
longer than a run. postfwd runs with --cache=0 (see postfwd_peer.py); the corpora never repeat
a request in the cache's sense, so a postward with postfwd's request cache answers alike.

Deliberate differences (docs/policyd.md, "Where postward differs") are not mismatches, and each
is pinned by a test here: lines postward refuses to load (postfwd drops or misreads them) are
taken out of the rule file for both programs, and must be exactly the expected ones; IPv6
clients are looked up in DNSBLs by postward only.

Skipped, with the reason, while ``python -m postward.policyd`` cannot run.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.utils.conventions import not_set

from postward.core.config_file import ConfigError
from postward.policyd.ruleset import load_ruleset, logical_lines
from tests.policyd.postfwd_peer import (
    PolicyRun,
    closed_port,
    endpoint,
    policy_server,
    postfwd_unavailable,
    postward_unavailable,
    run_postfwd_raw,
    run_postward_raw,
)
from tests.policyd.requests import (
    Corpus,
    Request,
    ask_server_answer,
    corpora,
    now_rule_file,
    now_rules,
    probe,
    render,
    request_lists,
)
from tests.testbed.dns_servers import DnsTestbed

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(postfwd_unavailable() is not None, reason=postfwd_unavailable() or ""),
    pytest.mark.skipif(postward_unavailable() is not None,
                       reason=f"postward-policyd not runnable yet: {postward_unavailable()}"),
]

FUZZ_EXAMPLES = int(os.environ.get("POSTWARD_FUZZ_EXAMPLES", "8"))
# Shrinking reruns both programs hundreds of times: only when asked for.
FUZZ_PHASES = tuple(Phase) if os.environ.get("POSTWARD_FUZZ_SHRINK") == "1" else (
    Phase.explicit, Phase.reuse, Phase.generate)
# The default run uses the same examples every time (a CI run must not fail on a new random
# draw); POSTWARD_FUZZ_RANDOM=1 explores fresh ones, as a developer's fuzzing session.
FUZZ_DERANDOMIZE = os.environ.get("POSTWARD_FUZZ_RANDOM") != "1"
MAX_REPORTED = 15

# Lines postward refuses to load, by corpus: (first line of the rule, start of the reason).
REFUSED = {
    "macros_files": [(24, "undefined macro '&&NO_SUCH_MACRO'"),
                     (26, "undefined macro '&&b'"),
                     (28, "undefined macro '&&LATE_MACRO'"),
                     (43, "file:lists/no-such-file.txt: No such file or directory")],
    "syntax": [(25, "rule has no action="), (29, "rule has no action="),
               (45, "item 'sender!x@example.test' has no operator"),
               (48, "not a rule"),
               (51, "item 'bogus' has no operator"),
               (53, "rule has no action=")],
}


def refused_lines(rule_file: Path) -> list[tuple[int, str]]:
    try:
        # relative file: lists are read from where the program runs: the rule file's folder
        with contextlib.chdir(rule_file.parent):
            load_ruleset([("file", str(rule_file))])
    except ConfigError as e:
        return [(p.line, p.message) for p in e.problems]
    return []


def without_refused(rule_file: Path, tmp_path: Path) -> Path:
    """The rule file with every rule postward refuses commented out (its whole logical line),
    in the same directory so relative file: lists still resolve."""
    refused = {line for line, _ in refused_lines(rule_file)}
    if not refused:
        return rule_file
    physical = rule_file.read_text().split("\n")
    starts = [start for start, _ in logical_lines(rule_file.read_text())] + [len(physical) + 1]
    for start, end in itertools.pairwise(starts):
        if start in refused:
            for n in range(start, end):
                if physical[n - 1].strip():
                    physical[n - 1] = "#" + physical[n - 1]
    out = rule_file.with_name(f".{rule_file.stem}.accepted-{os.getpid()}-{tmp_path.name}.cf")
    out.write_text("\n".join(physical))
    return out


def deliberate(request: Mapping[str, str], dns: bool) -> str | None:
    """Why postward may answer this request differently, or None."""
    if dns and ":" in request.get("client_address", ""):
        return "IPv6 clients are looked up in DNSBLs (postfwd 1.35 skips them)"
    return None


def nameserver(bed: DnsTestbed) -> tuple[str, int]:
    return (bed.address, bed.port)


def show_request(request: Mapping[str, str]) -> str:
    """Non-empty attributes one per line (repr: odd characters show), empty ones named."""
    lines = [f"      {name}={value!r}" for name, value in request.items() if value]
    empty = [name for name, value in request.items() if not value]
    if empty:
        lines.append(f"      (empty: {', '.join(empty)})")
    return "\n".join(lines)


def mismatches(label: str, requests: Sequence[Request], postfwd: PolicyRun,
               postward: PolicyRun, dns: bool = False) -> list[str]:
    """A readable report of every request the two programs answered differently."""
    out = []
    for i, request in enumerate(requests):
        ours = postward.answers[i] if i < len(postward.answers) else "<no answer>"
        theirs = postfwd.answers[i] if i < len(postfwd.answers) else "<no answer>"
        if ours == theirs or (ours != "<no answer>" and deliberate(request, dns)):
            continue
        log = "\n".join(f"      {line}" for line in postfwd.logs[i]) if i < len(
            postfwd.logs) else ""
        out.append(f"{label}, request {i} of {len(requests)}:\n    request:\n"
                   f"{show_request(request)}\n    postfwd : {theirs}\n    postward: {ours}\n"
                   f"    postfwd's log for it:\n{log}")
    if len(postward.answers) > len(requests):
        out.append(f"{label}: postward gave {len(postward.answers)} answers for "
                   f"{len(requests)} requests")
    return out


def assert_same(label: str, requests: Sequence[Request], postfwd: PolicyRun,
                postward: PolicyRun, dns: bool = False) -> None:
    problems = mismatches(label, requests, postfwd, postward, dns)
    if problems and len(postward.answers) != len(postfwd.answers):
        problems.insert(0, f"{label}: postward answered {len(postward.answers)} of "
                           f"{len(requests)} requests (postfwd {len(postfwd.answers)}), "
                           f"exit code {postward.returncode}")
    if problems:
        shown = "\n\n".join(problems[:MAX_REPORTED])
        more = f"\n\n... and {len(problems) - MAX_REPORTED} more" if len(
            problems) > MAX_REPORTED else ""
        pytest.fail(f"{len(problems)} differences\n\n{shown}{more}\n\npostward stderr tail:\n"
                    f"{postward.stderr[-1500:]}", pytrace=False)


def run_both(rule_file: Path, requests: Sequence[Request], *, dns: bool, bed: DnsTestbed,
             extra_args: Sequence[str] = ()) -> tuple[PolicyRun, PolicyRun]:
    ns = nameserver(bed)
    return (run_postfwd_raw(rule_file, requests, nodns=not dns, nameserver=ns,
                            extra_args=extra_args),
            run_postward_raw(rule_file, requests, nodns=not dns, nameserver=ns,
                             extra_args=extra_args))


@pytest.fixture(scope="module")
def ask_substitutions(loopback: str) -> Iterator[dict[str, str]]:
    with policy_server(loopback, ask_server_answer) as server:
        yield {"@ASK@": endpoint(server), "@DEAD@": closed_port(loopback)}


def label(corpus: Corpus, dns: bool) -> str:
    return f"rules/{corpus.name}.cf ({'DNS: test bed' if dns else '-n'})"


@pytest.mark.parametrize("dns", [True, False], ids=["dns", "nodns"])
@pytest.mark.parametrize("corpus", corpora(), ids=lambda c: c.name)
def test_corpus_answers_agree(corpus: Corpus, dns: bool, module_dns_testbed: DnsTestbed,
                              ask_substitutions: dict[str, str], tmp_path: Path) -> None:
    rule_file = render(corpus, tmp_path, ask_substitutions) if corpus.template else (
        corpus.rule_file)
    rule_file = without_refused(rule_file, tmp_path)
    requests = list(corpus.requests)
    try:
        postfwd, postward = run_both(rule_file, requests, dns=dns, bed=module_dns_testbed,
                                     extra_args=corpus.extra_args)
    finally:
        if rule_file.name.startswith("."):
            rule_file.unlink()
    assert corpus.partial or postfwd.complete, postfwd.describe()
    assert_same(label(corpus, dns), requests, postfwd, postward, dns)
    if corpus.partial:
        assert postward.returncode == postfwd.returncode, postward.describe()


@pytest.mark.parametrize("corpus", [c for c in corpora() if c.fuzz], ids=lambda c: c.name)
def test_generated_requests_agree(corpus: Corpus, module_dns_testbed: DnsTestbed) -> None:
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, phases=FUZZ_PHASES,
              derandomize=FUZZ_DERANDOMIZE, database=None if FUZZ_DERANDOMIZE else not_set,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(requests=request_lists())
    def check(requests: list[Request]) -> None:
        rule_file = without_refused(corpus.rule_file, Path(tempfile.gettempdir()))
        try:
            postfwd, postward = run_both(rule_file, requests, dns=True,
                                         bed=module_dns_testbed, extra_args=corpus.extra_args)
        finally:
            if rule_file.name.startswith("."):
                rule_file.unlink()
        # a request postfwd cannot survive is a bug in requests.py's strategies
        assert postfwd.complete, postfwd.describe()
        assert_same(label(corpus, True) + " [generated]", requests, postfwd, postward, True)

    check()


def test_rules_for_this_moment_agree(module_dns_testbed: DnsTestbed) -> None:
    rules = now_rules(datetime.now(UTC))
    requests = [probe(rule.context) for rule in rules] + [probe("unselected")]
    with tempfile.TemporaryDirectory(prefix="now-rules-") as tmp:
        path = Path(tmp) / "dates_now.cf"
        path.write_text(now_rule_file(rules))
        postfwd, postward = run_both(path, requests, dns=False, bed=module_dns_testbed)
    assert postfwd.complete, postfwd.describe()
    assert_same("rules written for now (requests.py:now_rules)", requests, postfwd, postward)


@pytest.mark.parametrize("corpus", [c for c in corpora() if not c.template],
                         ids=lambda c: c.name)
def test_postward_refuses_exactly_the_expected_lines(corpus: Corpus) -> None:
    """Every line postward refuses is one postfwd drops or misreads (docs/postfwd-quirks.md),
    named with its file and line; nothing else in the corpora is refused."""
    got = refused_lines(corpus.rule_file)
    want = REFUSED.get(corpus.name, [])
    assert [line for line, _ in got] == [line for line, _ in want], got
    for (_, message), (_, start) in zip(got, want, strict=True):
        assert message.startswith(start), (message, start)
