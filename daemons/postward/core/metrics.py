"""Prometheus metrics: one registry per daemon, served on a loopback address.

Names follow ``postward_<daemon>_<what>_<unit>`` (``postward_policyd_requests_total``); the
daemon part comes from the Metrics object, so no module spells it out. Shared core parts (Redis,
DNS) take the daemon's Metrics and register their metrics in it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

from postward.core.config_values import HostPort

_NAME = re.compile(r"^[a-z][a-z0-9_]*_[a-z0-9]+$")

# prometheus_client would add a ``<name>_created`` series (the child's creation time) to every
# counter and histogram child: series in Prometheus that no dashboard or alert uses, and that
# policyd's multi-worker mode never exports, so the two modes would differ.
disable_created_metrics()

# Latency buckets for work done per SMTP transaction: 100 µs to 10 s.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, daemon: str, registry: CollectorRegistry | None = None) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]*", daemon):
            raise ValueError(f"daemon name {daemon!r} must be lowercase letters and digits")
        self.daemon = daemon
        if registry is None:
            registry = CollectorRegistry()
            # Memory, CPU, open files of this process, under the daemon's own prefix.
            ProcessCollector(namespace=f"postward_{daemon}", registry=registry)
        self.registry = registry
        self._server: Any = None

    def name(self, what_unit: str) -> str:
        if not _NAME.match(what_unit):
            raise ValueError(f"metric {what_unit!r} must look like <what>_<unit>")
        return f"postward_{self.daemon}_{what_unit}"

    def counter(self, what_unit: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        if not what_unit.endswith("_total"):
            raise ValueError(f"counter {what_unit!r} must end in _total")
        # prometheus_client appends _total itself and wants the name without it.
        return Counter(self.name(what_unit)[: -len("_total")], doc, labels,
                       registry=self.registry)

    def gauge(self, what_unit: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        # With several policyd workers (multiprocess mode) a gauge is summed over the live
        # workers: the default would export one series per pid and keep a dead worker's last
        # value for ever. Ignored in a single process.
        return Gauge(self.name(what_unit), doc, labels, registry=self.registry,
                     multiprocess_mode="livesum")

    def histogram(self, what_unit: str, doc: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = LATENCY_BUCKETS) -> Histogram:
        return Histogram(self.name(what_unit), doc, labels, buckets=buckets,
                         registry=self.registry)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The current value of a sample (full name, e.g. ``..._total``), 0 if never set."""
        got = self.registry.get_sample_value(name, labels or {})
        return 0.0 if got is None else got

    def serve(self, address: HostPort) -> HostPort:
        """Serve /metrics at ``address`` (port 0: any free port); returns where it listens."""
        server, _thread = start_http_server(address.port, address.host, registry=self.registry)
        self._server = server
        host, port = server.server_address[:2]
        return HostPort(str(host), int(port))

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class Labelled:
    """The children of a labelled metric, each looked up once: ``labels()`` takes a lock and
    builds a key on every call, which shows on a per-request path. Label values must come from
    a bounded set (query types, rule ids, list zones)."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child
