"""A booted Debian (systemd as PID 1) on a private network, and the "internet" next to it.

Two network namespaces made for the test and deleted after it: ``world`` (DNS server, the
remote MX that receives outbound mail, the SMTP clients with their own addresses) and ``host``
(the container's), joined by one veth pair. Nothing is bound in the machine's own namespace, so
parallel sessions cannot collide. The container boots an overlay over the cached Debian tree
(``debian_tree.base_tree``): the tree stays clean, each run writes only to its upper directory.

Facts from testbed-notes.md that shape this: ``systemd-nspawn`` needs ``--register=no
--keep-unit`` here (no system bus); ``machinectl`` and ``systemctl -M`` do not work, so commands
go in with ``nsenter -t LEADER -a`` where LEADER is the nspawn process's child (the container's
PID 1); SIGTERM to nspawn shuts the container down in ~3 s.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.testbed.net import wait_until

SUBNET = "10.213.0"
WORLD_IP = f"{SUBNET}.1"
HOST_IP = f"{SUBNET}.2"
# The world's SMTP clients: each has its own address, so DNSBLs and greylisting tell them apart.
CLIENT_IPS = {"listed3": f"{SUBNET}.10", "listed1": f"{SUBNET}.11", "clean": f"{SUBNET}.12",
              "stream": f"{SUBNET}.13"}
_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Network:
    world: str
    host: str

    @classmethod
    def create(cls) -> Network:
        tag = secrets.token_hex(3)
        net = cls(world=f"pw-world-{tag}", host=f"pw-host-{tag}")
        _ip("netns", "add", net.world)
        try:
            _ip("netns", "add", net.host)
            _ip("link", "add", f"pww{tag}", "type", "veth", "peer", "name", f"pwh{tag}")
            _ip("link", "set", f"pww{tag}", "netns", net.world)
            _ip("link", "set", f"pwh{tag}", "netns", net.host)
            for ns in (net.world, net.host):
                _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", net.world, "addr", "add", f"{WORLD_IP}/24", "dev", f"pww{tag}")
            for address in CLIENT_IPS.values():
                _ip("-n", net.world, "addr", "add", f"{address}/24", "dev", f"pww{tag}")
            _ip("-n", net.world, "link", "set", f"pww{tag}", "up")
            _ip("-n", net.host, "addr", "add", f"{HOST_IP}/24", "dev", f"pwh{tag}")
            _ip("-n", net.host, "link", "set", f"pwh{tag}", "up")
        except BaseException:
            net.delete()
            raise
        return net

    def delete(self) -> None:
        for ns in (self.world, self.host):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    def in_world(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.world, *argv]

    def in_host(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.host, *argv]


class CommandFailed(RuntimeError):
    pass


def mount_overlay(base: Path, workdir: Path) -> Path:
    """``workdir/root``: ``base`` (never written) under a writable layer in ``workdir``."""
    for d in ("upper", "work", "root"):
        (workdir / d).mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={base},upperdir={workdir / 'upper'},workdir={workdir / 'work'}",
         str(workdir / "root")], check=True, capture_output=True, timeout=30)
    return workdir / "root"


def unmount(root: Path) -> None:
    """The overlay may stay busy for a moment after nspawn's exit; in the end it is detached
    lazily, so no mount outlives the test."""
    for _ in range(20):
        if not os.path.ismount(root):
            return
        if subprocess.run(["umount", str(root)], capture_output=True).returncode == 0:
            return
        time.sleep(0.25)
    subprocess.run(["umount", "-l", str(root)], capture_output=True, check=False)


class Container:
    """Debian booted with systemd-nspawn over ``base`` (read-only lower layer)."""

    def __init__(self, base: Path, workdir: Path, network: Network, name: str) -> None:
        self.base = base
        self.workdir = workdir
        self.network = network
        self.name = name
        self.root = workdir / "root"
        self.log_path = workdir / "console.log"
        self._nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0

    # -- files: the overlay is mounted on the machine, so the test writes into it directly --

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    # -- life --

    def boot(self) -> None:
        mount_overlay(self.base, self.workdir)
        self.write("/etc/hostname", "mx\n")
        self.write("/etc/resolv.conf", f"nameserver {WORLD_IP}\n")
        with self.log_path.open("ab") as log:
            self._nspawn = subprocess.Popen(
                ["systemd-nspawn", "--register=no", "--keep-unit", "-M", self.name,
                 "-D", str(self.root), "--boot", "--console=passive",
                 f"--network-namespace-path=/run/netns/{self.network.host}",
                 "--resolv-conf=off", "--timezone=off", "--link-journal=no"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        wait_until(self._find_leader, timeout=60, interval=0.1, what="container PID 1")
        wait_until(self._booted, timeout=120, interval=0.5, what="systemd in the container")

    def _find_leader(self) -> bool:
        """The container's PID 1: the nspawn child that is PID 1 in its own PID namespace
        (nspawn briefly has a helper child outside it, which must not be taken)."""
        assert self._nspawn is not None
        if self._nspawn.poll() is not None:
            raise CommandFailed(f"systemd-nspawn exited: {self.log_tail()}")
        try:
            tasks = list(Path(f"/proc/{self._nspawn.pid}/task").iterdir())
            children = [int(pid) for task in tasks for pid in
                        (task / "children").read_text().split()]
        except OSError:
            return False  # nspawn is changing under us: look again
        for pid in children:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            nspid = next((line.split()[1:] for line in status.splitlines()
                          if line.startswith("NSpid:")), [])
            if len(nspid) == 2 and nspid[-1] == "1":
                self.leader = pid
                return True
        return False

    def _booted(self) -> bool:
        state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
        # "degraded": some unit of the stock Debian failed (e.g. one needing hardware); the
        # units this test cares about are checked one by one.
        return state in ("running", "degraded")

    def stop(self) -> None:
        if self._nspawn is not None and self._nspawn.poll() is None:
            self._nspawn.send_signal(signal.SIGTERM)
            try:
                self._nspawn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._nspawn.pid, signal.SIGKILL)
                self._nspawn.wait(timeout=10)
        unmount(self.root)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    # -- commands --

    def run(self, argv: Sequence[str], *, input: str | bytes | None = None,
            check: bool = True, timeout: float = 120,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the container: its namespaces, root and a clean environment."""
        environment = [f"{k}={v}" for k, v in {**_ENV, **(env or {})}.items()]
        full = ["nsenter", "-t", str(self.leader), "-a", "--",
                "env", "-i", *environment, *argv]
        data = input.decode() if isinstance(input, bytes) else input
        result = subprocess.run(full, input=data, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise CommandFailed(f"{' '.join(argv)} exited {result.returncode}:\n"
                                f"{result.stdout}\n{result.stderr}")
        return result

    def sh(self, script: str, **kwargs) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
        return self.run(["sh", "-ec", script], **kwargs)

    def unit_active(self, unit: str) -> bool:
        return self.run(["systemctl", "is-active", unit], check=False).stdout.strip() == "active"

    def journal(self, unit: str, lines: int = 40) -> str:
        return self.run(["journalctl", "-u", unit, "-n", str(lines), "--no-pager"],
                        check=False).stdout
