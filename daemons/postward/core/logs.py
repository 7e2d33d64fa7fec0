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
            # The usual line, built without the intermediate dict (policyd writes one per
            # greylisting decision). Same text as the general path below.
            parts = [f"level={_quote(record.levelname.lower())}", self._daemon_part,
                     f"event={_quote(record.getMessage())}"]
            _append_fields(parts, kv)
            return " ".join(parts)
        fields: dict[str, Any] = {"level": record.levelname.lower(), "daemon": self.daemon,
                                  "event": record.getMessage()}
        fields.update(kv)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            fields.setdefault("error", f"{type(exc).__name__}: {exc}")
            fields["traceback"] = self.formatException(record.exc_info)
        return format_fields(fields)


class Log:
    """A logger taking an event name and fields: ``log.info("started", listen=addr)``."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(f"{_ROOT}.{name}" if name else _ROOT)

    def _log(self, level: int, event: str, fields: dict[str, Any], exc_info: bool = False) -> None:
        logger = self._logger
        if logger.isEnabledFor(level):
            # makeRecord + handle is what Logger.log does, less findCaller: its walk up the
            # stack for the caller's file and line (which would name this very function, and
            # which no postward line shows) was a fifth of the cost of the line policyd
            # writes per greylisting decision.
            record = logger.makeRecord(logger.name, level, "(unknown file)", 0, event, (),
                                       sys.exc_info() if exc_info else None,
                                       extra={"kv": fields})
            logger.handle(record)

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
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KvFormatter(daemon))
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
