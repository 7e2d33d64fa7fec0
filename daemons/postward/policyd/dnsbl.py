"""DNSBL/RHSBL lookups for a rule: every list of the rule queried at once through the core
resolver (and so its shared Redis cache), then matched with postfwd's rbl_check semantics.

A list item is ``zone[/answer-regex[/maxcache]]`` (postfwd's form; the regex defaults to
``^127\\.``). A timeout, a server failure or the request's DNS budget running out all count as
"not listed", as postfwd counts them.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from postward.core.dns import Answer
from postward.policyd import perl
from postward.policyd.ruleset import LIVE_LIST, Rule, deneg
from postward.policyd.substitute import uniq

DEFAULT_ANSWER = r"^127\."


class DnsLookups(Protocol):
    async def query(self, name: str, rtype: str) -> Answer: ...


def _split_spec(spec: str) -> tuple[str, str, str]:
    parts = spec.split("/")
    while parts and parts[-1] == "":
        parts.pop()
    zone = parts[0] if parts else ""
    answer = parts[1] if len(parts) > 1 and parts[1] else DEFAULT_ANSWER
    maxcache = parts[2] if len(parts) > 2 and parts[2] else "3600"
    return zone, answer, maxcache


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

    @staticmethod
    def subject(key: str, request: Mapping[str, str]) -> str:
        if key == "rbl":
            return rbl_subject(request.get("client_address", ""),
                               request.get("reverse_address", ""))
        return request.get(_SUBJECT_ITEM[key], "")

    @staticmethod
    def skipped(key: str, request: Mapping[str, str]) -> bool:
        if key == "rhsbl_helo":
            # postfwd 1.35 tests an item 'helo_domain' that never exists, so rhsbl_helo never
            # counts: faithful, and documented in docs/policyd.md.
            return True
        item = _SUBJECT_ITEM.get(key)
        return item is not None and request.get(item, "") == _UNUSABLE[item]

    def check(self, key: str, spec: str, subject: str, dnsbl_text: list[str]) -> bool:
        """postfwd's rbl_check: listed with an answer matching the list's regex."""
        zone, answer, _ = _split_spec(spec)
        name = f"{subject}.{zone}"
        pattern = perl.regex_cs(answer)
        for address in self.a.get(name.lower(), []):
            if address and pattern is not None and pattern.search(address):
                dnsbl_text.append(f"{key}:{zone}:<{self.txt.get(name.lower(), '')}>")
                return True
        return False


def _queries(rule: Rule, request: Mapping[str, str]) -> list[str]:
    names: list[str] = []
    for key in rule.dnsbl_keys:
        item = _SUBJECT_ITEM.get(key)
        if key == "rbl":
            subject = DnsblResults.subject("rbl", request)
        elif request.get(item or "", "") == _UNUSABLE.get(item or ""):
            continue
        else:
            subject = request.get(item or "", "")
        for cond in rule.items[key]:
            if LIVE_LIST.match(cond.value):
                continue
            zone = _split_spec(deneg(cond.value) or cond.value)[0]
            if zone and subject:
                names.append(f"{subject}.{zone}".lower())
    return uniq(names)


async def run_dnsbl_queries(dns: DnsLookups, rule: Rule, request: Mapping[str, str],
                            budget: float | None = None) -> DnsblResults:
    """A queries for every list of the rule at once, then TXT for the listed ones."""
    results = DnsblResults()
    names = _queries(rule, request)
    if not names:
        return results

    async def a(name: str) -> None:
        answer = await dns.query(name, "A")
        results.a[name] = list(answer.records) if answer.ok else []

    async def txt(name: str) -> None:
        answer = await dns.query(name, "TXT")
        if answer.ok:
            # postfwd keeps the last TXT record and turns commas into spaces (for set()).
            results.txt[name] = answer.records[-1].replace(",", " ")

    await _bounded([a(n) for n in names], budget)
    listed = [n for n in names if results.a.get(n)]
    await _bounded([txt(n) for n in listed], budget)
    return results


async def _bounded(coros: list, budget: float | None) -> None:
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=budget)
    for task in pending:  # past the budget: not listed
        task.cancel()
    for task in done:
        task.exception()  # a lookup that raised counts as not listed; never propagates


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

