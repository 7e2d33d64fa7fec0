"""ask(): hand the request to another policy server (a real postgrey, say) and take its
answer, as postfwd does: the original attributes, a blank line, one answer line read."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from postward.core.logs import get_log

log = get_log("policyd.ask")


async def ask_policy_server(host: str, port: int, request: Mapping[str, str],
                            timeout: float) -> str | None:
    """The first line the server answers (e.g. ``action=DUNNO``), or None if it cannot be
    reached or does not answer in time."""
    payload = "".join(f"{k}={v}\n" for k, v in request.items()) + "\n"
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(payload.encode("utf-8", errors="surrogateescape"))
            await writer.drain()
            line = await reader.readline()
    except (OSError, TimeoutError) as e:
        log.info("ask_failed", server=f"{host}:{port}", error=f"{type(e).__name__}: {e}")
        return None
    finally:
        if writer is not None:
            writer.close()
    return line.decode("utf-8", errors="replace").rstrip("\r\n")
