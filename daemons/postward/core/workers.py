"""Several worker processes on the same listening sockets (pre-fork), so a daemon uses every
core (postward-policyd's and postward-classifierd's ``workers``).

The supervisor binds the sockets, forks ``workers`` children that all accept on them, serves
their metrics summed (prometheus_client's multiprocess mode), forwards SIGHUP (after checking
the new config itself) and SIGTERM, and restarts a worker that dies. State lives in Redis, so
workers need not talk to each other.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, multiprocess, start_http_server, values

from postward.core import sd_notify
from postward.core.config_file import ConfigError
from postward.core.config_values import HostPort
from postward.core.logs import configure_logging, get_log

log = get_log("workers")

_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
_RESTART_BACKOFF = 1.0


def bind_listeners(addresses: tuple[str, ...], backlog: int = 512) -> list[socket.socket]:
    """Listening sockets for ``host:port`` and ``unix:/path`` addresses."""
    sockets = []
    for address in addresses:
        if address.startswith("unix:"):
            path = address[5:]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a socket left by a crash
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(path)
            os.chmod(path, 0o660)  # Postfix reaches it through the socket's group
        else:
            host, port = address.rsplit(":", 1)
            host = host.strip("[]")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, int(port)))
        s.listen(backlog)
        s.setblocking(False)
        sockets.append(s)
    return sockets


def supervise(
    workers: int,
    listeners: list[socket.socket],
    run_worker: Callable[[list[socket.socket]], int],
    check_config: Callable[[], object],
    metrics_address: HostPort | None,
    log_level: str,
    daemon: str,
) -> int:
    """Run ``workers`` copies of ``run_worker(listeners)``; returns when told to stop.
    ``daemon`` names the supervisor in its log lines and metrics directory."""
    configure_logging(daemon, log_level)
    metrics_dir = tempfile.mkdtemp(prefix=f"postward-{daemon}-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    children: dict[int, int] = {}  # pid -> worker number
    server = None

    def fork(number: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            sd_notify.forget()  # the supervisor alone speaks to systemd for the unit
            # Metrics created from here on live in files the supervisor sums up.
            values.ValueClass = values.MultiProcessValue()
            code = 1
            try:
                code = run_worker(listeners)
            finally:
                os._exit(code)
        children[pid] = number
        log.info("worker_started", worker=number, pid=pid)

    try:
        for number in range(workers):
            fork(number)
        if metrics_address is not None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=metrics_dir)
            server, _ = start_http_server(metrics_address.port, metrics_address.host,
                                          registry=registry)
            log.info("metrics_listening", address=str(metrics_address))
        # The sockets were bound and listening before the fork: connections wait in their
        # backlog until a worker accepts them, so the service is up from here.
        sd_notify.notify(sd_notify.READY, sd_notify.status(f"serving with {workers} workers"))
        stopping = False
        while children:
            info = signal.sigtimedwait(_SIGNALS, 1.0)
            if info is None:
                continue
            if info.si_signo in (signal.SIGTERM, signal.SIGINT) and not stopping:
                stopping = True
                log.info("stopping", workers=len(children))
                sd_notify.notify(sd_notify.STOPPING, sd_notify.status("draining"))
                _signal_all(children, signal.SIGTERM)
            elif info.si_signo == signal.SIGHUP and not stopping:
                sd_notify.notify(sd_notify.RELOADING)
                taken = _reload(children, check_config)
                sd_notify.notify(sd_notify.READY, sd_notify.status(
                    f"serving with {workers} workers" if taken
                    else "serving; the last reload was rejected (see the log)"))
            _reap(children, stopping, fork)
        log.info("stopped")
        return 0
    finally:
        if server is not None:
            server.shutdown()
        for s in listeners:
            s.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _signal_all(children: dict[int, int], sig: int) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _reload(children: dict[int, int], check_config: Callable[[], object]) -> bool:
    """True if the new config passed and the workers were told; False: it had errors."""
    try:
        check_config()
    except ConfigError as e:
        for problem in e.problems:
            log.error("reload_rejected", problem=str(problem))
        log.error("reload_kept_running_config", problems=len(e.problems))
        return False
    _signal_all(children, signal.SIGHUP)
    return True


def _reap(children: dict[int, int], stopping: bool, fork: Callable[[int], None]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        number = children.pop(pid, None)
        if number is None:
            continue
        multiprocess.mark_process_dead(pid)
        if not stopping:
            log.error("worker_died", worker=number, pid=pid,
                      status=os.waitstatus_to_exitcode(status))
            time.sleep(_RESTART_BACKOFF)  # a worker dying at once must not spin the CPU
            fork(number)
