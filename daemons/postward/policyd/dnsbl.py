"""DNSBL/RHSBL lookups for a rule: every list of the rule queried at once through the core
resolver (and so its shared Redis cache), then matched with postfwd's rbl_check semantics.

A list item is ``zone[/answer-regex[/maxcache]]`` (postfwd's form; the regex defaults to
``^127\\.``). A timeout, a server failure or the request's DNS budget running out all count as
"not listed", as postfwd counts them.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from postward.core.dns import Answer
from postward.core.metrics import Labelled, Metrics
from postward.policyd import perl
from postward.policyd.ruleset import Rule

DEFAULT_ANSWER = r"^127\."


class DnsLookups(Protocol):
    async def query(self, name: str, rtype: str) -> Answer: ...

    def peek(self, name: str, rtype: str) -> Answer | None:
        """An answer at hand without waiting (a process-local cache), or None."""
        ...

    async def query_many(self, queries: list[tuple[str, str]]) -> list[Answer]:
        """Several lookups at once, in order."""
        ...


@dataclass(frozen=True)
class ListSpec:
    """One list of a rule: ``zone[/regex[/maxcache]]`` (postfwd) or
    ``zone[=filter][*weight]`` (Postfix's postscreen_dnsbl_sites)."""

    zone: str
    answer_regex: str = DEFAULT_ANSWER
    answer_filter: str = ""  # postscreen form, e.g. 127.0.0.[2..11]
    weight: float = 1.0

    def matches(self, address: str) -> bool:
        if self.answer_filter:
            return _filter_matches(self.answer_filter, address)
        pattern = perl.regex_cs(self.answer_regex)
        return pattern is not None and pattern.search(address) is not None


_POSTSCREEN = re.compile(r"^([^=*/]+)(?:=([0-9.\[\]]+))?(?:\*(-?\d+))?$")


@functools.lru_cache(maxsize=4096)
def parse_spec(spec: str) -> ListSpec:
    if ("=" in spec or "*" in spec) and (m := _POSTSCREEN.match(spec)):
        return ListSpec(m.group(1), answer_filter=m.group(2) or "",
                        weight=float(m.group(3)) if m.group(3) else 1.0)
    parts = spec.split("/")
    while parts and parts[-1] == "":
        parts.pop()
    zone = parts[0] if parts else ""
    answer = parts[1] if len(parts) > 1 and parts[1] else DEFAULT_ANSWER
    return ListSpec(zone, answer_regex=answer)


_OCTET = re.compile(r"\[\d+\.\.\d+\]|\d+")


def _filter_matches(pattern: str, address: str) -> bool:
    """postscreen's reply filter: four octets, each a number or a [low..high] range."""
    want, got = _OCTET.findall(pattern), address.split(".")
    if len(want) != 4 or len(got) != 4:
        return False
    for w, g in zip(want, got, strict=True):
        if not g.isdigit():
            return False
        if m := re.fullmatch(r"\[(\d+)\.\.(\d+)\]", w):
            if not int(m.group(1)) <= int(g) <= int(m.group(2)):
                return False
        elif w != g:
            return False
    return True


class DnsblMetrics:
    """Per-list counters (the lists come from the rule files: bounded)."""

    def __init__(self, metrics: Metrics) -> None:
        self.queries = Labelled(metrics.counter(
            "dnsbl_queries_total", "DNSBL/RHSBL lookups, by list", ["list"]))
        self.hits = Labelled(metrics.counter(
            "dnsbl_hits_total", "Lookups that found the subject listed (answer filter "
            "matched), by list", ["list"]))
        self.timeouts = Labelled(metrics.counter(
            "dnsbl_timeouts_total", "Lookups that timed out or failed (counted as not "
            "listed), by list", ["list"]))
        self.cache_hits = Labelled(metrics.counter(
            "dnsbl_cache_hits_total", "Lookups answered from a cache, by list", ["list"]))


def rbl_subject(client_address: str, reverse_address: str) -> str:
    """The name part looked up in an IP blocklist: reversed octets, or nibbles for IPv6
    (postward's addition: postfwd 1.35 does not look IPv6 clients up at all)."""
    if ":" in client_address:
        try:
            return ipaddress.IPv6Address(client_address).reverse_pointer.removesuffix(
                ".ip6.arpa")
        except ValueError:
            return reverse_address
    return reverse_address


_SUBJECT_ITEM = {"rhsbl": "client_name", "rhsbl_client": "client_name",
                 "rhsbl_sender": "sender_domain", "rhsbl_helo": "helo_name",
                 "rhsbl_reverse_client": "reverse_client_name"}
_UNUSABLE = {"client_name": "unknown", "reverse_client_name": "unknown", "sender_domain": "",
             "helo_name": ""}


@dataclass
class DnsblResults:
    a: dict[str, list[str]] = field(default_factory=dict)
    txt: dict[str, str] = field(default_factory=dict)
    metrics: DnsblMetrics | None = None
    weights: dict[str, float] = field(default_factory=dict)  # listed zone -> weight
    labels: dict[str, str] = field(default_factory=dict)  # query name -> type in dnsbltext
    complete: bool = True  # False if a lookup failed or ran out of time

    @property
    def score(self) -> float:
        """The postscreen-style score: the weights of the lists the subject is on."""
        return sum(self.weights.values())

    @staticmethod
    def subject(key: str, request: Mapping[str, str]) -> str:
        if key == "rbl":
            return rbl_subject(request.get("client_address", ""),
                               request.get("reverse_address", ""))
        return request.get(_SUBJECT_ITEM[key], "")

    @staticmethod
    def skipped(key: str, request: Mapping[str, str]) -> bool:
        if key == "rhsbl_helo":
            # postfwd 1.35 tests an attribute 'helo_domain' (Postfix sends none), not
            # helo_name: without it rhsbl_helo never counts. Faithful; docs/policyd.md.
            return request.get("helo_domain", "") == ""
        item = _SUBJECT_ITEM.get(key)
        return item is not None and request.get(item, "") == _UNUSABLE[item]

    def check(self, key: str, spec: str, subject: str, dnsbl_text: list[str]) -> bool:
        """postfwd's rbl_check: listed with an answer matching the list's filter."""
        ls = parse_spec(spec)
        name = f"{subject}.{ls.zone}".lower()
        for address in self.a.get(name, []):
            if address and ls.matches(address):
                label = self.labels.get(name, key)
                dnsbl_text.append(f"{label}:{ls.zone}:<{self.txt.get(name, '')}>")
                self.weights[ls.zone.lower()] = ls.weight
                if self.metrics is not None:
                    self.metrics.hits(ls.zone.lower()).inc()
                return True
        return False


class QueryLabels:
    """postfwd labels a DNSBL reason with the item type of whichever rule first looked that
    name up in the process (its DNS cache entry, kept an hour): so do we, per process."""

    def __init__(self, keep: float = 3600.0, size: int = 100_000) -> None:
        self.keep = keep
        self.size = size
        self._labels: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def label(self, name: str, key: str, now: float) -> str:
        entry = self._labels.get(name)
        if entry is None or entry[1] < now:
            entry = (key, now + self.keep)
            self._labels[name] = entry
            while len(self._labels) > self.size:
                self._labels.popitem(last=False)
        return entry[0]


def _queries(rule: Rule, request: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Query name -> (list zone, item type), for every list of the rule that applies."""
    names: dict[str, tuple[str, str]] = {}
    subjects: dict[str, str] = {}
    for key, zone in rule.dnsbl_zones:
        subject = subjects.get(key)
        if subject is None:
            item = _SUBJECT_ITEM.get(key)
            if key == "rbl":
                subject = DnsblResults.subject("rbl", request)
            elif request.get(item or "", "") == _UNUSABLE.get(item or ""):
                subject = ""
            else:
                subject = request.get(item or "", "")
            subjects[key] = subject
        if subject:
            names.setdefault(f"{subject}.{zone}".lower(), (zone, key))
    return names


async def run_dnsbl_queries(dns: DnsLookups, rule: Rule, request: Mapping[str, str],
                            budget: float | None = None,
                            metrics: DnsblMetrics | None = None,
                            labels: QueryLabels | None = None,
                            now: float = 0.0) -> DnsblResults:
    """A queries for every list of the rule at once, then TXT for the listed ones."""
    results = DnsblResults(metrics=metrics)
    names = _queries(rule, request)
    if not names:
        return results
    if labels is not None:
        for name, (_, key) in names.items():
            results.labels[name] = labels.label(name, key, now)

    for name, answer in await _phase(dns, "A", list(names), budget, results):
        zone = names[name][0]
        if metrics is not None:
            metrics.queries(zone).inc()
            if answer.from_cache:
                metrics.cache_hits(zone).inc()
            if not answer.definite:
                metrics.timeouts(zone).inc()
        if not answer.definite:
            results.complete = False
        results.a[name] = list(answer.records) if answer.ok else []

    listed = [name for name in names if results.a.get(name)]
    if listed:
        for name, answer in await _phase(dns, "TXT", listed, budget, results):
            if not answer.definite:
                results.complete = False
            if answer.ok:
                # postfwd keeps the last TXT record and turns commas into spaces (for set()).
                results.txt[name] = answer.records[-1].replace(",", " ")
    return results


async def _phase(dns: DnsLookups, rtype: str, wanted: list[str], budget: float | None,
                 results: DnsblResults) -> list[tuple[str, Answer]]:
    """The answers of type ``rtype`` for ``wanted``: those in this process's cache without
    waiting, the others asked all at once, within ``budget``."""
    got: list[tuple[str, Answer]] = []
    missing = []
    for name in wanted:
        answer = dns.peek(name, rtype)
        if answer is None:
            missing.append(name)
        else:
            got.append((name, answer))
    if not missing:
        return got
    queries = [(name, rtype) for name in missing]
    try:
        if budget is None:  # no timer to set: the resolver's own timeout and the caller's
            answers = await dns.query_many(queries)
        else:
            async with asyncio.timeout(budget):
                answers = await dns.query_many(queries)
    except TimeoutError:  # past the budget: not listed
        results.complete = False
        answers = [Answer(name, rtype, "TIMEOUT") for name in missing]
    got.extend(zip(missing, answers, strict=True))
    return got


async def dns_item_values(dns: DnsLookups, key: str, item: str) -> list[str]:
    """Values for helo_address and sender_{ns,mx}_{names,addrs}, as postfwd's dns_query."""
    if key == "helo_address":
        return list((await dns.query(item, "A")).records)
    rtype = "NS" if key.startswith("sender_ns") else "MX"
    answer = await dns.query(item, rtype)
    names = list(answer.records)
    if rtype == "MX":
        names = [n.split(" ", 1)[1] for n in sorted(names, key=lambda r: int(r.split(" ")[0]))]
    if key.endswith("_names"):
        return names
    addresses: list[str] = []
    for found in await asyncio.gather(*(dns.query(n, "A") for n in names)):
        addresses.extend(found.records)
    return addresses

