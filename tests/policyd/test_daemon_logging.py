"""The daemons' log lines when configure_logging's handler is the only place they go (the
direct path policyd takes for its line per greylisting decision) and when logging has more to
do (another handler, a filter, a disabled logger, a broken stream): the same text, and
logging's own rules respected."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from postward.core.logs import KvFormatter, configure_logging, get_log

FIELDS = {"outcome": "new", "reason": "early-retry (120s missing)", "queue_id": None,
          "client_name": "mail.example.test", "client_address": "192.0.2.1",
          "sender": "a@example.test", "recipient": "b=c@example.test", "n": 3}
EXPECTED = ('level=info daemon=policyd event=greylist outcome=new '
            'reason="early-retry (120s missing)" client_name=mail.example.test '
            'client_address=192.0.2.1 sender=a@example.test recipient="b=c@example.test" n=3\n')


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("policyd", "info", stream=stream)
    yield stream
    root = logging.getLogger("postward")
    for h in list(root.handlers):
        root.removeHandler(h)
    root.propagate = True


def test_the_direct_line_is_the_formatter_line(out: io.StringIO) -> None:
    get_log("policyd.greylist").info("greylist", **FIELDS)
    get_log("policyd.greylist").debug("hidden", **FIELDS)
    assert out.getvalue() == EXPECTED
    record = logging.LogRecord("postward.policyd.greylist", logging.INFO, "", 0, "greylist", (),
                               None)
    record.kv = FIELDS
    assert KvFormatter("policyd").format(record) + "\n" == EXPECTED


def test_a_second_handler_gets_the_line_too(out: io.StringIO) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    extra = Keep()
    logging.getLogger("postward.policyd").addHandler(extra)
    try:
        get_log("policyd.greylist").info("greylist", **FIELDS)
    finally:
        logging.getLogger("postward.policyd").removeHandler(extra)
    assert out.getvalue() == EXPECTED
    assert [(r.getMessage(), r.kv) for r in records] == [("greylist", FIELDS)]  # type: ignore[attr-defined]


def test_filters_and_disabled_loggers_are_obeyed(out: io.StringIO) -> None:
    class DropGreylist(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return record.getMessage() != "greylist"

    root = logging.getLogger("postward")
    drop = DropGreylist()
    root.handlers[0].addFilter(drop)
    get_log("policyd.greylist").info("greylist", **FIELDS)
    get_log("policyd.greylist").info("kept")
    root.handlers[0].removeFilter(drop)
    logger = logging.getLogger("postward.policyd.quiet")
    logger.disabled = True
    try:
        get_log("policyd.quiet").info("greylist", **FIELDS)
    finally:
        logger.disabled = False
    assert out.getvalue() == "level=info daemon=policyd event=kept\n"


def test_a_broken_stream_is_reported_as_logging_reports_it(
        out: io.StringIO, capsys: pytest.CaptureFixture[str]) -> None:
    out.close()  # writing to it raises ValueError
    get_log("policyd.greylist").info("greylist", **FIELDS)  # must not raise
    err = capsys.readouterr().err
    assert "--- Logging error ---" in err and "ValueError" in err
    assert "Message: 'greylist'" in err  # the record logging reports is the line's
