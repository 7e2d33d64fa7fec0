"""The shared parts a daemon process builds from its config: metrics, Redis, DNS, clock.

Built once at start, passed to the daemon's own objects (never reached through globals), and
closed together at stop.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from postward.core.clock import Clock, SystemClock
from postward.core.config_file import ConfigError
from postward.core.dns import Resolver
from postward.core.logs import configure_logging, get_log
from postward.core.metrics import Metrics
from postward.core.redis_store import RedisStore
from postward.schema import Config, load_config

log = get_log("runtime")


def load_config_or_exit(path: Path) -> Config:
    """Load the config; on errors print each as ``file:line: reason`` to stderr and exit 2."""
    try:
        return load_config(path)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        print(f"postward: {path}: {len(e.problems)} error(s); not starting", file=sys.stderr)
        raise SystemExit(2) from None


@dataclass
class Runtime:
    config: Config
    metrics: Metrics
    store: RedisStore
    resolver: Resolver
    clock: Clock

    @classmethod
    def create(cls, config: Config, daemon: str, clock: Clock | None = None,
               serve_metrics: bool = True) -> Runtime:
        configure_logging(daemon, config.logging.level)
        metrics = Metrics(daemon)
        if serve_metrics and config.metrics.enabled:
            where = metrics.serve(config.metrics.address_for(daemon))
            log.info("metrics_listening", address=str(where))
        clock = clock or SystemClock()
        store = RedisStore.from_settings(config.redis, metrics)
        resolver = Resolver(config.dns, metrics, store=store, clock=clock)
        return cls(config, metrics, store, resolver, clock)

    async def aclose(self) -> None:
        await self.resolver.close()
        await self.store.close()
        self.metrics.close()
