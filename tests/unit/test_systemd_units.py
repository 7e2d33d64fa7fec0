"""The files of systemd/ (three units, sysusers, tmpfiles) checked with systemd's own tools, the
daemons' sd_notify messages, and each daemon at work inside its unit's sandbox.

No systemd runs as PID 1 on the test machines, so the sandbox tests rebuild what matters most
of it the way systemd 252 builds it before it execs a daemon: the seccomp filters of
``SystemCallFilter=`` (the groups expanded by ``systemd-analyze syscall-filter``),
``SystemCallErrorNumber=``, ``RestrictAddressFamilies=`` and ``MemoryDenyWriteExecute=`` (a
seccomp filter in 252, refusing mmap with PROT_WRITE|PROT_EXEC and any mprotect to PROT_EXEC;
the kernel's own PR_SET_MDWE is set on top where the kernel has it), loaded with libseccomp,
with an empty capability bounding set and no_new_privs (setpriv). A daemon needing a system call
or a writable+executable mapping the units forbid fails here, not on an admin's server. Not
rebuilt: the file-system view (ProtectSystem=, PrivateTmp=, ...) and the user (the daemons run
as root without capabilities, since a checkout may be unreadable to others).

Run as ``python -m tests.unit.test_systemd_units UNIT -- ARGV...`` this module is that
launcher: it loads the filters UNIT asks for, then execs ARGV.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import mmap
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from postward.core import sd_notify

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
UNITS = ("postward-policyd.service", "postward-dkim.service", "postward-classifierd.service")
MAX_EXPOSURE = 2.0
SANDBOX_START = "# The same sandbox in the three units"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, in order (sections are not needed here)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


# -- the files, as systemd's tools see them ----------------------------------------------------

def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """In a root of their own, as the package installs them: verify checks that ExecStart= and
    ExecReload= exist there (stubs), and needs the targets of the default dependencies."""
    analyze = _tool("systemd-analyze")
    unit_dir = tmp_path / "lib/systemd/system"
    unit_dir.mkdir(parents=True)
    for target in Path("/lib/systemd/system").glob("*.target"):
        shutil.copy(target, unit_dir)
    for unit in UNITS:
        shutil.copy(SYSTEMD / unit, unit_dir)
        for key in ("ExecStart", "ExecReload"):
            for command in unit_settings(SYSTEMD / unit)[key]:
                stub = tmp_path / command.split()[0].lstrip("/")
                stub.parent.mkdir(parents=True, exist_ok=True)
                stub.write_text("#!/bin/sh\n")
                stub.chmod(0o755)
    done = subprocess.run([analyze, "verify", f"--root={tmp_path}", *UNITS],
                          capture_output=True, text=True, timeout=60)
    # An unknown or unparsable setting is only a warning (exit 0): any output is a failure.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize("unit", UNITS)
def test_exposure_is_low(unit: str, capsys: pytest.CaptureFixture[str]) -> None:
    analyze = _tool("systemd-analyze")
    done = subprocess.run([analyze, "security", "--offline=yes", "--no-pager",
                           str(SYSTEMD / unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert found, done.stdout
    with capsys.disabled():  # in the CI log even when the test passes
        print(f"\n{unit}: exposure {found.group(1)}")
    assert float(found.group(1)) <= MAX_EXPOSURE, done.stdout
    assert done.stderr == ""


def test_the_units_share_one_sandbox_and_what_the_package_relies_on() -> None:
    sandboxes = {(SYSTEMD / u).read_text().split(SANDBOX_START, 1)[1] for u in UNITS}
    assert len(sandboxes) == 1, "the hardening block differs between the units"
    for unit in UNITS:
        s = unit_settings(SYSTEMD / unit)
        daemon = unit.removesuffix(".service")
        assert s["ExecStart"][0].startswith(f"/opt/postward/bin/{daemon} ")
        assert "--config /etc/postward/postward.conf" in s["ExecStart"][0]
        signal_name = "USR1" if daemon == "postward-dkim" else "HUP"  # libmilter owns HUP
        assert s["ExecReload"] == [f"/bin/kill -{signal_name} $MAINPID"]
        assert (s["Type"], s["NotifyAccess"], s["Restart"]) == (["notify"], ["main"],
                                                                ["on-failure"])
        assert (s["User"], s["Group"]) == (["postward"], ["postward"])
        # /run/postward is shared: no unit may remove it (and another's socket) on stop.
        assert (s["RuntimeDirectory"], s["RuntimeDirectoryPreserve"]) == (["postward"], ["yes"])
        assert s["MemoryDenyWriteExecute"] == ["yes"]
        assert "PrivateUsers" not in s and "ProcSubset" not in s  # see docs/systemd.md


def _sysusers_root(root: Path, *extra: str) -> None:
    sysusers = _tool("systemd-sysusers")
    (root / "etc").mkdir(parents=True, exist_ok=True)
    files = [str(SYSTEMD / "postward.sysusers")]
    for n, line in enumerate(extra):
        (root / f"extra{n}.conf").write_text(line + "\n")
        files.append(str(root / f"extra{n}.conf"))
    for file in files:
        done = subprocess.run([sysusers, f"--root={root}", file], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr


def _ids(root: Path, database: str) -> dict[str, int]:
    lines = (root / "etc" / database).read_text().splitlines()
    return {f[0]: int(f[2]) for f in (line.split(":") for line in lines)}


def test_sysusers_makes_the_postward_system_user(tmp_path: Path) -> None:
    sysusers = _tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    dry = subprocess.run([sysusers, "--dry-run", f"--root={tmp_path}",
                          str(SYSTEMD / "postward.sysusers")],
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert not (tmp_path / "etc/passwd").exists()
    _sysusers_root(tmp_path)
    [entry] = [line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()
               if line.startswith("postward:")]
    assert entry[5:] == ["/var/lib/postward", "/usr/sbin/nologin"]
    assert int(entry[2]) < 1000 and entry[3] == str(_ids(tmp_path, "group")["postward"])


def test_tmpfiles_makes_the_directories(tmp_path: Path) -> None:
    tmpfiles = _tool("systemd-tmpfiles")
    _sysusers_root(tmp_path, "g postfix -")  # Postfix's group, as its package makes it
    done = subprocess.run([tmpfiles, f"--root={tmp_path}", "--create",
                           str(SYSTEMD / "postward.tmpfiles")],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    users, groups = _ids(tmp_path, "passwd"), _ids(tmp_path, "group")
    expected = {"run/postward": (0o750, "postward", "postward"),
                "var/lib/postward": (0o750, "postward", "postward"),
                # setgid: sockets made there get group postfix, so chrooted smtpd may use them
                "var/spool/postfix/postward": (0o2750, "postward", "postfix")}
    for path, (mode, user, group) in expected.items():
        st = (tmp_path / path).stat()
        assert (oct(st.st_mode & 0o7777), st.st_uid, st.st_gid) == \
            (oct(mode), users[user], groups[group]), path


# -- sd_notify -----------------------------------------------------------------------------------

class NotifySocket:
    """The systemd end of $NOTIFY_SOCKET: every datagram with the pid that sent it."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.messages: list[tuple[int, str]] = []  # received, not yet waited for
        self.seen: list[tuple[int, str]] = []      # waited for

    def wait_for(self, line: str, timeout: float = 20.0) -> int:
        """Read until a datagram holds ``line``; the pid that sent it."""
        deadline = time.monotonic() + timeout
        while True:
            for pid, text in self.messages:
                if line in text.split("\n"):
                    self.messages.remove((pid, text))
                    self.seen.append((pid, text))
                    return pid
            left = deadline - time.monotonic()
            assert left > 0, f"no {line} in {self.messages}"
            self.sock.settimeout(left)
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue  # the assert above says what was missing
            pid = -1
            for level, kind, cdata in ancillary:
                if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                    pid = struct.unpack("iII", cdata[:12])[0]
            self.messages.append((pid, data.decode()))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, NotifySocket]]:
    directory = tempfile.mkdtemp(prefix="pwn-")  # short: a socket path holds 107 bytes
    path = os.path.join(directory, "notify")
    listener = NotifySocket(path)
    try:
        yield path, listener
    finally:
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_notify_sends_one_datagram_to_the_socket(notify_socket, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path, listener = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sd_notify.notify(sd_notify.READY, sd_notify.status("serving\non two lines"))
    assert listener.wait_for("READY=1") == os.getpid()
    assert listener.seen == [(os.getpid(), "READY=1\nSTATUS=serving on two lines")]


def test_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"postward-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = NotifySocket("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify.notify(sd_notify.STOPPING)
        assert listener.wait_for("STOPPING=1") == os.getpid()
    finally:
        listener.close()


def test_notify_without_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sd_notify.notify(sd_notify.READY)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert not sd_notify.notify(sd_notify.READY)  # no error: the daemon serves on
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert not sd_notify.notify(sd_notify.READY)
    sd_notify.forget()
    assert "NOTIFY_SOCKET" not in os.environ


# -- each daemon in its unit's sandbox, telling systemd how it is --------------------------------

def _sandboxed(process, unit: str, notify_path: str):  # type: ignore[no-untyped-def]
    """``process`` (a test-bed ManagedProcess) started through this module's launcher."""
    from tests.testbed.process import ManagedProcess

    if ctypes.util.find_library("seccomp") is None:
        pytest.skip("libseccomp is not installed")
    setpriv = _tool("setpriv")
    argv = [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs",
            sys.executable, "-m", "tests.unit.test_systemd_units", str(SYSTEMD / unit),
            "--", *process.argv]
    return ManagedProcess(process.name, argv, process.log_path,
                          env={**os.environ, "NOTIFY_SOCKET": notify_path}, cwd=ROOT)


def _stop_as_systemd(process, listener: NotifySocket) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM to the main process alone (KillMode=mixed): it drains and exits 0."""
    os.kill(process.pid, signal.SIGTERM)
    assert listener.wait_for("STOPPING=1") == process.pid
    assert process.proc.wait(30) == 0, process.log_tail()


def _reload_then_stop(process, listener: NotifySocket, reload_signal: int) -> None:  # type: ignore[no-untyped-def]
    """ExecReload's signal (RELOADING=1, then READY=1), then a stop as systemd does it, and a
    log with no error and nothing the sandbox refused."""
    process.signal(reload_signal)
    assert listener.wait_for("RELOADING=1") == process.pid
    assert listener.wait_for("READY=1") == process.pid
    _stop_as_systemd(process, listener)
    _check_clean(process, listener)


def _check_clean(process, listener: NotifySocket) -> None:  # type: ignore[no-untyped-def]
    log = process.log_path.read_text(errors="replace")
    assert "sandbox: filters loaded" in log, log
    assert "level=error" not in log and "not permitted" not in log.lower(), log
    others = [m for m in listener.seen + listener.messages if m[0] != process.pid]
    assert others == [], "only the main process may notify (NotifyAccess=main)"


@pytest.mark.integration
def test_policyd_with_workers_in_its_sandbox(notify_socket, redis_server, dkim_dns,  # type: ignore[no-untyped-def]
                                            testbed_dir, loopback) -> None:
    from tests.policyd.daemon_fixture import PolicyDaemon, requests_for
    from tests.testbed.dns_fixtures import CLIENT_CLEAN, CLIENT_ON_THREE
    from tests.testbed.net import free_port

    path, listener = notify_socket
    metrics = free_port(loopback)
    rules = "id=RBL ; rbl=dnsbl-a.test ; action=REJECT listed\nid=GREY ; action=greylist()\n"
    (testbed_dir / "policyd").mkdir()
    daemon = PolicyDaemon(testbed_dir / "policyd", loopback, rules, redis_server.url,
                          dkim_dns.nameserver, workers=2, metrics_port=metrics)
    daemon.process = _sandboxed(daemon.process, "postward-policyd.service", path)
    daemon.start()
    try:
        # The supervisor reports, once, for the unit; its workers keep quiet.
        assert listener.wait_for("READY=1") == daemon.process.pid
        answers = daemon.ask(*requests_for([CLIENT_ON_THREE, CLIENT_CLEAN]))
        assert answers[0].startswith("REJECT listed") and answers[1].startswith("DEFER"), \
            answers
        import urllib.request

        body = urllib.request.urlopen(f"http://{loopback}:{metrics}/metrics",
                                      timeout=10).read().decode()
        assert "postward_policyd_requests_total" in body
        _reload_then_stop(daemon.process, listener, signal.SIGHUP)
    finally:
        daemon.stop()


@pytest.mark.integration
def test_dkim_in_its_sandbox(notify_socket, redis_server, dkim_dns, dkim_keys,  # type: ignore[no-untyped-def]
                             testbed_dir, loopback) -> None:
    from tests.dkim.milter_fixture import DkimDaemon, KeySpec
    from tests.testbed.mail import make_message
    from tests.testbed.milter_client import EomResult, one_message

    path, listener = notify_socket
    key = dkim_keys.rsa2048
    daemon = DkimDaemon(testbed_dir / "dkim", loopback, redis_url=redis_server.url,
                        nameserver=dkim_dns.nameserver,
                        keys=[KeySpec("example.test", key.selector, key.private_pem)])
    daemon.process = _sandboxed(daemon.process, "postward-dkim.service", path)
    daemon.start()

    def run(message: bytes, client_ip: str) -> EomResult:
        return one_message((daemon.address, daemon.port), message, client_ip)

    try:
        assert listener.wait_for("READY=1") == daemon.process.pid
        message = make_message("alice@example.test", "bob@receiver.test", subject="sandbox",
                               body="Hello Bob,\n\nsee you.\n").as_bytes()
        [signature] = run(message, "127.0.0.1").header("DKIM-Signature")  # cryptography
        signed = (b"DKIM-Signature:" + signature + b"\n" + message).replace(b"\n", b"\r\n")
        results = b" ".join(run(signed, "203.0.113.10").header("Authentication-Results"))
        assert b"dkim=pass" in results, results  # the key fetched through pycares and Redis
        _reload_then_stop(daemon.process, listener, signal.SIGUSR1)
    finally:
        daemon.stop()


@pytest.mark.integration
def test_classifierd_in_its_sandbox(notify_socket, redis_server, testbed_dir) -> None:  # type: ignore[no-untyped-def]
    from postward.classifier.filter_client import ask
    from tests.classifier.daemon_fixture import ClassifierDaemon
    from tests.testbed.mail import make_message

    path, listener = notify_socket
    daemon = ClassifierDaemon(testbed_dir / "classifierd", redis_server.url, "/bin/true")
    daemon.process = _sandboxed(daemon.process, "postward-classifierd.service", path)
    try:
        daemon.start()
        assert listener.wait_for("READY=1") == daemon.process.pid
        message = make_message("s@sender.test", "bob@example.test", subject="cheap pills",
                               body="Buy cheap pills now.\n").as_bytes()
        fields = [("user", "bob@example.test"), ("sender", "s@sender.test"),
                  ("recipient", "bob@example.test")]
        code, text, head, _extra = ask(str(daemon.socket_path), "PROCESS", fields, message)
        assert code == 200 and dict(head).get("result"), (code, text, head)
        _reload_then_stop(daemon.process, listener, signal.SIGHUP)
    finally:
        daemon.stop()
        daemon.remove()


# -- the launcher ----------------------------------------------------------------------------------

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ, SCMP_CMP_GE, SCMP_CMP_MASKED_EQ = 4, 5, 7
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
SHM_EXEC = 0o100000


def _errno_action(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


Rule = tuple[int, str, list[tuple[int, int, int, int]]]  # action, system call, argument tests


class _Seccomp:
    def __init__(self) -> None:
        lib = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_rule_add_exact_array.argtypes = [
            ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
            ctypes.POINTER(_ArgCmp)]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        self.lib = lib

    def load(self, default: int, rules: list[Rule]) -> None:
        """One filter, as systemd loads one per setting (the kernel applies them all)."""
        ctx = self.lib.seccomp_init(default)
        try:
            for action, name, tests in rules:
                number = self.lib.seccomp_syscall_resolve_name(name.encode())
                if number < 0:
                    continue  # not a system call of this architecture (systemd skips it too)
                array = (_ArgCmp * max(1, len(tests)))(*(_ArgCmp(*t) for t in tests))
                r = self.lib.seccomp_rule_add_exact_array(ctx, action, number, len(tests),
                                                          array)
                if r < 0 and r != -errno.EDOM:  # EDOM: multiplexed here; systemd ignores it
                    raise OSError(-r, f"seccomp rule for {name}")
            r = self.lib.seccomp_load(ctx)
            if r < 0:
                raise OSError(-r, "seccomp_load")
        finally:
            self.lib.seccomp_release(ctx)


def _syscall_groups() -> dict[str, list[str]]:
    text = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"],
                          capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def _expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out |= _expand(groups[name], groups) if name.startswith("@") else {name}
    return out


def _allowed_syscalls(settings: dict[str, list[str]]) -> set[str]:
    """SystemCallFilter= as systemd reads it: an allow list (with @default added, as systemd
    does), then each ``~`` line takes its calls out again."""
    groups = _syscall_groups()
    allowed = _expand(["@default"], groups)
    for value in settings["SystemCallFilter"]:
        if value.startswith("~"):
            allowed -= _expand(value[1:].split(), groups)
        else:
            allowed |= _expand(value.split(), groups)
    return allowed


def _sandbox_main(argv: list[str]) -> int:
    unit, command = argv[0], argv[argv.index("--") + 1:]
    settings = unit_settings(Path(unit))
    seccomp = _Seccomp()
    if settings.get("MemoryDenyWriteExecute") == ["yes"]:
        wx, refuse = mmap.PROT_WRITE | mmap.PROT_EXEC, _errno_action(errno.EPERM)
        seccomp.load(SCMP_ACT_ALLOW, [
            (refuse, "mmap", [(2, SCMP_CMP_MASKED_EQ, wx, wx)]),
            (refuse, "mprotect", [(2, SCMP_CMP_MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC)]),
            (refuse, "pkey_mprotect", [(2, SCMP_CMP_MASKED_EQ, mmap.PROT_EXEC,
                                        mmap.PROT_EXEC)]),
            (refuse, "shmat", [(2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC)])])
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            print("sandbox: the kernel has no PR_SET_MDWE; seccomp alone", file=sys.stderr)
        try:  # the filter must bite, or this test proves nothing
            mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | wx)
            raise SystemExit("sandbox: a writable+executable mapping was allowed")
        except OSError:
            pass
    families = {getattr(socket, f) for f in settings["RestrictAddressFamilies"][-1].split()}
    no_family = _errno_action(errno.EAFNOSUPPORT)
    seccomp.load(SCMP_ACT_ALLOW,
                 [(no_family, "socket", [(0, SCMP_CMP_EQ, f, 0)])
                  for f in range(64) if f not in families]
                 + [(no_family, "socket", [(0, SCMP_CMP_GE, 64, 0)])])
    # Last, as systemd does: it may forbid the calls that load filters.
    number = getattr(errno, settings.get("SystemCallErrorNumber", ["EPERM"])[-1])
    seccomp.load(_errno_action(number),
                 [(SCMP_ACT_ALLOW, name, []) for name in sorted(_allowed_syscalls(settings))])
    print(f"sandbox: filters loaded from {Path(unit).name}", file=sys.stderr, flush=True)
    with contextlib.suppress(OSError):
        os.execv(command[0], command)
    return 127


if __name__ == "__main__":
    raise SystemExit(_sandbox_main(sys.argv[1:]))
