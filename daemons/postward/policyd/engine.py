"""Evaluating a request against the rules: postfwd 1.35's smtpd_access_policy, compare_rule and
compare_item, with the DNS, rate-limit and delegation parts behind injected interfaces.

Deliberate differences from postfwd (each in docs/policyd.md): items are compared in file order
(postfwd walks a Perl hash, in random order, which only shows with ``score=`` items); IPv6
clients are looked up in DNSBLs in nibble form (postfwd skips them); there is no request cache
(answers that depend on DNS come from the shared Redis DNS cache instead).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from postward.core.clock import Clock, SystemClock
from postward.core.logs import get_log
from postward.policyd import compare, perl
from postward.policyd.dnsbl import (
    DnsblMetrics,
    DnsblResults,
    DnsLookups,
    QueryLabels,
    dns_item_values,
    run_dnsbl_queries,
)
from postward.policyd.lists import LiveLists
from postward.policyd.request import with_derived_items
from postward.policyd.request_cache import Key, RequestCache, cache_key
from postward.policyd.ruleset import COMMAND, DNSBL_KEYS, LIVE_LIST, Cond, Rule, Ruleset, deneg
from postward.policyd.substitute import devar, escape_for_regex

log = get_log("policyd.engine")

DEFAULT_ACTION = "DUNNO"
DEFAULT_SCORES = {"5.0": "554 5.7.1 postfwd score exceeded"}
_MAX_COMMAND_RECURSION = 64


@dataclass
class Evaluation:
    """The state of one request while the rules run (postfwd's %request plus locals)."""

    request: dict[str, str]
    orig: dict[str, str]
    now: float
    index: int = 0
    dnsbl_text: list[str] = field(default_factory=list)
    rule: Rule | None = None
    log_line: str = ""
    # False once the decision depended on more than the request and the rules (state in
    # Redis, another server, the clock, a live list): such a decision is not cached.
    cacheable: bool = True
    # postfwd's date/time value ("sec,min,...,isdst" of ``now``), made when a rule first
    # tests a date item: most rule sets have none.
    date: str | None = None


@dataclass(frozen=True)
class Decision:
    action: str
    rule_id: str | None
    hits: list[str]
    cacheable: bool = False


class Engine:
    def __init__(
        self,
        ruleset: Ruleset,
        dns: DnsLookups | None,
        actions: ActionRunner,
        clock: Clock | None = None,
        scores: Mapping[str, str] | None = None,
        dnsbl_metrics: DnsblMetrics | None = None,
        dns_budget: float | None = None,
        request_cache: RequestCache | None = None,
    ) -> None:
        self.ruleset = ruleset
        self.dns = dns  # None: --nodns
        self.actions = actions
        self.clock = clock or SystemClock()
        # score thresholds: -s options and score= items; postfwd keeps them for the process
        self.scores: dict[str, str] = dict(DEFAULT_SCORES if scores is None else scores)
        self.live_lists = LiveLists()
        self.dnsbl_metrics = dnsbl_metrics
        self.query_labels = QueryLabels()
        self.request_cache = request_cache
        self.dns_budget = dns_budget

    def cached(self, attrs: Mapping[str, str]) -> tuple[Key | None, Decision | None]:
        """The request cache's decision for ``attrs`` if it has one, without waiting; and the
        request's cache key (None without a cache), for :meth:`decide`."""
        if self.request_cache is None:
            return None, None
        key = cache_key(attrs)
        return key, self.request_cache.get(key, self.clock.time())

    async def decide(self, attrs: Mapping[str, str], key: Key | None = None) -> Decision:
        """The decision for ``attrs``; ``key``: its cache key when :meth:`cached` has just
        found no decision for it."""
        if self.request_cache is None:
            return await self._decide(attrs)
        now = self.clock.time()
        if key is None:
            key = cache_key(attrs)
            cached = self.request_cache.get(key, now)
            if cached is not None:
                return cached  # type: ignore[no-any-return]
        decision = await self._decide(attrs)
        if decision.cacheable:
            self.request_cache.put(key, decision, now)
        return decision

    async def _decide(self, attrs: Mapping[str, str]) -> Decision:
        ev = Evaluation(request=with_derived_items(attrs), orig=dict(attrs),
                        now=self.clock.time())
        request = ev.request
        action, matched_id, hits = DEFAULT_ACTION, None, []
        request["matches"] = request["rblcount"] = request["rhsblcount"] = "0"
        request["dnsbl_score"] = "0"
        rules = self.ruleset.rules
        while ev.index < len(rules):
            rule = rules[ev.index]
            ev.rule = rule
            matched, rbl_count, rhsbl_count = await self._compare_rule(rule, ev)
            request["matches"] = perl.num_str(matched)
            request["rblcount"] = perl.num_str(rbl_count)
            request["rhsblcount"] = perl.num_str(rhsbl_count)
            if matched > 0:
                hits.append(rule.id)
                # appended to, as in postfwd, even to a request_hits the client sent
                previous = request.get("request_hits")
                request["request_hits"] = rule.id if previous is None else \
                    f"{previous};{rule.id}"
                action = self._substitute_action(rule.action, ev)
                stop, action = await self._run_commands(action, ev)
                if stop:
                    matched_id = rule.id
                    break
            ev.index += 1
        # postfwd: an answer Perl takes as false ("", "0") becomes the default
        return Decision(action if perl.truthy(action) else DEFAULT_ACTION, matched_id, hits,
                        ev.cacheable)

    def _substitute_action(self, action: str, ev: Evaluation) -> str:
        return devar(action, "action", ev.request, ev.dnsbl_text) or action

    async def _run_commands(self, action: str, ev: Evaluation) -> tuple[bool, str]:
        """Run postfwd commands (set(), score(), ...) until an action for Postfix remains."""
        stop: bool = True
        for _ in range(_MAX_COMMAND_RECURSION):
            m = COMMAND.match(action)
            if m is None:
                break
            stop, action = await self.actions.run(m.group(1), m.group(2), ev, self)
            action = self._substitute_action(action, ev)
        return stop, action

    # -- comparing -------------------------------------------------------------------------

    async def _compare_rule(self, rule: Rule, ev: Evaluation) -> tuple[float, float, float]:
        request = ev.request
        ev.dnsbl_text = []
        if "score" in rule.single:  # registers a threshold, and the rule never matches
            self.scores[rule.single["score"]] = rule.action
            return 0, 0, 0
        matched = 2.0  # postfwd counts id= and action= as matched items
        for key, conds in rule.items.items():
            if key in DNSBL_KEYS:
                continue
            if key in compare.DATE_ITEMS:
                ev.cacheable = False
                if ev.date is None:
                    ev.date = ",".join(str(x) for x in _localtime(ev.now))
                value = ev.date
            else:
                value = request.get(key, "")
            res = await self.compare_item(key, conds, "1", value, ev)
            if not res:
                return 0, 0, 0
            matched += res
        if self.dns is None or not rule.dnsbl_keys:
            return matched, 0, 0
        results = await run_dnsbl_queries(self.dns, rule, request, self.dns_budget,
                                          self.dnsbl_metrics, self.query_labels, ev.now)
        if not results.complete:
            ev.cacheable = False  # a timed-out list may answer next time
        outcome = await self._compare_dnsbl(rule, ev, results, matched)
        # postward's addition: postscreen-style weighted score of this rule's lists
        request["dnsbl_score"] = perl.num_str(results.score)
        return outcome

    async def _compare_dnsbl(self, rule: Rule, ev: Evaluation, results: DnsblResults,
                             matched: float) -> tuple[float, float, float]:
        request = ev.request
        rbl_count = rhsbl_count = 0.0
        rbl_min = rule.single.get("rblcount", "1")
        rhsbl_min = rule.single.get("rhsblcount", "1")
        if "rbl" in rule.items and matched > 0:
            res = await self.compare_item("rbl", rule.items["rbl"], rbl_min,
                                          results.subject("rbl", request), ev, results)
            matched = matched + res if (res or rbl_min == "all") else 0
            rbl_count = res or 0
        for key in rule.dnsbl_keys:
            if key == "rbl" or matched <= 0:
                continue
            subject = results.subject(key, request)
            if results.skipped(key, request):
                # postfwd sets (not adds) the match count here: 1 with rhsblcount=all, else 0
                matched = 1 if rhsbl_min == "all" else 0
                continue
            res = await self.compare_item(key, rule.items[key], rhsbl_min, subject, ev, results)
            matched = matched + res if (res or rhsbl_min == "all") else 0
            rhsbl_count += res or 0
        return matched, rbl_count, rhsbl_count

    async def compare_item(self, key: str, conds: list[Cond], minimum: str, item: str,
                           ev: Evaluation, dnsbl: DnsblResults | None = None) -> float:
        """postfwd's compare_item: how many of ``conds`` match, if at least ``minimum`` do
        (``all``: count them all); 0 for no match."""
        if not perl.truthy(minimum):
            minimum = "1"
        rcount = 0
        result = False
        pending = list(conds)
        i = 0
        while i < len(pending):
            cond = pending[i]
            i += 1
            cmp, val = cond.cmp, cond.value
            if not cmp:
                continue
            if m := LIVE_LIST.match(val):
                ev.cacheable = False
                pending.extend(self.live_lists.read(m.group(1).lower(), cmp, m.group(2)))
                continue
            neg = deneg(val)
            if neg:
                val = neg
            if sub := devar(val, item, ev.request, ev.dnsbl_text):
                val = sub if cmp == "==" else escape_for_regex(sub)
            hit = await self._compare_one(key, cmp, val, item, ev, dnsbl)
            if neg:
                hit = not hit
            if hit:
                rcount += 1
            result = minimum != "all" and rcount >= perl.num(minimum)
            if result:
                break
        return rcount if (result or minimum == "all") else 0

    async def _compare_one(self, key: str, cmp: str, val: str, item: str, ev: Evaluation,
                           dnsbl: DnsblResults | None) -> bool:
        if key in DNSBL_KEYS:
            hit = dnsbl is not None and dnsbl.check(key, val, item, ev.dnsbl_text)
            return not hit if cmp == "!=" else hit
        if key in compare.DNS_ITEMS:
            if self.dns is None or "." not in item:
                return False
            ev.cacheable = False  # these lookups are not checked for failures: not kept
            values = await dns_item_values(self.dns, key, item)
            if key.endswith("_addrs") or key == "helo_address":
                return any(compare.cidr(cmp, val, v) for v in values)
            if not values:
                return compare.default(cmp, val, "")
            return any(compare.default(cmp, val, v) for v in values)
        return compare.BY_ITEM.get(key, compare.default)(cmp, val, item)


def _localtime(now: float) -> tuple[int, ...]:
    t = time.localtime(now)
    # Perl's localtime: sec, min, hour, mday, mon (0-11), year-1900, wday (0=Sun), yday, isdst
    return (t.tm_sec, t.tm_min, t.tm_hour, t.tm_mday, t.tm_mon - 1, t.tm_year - 1900,
            (t.tm_wday + 1) % 7, t.tm_yday - 1, max(t.tm_isdst, 0))


class ActionRunner(Protocol):
    async def run(self, command: str, argument: str, ev: Evaluation,
                  engine: Engine) -> tuple[bool, str]:
        """Run postfwd command ``command(argument)``: (stop?, action)."""
        ...
