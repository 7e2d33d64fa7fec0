"""docs/metrics.md is the complete list of what the daemons export, checked against the daemons.

Each real daemon is started through the test bed's fixtures, driven through the work that makes
its metrics appear (a metric with labels has no sample until its first label values are used,
unless the daemon exports them at 0 from the start), and scraped over HTTP. Then every exported
name must be documented for that daemon with the same type and label names, and every name
documented for it must have samples. The daemon pages' own metric tables, the alerting rules and
the Grafana dashboard may only name metrics documented here.
"""

from __future__ import annotations

import fnmatch
import json
import re
import socket
import subprocess
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from postward.dkim.keys import parse_private_key
from postward.dkim.offline import sign_message
from postward.dkim.opendkim_conf import DEFAULT_OVERSIGN_HEADERS, DEFAULT_SIGN_HEADERS
from postward.dkim.signer import SigningKey
from tests.classifier.daemon_fixture import ClassifierDaemon
from tests.dkim.milter_fixture import DkimDaemon, KeySpec
from tests.policyd.daemon_fixture import requests_for
from tests.testbed.dns_fixtures import (
    CLIENT_ALLOWED,
    CLIENT_CLEAN,
    CLIENT_IN_RANGE,
    CLIENT_ON_THREE,
)
from tests.testbed.mail import make_message
from tests.testbed.milter_client import EomResult, one_message
from tests.testbed.net import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "metrics.md"
DAEMON_PAGES = ("policyd.md", "dkim.md", "classifier.md")
RULES = ROOT / "docs" / "prometheus" / "postward.rules.yml"
DASHBOARD = ROOT / "docs" / "prometheus" / "grafana-dashboard.json"
DAEMONS = ("policyd", "dkim", "classifierd")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class Metric:
    name: str
    type: str
    labels: frozenset[str]


# --- what docs/metrics.md says ---------------------------------------------------------------

def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _names(cell: str) -> frozenset[str]:
    return frozenset(re.findall(r"`([^`]+)`", cell))


def documented() -> dict[str, dict[str, Metric]]:
    """daemon -> name -> Metric, from the tables of docs/metrics.md."""
    out: dict[str, dict[str, Metric]] = {d: {} for d in DAEMONS}
    section = ""
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        if not line.startswith("| `postward_"):
            continue
        cells = _cells(line)
        [name] = _names(cells[0])
        if section == "Every daemon":
            daemons = [d.strip() for d in cells[3].split(",")]
        else:
            daemons = [section.removeprefix("postward-")]
        assert set(daemons) <= set(DAEMONS), f"{section}: {line}"
        for daemon in daemons:
            full = name.replace("<daemon>", daemon)
            assert full.startswith(f"postward_{daemon}_"), f"{full} listed for {daemon}"
            assert full not in out[daemon], f"{full} listed twice"
            out[daemon][full] = Metric(full, cells[1], _names(cells[2]))
    return out


def mentioned(name: str) -> bool:
    """Whether docs/metrics.md names ``name`` anywhere (``<daemon>`` and ``*`` as patterns)."""
    for token in re.findall(r"`(postward_[^`\s]+)`", DOC.read_text()):
        for daemon in DAEMONS:
            if fnmatch.fnmatchcase(name, token.replace("<daemon>", daemon)):
                return True
    return False


def all_documented() -> dict[str, Metric]:
    return {name: m for by_name in documented().values() for name, m in by_name.items()}


# --- what a daemon exports --------------------------------------------------------------------

@dataclass(frozen=True)
class Exported:
    metric: Metric
    samples: int


