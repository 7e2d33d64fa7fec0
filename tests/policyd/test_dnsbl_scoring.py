"""DNSBL lookups of the rules against real unbound + rbldnsd: postfwd's list form, Postfix
postscreen's weighted form (allowlists with negative weights), IPv6 clients, per-list metrics."""

from __future__ import annotations

import asyncio

import pytest

from postward.core.config_values import HostPort
from postward.core.dns import Resolver
from postward.core.metrics import Metrics
from postward.core.settings import DnsSettings
from postward.policyd.actions import Actions
from postward.policyd.ask import ask_policy_server
from postward.policyd.dnsbl import DnsblMetrics, parse_spec
from postward.policyd.engine import Engine
from postward.policyd.ratelimit import MemoryRates
from postward.policyd.ruleset import load_ruleset
from tests.testbed.dns_fixtures import (
    CLIENT6_LISTED,
    CLIENT_ALLOWED,
    CLIENT_CLEAN,
    CLIENT_IN_RANGE,
    CLIENT_ON_THREE,
)
from tests.testbed.dns_servers import DnsTestbed

pytestmark = pytest.mark.integration

POSTSCREEN_RULES = """\
id=SCORE ; rblcount=all ; action=set(total=$$dnsbl_score,lists=$$rblcount)
    rbl=dnsbl-a.test*3, dnsbl-b.test=127.0.0.[3..3]*2, dnsbl-c.test
    rbl=allow.test=127.0.0.[10..10]*-5
id=OUT ; total>=4 ; action=REJECT score $$total on $$lists lists
id=LAST ; action=DUNNO score $$total
"""


def decide_all(dns: DnsTestbed, rules: str, clients: list[str],
               tmp_path) -> tuple[list[str], Metrics]:  # type: ignore[no-untyped-def]
    path = tmp_path / "rules.cf"
    path.write_text(rules)
    ruleset = load_ruleset([("file", str(path))])
    metrics = Metrics("policyd")

    async def run() -> list[str]:
        resolver = Resolver(DnsSettings(nameservers=(HostPort(dns.address, dns.port),),
                                        cache=False), metrics)
        engine = Engine(ruleset, resolver, Actions(MemoryRates(), ask_policy_server),
                        dnsbl_metrics=DnsblMetrics(metrics))
        try:
            return [(await engine.decide({"request": "smtpd_access_policy",
                                          "client_address": c, "client_name": "unknown"})
                     ).action for c in clients]
        finally:
            await resolver.close()

    return asyncio.run(run()), metrics


def test_postscreen_weights_filters_and_allowlists(dns_testbed: DnsTestbed, tmp_path) -> None:
    answers, metrics = decide_all(
        dns_testbed, POSTSCREEN_RULES,
        [CLIENT_ON_THREE, CLIENT_IN_RANGE, CLIENT_ALLOWED, CLIENT_CLEAN, CLIENT6_LISTED],
        tmp_path)
    assert answers == [
        # a (*3) + c (*1); b answers 127.0.0.4 for this client, outside its [3..3] filter
        "REJECT score 4 on 2 lists",
        "DUNNO score 2",  # b answers 127.0.0.3: weight 2
        "DUNNO score -5",  # only on the allowlist
        "DUNNO score 0",
        "DUNNO score 3",  # IPv6, looked up in nibble form on dnsbl-a
    ]
    assert metrics.value("postward_policyd_dnsbl_hits_total", {"list": "dnsbl-a.test"}) == 2
    assert metrics.value("postward_policyd_dnsbl_hits_total", {"list": "dnsbl-b.test"}) == 1
    assert metrics.value("postward_policyd_dnsbl_queries_total", {"list": "allow.test"}) == 5


def test_postfwd_answer_regex_form(dns_testbed: DnsTestbed, tmp_path) -> None:
    rules = ("id=ONLY4 ; rbl=dnsbl-b.test/^127\\.0\\.0\\.4$/600 ; action=REJECT proxy\n"
             "id=ANY ; rbl=dnsbl-b.test ; action=REJECT any $$dnsbltext\n")
    answers, _ = decide_all(dns_testbed, rules, [CLIENT_ON_THREE, CLIENT_IN_RANGE], tmp_path)
    assert answers == ["REJECT proxy",
                       f"REJECT any rbl:dnsbl-b.test:<Range listing {CLIENT_IN_RANGE}>"]


def test_a_list_that_times_out_counts_as_not_listed(dns_testbed: DnsTestbed, tmp_path) -> None:
    dns_testbed.rbldnsd.stop()  # unbound stays, but its stub for the lists no longer answers
    rules = "id=R ; rbl=dnsbl-a.test ; action=REJECT listed\n"
    path = tmp_path / "r.cf"
    path.write_text(rules)
    ruleset = load_ruleset([("file", str(path))])
    metrics = Metrics("policyd")

    async def run() -> str:
        resolver = Resolver(DnsSettings(nameservers=(HostPort(dns_testbed.address,
                                                              dns_testbed.port),),
                                        timeout=0.5, cache=False), metrics)
        engine = Engine(ruleset, resolver, Actions(MemoryRates(), ask_policy_server),
                        dnsbl_metrics=DnsblMetrics(metrics))
        try:
            return (await engine.decide({"request": "smtpd_access_policy",
                                         "client_address": CLIENT_ON_THREE})).action
        finally:
            await resolver.close()

    assert asyncio.run(run()) == "DUNNO"
    assert metrics.value("postward_policyd_dnsbl_timeouts_total", {"list": "dnsbl-a.test"}) == 1


@pytest.mark.parametrize(("spec", "zone", "weight", "listed", "not_listed"), [
    ("zen.spamhaus.org", "zen.spamhaus.org", 1, "127.0.0.2", "10.0.0.1"),
    ("zen.spamhaus.org*3", "zen.spamhaus.org", 3, "127.0.0.11", "128.0.0.1"),
    ("b.barracudacentral.org=127.0.0.[2..11]*2", "b.barracudacentral.org", 2, "127.0.0.11",
     "127.0.0.12"),
    ("list.dnswl.org=127.0.[0..255].[1..3]*-2", "list.dnswl.org", -2, "127.0.15.3",
     "127.0.15.0"),
    ("bl.example/^127\\.0\\.0\\.2$/600", "bl.example", 1, "127.0.0.2", "127.0.0.3"),
])
def test_list_specs(spec: str, zone: str, weight: float, listed: str, not_listed: str) -> None:
    ls = parse_spec(spec)
    assert (ls.zone, ls.weight) == (zone, weight)
    assert ls.matches(listed) and not ls.matches(not_listed)
