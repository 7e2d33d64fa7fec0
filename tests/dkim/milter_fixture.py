"""A real postward-dkim process for tests, configured the guide's way: an opendkim.conf with
KeyTable, SigningTable (refile:) and TrustedHosts files, next to a postward.conf pointing at the
test bed's Redis and DNS. Listens on the session's private address (TCP, as the guide's
``inet:8891@localhost``) or on a unix socket.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.testbed.net import free_port
from tests.testbed.process import ManagedProcess

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class KeySpec:
    """One signing key: mail From: ``*@domain`` is signed with it."""

    domain: str
    selector: str
    pem: bytes
    algorithm: str = "rsa"


class DkimDaemon:
    def __init__(self, directory: Path, address: str, *, redis_url: str, nameserver: str,
                 keys: Sequence[KeySpec] = (), trusted_hosts: Sequence[str] = ("127.0.0.1",),
                 mode: str = "sv", canonicalization: str = "relaxed/relaxed",
                 unix_socket: bool = False, umask: str = "022",
                 extra_opendkim: str = "", extra_dkim: str = "",
                 metrics_port: int | None = None) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.address = address
        self.port = free_port(address)
        self.socket_path = directory / "dkim.sock"
        self.unix = unix_socket
        keydir = directory / "keys"
        keydir.mkdir(mode=0o700, exist_ok=True)
        key_table, signing_table, ed_table = [], [], []
        for k in keys:
            path = keydir / f"{k.domain}.{k.selector}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(k.pem)
            line = f"{k.domain} {k.domain}:{k.selector}:{path}"
            if k.algorithm == "ed25519":
                ed_table.append(line)
            else:
                key_table.append(line)
                signing_table.append(f"*@{k.domain} {k.domain}")
        (directory / "KeyTable").write_text("\n".join(key_table) + "\n")
        (directory / "SigningTable").write_text("\n".join(signing_table) + "\n")
        (directory / "TrustedHosts").write_text("\n".join(trusted_hosts) + "\n")
        ed_line = ""
        if ed_table:
            (directory / "KeyTableEd25519").write_text("\n".join(ed_table) + "\n")
            ed_line = f"KeyTableEd25519         refile:{directory / 'KeyTableEd25519'}\n"
        sock = f"local:{self.socket_path}" if unix_socket else f"inet:{self.port}@{address}"
        self.opendkim_conf = directory / "opendkim.conf"
        # The guide's opendkim.conf, line for line, with the test's paths and socket.
        self.opendkim_conf.write_text(
            f"Canonicalization        {canonicalization}\n"
            f"ExternalIgnoreList      refile:{directory / 'TrustedHosts'}\n"
            f"InternalHosts           refile:{directory / 'TrustedHosts'}\n"
            f"KeyTable                refile:{directory / 'KeyTable'}\n"
            f"LogWhy                  Yes\n"
            f"MinimumKeyBits          1024\n"
            f"Mode                    {mode}\n"
            f"PidFile                 {directory / 'opendkim.pid'}\n"
            f"SigningTable            refile:{directory / 'SigningTable'}\n"
            f"Socket                  {sock}\n"
            f"Syslog                  Yes\n"
            f"SyslogSuccess           Yes\n"
            f"TemporaryDirectory      /var/tmp\n"
            f"UMask                   {umask}\n"
            f"AuthservID              mx-{self.port}.test\n"
            + ed_line + extra_opendkim)
        self.config = directory / "postward.conf"
        self.config.write_text(
            f"[redis]\nurl = {redis_url}\ntimeout = 300ms\nconnect_timeout = 300ms\n"
            f"retries = 0\n\n[dns]\nnameservers = {nameserver}\ntimeout = 1s\n\n"
            + (f"[metrics]\ndkim = {address}:{metrics_port}\n\n" if metrics_port
               else "[metrics]\nenabled = no\n\n")
            + f"[dkim]\nopendkim_conf = {self.opendkim_conf}\n{extra_dkim}")
        self.authserv_id = f"mx-{self.port}.test"
        self.process = ManagedProcess(
            "postward-dkim",
            [sys.executable, "-m", "postward.dkim", "--config", str(self.config)],
            directory / "dkim.log", cwd=ROOT)

    @property
    def milter(self) -> str:
        """The value for Postfix's smtpd_milters."""
        if self.unix:
            return f"unix:{self.socket_path}"
        return f"inet:{self.address}:{self.port}"

    def start(self) -> DkimDaemon:
        if self.unix:
            self.process.start(ready=lambda: self.socket_path.exists())
        else:
            self.process.start(ready=lambda: _accepts(self.address, self.port))
        return self

    def stop(self) -> int | None:
        return self.process.stop()

    def log_text(self) -> str:
        path = self.directory / "dkim.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture
def make_dkim(testbed_dir: Path, loopback: str) -> Iterator:  # type: ignore[type-arg]
    """``make_dkim(name, redis_url=..., nameserver=..., keys=[KeySpec...], ...)`` -> started."""
    started: list[DkimDaemon] = []

    def make(name: str = "dkim", **options) -> DkimDaemon:  # type: ignore[no-untyped-def]
        daemon = DkimDaemon(testbed_dir / name, loopback, **options)
        started.append(daemon)
        return daemon.start()

    try:
        yield make
    finally:
        for daemon in reversed(started):
            daemon.stop()
