"""A real postward-policyd process for tests: its own postward.conf pointing at the test bed's
Redis and DNS, listening on the session's private address (TCP) and a unix socket."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.testbed.dns_servers import DnsTestbed
from tests.testbed.net import free_port
from tests.testbed.process import ManagedProcess
from tests.testbed.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]


class PolicyDaemon:
    def __init__(self, directory: Path, address: str, rules: str, redis_url: str,
                 nameserver: str | None, extra: str = "", workers: int = 1,
                 metrics_port: int | None = None) -> None:
        self.directory = directory
        self.address = address
        self.port = free_port(address)
        self.socket_path = directory / "policy.sock"
        self.rules = directory / "rules.cf"
        self.rules.write_text(rules)
        self.config = directory / "postward.conf"
        dns = f"[dns]\nnameservers = {nameserver}\ntimeout = 1s\n" if nameserver else ""
        self.config.write_text(
            f"[redis]\nurl = {redis_url}\ntimeout = 300ms\nconnect_timeout = 300ms\n"
            f"retries = 0\n\n{dns}\n"
            + (f"[metrics]\npolicyd = {address}:{metrics_port}\n\n" if metrics_port
               else "[metrics]\nenabled = no\n\n") +
            f"[policyd]\nlisten = {address}:{self.port} unix:{self.socket_path}\n"
            f"rules = {self.rules}\nnodns = {'no' if nameserver else 'yes'}\n"
            f"request_budget = 5s\nworkers = {workers}\n\n"
            f"[greylist]\ndelay = 1s\nwhitelist_clients =\nwhitelist_recipients =\n"
            f"hostname = mx.test\n{extra}")
        self.process = ManagedProcess(
            "postward-policyd",
            [sys.executable, "-m", "postward.policyd", "--daemon", "--config", str(self.config)],
            directory / "policyd.log", cwd=ROOT)

    @property
    def service(self) -> str:
        """The value for Postfix's check_policy_service."""
        return f"inet:{self.address}:{self.port}"

    def start(self) -> PolicyDaemon:
        self.process.start(ready=lambda: self.socket_path.exists() and _accepts(self.address,
                                                                               self.port))
        return self

    def stop(self) -> int | None:
        return self.process.stop()

    def ask(self, *requests: dict[str, str], unix: bool = False) -> list[str]:
        """Send requests over one connection; the answers' action texts."""
        payload = b"".join(_encode(r) for r in requests)
        return [a.removeprefix("action=") for a in self.exchange(payload, len(requests), unix)]

    def exchange(self, payload: bytes, answers: int, unix: bool = False) -> list[str]:
        sock = _connect(self, unix)
        try:
            sock.sendall(payload)
            f = sock.makefile("rb")
            out = []
            for _ in range(answers):
                line = f.readline().decode().rstrip("\n")
                blank = f.readline()
                if not line or blank != b"\n":
                    break
                out.append(line)
            return out
        finally:
            sock.close()


def _encode(request: dict[str, str]) -> bytes:
    body = {"request": "smtpd_access_policy", **request}
    return ("".join(f"{k}={v}\n" for k, v in body.items()) + "\n").encode()


def _connect(daemon: PolicyDaemon, unix: bool) -> socket.socket:
    if unix:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(str(daemon.socket_path))
        return s
    return socket.create_connection((daemon.address, daemon.port), timeout=10)


def _accepts(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=1):
        return True


@pytest.fixture
def make_policyd(testbed_dir: Path, loopback: str) -> Iterator:
    started: list[PolicyDaemon] = []

    def make(rules: str, redis: RedisServer, dns: DnsTestbed | None = None,
             extra: str = "", workers: int = 1, metrics_port: int | None = None
             ) -> PolicyDaemon:
        d = testbed_dir / f"policyd{len(started)}"
        d.mkdir()
        daemon = PolicyDaemon(d, loopback, rules, redis.url, dns.nameserver if dns else None,
                              extra, workers, metrics_port)
        started.append(daemon)
        return daemon.start()

    yield make
    for daemon in started:
        daemon.stop()


def requests_for(clients: Sequence[str]) -> list[dict[str, str]]:
    return [{"protocol_state": "RCPT", "client_address": c, "client_name": "unknown",
             "sender": "s@sender.test", "recipient": "u@example.test"} for c in clients]
