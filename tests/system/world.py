"""The container's "internet": a DNS server with the guide's DNSBLs and the DKIM key, a remote MX
that keeps what it receives, and SMTP clients with their own addresses.

All of it runs in the ``world`` namespace (nothing listens in the machine's own). unbound
answers every name itself from ``local-data`` (``local-zone: "." static``: nothing is forwarded
anywhere), so the guide's postfwd.cf runs unchanged: its DNSBL zones (zen.spamhaus.org,
bl.spamcop.net, ...) are answered here. The remote MX is Postfix's ``smtp-sink``, which writes
each message it gets into a file.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path

from tests.system.container import CLIENT_IPS, HOST_IP, WORLD_IP, Network
from tests.testbed.net import wait_until
from tests.testbed.process import ManagedProcess

CLIENT_SCRIPT = Path(__file__).with_name("netns_client.py")
SINK_PORT = 2525
# The guide's blocklists (postfwd.cf's &&DNSBLS) and who is on them.
LISTINGS = {
    "listed3": ("zen.spamhaus.org", "bl.spamcop.net", "safe.dnsbl.sorbs.net"),
    "listed1": ("bl.spamcop.net",),
}


def _reversed(address: str) -> str:
    return ".".join(reversed(address.split(".")))


def _txt(value: str) -> str:
    """A TXT value in unbound's syntax: strings of at most 255 characters."""
    return " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))


class World:
    def __init__(self, network: Network, workdir: Path) -> None:
        self.network = network
        self.workdir = workdir
        self.sink_dir = workdir / "received"
        self._processes: list[ManagedProcess] = []
        self._sink: ManagedProcess | None = None

    def records(self, dkim_txt: dict[str, str]) -> list[str]:
        data = [f"mx.example.test. A {HOST_IP}"]
        for who, zones in LISTINGS.items():
            name = _reversed(CLIENT_IPS[who])
            for zone in zones:
                data.append(f"{name}.{zone}. A 127.0.0.2")
                data.append(f"{name}.{zone}. TXT {_txt(f'listed by {zone}')}")
        for name, value in dkim_txt.items():
            data.append(f"{name}. TXT {_txt(value)}")
        return data

    def start(self, dkim_txt: dict[str, str]) -> None:
        dns_dir = self.workdir / "unbound"
        dns_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "server:",
            f"  interface: {WORLD_IP}",
            "  port: 53",
            f"  access-control: {ipaddress.ip_network(WORLD_IP + '/24', strict=False)} allow",
            '  username: ""', '  chroot: ""', f'  directory: "{dns_dir}"',
            f'  pidfile: "{dns_dir}/unbound.pid"', "  use-syslog: no", "  do-ip6: no",
            "  verbosity: 1",
            # Test names under reserved TLDs and TEST-NET reverse zones: no built-in answers.
            '  local-zone: "test." nodefault',
            '  local-zone: "10.in-addr.arpa." nodefault',
            '  local-zone: "." static',
            *(f"  local-data: '{record}'" for record in self.records(dkim_txt)),
            "remote-control:", "  control-enable: no",
        ]
        conf = dns_dir / "unbound.conf"
        conf.write_text("\n".join(lines) + "\n")
        subprocess.run(["unbound-checkconf", str(conf)], check=True, capture_output=True)
        unbound = ManagedProcess("world-unbound", self.network.in_world(
            ["unbound", "-d", "-c", str(conf)]), dns_dir / "unbound.log")
        self._processes.append(unbound)
        unbound.start(ready=lambda: self._answers("mx.example.test"), timeout=30)

        # smtp-sink writes one file per message. It stays root (-u root): pytest's directories
        # are 0700, out of reach of the "postfix" user it would switch to by default.
        self.sink_dir.mkdir(parents=True, exist_ok=True)
        sink = ManagedProcess("world-smtp-sink", self.network.in_world(
            [self._smtp_sink(), "-u", "root", "-d", f"{self.sink_dir}/%Y%m%d%H%M%S.",
             f"{WORLD_IP}:{SINK_PORT}", "50"]), self.workdir / "smtp-sink.log")
        self._processes.append(sink)
        self._sink = sink
        sink.start(ready=lambda: self._listening(SINK_PORT), timeout=30)

    @staticmethod
    def _smtp_sink() -> str:
        for candidate in ("/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink"):
            if Path(candidate).exists():
                return candidate
        raise FileNotFoundError("smtp-sink (Debian package postfix)")

    def _answers(self, name: str) -> bool:
        out = subprocess.run(self.network.in_world(
            [sys.executable, "-c",
             "import dns.resolver,sys; r=dns.resolver.Resolver(configure=False);"
             f"r.nameservers=['{WORLD_IP}']; r.lifetime=1;"
             f"print(r.resolve('{name}','A')[0])"]), capture_output=True, text=True)
        return out.returncode == 0 and out.stdout.strip() == HOST_IP

    def _listening(self, port: int) -> bool:
        out = subprocess.run(self.network.in_world(
            [sys.executable, "-c",
             f"import socket; socket.create_connection(('{WORLD_IP}', {port}), 1).close()"]),
            capture_output=True)
        return out.returncode == 0

    def stop(self) -> None:
        for process in reversed(self._processes):
            process.stop()

    # -- clients --

    def smtp(self, who: str, *, to: str, subject: str, body: str,
             message_id: str) -> dict[str, list]:  # type: ignore[type-arg]
        """One SMTP transaction from the world address of ``who`` to the container's MX."""
        out = subprocess.run(self.network.in_world(
            ["/usr/bin/python3", "-I", str(CLIENT_SCRIPT), "smtp", "--server", HOST_IP,
             "--source", CLIENT_IPS[who], "--to", to, "--subject", subject,
             "--message-id", message_id, "--body", body]),
            capture_output=True, text=True, timeout=120, check=True)
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def imap(self, action: str, *, user: str, password: str, mailbox: str = "INBOX",
             subject: str = "", target: str = "INBOX") -> dict:  # type: ignore[type-arg]
        """IMAP on the container's own loopback (its namespace), as a local webmail would."""
        out = subprocess.run(self.network.in_host(
            ["/usr/bin/python3", "-I", str(CLIENT_SCRIPT), "imap", action, "--user", user,
             "--password", password, "--mailbox", mailbox, "--subject", subject,
             "--target", target]),
            capture_output=True, text=True, timeout=120, check=True)
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def complete_files(self, exclude: Collection[Path] = ()) -> list[Path]:
        """Messages smtp-sink has finished writing (it keeps a file open until the
        transaction ends), except ``exclude``."""
        assert self._sink is not None
        try:
            open_now = {os.readlink(fd) for fd in Path(f"/proc/{self._sink.pid}/fd").iterdir()}
        except OSError:
            open_now = set()
        return [p for p in sorted(self.sink_dir.iterdir())
                if p.is_file() and p not in exclude and str(p) not in open_now]

    def received(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.sink_dir.iterdir()) if p.is_file()]

    def wait_received(self, count: int, timeout: float = 60) -> list[bytes]:
        wait_until(lambda: len(self.received()) >= count, timeout=timeout, interval=0.5,
                   what=f"{count} message(s) at the remote MX")
        return self.received()
