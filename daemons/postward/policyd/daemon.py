"""postward-policyd as a daemon: the policy server on every configured address, the rules from
[policyd] rules, rate limits and greylisting in the shared Redis, SIGHUP to reload."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from postward.core.config_file import ConfigError
from postward.core.dns import TIMEOUT, Answer, Resolver
from postward.core.logs import get_log
from postward.core.runtime import Runtime, load_config_or_exit
from postward.core.service import InFlight, serve
from postward.core.workers import bind_listeners, supervise
from postward.policyd.actions import Actions
from postward.policyd.ask import ask_policy_server
from postward.policyd.dnsbl import DnsblMetrics
from postward.policyd.engine import Engine
from postward.policyd.protocol import Limits, PolicyServer
from postward.policyd.ratelimit import RedisRates
from postward.policyd.request_cache import RequestCache
from postward.policyd.ruleset import Ruleset, load_ruleset
from postward.schema import Config, load_config

log = get_log("policyd")


@dataclass(frozen=True)
class Loaded:
    config: Config
    ruleset: Ruleset


def load(path: Path) -> Loaded:
    """The config and its rule files, or ConfigError listing every problem in either."""
    config = load_config(path)
    ruleset = load_ruleset([("file", f) for f in config.policyd.rules])
    return Loaded(config, ruleset)


class _Greylisting:
    def __init__(self, greylister) -> None:  # type: ignore[no-untyped-def]
        self.greylister = greylister

    async def answer(self, request: Mapping[str, str]) -> str:
        return (await self.greylister.check(request)).action


class PolicyDaemon:
    def __init__(self, loaded: Loaded, runtime: Runtime,
                 listeners: list[socket.socket] | None = None) -> None:
        self.runtime = runtime
        self.listeners = listeners  # None: bind them at start
        self.inflight = InFlight()
        self.servers: list[asyncio.Server] = []
        self.greylisting = self._make_greylisting(loaded.config)
        self.dnsbl_metrics = DnsblMetrics(runtime.metrics)
        self.cache_hits = runtime.metrics.counter(
            "request_cache_hits_total", "Requests answered from the request cache")
        self._apply(loaded)
        self.server = PolicyServer(lambda: self.engine, self.limits, runtime.metrics,
                                   self.inflight, runtime.clock)

    def _make_greylisting(self, config: Config) -> _Greylisting:
        from postward.policyd.greylist import Greylister
        from postward.policyd.greylist_lists import GreylistLists

        g = config.greylist
        lists = GreylistLists.load(g.whitelist_clients, g.whitelist_recipients)
        self.greylister = Greylister(self.runtime.store, g, lists, self.runtime.clock,
                                     self.runtime.metrics)
        return _Greylisting(self.greylister)

    def _apply(self, loaded: Loaded) -> None:
        p = loaded.config.policyd
        self.config = loaded.config
        self.limits = Limits(max_line_length=p.max_line_length, max_attributes=p.max_attributes,
                             idle_timeout=p.idle_timeout, request_budget=p.request_budget,
                             default_action=p.default_action)
        actions = Actions(RedisRates(self.runtime.store), ask_policy_server, self.greylisting,
                          max_wait=p.max_wait)
        dns = None if p.nodns else _Budgeted(self.runtime.resolver, p.dns_budget)
        cache = RequestCache(p.request_cache, hits=self.cache_hits) \
            if p.request_cache > 0 else None
        self.engine = Engine(loaded.ruleset, dns, actions, self.runtime.clock,
                             dnsbl_metrics=self.dnsbl_metrics, request_cache=cache)

    async def start(self) -> None:
        if self.listeners is None:
            self.listeners = bind_listeners(self.config.policyd.listen)
        for sock in self.listeners:
            if sock.family == socket.AF_UNIX:
                server = await asyncio.start_unix_server(self.server.handle, sock=sock,
                                                         limit=self.limits.max_line_length)
            else:
                server = await asyncio.start_server(self.server.handle, sock=sock,
                                                    limit=self.limits.max_line_length)
            self.servers.append(server)
        log.info("listening", addresses=" ".join(self.config.policyd.listen),
                 rules=len(self.engine.ruleset.rules), pid=os.getpid())

    async def close_listeners(self) -> None:
        for server in self.servers:
            server.close()

    async def reload(self, loaded: Loaded) -> None:
        g = loaded.config.greylist
        from postward.policyd.greylist_lists import GreylistLists

        self.greylister.reconfigure(g, GreylistLists.load(g.whitelist_clients,
                                                          g.whitelist_recipients))
        self._apply(loaded)
        self.server.limits = self.limits
        log.info("rules_loaded", rules=len(self.engine.ruleset.rules))

    async def aclose(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        await self.runtime.aclose()


class _Budgeted:
    """The resolver seen by the rules: each lookup bounded by the DNS budget."""

    def __init__(self, resolver: Resolver, budget: float) -> None:
        self.resolver = resolver
        self.budget = budget

    def peek(self, name: str, rtype: str) -> Answer | None:
        return self.resolver.peek(name, rtype)

    async def query(self, name: str, rtype: str) -> Answer:
        try:
            async with asyncio.timeout(self.budget):
                return await self.resolver.query(name, rtype)
        except TimeoutError:
            return Answer(name, rtype, TIMEOUT)

    async def query_many(self, queries: list[tuple[str, str]]) -> list[Answer]:
        try:
            async with asyncio.timeout(self.budget):
                return await self.resolver.query_many(queries)
        except TimeoutError:
            return [Answer(name, rtype, TIMEOUT) for name, rtype in queries]


def run_daemon(config_path: Path) -> int:
    load_config_or_exit(config_path)  # config errors: file:line, exit 2
    try:
        loaded = load(config_path)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, flush=True, file=sys.stderr)
        return 2

    def run_worker(listeners: list[socket.socket] | None, serve_metrics: bool = True) -> int:
        async def main() -> int:
            runtime = Runtime.create(loaded.config, "policyd", serve_metrics=serve_metrics)
            daemon = PolicyDaemon(loaded, runtime, listeners)
            # What exists now (modules, config, rules, whitelists) lives as long as the
            # process: out of the cyclic GC's sight, its full collections no longer walk it
            # again and again while requests come (~10 % of a greylisting request's CPU).
            gc.collect()
            gc.freeze()
            return await serve(daemon, daemon.inflight, lambda: load(config_path))

        return asyncio.run(main())

    p, m = loaded.config.policyd, loaded.config.metrics
    if p.workers <= 1:
        return run_worker(None)
    return supervise(p.workers, bind_listeners(p.listen),
                     lambda socks: run_worker(socks, serve_metrics=False),
                     lambda: load(config_path), m.policyd if m.enabled else None,
                     loaded.config.logging.level, daemon="policyd")
