"""One log style for every daemon: ``key=value`` lines on stderr, which journald keeps as-is.

    level=warning daemon=policyd event=redis_error op=greylist error="Connection refused"

Values with spaces, quotes or '=' are quoted; newlines are escaped so one event is one line.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

_ROOT = "postward"
# One regex search instead of a generator over the characters: the policy daemon logs a line
# per greylisting decision, and this ran for each of its fields.
_NEEDS_QUOTES = re.compile(r'[ "=\\\n\r\t]')


def _quote(value: Any) -> str:
    s = str(value)
    if s == "" or _NEEDS_QUOTES.search(s):
        s = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
        return f'"{s}"'
    return s


def format_fields(fields: dict[str, Any]) -> str:
    return " ".join(f"{k}={_quote(v)}" for k, v in fields.items() if v is not None)


def _append_fields(parts: list[str], fields: dict[str, Any]) -> None:
    """format_fields' pairs appended to ``parts``, with a plain loop: no generator frame, and
    no str() or regex for the common plain string."""
    search = _NEEDS_QUOTES.search
    for k, v in fields.items():
        if v is None:
            continue
        if type(v) is str and v and search(v) is None:
            parts.append(f"{k}={v}")
        else:
            parts.append(f"{k}={_quote(v)}")


_HEAD_KEYS = frozenset({"level", "daemon", "event"})


class KvFormatter(logging.Formatter):
    def __init__(self, daemon: str) -> None:
        super().__init__()
        self.daemon = daemon
        self._daemon_part = f"daemon={_quote(daemon)}"

    def format(self, record: logging.LogRecord) -> str:
        kv: dict[str, Any] = getattr(record, "kv", {})
        if not (record.exc_info or _HEAD_KEYS.intersection(kv)):
            return self.plain_line(record.levelname, record.getMessage(), kv)
        fields: dict[str, Any] = {"level": record.levelname.lower(), "daemon": self.daemon,
                                  "event": record.getMessage()}
        fields.update(kv)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            fields.setdefault("error", f"{type(exc).__name__}: {exc}")
            fields["traceback"] = self.formatException(record.exc_info)
        return format_fields(fields)

    def plain_line(self, levelname: str, event: str, kv: dict[str, Any]) -> str:
        """The usual line (no traceback, no field named like a head key), built without the
        intermediate dict (policyd writes one per greylisting decision). Same text as the
        general path of :meth:`format`."""
        parts = [f"level={_quote(levelname.lower())}", self._daemon_part, f"event={_quote(event)}"]
        _append_fields(parts, kv)
        return " ".join(parts)


class _KvHandler(logging.StreamHandler[TextIO]):
    """The handler configure_logging installs. :class:`Log` writes to it directly when it is
    the only place a line can go (see :func:`_sole_handler`)."""

    formatter: KvFormatter

    def write_plain(self, levelname: str, event: str, fields: dict[str, Any]) -> None:
        """What ``handle(record)`` would write for such a record, without making the record:
        a LogRecord and the walk through Logger.handle, the filters and emit cost twice what
        formatting and writing the line do, and policyd logs a line per greylisting
        decision."""
        line = self.formatter.plain_line(levelname, event, fields) + self.terminator
        self.acquire()
        try:
            self.stream.write(line)
            self.stream.flush()
        finally:
            self.release()


def _sole_handler(logger: logging.Logger, level: int) -> _KvHandler | None:
    """configure_logging's handler if a record of ``level`` from ``logger`` would go to it and
    nowhere else, with no filter on the way; else None (the record path then decides)."""
    if logger.disabled:
        return None
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters:
            return None
        if node.handlers:
            handlers = node.handlers
            if len(handlers) != 1 or node.propagate:
                return None
            handler = handlers[0]
            if type(handler) is not _KvHandler or handler.filters or level < handler.level \
                    or type(handler.formatter) is not KvFormatter:
                return None
            return handler
        if not node.propagate:
            return None
        node = node.parent
    return None


class Log:
    """A logger taking an event name and fields: ``log.info("started", listen=addr)``."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(f"{_ROOT}.{name}" if name else _ROOT)

    def _log(self, level: int, event: str, fields: dict[str, Any], exc_info: bool = False) -> None:
        logger = self._logger
        if logger.isEnabledFor(level):
            if not exc_info and not _HEAD_KEYS.intersection(fields):
                handler = _sole_handler(logger, level)
                if handler is not None:
                    try:
                        handler.write_plain(logging.getLevelName(level), event, fields)
                    except Exception:
                        # As StreamHandler.emit does with a failed write: reported, not raised.
                        handler.handleError(self._record(level, event, fields, False))
                    return
            # makeRecord + handle is what Logger.log does, less findCaller: its walk up the
            # stack for the caller's file and line (which would name this very function, and
            # which no postward line shows) was a fifth of the cost of the line policyd
            # writes per greylisting decision.
            logger.handle(self._record(level, event, fields, exc_info))

    def _record(self, level: int, event: str, fields: dict[str, Any],
                exc_info: bool) -> logging.LogRecord:
        logger = self._logger
        return logger.makeRecord(logger.name, level, "(unknown file)", 0, event, (),
                                 sys.exc_info() if exc_info else None, extra={"kv": fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the current exception's type, message and traceback."""
        self._log(logging.ERROR, event, fields, exc_info=True)


def get_log(name: str = "") -> Log:
    return Log(name)


def configure_logging(daemon: str, level: str = "info", stream: TextIO | None = None) -> None:
    """Send every postward logger to ``stream`` (stderr) in key=value form at ``level``."""
    root = logging.getLogger(_ROOT)
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = _KvHandler(stream or sys.stderr)
    handler.setFormatter(KvFormatter(daemon))
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
