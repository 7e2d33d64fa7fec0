"""A real Postfix for tests, isolated from the machine's own, and Postfix's ``smtp-sink``.

Isolation without namespaces: every instance has its own ``config_directory``,
``queue_directory`` and ``data_directory`` under one test directory and is driven with
``postfix -c DIR`` / ``postconf -c DIR`` / ``postqueue -c DIR``. It listens on the test session's
private loopback address and a free port, its SMTP client binds to that address, and it never
resolves names through DNS nor delivers anywhere but its own Maildirs and loopback relays. Two
pytest runs at once therefore share nothing but the binaries.

How it runs: ``postfix start-fg`` works here, but its master calls setsid() and leaves the
process group of the ``postfix-script`` that started it, so killing that group would miss master
and all its children. The test bed runs what ``start-fg`` runs - ``postfix check`` (create the
queue directories, fix permissions) and then ``master -s`` - but starts master itself as a
session leader, where its setsid() is a no-op: master and every daemon it spawns stay in one
process group that :class:`ManagedProcess` kills.

Logging: there is no syslog, so ``maillog_file`` points into the instance directory (and
``maillog_file_prefixes`` allows that path; otherwise master refuses to start without a word).
The stock master.cf already has the ``postlog`` service that writes that file.

Chroot: the stock master.cf chroots most services into the queue directory, which needs copies
of /etc files in there (Debian's init script makes them for the system instance). The test bed
sets ``chroot = n`` on every service, after the snippets too, so a private queue directory works
as is.

Two Postfix habits the test bed works around (see :meth:`PostfixInstance._link_queue` and
:func:`settle`): commands reach the postlog socket by absolute path, so ``queue_directory`` is
given to Postfix as a short symlink; and main.cf or a table written less than ~2 s ago makes every
reader pause until it is older, so the test bed dates its freshly written files back.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

# The snippet parser and the Postfix command runner are the package's own (postward
# postfix-config uses them on the admin's Postfix); re-exported here for the tests.
from postward.wiring.postfix_tools import PostfixCommandError as PostfixCommandError
from postward.wiring.postfix_tools import run_checked as _run
from postward.wiring.snippets import Snippet as Snippet
from postward.wiring.snippets import SnippetError as SnippetError
from postward.wiring.snippets import parse_main_cf as parse_main_cf
from postward.wiring.snippets import parse_master_cf as parse_master_cf
from tests.testbed.mail import Maildir, SinkDump, StoredMessage, postfix_tool
from tests.testbed.net import free_port, wait_until
from tests.testbed.process import DaemonFailed, ManagedProcess

DEFAULT_DOMAINS: tuple[str, ...] = ("example.test",)
# The package's pristine master.cf: /etc/postfix/master.cf belongs to the machine's admin.
STOCK_MASTER_CF = Path("/usr/share/postfix/master.cf.dist")
# virtual(8) delivers as this user; it must not be root and must be >= virtual_minimum_uid.
DELIVERY_USER = "nobody"

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_LOOPBACK_NEXTHOP = re.compile(r"\[127(?:\.\d{1,3}){3}\]:\d{1,5}")


# --------------------------------------------------------------------------------------------
# Helpers


def daemon_directory() -> Path:
    return Path(_run([postfix_tool("postconf"), "-dh", "daemon_directory"]).strip())


def _check_loopback_nexthop(nexthop: str) -> str:
    # The test bed must never hand mail to a machine off this one.
    if not _LOOPBACK_NEXTHOP.fullmatch(nexthop):
        raise ValueError(f"nexthop {nexthop!r} is not of the form [127.x.y.z]:port")
    return nexthop


def _listening(address: str, port: int) -> bool:
    """Whether a TCP socket listens on address:port, read from /proc/net/tcp so that checking
    does not open an SMTP session (which smtp-sink would count and Postfix would log)."""
    want_ip = struct.unpack("<I", socket.inet_aton(address))[0]
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            local, state = line.split()[1], line.split()[3]
            ip_hex, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port and int(ip_hex, 16) in (want_ip, 0):
                return True
    return False


def _state_and_pgid(pid: int) -> tuple[str, int] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: fields follow the last ")".
    fields = stat.rpartition(")")[2].split()
    return fields[0], int(fields[2])


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def settle(path: Path) -> None:
    """Date a freshly written Postfix table or main.cf back a few seconds.

    Postfix loads main.cf and texthash/regexp/... tables with dict_load_file(), which re-reads
    a file every 0.3 s for as long as its mtime is within a second of "now" ("pausing to let
    it settle down"), so every postconf call, daemon start or lookup right after a write
    stalls for up to 2 s. The test bed writes files whole and never concurrently with Postfix,
    so it can skip that wait.
    """
    past = time.time_ns() - 5_000_000_000
    os.utime(path, ns=(past, past))


# --------------------------------------------------------------------------------------------
# The Postfix instance


class PostfixInstance:
    """A private Postfix: config, queue, data, Maildirs and log all under ``directory``.

    Mail to ``domains`` (and to the instance's own hostname, so postmaster and bounces stay
    here) is delivered by virtual(8) into ``<directory>/mail/<domain>/``, a catch-all Maildir
    per domain; virtual(8)'s ``Delivered-To:`` header tells recipients apart. Mail to
    ``relay_routes`` domains goes to the given loopback nexthops (for any client, as for a
    backup MX); everything else goes to ``relayhost`` if one is given, else is bounced by the
    error(8) transport. ``mynetworks`` is empty, so a test client is an untrusted internet client
    and relaying for it is refused with 554 (override ``mynetworks`` and connect with
    ``source_address=`` to play a trusted client).

    ``snippets`` are applied in order after the base configuration, ``overrides`` (main.cf
    parameters) last. ``service_renames`` renames master.cf services, because Postfix does not
    expand ``$parameters`` in master.cf service names:
    ``{"127.0.0.1:10026/inet": "127.5.5.5:4711"}`` moves a snippet's listener to a private
    address. ``smtp/inet`` is always renamed to this instance's listener, so a snippet entry for
    ``smtp/inet`` changes the test bed's smtpd.
    """

    def __init__(
        self,
        directory: Path,
        address: str,
        *,
        port: int | None = None,
        snippets: Sequence[Path] = (),
        overrides: Mapping[str, str] | None = None,
        domains: Sequence[str] = DEFAULT_DOMAINS,
        relayhost: str | None = None,
        relay_routes: Mapping[str, str] | None = None,
        service_renames: Mapping[str, str] | None = None,
        hostname: str | None = None,
        name: str = "postfix",
    ) -> None:
        self.directory = Path(directory)
        self.address = address
        self.port = port or free_port(address)
        self.name = name
        self.hostname = hostname or f"{name}-{self.port}.testbed.test"
        self.snippets = [Snippet.load(Path(p)) for p in snippets]
        self.overrides = dict(overrides or {})
        self.domains = list(domains)
        self.relayhost = _check_loopback_nexthop(relayhost) if relayhost else None
        self.relay_routes = {d: _check_loopback_nexthop(n) for d, n in (relay_routes or {}).items()}
        self.service_renames = {"smtp/inet": self.smtp_service, **(service_renames or {})}
        self.config_dir = self.directory / "etc"
        self.queue_dir = self.directory / "spool"
        self._queue_link: Path | None = None  # the short path Postfix is told; see _link_queue
        self.data_dir = self.directory / "data"
        self.mail_dir = self.directory / "mail"
        self.maillog_path = self.directory / "maillog"
        self._master = ManagedProcess(
            f"{name} master",
            [str(daemon_directory() / "master"), "-s", "-c", str(self.config_dir)],
            self.directory / "master.out",
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MAIL_CONFIG": str(self.config_dir)},
            cwd=self.directory,
        )
        self._configured = False

    # -- addresses ---------------------------------------------------------------------------

    @property
    def smtp_service(self) -> str:
        """The master.cf name of the public smtpd: ``address:port``."""
        return f"{self.address}:{self.port}"

    @property
    def nexthop(self) -> str:
        """How another Postfix (relayhost, transport) names this one: ``[address]:port``."""
        return f"[{self.address}]:{self.port}"

    @property
    def maildir(self) -> Maildir:
        """All delivered mail (every domain's Maildir); filter with ``recipient=``."""
        return Maildir(self.mail_dir)

    def messages(self, recipient: str | None = None) -> list[StoredMessage]:
        return self.maildir.messages(recipient)

    # -- configuration -----------------------------------------------------------------------

    def _base_parameters(self) -> list[tuple[str, str, str]]:
        """(name, value, why) of the test bed's main.cf before snippets and overrides."""
        delivery = pwd.getpwnam(DELIVERY_USER)
        d = self.directory
        transport = "error:5.7.1 the postward test bed delivers to loopback only"
        return [
            ("compatibility_level", "3.6", "as a fresh Debian 12 install"),
            ("queue_directory", str(self._link_queue()),  # idempotent
             f"-> {self.queue_dir}; private: a shared queue is refused"),
            ("data_directory", str(self.data_dir), "private: holds master.lock"),
            ("maillog_file", str(self.maillog_path), "no syslog on test machines"),
            ("maillog_file_prefixes", str(d), "else master will not log (or start) here"),
            ("myhostname", self.hostname, "unique, so Received headers name the instance"),
            ("mydomain", "testbed.test", "never derived from the machine's name"),
            ("myorigin", "$myhostname", ""),
            ("mydestination", "", "no local(8) delivery: nothing touches /var/mail"),
            ("local_recipient_maps", "", ""),
            ("local_transport", "error:5.1.1 no local delivery in the test bed", ""),
            ("alias_maps", "", "not the machine's /etc/aliases"),
            ("alias_database", "", ""),
            ("inet_interfaces", "loopback-only",
             "must name an interface address; the listener itself is address:port in master.cf"),
            ("inet_protocols", "ipv4", ""),
            ("mynetworks", "", "test clients play untrusted internet clients"),
            ("smtpd_relay_restrictions",
             "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
             "554 Relay access denied (the stock default defers with 454)"),
            ("smtpd_peername_lookup", "no", "no reverse DNS for clients"),
            ("smtp_dns_support_level", "disabled", "nexthops are [address]:port literals"),
            ("smtp_host_lookup", "native", ""),
            ("lmtp_host_lookup", "native", ""),
            ("smtp_bind_address", self.address, "outgoing SMTP from the private address"),
            ("lmtp_bind_address", self.address, ""),
            ("relayhost", self.relayhost or "", ""),
            ("default_transport", "smtp" if self.relayhost else transport,
             "nothing leaves the machine unless a loopback relayhost is set"),
            ("relay_domains", ", ".join(self.relay_routes), ""),
            ("transport_maps", f"texthash:{self.config_dir / 'transport'}" if self.relay_routes
             else "", "texthash: read as text, no postmap step"),
            ("virtual_mailbox_domains", ", ".join(self._mail_domains()), ""),
            ("virtual_mailbox_base", str(self.mail_dir), ""),
            ("virtual_mailbox_maps", f"texthash:{self.config_dir / 'virtual_mailbox'}",
             "a catch-all Maildir per domain"),
            ("virtual_uid_maps", f"static:{delivery.pw_uid}", ""),
            ("virtual_gid_maps", f"static:{delivery.pw_gid}", ""),
            ("biff", "no", ""),
            ("append_dot_mydomain", "no", ""),
            ("readme_directory", "no", ""),
        ]

    def _write_main_cf(self) -> None:
        lines = ["# Written by tests/testbed/postfix.py; snippets and overrides follow via",
                 "# postconf -e.", ""]
        for name, value, why in self._base_parameters():
            if why:
                lines.append(f"# {why}")
            lines.append(f"{name} = {value}")
        (self.config_dir / "main.cf").write_text("\n".join(lines) + "\n")

    def _write_tables(self) -> None:
        # One catch-all Maildir per domain ("@domain  domain/"; the trailing '/' means Maildir).
        # A Maildir per address would need "$1" in a regexp result, which virtual(8) refuses
        # for virtual_mailbox_maps ("regular expression substitution is not allowed").
        lines = [f"@{domain}\t{domain}/\n" for domain in self._mail_domains()]
        (self.config_dir / "virtual_mailbox").write_text("".join(lines))
        if self.relay_routes:
            routes = "".join(f"{dom}\tsmtp:{hop}\n" for dom, hop in self.relay_routes.items())
            (self.config_dir / "transport").write_text(routes)

    def _mail_domains(self) -> list[str]:
        domains = [*self.domains, self.hostname]
        for domain in domains:
            # The domain becomes a directory name below virtual_mailbox_base.
            if not _DOMAIN.fullmatch(domain):
                raise ValueError(f"{domain!r} is not a plain domain name")
        return list(dict.fromkeys(d.lower() for d in domains))

    def _link_queue(self) -> Path:
        """A short path (a symlink) for queue_directory.

        Postfix commands reach the postlog socket by its absolute path, and a unix socket path
        has at most 107 bytes: with a queue_directory longer than ~90 characters (pytest's
        per-test directories are) every postfix/postqueue command dies with "unix-domain name
        too long". Daemons chdir into the queue and use relative paths, so only this link needs
        to be short; the queue itself stays in the instance directory.
        """
        if self._queue_link is None:
            base = tempfile.gettempdir()
            base = base if len(base) <= 20 else "/tmp"
            self._queue_link = Path(tempfile.mkdtemp(prefix="postward-q-", dir=base)) / "q"
        if not self._queue_link.parent.is_dir():  # removed by stop(); start() again
            self._queue_link.parent.mkdir(mode=0o755)
        self._queue_link.parent.chmod(0o755)
        if not self._queue_link.is_symlink():
            self._queue_link.symlink_to(self.queue_dir)
        return self._queue_link

    def _unlink_queue(self) -> None:
        if self._queue_link is not None:
            shutil.rmtree(self._queue_link.parent, ignore_errors=True)  # the link, not its target

    def _prepare_directories(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        # post-install (run by "postfix check") fills the queue directory and creates
        # data_directory owned by postfix; a data_directory made here as root would be refused.
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        self._link_queue()
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        delivery = pwd.getpwnam(DELIVERY_USER)
        os.chown(self.mail_dir, delivery.pw_uid, delivery.pw_gid)

    def configure(self) -> None:
        """Write main.cf/master.cf, then apply snippets and overrides. ``start`` calls this."""
        self._prepare_directories()
        shutil.copyfile(STOCK_MASTER_CF, self.config_dir / "master.cf")
        self._write_main_cf()
        self._write_tables()
        self._rename_stock_services()
        self._postconf("-F", "*/*/chroot = n")
        for snippet in self.snippets:
            self.apply_snippet(snippet)
        if self.overrides:
            self._postconf("-e", *(f"{k} = {v}" for k, v in self.overrides.items()))
        self._configured = True

    def _rename_stock_services(self) -> None:
        for key in self.service_renames:
            entry = self._postconf("-M", key).strip()
            if entry:
                self._postconf("-MX", key)
                self._set_service(key, entry)

    def _set_service(self, key: str, entry: str) -> None:
        name, service_type = key.rsplit("/", 1)
        if key in self.service_renames:
            name = self.service_renames[key]
            entry = f"{name} {entry.split(None, 1)[1]}"
        self._postconf("-M", f"{name}/{service_type} = {entry}")

    def apply_snippet(self, snippet: Snippet | Path) -> None:
        """Apply one snippet to the configuration (``postconf -e`` / ``postconf -M``). On a
        running instance, follow with :meth:`reload`."""
        if isinstance(snippet, Path):
            snippet = Snippet.load(snippet)
        if snippet.kind == "main":
            if snippet.entries:
                self._postconf("-e", *(f"{k} = {v}" for k, v in snippet.entries))
            return
        for key, entry in snippet.entries:
            self._set_service(key, entry)
        self._postconf("-F", "*/*/chroot = n")

    def _settle_config(self) -> None:
        for path in self.config_dir.iterdir():
            if path.is_file():
                settle(path)

    def _postconf(self, *args: str) -> str:
        self._settle_config()  # main.cf may have just been written (by postconf -e, say)
        try:
            return _run([postfix_tool("postconf"), "-c", str(self.config_dir), *args])
        finally:
            self._settle_config()

    def postconf(self, name: str, *, expand: bool = False) -> str:
        """A main.cf parameter's value (``expand=True``: with ``$names`` expanded)."""
        flags = ["-hx"] if expand else ["-h"]
        return self._postconf(*flags, name).rstrip("\n")

    def master_entry(self, key: str) -> str:
        """A master.cf entry such as ``smtp/inet`` (after renames: use the new name)."""
        return self._postconf("-M", key).strip()

    def update(self, params: Mapping[str, str], reload: bool = True) -> None:
        """Set main.cf parameters; reload a running instance so that master picks them up."""
        self._postconf("-e", *(f"{k} = {v}" for k, v in params.items()))
        if reload and self.running():
            self.reload()

    # -- lifecycle ---------------------------------------------------------------------------

    def _postfix(self, *args: str) -> str:
        return _run([postfix_tool("postfix"), "-c", str(self.config_dir), *args])

    def start(self, timeout: float = 30.0) -> PostfixInstance:
        if not self._configured:
            self.configure()
        self._link_queue()
        # What "postfix start" does before master: create queue dirs, set permissions, check.
        self._settle_config()
        self._postfix("check")
        started = "master[{pid}]: daemon started"
        try:
            self._master.start(
                ready=lambda: started.format(pid=self._master.pid) in self.log_text(),
                timeout=timeout,
            )
        except DaemonFailed as e:
            self.stop()
            raise DaemonFailed(
                f"{e}\n--- {self.maillog_path} ---\n{self.log_tail()}\n"
                "(master dies silently on master.cf errors it meets before postlogd runs, such "
                "as a service name it cannot resolve; see `postconf -c "
                f"{self.config_dir} -M`)") from None
        return self

    def running(self) -> bool:
        return self._master.running()

    @property
    def master_pid(self) -> int:
        return self._master.pid

    def pids(self, zombies: bool = False) -> list[int]:
        """Processes of this instance: master's process group, plus anything that carries our
        MAIL_CONFIG in its environment (master hands it down to every child), in case one
        left the group. Zombies (dead, waiting for PID 1 to reap them) only if asked."""
        group = self._master.proc.pid if self._master.proc else None
        marker = f"MAIL_CONFIG={self.config_dir}\0".encode()
        found = []
        for pid in _all_pids():
            info = _state_and_pgid(pid)
            if info is None or (info[0] == "Z" and not zombies):
                continue
            if info[1] == group or marker in _environ(pid):
                found.append(pid)
        return found

    def stop(self, timeout: float = 10.0) -> None:
        """Stop master and all its children; return once none of them is alive.

        Master exits on SIGTERM without waiting for its children, so they end as orphans that
        PID 1 reaps; this machine's PID 1 does that only every ~2 s, so zombies may show in
        ``ps``/``pgrep`` for that long (``pids(zombies=True)``). They hold no sockets or files.
        """
        if self._master.proc is None:
            self._unlink_queue()
            return
        # SIGTERM to the group (master passes it on too), then SIGKILL whatever is left.
        self._master.stop(timeout)
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not self.pids(), timeout=timeout, what=f"{self.name} processes gone")
        self._unlink_queue()

    def reload(self, timeout: float = 20.0) -> None:
        """``postfix reload``, returning once master has re-read its configuration and every
        daemon started under the old one has exited. (An idle smtpd of the old generation
        would otherwise still take the next connection with the old settings.)"""
        pattern = f"master[{self.master_pid}]: reload -- "
        before = self.log_text().count(pattern)
        old_children = set(self.pids()) - {self.master_pid}
        self._postfix("reload")
        wait_until(lambda: self.log_text().count(pattern) > before, timeout=timeout,
                   what=f"{self.name} reload")
        wait_until(lambda: not old_children & set(self.pids()), timeout=timeout,
                   what=f"{self.name} daemons of the old configuration gone")

    def __enter__(self) -> PostfixInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- log ---------------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.maillog_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float = 20.0, start: int = 0) -> re.Match[str]:
        """Poll the log (from character offset ``start``) until regex ``pattern`` matches."""
        regex = re.compile(pattern)
        return wait_until(lambda: regex.search(self.log_text(), start), timeout=timeout,
                          what=f"{pattern!r} in {self.maillog_path}")

    # -- queue -------------------------------------------------------------------------------

    def queue(self) -> list[dict[str, object]]:
        """``postqueue -j``: one dict per queued message (queue_name, queue_id, recipients...)."""
        out = _run([postfix_tool("postqueue"), "-c", str(self.config_dir), "-j"])
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def queue_ids(self) -> list[str]:
        return [str(entry["queue_id"]) for entry in self.queue()]

    def queue_is_empty(self) -> bool:
        return not self.queue()

    def wait_for_empty_queue(self, timeout: float = 20.0) -> None:
        wait_until(self.queue_is_empty, timeout=timeout, what=f"{self.name} queue empty")

    def flush(self) -> None:
        """``postqueue -f``: attempt delivery of all queued (also deferred) mail now."""
        _run([postfix_tool("postqueue"), "-c", str(self.config_dir), "-f"])


# --------------------------------------------------------------------------------------------
# smtp-sink


class SmtpSink:
    """Postfix's ``smtp-sink`` on a private address, keeping every message it receives
    (``-d``: one file per transaction in ``<directory>/dump``). ``extra_args`` pass options
    such as ``-r RCPT`` (4xx to RCPT) or ``-f DATA`` (5xx to DATA)."""

    def __init__(
        self,
        directory: Path,
        address: str,
        port: int | None = None,
        *,
        hostname: str = "sink.testbed.test",
        extra_args: Sequence[str] = (),
        name: str = "smtp-sink",
    ) -> None:
        self.directory = Path(directory)
        self.address = address
        self.port = port or free_port(address)
        self.dump_dir = self.directory / "dump"
        argv = [postfix_tool("smtp-sink"), "-4", "-u", DELIVERY_USER, "-h", hostname,
                "-d", f"{self.dump_dir}/%Y%m%d%H%M%S.", *extra_args,
                f"inet:{address}:{self.port}", "256"]
        self.process = ManagedProcess(name, argv, self.directory / f"{name}.log")

    @property
    def nexthop(self) -> str:
        """For ``relayhost`` or a transport: ``[address]:port``."""
        return f"[{self.address}]:{self.port}"

    def start(self, timeout: float = 20.0) -> SmtpSink:
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        # smtp-sink drops to DELIVERY_USER before it writes dump files.
        user = pwd.getpwnam(DELIVERY_USER)
        os.chown(self.dump_dir, user.pw_uid, user.pw_gid)
        self.process.start(ready=lambda: _listening(self.address, self.port), timeout=timeout)
        return self

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _is_complete(self, path: Path) -> bool:
        # smtp-sink keeps a transaction's file open until the transaction ends.
        if not self.process.running():
            return True
        fd_dir = Path(f"/proc/{self.process.pid}/fd")
        with contextlib.suppress(OSError):
            return all(os.readlink(fd) != str(path) for fd in fd_dir.iterdir())
        return True

    @property
    def dump(self) -> SinkDump:
        return SinkDump(self.dump_dir, self._is_complete)

    def messages(self, recipient: str | None = None) -> list[StoredMessage]:
        return self.dump.messages(recipient)

    def wait_for(
        self, count: int = 1, timeout: float = 20.0, recipient: str | None = None
    ) -> list[StoredMessage]:
        return self.dump.wait_for(count, timeout, recipient)
