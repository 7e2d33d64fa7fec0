"""docs/prometheus/ against Debian's own Prometheus: promtool accepts the rules and the example
config, promtool's rule unit tests show the alerts fire when they should, and a real Prometheus
running the example config scrapes the three real daemons, loads the rules and evaluates them
and every dashboard expression."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_metrics_documented import (
    USER,
    dashboard_expressions,
    metric_names,
    run_filter,
    start_classifierd_with_metrics,
    undocumented,
)
from tests.policyd.daemon_fixture import requests_for
from tests.testbed.mail import make_message
from tests.testbed.milter_client import EomResult, MilterClient, run_message
from tests.testbed.net import free_port, wait_until
from tests.testbed.process import ManagedProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "docs" / "prometheus"
RULES = PROMETHEUS_DIR / "postward.rules.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
JOBS = ("postward-policyd", "postward-dkim", "postward-classifierd")
DEFAULT_TARGETS = {"postward-policyd": "127.0.0.1:9740", "postward-dkim": "127.0.0.1:9741",
                   "postward-classifierd": "127.0.0.1:9742"}


def rule_names() -> list[str]:
    return re.findall(r"^\s*- (?:alert|record): (\S+)$", RULES.read_text(), re.M)


def replace_once(text: str, old: str, new: str) -> str:
    """``text`` with ``old`` replaced; fails if the docs file no longer has it exactly once."""
    assert text.count(old) == 1, f"expected {old!r} once in the example"
    return text.replace(old, new)


def example_config(rules: Path, targets: dict[str, str] | None = None,
                   interval: str | None = None) -> str:
    """docs/prometheus/prometheus.yml with the rules file at ``rules``, and optionally other
    targets for the postward jobs and another scrape and evaluation interval."""
    text = replace_once(CONFIG.read_text(), "- /etc/prometheus/postward.rules.yml",
                        f"- {rules}")
    for job, target in (targets or {}).items():
        text = replace_once(text, f"['{DEFAULT_TARGETS[job]}']", f"['{target}']")
    if interval:
        text = replace_once(text, "scrape_interval: 15s", f"scrape_interval: {interval}")
        text = replace_once(text, "evaluation_interval: 15s", f"evaluation_interval: {interval}")
    return text


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


# --- promtool --------------------------------------------------------------------------------

def test_promtool_accepts_the_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    names = rule_names()
    assert f"SUCCESS: {len(names)} rules found" in done.stdout, done.stdout
    assert len(names) == len(set(names)), "rule names must be unique"
    # Every alert carries a for:, a severity and what to do.
    for block in re.split(r"\n(?=      - alert: )", RULES.read_text())[1:]:
        name = block.split()[2]
        assert re.search(r"^        for: \d+[smh]$", block, re.M), f"{name}: no for:"
        assert re.search(r"^          severity: (critical|warning|info)$", block, re.M), name
        assert "summary:" in block and "description:" in block, name


def test_promtool_accepts_the_example_config(tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(example_config(RULES))
    done = promtool("check", "config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout, done.stdout
    # The jobs the rules and the dashboard look for.
    assert re.findall(r"job_name: (postward-\S+)", CONFIG.read_text()) == list(JOBS)


def _series(name: str, job: str, values: str, **labels: str) -> dict[str, str]:
    all_labels = {"job": job, "instance": "mx1:9740"} | labels
    text = ", ".join(f'{k}="{v}"' for k, v in all_labels.items())
    return {"series": f"{name}{{{text}}}", "values": values}


def _firing(alert: str, at: str, **labels: str) -> dict[str, Any]:
    """A promql_expr_test: ``alert`` is firing at ``at`` with ``labels`` (none: not firing)."""
    expr = f'ALERTS{{alertname="{alert}", alertstate="firing"}}'
    samples = []
    if labels:
        text = ", ".join(f'{k}="{v}"' for k, v in
                         {"alertname": alert, "alertstate": "firing", **labels}.items())
        samples = [{"labels": f"ALERTS{{{text}}}", "value": 1}]
    return {"expr": expr, "eval_time": at, "exp_samples": samples}


def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    """promtool's rule unit tests: synthetic series in, alerts (or their absence) out."""
    mx = {"instance": "mx1:9740"}
    tests = [
        {   # A daemon down for 2 minutes; Redis errors and 4xx replies that go on.
            "interval": "1m",
            "input_series": [
                _series("up", "postward-dkim", "1 1 0x20"),
                _series("up", "postward-policyd", "1x22"),
                _series("postward_classifierd_redis_errors_total", "postward-classifierd",
                        "0 0 1+1x20", op="train", error="ConnectionError"),
                _series("postward_policyd_redis_errors_total", "postward-policyd", "0x22",
                        op="greylist", error="TimeoutError"),
                _series("postward_classifierd_tempfail_replies_total", "postward-classifierd",
                        "0 0 0 1+1x20"),
            ],
            "promql_expr_test": [
                _firing("PostwardDaemonDown", "3m"),  # pending for 2m first
                _firing("PostwardDaemonDown", "5m", job="postward-dkim", severity="critical",
                        **mx),
                _firing("PostwardRedisErrors", "4m"),
                _firing("PostwardRedisErrors", "12m", job="postward-classifierd",
                        severity="critical", **mx),
                _firing("PostwardClassifierTempfailing", "8m"),
                _firing("PostwardClassifierTempfailing", "20m", job="postward-classifierd",
                        severity="critical", **mx),
            ],
        },
        {   # Greylisting defers and nothing passes for hours.
            "interval": "1m",
            "input_series": [
                _series("postward_policyd_greylist_outcomes_total", "postward-policyd",
                        "0+1x480", outcome="new"),
                _series("postward_policyd_greylist_outcomes_total", "postward-policyd",
                        "0x480", outcome="passed"),
            ],
            "promql_expr_test": [
                _firing("PostwardGreylistNothingPasses", "30m"),
                _firing("PostwardGreylistNothingPasses", "7h", job="postward-policyd",
                        severity="warning"),
            ],
        },
        {   # The same deferrals, but retries pass: no alert.
            "interval": "1m",
            "input_series": [
                _series("postward_policyd_greylist_outcomes_total", "postward-policyd",
                        "0+1x480", outcome="new"),
                _series("postward_policyd_greylist_outcomes_total", "postward-policyd",
                        "0+1x480", outcome="passed"),
            ],
            "promql_expr_test": [_firing("PostwardGreylistNothingPasses", "7h")],
        },
        {   # Three steady days (10 new, 5 passed per 5 minutes), then a spam wave (100 new).
            "interval": "5m",
            "input_series": [
                _series("postward_policyd_greylist_outcomes_total", "postward-policyd",
                        "0+10x864 8640+100x288", outcome="new"),
                _series("postward_policyd_greylist_outcomes_total", "postward-policyd",
                        "0+5x1152", outcome="passed"),
            ],
            "promql_expr_test": [
                # Over the last 2 days: 2 * 288 * 10 new - 2 * 288 * 5 passed.
                {"expr": "postward:greylist_pending_triplets:estimate", "eval_time": "3d",
                 "exp_samples": [{"labels": 'postward:greylist_pending_triplets:estimate'
                                           '{job="postward-policyd"}', "value": 2880}]},
                _firing("PostwardGreylistBacklogGrowing", "3d"),
                _firing("PostwardGreylistBacklogGrowing", "4d", job="postward-policyd",
                        severity="warning"),
            ],
        },
    ]
    # Every other alert, each on the failure it is written for (one host per daemon).
    policyd = {"job": "postward-policyd", "instance": "mx1:9740"}
    dkim = {"job": "postward-dkim", "instance": "mx1:9741"}
    classifierd = {"job": "postward-classifierd", "instance": "mx1:9742"}
    failures = [
        ("postward_policyd_process_start_time_seconds", policyd, "1+1x60", {}),  # restarts
        ("postward_policyd_process_open_fds", policyd, "900x60", {}),
        ("postward_policyd_process_max_fds", policyd, "1000x60", {}),
        ("postward_dkim_dns_queries_total", dkim, "0+10x60", {"type": "TXT",
                                                                "result": "SERVFAIL"}),
        ("postward_dkim_dns_queries_total", dkim, "0+10x60", {"type": "TXT",
                                                                "result": "NOERROR"}),
        ("postward_policyd_dnsbl_queries_total", policyd, "0+10x60", {"list": "bl.test"}),
        ("postward_policyd_dnsbl_timeouts_total", policyd, "0+5x60", {"list": "bl.test"}),
        ("postward_policyd_errors_total", policyd, "0+1x60", {"kind": "budget"}),
        ("postward_policyd_errors_total", policyd, "0+1x60", {"kind": "garbage"}),
        # p99 beyond the last finite bucket (10 s): histogram_quantile answers 10.
        ("postward_policyd_decision_seconds_bucket", policyd, "0+10x60", {"le": "+Inf"}),
        ("postward_policyd_decision_seconds_bucket", policyd, "0+9x60", {"le": "10"}),
        ("postward_dkim_callback_seconds_bucket", dkim, "0+10x60", {"le": "+Inf",
                                                                      "callback": "eom"}),
        ("postward_dkim_callback_seconds_bucket", dkim, "0x60", {"le": "10", "callback": "eom"}),
        ("postward_classifierd_request_seconds_bucket", classifierd, "0+10x60",
         {"le": "+Inf", "op": "PROCESS"}),
        ("postward_classifierd_request_seconds_bucket", classifierd, "0x60",
         {"le": "10", "op": "PROCESS"}),
        ("postward_dkim_errors_total", dkim, "0+1x60", {"kind": "callback"}),
        ("postward_dkim_errors_total", dkim, "0 1x60", {"kind": "config"}),
        ("postward_dkim_messages_total", dkim, "0+1x60", {"action": "tempfailed"}),
        ("postward_dkim_messages_total", dkim, "0+9x60", {"action": "verified"}),
        ("postward_classifierd_requests_total", classifierd, "0+1x60", {"op": "PROCESS",
                                                                       "code": "550"}),
    ]
    expected = [
        ("PostwardDaemonRestarting", policyd, "warning", {}),
        ("PostwardFileDescriptorsRunningOut", policyd, "warning", {}),
        ("PostwardDnsFailing", dkim, "warning", {}),
        ("PostwardDnsblTimeouts", policyd, "warning", {"list": "bl.test"}),
        ("PostwardPolicydDefaultAnswers", policyd, "warning", {"kind": "budget"}),
        ("PostwardPolicydProtocolErrors", policyd, "info", {"kind": "garbage"}),
        ("PostwardPolicydSlow", policyd, "warning", {}),
        ("PostwardDkimErrors", dkim, "warning", {}),
        ("PostwardDkimReloadRejected", dkim, "warning", {"kind": "config"}),
        ("PostwardDkimTempfailing", dkim, "warning", {}),
        ("PostwardDkimSlow", dkim, "warning", {}),
        ("PostwardClassifierRefusing", classifierd, "warning", {}),
        ("PostwardClassifierSlow", classifierd, "warning", {}),
    ]
    tests.append({
        "interval": "1m",
        "input_series": [_series(name, where["job"], values, instance=where["instance"],
                                 **labels) for name, where, values, labels in failures],
        "promql_expr_test": [_firing(alert, "55m", **where, severity=severity, **labels)
                             for alert, where, severity, labels in expected],
    })
    covered = {t["expr"].split('"')[1] for group in tests for t in group["promql_expr_test"]
               if t["expr"].startswith("ALERTS")}
    assert covered == {n for n in rule_names() if not n.startswith("postward:")}

    # The days-long backlog scenario needs no minute steps: evaluated every 5 minutes.
    days = [t for t in tests if t["interval"] == "5m"]
    specs = []
    for name, group, every in (("minutes", [t for t in tests if t not in days], "1m"),
                               ("days", days, "5m")):
        spec = tmp_path / f"{name}.test.yml"
        # JSON is YAML: promtool reads it as it is.
        spec.write_text(json.dumps({"rule_files": [str(RULES)], "evaluation_interval": every,
                                    "tests": group}, indent=1))
        specs.append(str(spec))
    done = promtool("test", "rules", *specs)
    assert done.returncode == 0, done.stdout + done.stderr


