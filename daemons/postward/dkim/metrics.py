"""postward-dkim's Prometheus metrics (``postward_dkim_*``); listed in docs/metrics.md."""

from __future__ import annotations

from postward.core.metrics import Labelled, Metrics

# Callbacks exported at 0 from the start; not `header`, which milter.py does not time (its
# series would only ever be empty).
CALLBACKS = ("connect", "eoh", "body", "eom")
# The bounded label values, exported at 0 from the start so that rate() and increase() see the
# first event (a series born at 1 has no earlier sample to rise from) and dashboards show 0.
ERROR_KINDS = ("callback", "config")
MESSAGE_ACTIONS = ("signed", "verified", "skipped", "tempfailed", "rejected", "discarded",
                   "quarantined")
KEY_SOURCES = ("cache", "dns", "failed")
ARC_RESULTS = ("pass", "fail", "none", "skipped")


class DkimMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self.signatures = Labelled(metrics.counter(
            "signatures_total", "DKIM signatures made, by signing domain and algorithm",
            ["domain", "algorithm"]))
        self.verifications = Labelled(metrics.counter(
            "verifications_total",
            "DKIM signatures checked, by result (pass, fail, neutral, temperror, permerror, "
            "none = a message without a signature)", ["result"]))
        self.key_lookups = Labelled(metrics.counter(
            "key_lookups_total",
            "public-key lookups by where the answer came from (cache = the shared Redis or the "
            "process cache, dns = a nameserver, failed = no answer)", ["source"]))
        self.callback_seconds = Labelled(metrics.histogram(
            "callback_seconds", "time spent in each milter callback", ["callback"]))
        self.errors = Labelled(metrics.counter(
            "errors_total",
            "failures inside postward-dkim, by kind (callback: a message got on_error; "
            "config: a reload was rejected)",
            ["kind"]))
        self.messages = Labelled(metrics.counter(
            "messages_total",
            "messages by what postward-dkim did (signed, verified, skipped, tempfailed, "
            "rejected, discarded, quarantined)", ["action"]))
        self.forged_ar_removed = metrics.counter(
            "forged_ar_removed_total",
            "Authentication-Results fields carrying our authserv-id that arrived with a message "
            "and were removed")
        self.arc = Labelled(metrics.counter(
            "arc_total",
            "ARC chains checked by result (pass, fail, none) and messages passed without ARC "
            "processing because of their size (skipped)", ["result"]))
        self.arc_seals = metrics.counter("arc_seals_total", "ARC sets added (messages sealed)")
        for name in CALLBACKS:
            self.callback_seconds(name)
        for result in ("pass", "fail", "neutral", "temperror", "permerror", "none"):
            self.verifications(result)
        for kind in ERROR_KINDS:
            self.errors(kind)
        for action in MESSAGE_ACTIONS:
            self.messages(action)
        for source in KEY_SOURCES:
            self.key_lookups(source)
        for result in ARC_RESULTS:
            self.arc(result)
