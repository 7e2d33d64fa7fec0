"""The small shared pieces: key=value logs, metric names, the fake clock."""

from __future__ import annotations

import io
import urllib.request
from pathlib import Path

import pytest

from postward.core.clock import FakeClock
from postward.core.config_values import HostPort
from postward.core.logs import configure_logging, format_fields, get_log
from postward.core.metrics import Metrics


def test_log_lines_are_key_value_and_quote_what_needs_it() -> None:
    out = io.StringIO()
    configure_logging("policyd", "info", stream=out)
    log = get_log("test")
    log.info("started", listen="127.0.0.1:10040", note='say "hi"\nbye', empty="", none=None)
    log.debug("hidden")
    assert out.getvalue() == (
        'level=info daemon=policyd event=started listen=127.0.0.1:10040 '
        'note="say \\"hi\\"\\nbye" empty=""\n'
    )


def test_every_kind_of_value_is_written_as_format_fields_writes_it() -> None:
    # The usual line takes a shortcut past the dict format_fields reads: same text.
    out = io.StringIO()
    configure_logging("policyd", "info", stream=out)
    fields = {"n": 3, "x": 0.5, "flag": True, "plain": "mx.example", "spaced": "a b",
              "eq": "a=b", "tab": "a\tb", "back": "a\\b", "empty": "", "none": None,
              "obj": Path("/tmp/x y"), "surrogate": "caf\udce9"}
    get_log("test").warning("odd_values", **fields)
    assert out.getvalue() == format_fields(
        {"level": "warning", "daemon": "policyd", "event": "odd_values", **fields}) + "\n"


def test_a_field_named_like_a_head_key_overrides_it_as_before() -> None:
    out = io.StringIO()
    configure_logging("policyd", "info", stream=out)
    get_log("test").info("started", daemon="other", level="x")
    assert out.getvalue() == "level=x daemon=other event=started\n"


def test_exceptions_are_logged_on_one_line_with_their_type() -> None:
    out = io.StringIO()
    configure_logging("dkim", "info", stream=out)
    try:
        raise ValueError("bad key")
    except ValueError:
        get_log("x").exception("callback_failed", queue_id="ABC123")
    [line] = out.getvalue().splitlines()
    assert line.startswith("level=error daemon=dkim event=callback_failed queue_id=ABC123 "
                           'error="ValueError: bad key" traceback="Traceback')


def test_metric_names_carry_the_daemon_and_a_unit() -> None:
    m = Metrics("policyd")
    c = m.counter("requests_total", "requests", ["action"])
    c.labels("DUNNO").inc(3)
    h = m.histogram("decision_seconds", "latency")
    h.observe(0.001)
    assert m.value("postward_policyd_requests_total", {"action": "DUNNO"}) == 3
    assert m.value("postward_policyd_decision_seconds_count") == 1
    with pytest.raises(ValueError, match="must end in _total"):
        m.counter("requests", "no unit")
    with pytest.raises(ValueError, match="<what>_<unit>"):
        m.gauge("Tokens", "bad case")


def test_each_daemon_has_its_own_registry() -> None:
    a, b = Metrics("policyd"), Metrics("dkim")
    a.counter("errors_total", "x").inc()
    b.counter("errors_total", "x").inc()  # same short name, no clash
    assert a.value("postward_policyd_errors_total") == 1
    assert b.value("postward_policyd_errors_total") == 0


def test_metrics_are_served_over_http_on_loopback() -> None:
    m = Metrics("filter")
    m.counter("verdicts_total", "verdicts", ["verdict"]).labels("spam").inc()
    where = m.serve(HostPort("127.0.0.1", 0))
    try:
        body = urllib.request.urlopen(f"http://{where}/metrics", timeout=5).read().decode()
    finally:
        m.close()
    assert 'postward_filter_verdicts_total{verdict="spam"} 1.0' in body
    assert "postward_filter_process_resident_memory_bytes " in body


def test_fake_clock_moves_only_forward_when_told() -> None:
    c = FakeClock(start=100.0)
    m0 = c.monotonic()
    c.advance(2.5)
    assert (c.time(), c.monotonic() - m0) == (102.5, 2.5)
    with pytest.raises(ValueError):
        c.advance(-1)
