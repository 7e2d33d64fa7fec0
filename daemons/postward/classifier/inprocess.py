"""postward-filter's fallback when the daemon is unreachable and ``--fallback=inprocess``:
the daemon's handler run inside the filter's own process (slow to start, same answers)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from postward.classifier import filter_client
from postward.classifier.daemon import build_handler
from postward.classifier.metrics import ClassifierMetrics
from postward.core.config import DEFAULT_PATH
from postward.core.runtime import Runtime
from postward.schema import load_config


def serve_inprocess(opts: dict[str, Any], message: bytes) -> int:
    config = load_config(Path(opts.get("config") or DEFAULT_PATH))
    loop = asyncio.new_event_loop()
    runtime = Runtime.create(config, "classifierd", serve_metrics=False)
    # One message per process: a cache of the global model would never be read again.
    handler = build_handler(config, runtime, ClassifierMetrics(runtime.metrics),
                            global_cache=False)

    def transport(op: str, fields: list[tuple[str, str]], body: bytes):  # type: ignore[no-untyped-def]
        reply = loop.run_until_complete(handler.handle(op, fields, body))
        head = [*reply.fields, ("header-length", str(len(reply.extra)))]
        return reply.code, reply.text, head, reply.extra

    try:
        return filter_client.run(opts, message, transport)
    finally:
        loop.run_until_complete(runtime.aclose())
        loop.close()
