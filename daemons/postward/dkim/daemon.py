"""Running postward-dkim: config, keys, the DNS thread, libmilter, signals, privileges.

Signals follow OpenDKIM's, because libmilter owns SIGHUP/SIGTERM/SIGINT (its signal thread
stops the milter on any of them): SIGUSR1 reloads opendkim.conf and the key files (a config
with errors is logged and the running one kept); SIGTERM stops accepting connections and waits
up to ``grace`` seconds for messages in flight. Those signals are blocked in every thread before
the first thread starts, so only libmilter's and our own waiting threads ever receive them.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import socket
import threading
import time
from pathlib import Path

import Milter
import milter

from postward.core import sd_notify
from postward.core.config_file import ConfigError
from postward.core.logs import get_log
from postward.core.runtime import Runtime, load_config_or_exit
from postward.dkim.key_lookup import LoopThread, make_lookup
from postward.dkim.metrics import DkimMetrics
from postward.dkim.milter import DkimMilter, Shared, UnixDkimMilter
from postward.dkim.opendkim_conf import MilterSocket
from postward.dkim.policy import DkimPolicy, RunAs, load_policy
from postward.schema import Config

log = get_log("dkim")

_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1}


def set_nodelay(sock_spec: MilterSocket) -> bool:
    """TCP_NODELAY on libmilter's listening socket (Linux copies it to accepted sockets).

    Without it Postfix's small milter writes wait for the delayed ACK, ~40 ms twice per
    message: 11 messages/s per SMTP session instead of hundreds. libmilter does not expose its
    socket, so it is found among this process's descriptors by its address."""
    if sock_spec.kind == "local":
        return False
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if s.type != socket.SOCK_STREAM or s.family not in (socket.AF_INET,
                                                                socket.AF_INET6):
                continue
            if not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                continue
            if s.getsockname()[1] != sock_spec.port:
                continue
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return True
        except OSError:
            continue
        finally:
            s.close()
    return False


class _Reloader:
    """Waits for SIGUSR1 in its own thread and swaps in a freshly loaded policy."""

    def __init__(self, shared: Shared, config: Config, conf_path: Path,
                 run_as: RunAs | None) -> None:
        self.shared, self.config, self.conf_path, self.run_as = shared, config, conf_path, run_as
        threading.Thread(target=self._wait, name="postward-reload", daemon=True).start()

    def _wait(self) -> None:
        while True:
            signal.sigwait({signal.SIGUSR1})
            sd_notify.notify(sd_notify.RELOADING)
            try:
                policy = load_policy(self.conf_path, self.config.dkim, self.run_as)
            except ConfigError as e:
                for problem in e.problems:
                    log.error("reload_rejected", problem=str(problem))
                log.error("reload_kept_running_config", problems=len(e.problems))
                self.shared.metrics.errors("config").inc()
                sd_notify.notify(sd_notify.READY, sd_notify.status(
                    "serving; the last reload was rejected (see the log)"))
                continue
            self.shared.policy = policy
            log.info("reloaded", config=str(self.conf_path))
            sd_notify.notify(sd_notify.READY, sd_notify.status("serving"))


def _target_user(policy: DkimPolicy) -> RunAs | None:
    """Who to run as: UserID (``user[:group]``) when started as root; None: stay as we are."""
    if os.getuid() != 0 or not policy.user:
        return None
    entry = pwd.getpwnam(policy.user)
    gid = grp.getgrnam(policy.group).gr_gid if policy.group else entry.pw_gid
    return RunAs(entry.pw_uid, gid, frozenset(os.getgrouplist(policy.user, gid)))


def _drop_privileges(target: RunAs | None) -> None:
    if target is None:
        return
    os.setgroups(sorted(target.groups))
    os.setgid(target.gid)
    os.setuid(target.uid)
    log.info("running_as", uid=target.uid, gid=target.gid)