# --- a real Prometheus -----------------------------------------------------------------------

@dataclass
class Prometheus:
    address: str
    port: int
    process: ManagedProcess

    def get(self, path: str, **params: str) -> Any:
        url = f"http://{self.address}:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        reply = self.get("/api/v1/query", query=expr)
        assert reply["status"] == "success", reply
        return reply["data"]["result"]


def _ready(address: str, port: int) -> bool:
    with urllib.request.urlopen(f"http://{address}:{port}/-/ready", timeout=2) as r:
        return r.status == 200


@pytest.fixture
def prometheus_for(testbed_dir: Path, loopback: str) -> Iterator:  # type: ignore[type-arg]
    """``start(targets)``: Debian's prometheus with the example config, scraping ``targets``
    (job -> host:port) and evaluating the rules every second."""
    started: list[ManagedProcess] = []

    def start(targets: dict[str, str]) -> Prometheus:
        directory = testbed_dir / "prometheus"
        (directory / "data").mkdir(parents=True)
        # The backlog group evaluates every 5 minutes: every second here, like the rest.
        rules = directory / "postward.rules.yml"
        rules.write_text(replace_once(RULES.read_text(), "interval: 5m", "interval: 1s"))
        config = directory / "prometheus.yml"
        config.write_text(example_config(rules, targets, interval="1s"))
        port = free_port(loopback)
        process = ManagedProcess("prometheus", [
            "/usr/bin/prometheus", f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address={loopback}:{port}"], directory / "prometheus.log")
        started.append(process)
        process.start(ready=lambda: _ready(loopback, port), timeout=60)
        return Prometheus(loopback, port, process)

    yield start
    for process in started:
        process.stop()


def _value(prometheus: Prometheus, expr: str) -> str | None:
    result = prometheus.query(expr)
    return result[0]["value"][1] if len(result) == 1 else None


def _dashboard_promql(expr: str) -> str:
    """A dashboard expression as Grafana sends it: its variables filled in."""
    return (expr.replace("$__rate_interval", "1m").replace("${DS_PROMETHEUS}", "")
            .replace("$host", ".*"))


def test_prometheus_scrapes_the_daemons_and_runs_the_rules(
        make_policyd, make_dkim, make_classifierd, redis_server, dkim_dns, loopback,  # type: ignore[no-untyped-def]
        prometheus_for) -> None:
    ports = {job: free_port(loopback) for job in JOBS[:2]}
    policyd = make_policyd("id=BAD ; client_address=192.0.2.0/24 ; action=REJECT listed\n",
                           redis_server, metrics_port=ports["postward-policyd"])
    dkim = make_dkim("dkim", redis_url=redis_server.url, nameserver=dkim_dns.nameserver,
                     metrics_port=ports["postward-dkim"])
    classifierd, ports["postward-classifierd"] = start_classifierd_with_metrics(
        make_classifierd, redis_server.url, loopback)
    prometheus = prometheus_for({job: f"{loopback}:{port}" for job, port in ports.items()})

    # One real request through each daemon.
    assert policyd.ask(*requests_for(["192.0.2.1"])) == ["REJECT listed"]
    client = MilterClient((dkim.address, dkim.port))
    client.negotiate()
    message = make_message("alice@sender.test", "bob@receiver.test", subject="hi",
                           body="Hello.\n").as_bytes()
    # Unsigned: counted as verification result none, then accepted (at once or at the end).
    answer = run_message(client, message, client_ip="203.0.113.10")
    assert answer == "a" or isinstance(answer, EomResult), answer
    client.close()
    assert run_filter(classifierd, "--stdout", "--user", USER, "--", USER).returncode == 0

    def all_up() -> bool:
        result = prometheus.query('up{job=~"postward-.+"}')
        return sorted((r["metric"]["job"], r["value"][1]) for r in result) == \
            sorted((job, "1") for job in JOBS)

    wait_until(all_up, timeout=60, what="up == 1 for the three postward jobs")
    for expr, want in (('postward_policyd_requests_total{action="REJECT", state="RCPT"}', "1"),
                       ('postward_dkim_verifications_total{result="none"}', "1"),
                       ("sum(postward_classifierd_verdicts_total)", "1"),
                       ('postward_classifierd_requests_total{op="PROCESS", code="200"}', "1")):
        wait_until(lambda e=expr, w=want: _value(prometheus, e) == w, timeout=60,
                   what=f"{expr} == {want} in Prometheus")

    # The dashboard's host variable: the part of instance before the port.
    instances = {r["metric"]["instance"] for r in prometheus.query('up{job=~"postward-.+"}')}
    assert {re.fullmatch(r"(.*):[0-9]+", i).group(1) for i in instances} == {loopback}  # type: ignore[union-attr]

    # Every rule of the file loaded and evaluated without error.
    def rules_evaluated() -> list[dict[str, Any]] | None:
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] == "ok" for r in rules) else None

    rules = wait_until(rules_evaluated, timeout=60, what="every rule evaluated healthy")
    assert sorted(r["name"] for r in rules) == sorted(rule_names())
    queries = [r["query"] for r in rules]
    assert undocumented(set().union(*(metric_names(q) for q in queries))) == []
    # A healthy system raises no postward alert.
    assert prometheus.query('ALERTS{alertname=~"Postward.+"}') == []

    # Every dashboard expression is valid PromQL for this Prometheus, and the panels of the
    # daemons driven above have data.
    for expr in dashboard_expressions():
        prometheus.query(_dashboard_promql(expr))
    # rate() needs two samples in its range: poll.
    for expr in ('sum by (action) (rate(postward_policyd_requests_total{instance=~"$host:[0-9]+"}'
                 '[$__rate_interval]))',
                 'sum by (result) (rate(postward_dkim_verifications_total{instance=~'
                 '"$host:[0-9]+"}[$__rate_interval]))',
                 'sum by (result) (rate(postward_classifierd_verdicts_total{instance=~'
                 '"$host:[0-9]+"}[$__rate_interval]))'):
        assert expr in dashboard_expressions()
        wait_until(lambda e=expr: prometheus.query(_dashboard_promql(e)), timeout=60,
                   what=f"data for {expr}")

