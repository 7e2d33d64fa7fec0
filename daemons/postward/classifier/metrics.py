"""postward-classifierd's Prometheus metrics (``postward_classifierd_*``)."""

from __future__ import annotations

from postward.core.metrics import Labelled, Metrics

TOKEN_BUCKETS = (0, 5, 10, 25, 50, 100, 150, 250, 500)
# Exported at 0 from the start, so that rate() and increase() see the first failure (a series
# born at 1 has no earlier sample to rise from) and dashboards show 0 rather than no data.
ERROR_KINDS = ("redis", "request", "internal", "protocol", "timeout", "oversized")


class ClassifierMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self.verdicts = Labelled(metrics.counter(
            "verdicts_total", "messages classified, by verdict (spam, innocent, unsure)",
            ["result"]))
        self.trainings = Labelled(metrics.counter(
            "trainings_total",
            "messages learnt, by source (classified: TEFT/TUM learning on arrival; error: a "
            "user's correction; corpus; inoculation) and class", ["source", "label"]))
        self.errors = Labelled(metrics.counter(
            "errors_total",
            "failed requests by kind (redis, request, internal, protocol, timeout, oversized)",
            ["kind"]))
        self.requests = Labelled(metrics.counter(
            "requests_total", "requests by operation and reply code", ["op", "code"]))
        self.tempfails = metrics.counter(
            "tempfail_replies_total",
            "4xx replies (Redis down, an internal error, a request timeout): each makes "
            "postward-filter exit 75 and Postfix retry the message")
        self.latency = Labelled(metrics.histogram(
            "request_seconds", "time to answer a request, by operation", ["op"]))
        self.tokens = metrics.histogram(
            "evidence_tokens", "tokens that counted as evidence per classified message",
            buckets=TOKEN_BUCKETS)
        for result in ("spam", "innocent", "unsure"):
            self.verdicts(result)
        for kind in ERROR_KINDS:
            self.errors(kind)
