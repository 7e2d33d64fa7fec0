"""The request cache: identical requests get the earlier answer, unless that answer depended on
state (rate limits, greylisting, ask), the clock, a live list, or a failed DNS lookup."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from postward.core.clock import FakeClock
from postward.core.config_values import HostPort
from postward.core.dns import Resolver
from postward.core.metrics import Metrics
from postward.core.settings import DnsSettings
from postward.policyd.actions import Actions
from postward.policyd.ask import ask_policy_server
from postward.policyd.engine import Engine
from postward.policyd.ratelimit import MemoryRates
from postward.policyd.request_cache import RequestCache
from postward.policyd.ruleset import load_ruleset
from tests.testbed.net import free_port

REQUEST = {"request": "smtpd_access_policy", "client_address": "192.0.2.9",
           "sender": "a@example.test", "instance": "1"}


def engine(tmp_path: Path, rules: str, clock: FakeClock, dns=None) -> tuple[Engine, Metrics]:  # type: ignore[no-untyped-def]
    path = tmp_path / "rules.cf"
    path.write_text(rules)
    metrics = Metrics("policyd")
    hits = metrics.counter("request_cache_hits_total", "hits")
    e = Engine(load_ruleset([("file", str(path))]), dns, Actions(MemoryRates(), ask_policy_server),
               clock, request_cache=RequestCache(60, hits=hits))
    return e, metrics


def run(e: Engine, *requests: dict[str, str]) -> list[str]:
    async def go() -> list[str]:
        return [(await e.decide(r)).action for r in requests]

    return asyncio.run(go())


def hits(metrics: Metrics) -> float:
    return metrics.value("postward_policyd_request_cache_hits_total")


def test_identical_requests_are_answered_from_the_cache(tmp_path: Path) -> None:
    clock = FakeClock()
    e, metrics = engine(tmp_path, "id=R ; client_address=192.0.2.0/24 ; action=REJECT x\n", clock)
    other_instance = {**REQUEST, "instance": "2"}  # another message: same answer, same key
    other_sender = {**REQUEST, "sender": "b@example.test"}
    assert run(e, REQUEST, other_instance, other_sender) == ["REJECT x"] * 3
    assert hits(metrics) == 1
    clock.advance(61)  # past the cache's time
    run(e, REQUEST)
    assert hits(metrics) == 1


def test_rate_limits_are_never_answered_from_the_cache(tmp_path: Path) -> None:
    e, metrics = engine(tmp_path, "id=R ; action=rate(client_address/2/600/450 slow)\n",
                        FakeClock())
    assert run(e, REQUEST, REQUEST, REQUEST) == ["DUNNO", "DUNNO", "450 slow"]
    assert hits(metrics) == 0


def test_date_and_time_rules_are_not_cached(tmp_path: Path) -> None:
    e, metrics = engine(tmp_path, "id=R ; time=00:00:00-23:59:59 ; action=REJECT t\n",
                        FakeClock())
    assert run(e, REQUEST, REQUEST) == ["REJECT t", "REJECT t"]
    assert hits(metrics) == 0


def test_a_decision_made_with_a_failed_dnsbl_lookup_is_not_kept(tmp_path: Path,
                                                                 loopback: str) -> None:
    port = free_port(loopback)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # answers nothing
        silent.bind((loopback, port))
        resolver = Resolver(DnsSettings(nameservers=(HostPort(loopback, port),), timeout=0.2,
                                        cache=False), Metrics("dns"))
        e, metrics = engine(tmp_path, "id=R ; rbl=dnsbl-a.test ; action=REJECT listed\n",
                            FakeClock(), resolver)
        assert run(e, REQUEST, REQUEST) == ["DUNNO", "DUNNO"]
    assert hits(metrics) == 0