def _register(sock: MilterSocket, timeout: float) -> None:
    """What pymilter's runmilter does, split so TCP_NODELAY can go between open and main."""
    milter.set_flags(milter.ADDHDRS | milter.CHGHDRS | milter.QUARANTINE)
    milter.set_connect_callback(Milter.connect_callback)
    milter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    # Straight to the methods, without pymilter's decoding layer: postward-dkim never looks
    # at the sender and wants header values as bytes (on_header: fewer calls per field).
    milter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom(*b))
    milter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    milter.set_header_callback(lambda ctx, f, v: ctx.getpriv().on_header(f, v))
    milter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    milter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    milter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    milter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    milter.set_close_callback(Milter.close_callback)
    milter.setconn(sock.pymilter_spec)
    milter.settimeout(int(timeout))
    milter.register("postward-dkim", data=lambda ctx: ctx.getpriv().data(),
                    unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
                    negotiate=Milter.negotiate_callback)


def _write_pid(path: str) -> None:
    if not path:
        return
    try:
        Path(path).write_text(f"{os.getpid()}\n")
    except OSError as e:
        log.warning("pid_file_not_written", path=path, error=e.strerror or str(e))


def run_daemon(config_path: Path, opendkim_conf: Path | None = None, socket_spec: str = "",
               grace: float = 30.0) -> int:
    # Before any thread exists, so that every thread inherits the mask (see module docstring).
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    config = load_config_or_exit(config_path)
    conf_path = opendkim_conf or Path(config.dkim.opendkim_conf)
    try:
        # The key-file checks must judge the files as the user we will run as.
        probe = load_policy(conf_path, config.dkim, None, socket_spec or None, check_keys=False)
        target = _target_user(probe)
        policy = load_policy(conf_path, config.dkim, target, socket_spec or None)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, flush=True)
        print(f"postward-dkim: {conf_path}: {len(e.problems)} error(s); not starting", flush=True)
        return 2
    except KeyError as e:
        print(f"postward-dkim: {conf_path}: UserID names an unknown user or group: {e}")
        return 2
    runtime = Runtime.create(config, "dkim")
    metrics = DkimMetrics(runtime.metrics)
    loop = LoopThread()
    lookup = make_lookup(loop, runtime.resolver, metrics, config.dkim.key_lookup_budget,
                         keep=config.dns.local_cache_ttl)
    shared = Shared(policy, lookup, metrics, runtime.clock, config.dkim.on_error)
    sock = policy.socket
    milter_class = UnixDkimMilter if sock.kind == "local" else DkimMilter
    Milter.factory = lambda: milter_class(shared)
    old_umask = os.umask(policy.umask)
    try:
        _register(sock, config.dkim.milter_timeout)
        milter.opensocket(True)
    finally:
        os.umask(old_umask)
    nodelay = set_nodelay(sock)
    if sock.kind == "local" and target is not None:
        os.chown(sock.path, target[0], -1)
    _write_pid(policy.pid_file)
    _drop_privileges(target)
    _Reloader(shared, config, conf_path, target)
    log.info("listening", socket=sock.pymilter_spec, tcp_nodelay=nodelay,
             sign=policy.sign, verify=policy.verify)
    # opensocket() left the socket listening: Postfix's connections wait in its backlog until
    # main() accepts them, so systemd may start Postfix now.
    sd_notify.notify(sd_notify.READY, sd_notify.status("serving"))
    try:
        milter.main()
    finally:
        sd_notify.notify(sd_notify.STOPPING, sd_notify.status("draining"))
        _drain(shared, grace)
        loop.stop(runtime.aclose)
        log.info("stopped")
    return 0


def _drain(shared: Shared, grace: float) -> None:
    """libmilter returns from main() with sessions still running in their threads: give the
    messages in flight ``grace`` seconds to finish before the interpreter goes away."""
    deadline = time.monotonic() + grace
    while shared.in_flight > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if shared.in_flight:
        log.warning("stop_grace_expired", in_flight=shared.in_flight)
