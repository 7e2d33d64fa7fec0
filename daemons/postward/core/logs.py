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


class KvFormatter(logging.Formatter):
    def __init__(self, daemon: str) -> None:
        super().__init__()
        self.daemon = daemon

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {"level": record.levelname.lower(), "daemon": self.daemon,
                                  "event": record.getMessage()}
        fields.update(getattr(record, "kv", {}))
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
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"kv": fields}, exc_info=exc_info)

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
