"""The life of an asyncio daemon: start, reload on SIGHUP, drain and stop on SIGTERM.

Reload reads and checks the config first; a config with errors is logged, problem by problem,
and the daemon carries on with the one it has. Stop first closes the listeners, then waits for
work in flight (bounded by ``grace``), so Postfix never sees a half-answered request.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any, Protocol

from postward.core import sd_notify
from postward.core.config_file import ConfigError
from postward.core.logs import get_log

log = get_log("service")


class Service(Protocol):
    async def start(self) -> None:
        """Open listeners and begin serving."""
        ...

    async def close_listeners(self) -> None:
        """Stop accepting new work (work in flight goes on)."""
        ...

    async def reload(self, config: Any) -> None:
        """Take a config already checked by the loader."""
        ...

    async def aclose(self) -> None:
        """Release everything (called once work in flight is done or the grace ran out)."""
        ...


class InFlight:
    """Counts work in progress so a stop can wait for it to finish."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def count(self) -> int:
        return self._count

    def track(self) -> InFlight:
        """``with inflight.track():`` around one piece of work (``async with`` works too).
        A plain context manager, not an asynccontextmanager: entering and leaving one costs
        a generator and two coroutine steps, and policyd enters one per request."""
        return self

    def __enter__(self) -> None:
        self._count += 1
        self._idle.clear()

    def __exit__(self, *exc: object) -> None:
        self._count -= 1
        if self._count == 0:
            self._idle.set()

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()

    async def drained(self) -> None:
        await self._idle.wait()


async def serve(
    service: Service,
    inflight: InFlight,
    load_config: Callable[[], Any],
    grace: float = 30.0,
    stop: asyncio.Event | None = None,
) -> int:
    """Run ``service`` until SIGTERM/SIGINT (or ``stop`` is set); returns the exit status."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    reload_wanted = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_wanted.set)
    try:
        await service.start()
        log.info("started")
        # Listening now: systemd may start what is ordered after us (Postfix).
        sd_notify.notify(sd_notify.READY, sd_notify.status("serving"))
        while not stop.is_set():
            stop_wait = asyncio.ensure_future(stop.wait())
            reload_wait = asyncio.ensure_future(reload_wanted.wait())
            await asyncio.wait({stop_wait, reload_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            reload_wait.cancel()
            if reload_wanted.is_set() and not stop.is_set():
                reload_wanted.clear()
                sd_notify.notify(sd_notify.RELOADING)
                taken = await _reload(service, load_config)
                sd_notify.notify(sd_notify.READY, sd_notify.status(
                    "serving" if taken else "serving; the last reload was rejected (see the log)"))
        log.info("stopping", in_flight=inflight.count)
        sd_notify.notify(sd_notify.STOPPING, sd_notify.status("draining"))
        await service.close_listeners()
        try:
            await asyncio.wait_for(inflight.drained(), grace)
        except TimeoutError:
            log.warning("stop_grace_expired", in_flight=inflight.count, grace=grace)
        await service.aclose()
        log.info("stopped")
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def _reload(service: Service, load_config: Callable[[], Any]) -> bool:
    """True if the new config was taken; False: it had errors, the running one stays."""
    try:
        config = load_config()
    except ConfigError as e:
        for problem in e.problems:
            log.error("reload_rejected", problem=str(problem))
        log.error("reload_kept_running_config", problems=len(e.problems))
        return False
    await service.reload(config)
    log.info("reloaded")
    return True