def scrape(address: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{address}:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def exported(text: str) -> dict[str, Exported]:
    out = {}
    for family in text_string_to_metric_families(text):
        # The parser drops a counter's _total; the documented name is what Prometheus stores.
        name = family.name + "_total" if family.type == "counter" else family.name
        label_sets = {frozenset(s.labels) - {"le"} for s in family.samples}
        assert len(label_sets) <= 1, f"{name}: samples with different labels {label_sets}"
        labels = label_sets.pop() if label_sets else frozenset()
        out[name] = Exported(Metric(name, family.type, labels), len(family.samples))
    return out


def check_against_docs(daemon: str, text: str) -> None:
    docs = documented()[daemon]
    got = exported(text)
    problems = []
    for name, e in sorted(got.items()):
        if name.startswith(("python_", "process_")):
            continue  # prometheus_client's unprefixed defaults (our registries have none)
        doc = docs.get(name)
        if doc is None:
            if e.samples:
                problems.append(f"{name}: exported with samples, not in docs/metrics.md "
                                f"for {daemon}")
            elif not mentioned(name):
                problems.append(f"{name}: declared (no samples), not mentioned in "
                                f"docs/metrics.md")
            continue
        if doc.type != e.metric.type:
            problems.append(f"{name}: documented as {doc.type}, exported as {e.metric.type}")
        if e.samples and doc.labels != e.metric.labels:
            problems.append(f"{name}: documented labels {sorted(doc.labels)}, exported "
                            f"{sorted(e.metric.labels)}")
    for name in sorted(docs):
        if name not in got or not got[name].samples:
            problems.append(f"{name}: documented for {daemon}, no samples in its /metrics")
    assert not problems, "\n".join(problems)


# --- postward-policyd ------------------------------------------------------------------------

POLICY_RULES = """\
id=LISTED ; rbl=dnsbl-a.test, dnsbl-b.test ; action=REJECT listed
id=GREY ; client_address=203.0.113.0/24 ; action=greylist()
"""


@pytest.mark.integration
def test_policyd_exports_what_the_docs_list(make_policyd, redis_server, dns_testbed,
                                            loopback) -> None:  # type: ignore[no-untyped-def]
    port = free_port(loopback)
    daemon = make_policyd(POLICY_RULES, redis_server, dns_testbed, metrics_port=port)
    # A second daemon on the same Redis looks the client up first: the one scraped then finds
    # the answers in the shared Redis cache (dns_cache_hits, dnsbl_cache_hits).
    other = make_policyd(POLICY_RULES, redis_server, dns_testbed)
    [listed] = requests_for([CLIENT_ON_THREE])
    assert other.ask(listed) == ["REJECT listed"]
    assert daemon.ask(listed) == ["REJECT listed"]  # Redis cache
    assert daemon.ask(listed) == ["REJECT listed"]  # the process's own cache
    [clean] = requests_for([CLIENT_CLEAN])
    assert daemon.ask(clean)[0].startswith("DEFER_IF_PERMIT")  # nameservers, greylisting
    assert daemon.exchange(b"no equals sign\n" + _policy_request(CLIENT_CLEAN), 1)
    redis_server.stop()  # Redis errors: the greylist answer falls back to default_action
    assert daemon.ask(*requests_for([CLIENT_ALLOWED])) == ["DUNNO"]
    dns_testbed.rbldnsd.stop()  # the lists stop answering: DNSBL timeouts
    assert daemon.ask(*requests_for([CLIENT_IN_RANGE])) == ["DUNNO"]

    check_against_docs("policyd", scrape(loopback, port))


def _policy_request(client: str) -> bytes:
    return (f"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address={client}\n"
            f"client_name=unknown\nsender=s@sender.test\nrecipient=u@example.test\n\n").encode()


@pytest.mark.integration
def test_policyd_workers_export_the_documented_names_summed(make_policyd, redis_server,
                                                            loopback) -> None:  # type: ignore[no-untyped-def]
    """With several workers the supervisor serves their sums: the same names and labels
    (client_connections without a per-worker label), and no process_* figures."""
    port = free_port(loopback)
    rules = ("id=BAD ; client_address=192.0.2.0/24 ; action=REJECT listed\n"
             "id=GREY ; client_address=203.0.113.0/24 ; action=greylist()\n")
    daemon = make_policyd(rules, redis_server, workers=2, metrics_port=port)
    for _ in range(4):
        daemon.ask(*requests_for([CLIENT_CLEAN, "192.0.2.1"]))
    docs = documented()["policyd"]
    got = wait_until(lambda: _summed(loopback, port), what="both workers' metrics")
    for name, e in got.items():
        assert name in docs, f"{name} not documented"
        assert not name.startswith("postward_policyd_process_"), name
        assert e.metric.type == docs[name].type, name
        if e.samples:
            assert e.metric.labels == docs[name].labels, name
    assert "postward_policyd_client_connections" in got


def _summed(address: str, port: int) -> dict[str, Exported] | None:
    got = exported(scrape(address, port))
    requests = got.get("postward_policyd_requests_total")
    return got if requests and requests.samples else None


# --- postward-dkim ---------------------------------------------------------------------------

INSIDE, OUTSIDE = "127.0.0.1", "203.0.113.10"


def _mail(subject: str) -> bytes:
    return make_message("alice@example.test", "bob@receiver.test", subject=subject,
                        body="Hello Bob,\n\nsee you.\n").as_bytes()


def _milter(daemon: DkimDaemon, message: bytes, client_ip: str) -> EomResult:
    return one_message((daemon.address, daemon.port), message, client_ip)


@pytest.mark.integration
def test_dkim_exports_what_the_docs_list(make_dkim, redis_server, dkim_dns, dkim_keys,
                                         loopback) -> None:  # type: ignore[no-untyped-def]
    port = free_port(loopback)
    key = KeySpec("example.test", dkim_keys.rsa2048.selector, dkim_keys.rsa2048.private_pem)
    daemon = make_dkim("dkim", redis_url=redis_server.url, nameserver=dkim_dns.nameserver,
                       keys=[key], metrics_port=port)
    other = make_dkim("dkim-other", redis_url=redis_server.url, nameserver=dkim_dns.nameserver)
    signed = _milter(daemon, _mail("signed"), INSIDE)  # signatures_total{domain, algorithm}
    (_index, _name, value), = signed.inserted
    incoming = b"DKIM-Signature:" + value.replace(b"\n", b"\r\n") + b"\r\n" + \
        _mail("signed").replace(b"\n", b"\r\n")
    # The other daemon fetches the key first, so the one scraped finds it in the Redis cache.
    _milter(other, incoming, OUTSIDE)
    _milter(daemon, incoming, OUTSIDE)
    # A selector nobody published: a query to the nameservers (dns_queries, cache misses); the
    # second time the resolver's process cache answers (the milter keeps only keys it found).
    unpublished = _signed_with(dkim_keys, "nowhere", "no key")
    _milter(daemon, unpublished, OUTSIDE)
    _milter(daemon, unpublished, OUTSIDE)
    redis_server.stop()  # the key cache fails: Redis errors, the lookup goes on to DNS
    _milter(daemon, _signed_with(dkim_keys, "elsewhere", "no redis"), OUTSIDE)

    check_against_docs("dkim", scrape(loopback, port))


def _signed_with(keys, selector: str, subject: str) -> bytes:  # type: ignore[no-untyped-def]
    key = SigningKey("example.test", selector, parse_private_key(keys.rsa2048.private_pem, "t"))
    message = _mail(subject).replace(b"\n", b"\r\n")
    return sign_message(message, [key], 1_700_000_000, DEFAULT_SIGN_HEADERS,
                        DEFAULT_OVERSIGN_HEADERS) + message


# --- postward-classifierd --------------------------------------------------------------------

USER = "bob@receiver.test"
SPAM = b"From: x@sender.test\nTo: bob@receiver.test\nSubject: cheap pills\n\ncasino winner offer\n"


def start_classifierd_with_metrics(make_classifierd, redis_url: str, address: str,  # type: ignore[no-untyped-def]
                                   extra: str = "") -> tuple[ClassifierDaemon, int]:
    """make_classifierd starts it with metrics off: restart it with [metrics] on ``address``."""
    daemon: ClassifierDaemon = make_classifierd(redis_url=redis_url,
                                                delivery_agent="/bin/cat", extra=extra)
    daemon.stop()
    port = free_port(address)
    text = daemon.config.read_text()
    assert "[metrics]\nenabled = no\n" in text
    daemon.config.write_text(text.replace("[metrics]\nenabled = no\n",
                                          f"[metrics]\nclassifierd = {address}:{port}\n"))
    daemon.start()
    return daemon, port


def run_filter(daemon: ClassifierDaemon, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(daemon.filter_argv(*args), input=SPAM, capture_output=True,
                          timeout=60)


def tempfail_replies(address: str, port: int) -> float:
    got = {s.name: s.value for f in text_string_to_metric_families(scrape(address, port))
           for s in f.samples}
    return got["postward_classifierd_tempfail_replies_total"]


@pytest.mark.integration
def test_classifierd_exports_what_the_docs_list(make_classifierd, redis_server,
                                                loopback) -> None:  # type: ignore[no-untyped-def]
    daemon, port = start_classifierd_with_metrics(make_classifierd, redis_server.url, loopback,
                                                  extra="request_timeout = 1s\n")
    assert run_filter(daemon, "--stdout", "--user", USER, "--", USER).returncode == 0
    assert run_filter(daemon, "--classify", "--user", USER).returncode == 0
    done = run_filter(daemon, "--user", USER, "--class=spam", "--source=error")
    assert done.returncode == 0, done.stderr
    assert tempfail_replies(loopback, port) == 0
    # A request whose message never comes: after request_timeout a 451, which makes the filter
    # exit 75 like any other 4xx, so it is a tempfail reply too.
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(daemon.socket_path))
        s.sendall(b"POSTWARD/1 PROCESS\nuser: bob@receiver.test\nlength: 100\n\n")
        assert s.makefile("rb").readline().startswith(b"POSTWARD/1 451 ")
    assert tempfail_replies(loopback, port) == 1
    redis_server.stop()
    assert run_filter(daemon, "--stdout", "--user", USER, "--", USER).returncode == 75
    assert tempfail_replies(loopback, port) == 2

    check_against_docs("classifierd", scrape(loopback, port))


# --- the other documents may only name metrics listed here ------------------------------------

def test_daemon_pages_agree_with_metrics_md() -> None:
    docs = all_documented()
    for page in DAEMON_PAGES:
        for line in (ROOT / "docs" / page).read_text().splitlines():
            if not line.startswith("| `postward_"):
                continue
            cells = _cells(line)
            [name] = _names(cells[0])
            assert name in docs, f"docs/{page}: {name} is not in docs/metrics.md"
            assert (cells[1], _names(cells[2])) == (docs[name].type, docs[name].labels), \
                f"docs/{page}: {name} has another type or labels than in docs/metrics.md"


def _expand(pattern: str) -> list[str]:
    """The names a ``__name__=~`` regex of the form ``prefix(a|b|c)suffix`` stands for."""
    m = re.fullmatch(r"([a-z0-9_]*)\(([a-z0-9_|]+)\)([a-z0-9_]*)", pattern)
    assert m, f"keep __name__ regexes to one (a|b|c) group: {pattern!r}"
    return [m.group(1) + alt + m.group(3) for alt in m.group(2).split("|")]


def metric_names(promql: str) -> set[str]:
    """The postward metric names a PromQL expression (or any text) reads."""
    names = set()
    for pattern in re.findall(r'__name__\s*=~\s*"([^"]*)"', promql):
        names.update(_expand(pattern))
    rest = re.sub(r'__name__\s*=~\s*"[^"]*"', "", promql)
    names.update(re.findall(r"\bpostward_[a-z0-9_]+", rest))
    return names


def undocumented(names: Iterable[str]) -> list[str]:
    docs = all_documented()
    missing = []
    for name in sorted(set(names)):
        if name in docs:
            continue
        base = next((name[: -len(s)] for s in HISTOGRAM_SERIES if name.endswith(s)), None)
        if base is not None and docs.get(base, Metric("", "", frozenset())).type == "histogram":
            continue
        missing.append(name)
    return missing


def dashboard_expressions() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def test_rules_name_only_documented_metrics() -> None:
    text = RULES.read_text()
    assert len(metric_names(text)) > 20
    assert undocumented(metric_names(text)) == []


def test_dashboard_is_valid_and_names_only_documented_metrics() -> None:
    board = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    ds = variables["DS_PROMETHEUS"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in board["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
    expressions = dashboard_expressions()
    names = set().union(*(metric_names(e) for e in expressions))
    assert undocumented(names) == []
    # Every daemon's own metrics have a panel.
    for daemon in DAEMONS:
        assert any(n.startswith(f"postward_{daemon}_") for n in names), daemon
