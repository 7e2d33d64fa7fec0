"""A real redis-server (and, for failover setups, a real Sentinel) in a private directory."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.testbed.net import free_port
from tests.testbed.process import ManagedProcess


def _redis_answers(host: str, port: int, password: str | None = None,
                   user: str | None = None) -> bool:
    """True when Redis answers PING (with the given ACL credentials) — the readiness probe."""
    with socket.create_connection((host, port), timeout=1) as s:
        if password is not None:
            auth = f"AUTH {user} {password}\r\n" if user else f"AUTH {password}\r\n"
            s.sendall(auth.encode())
            if not s.recv(64).startswith(b"+OK"):
                return False
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


class RedisServer:
    """redis-server on ``host``:free port and a unix socket, no persistence.

    With ``user``/``password`` it has an ACL user with all rights and the default user disabled,
    as a production setup with ``requirepass``/ACLs would.
    """

    def __init__(self, directory: Path, host: str, user: str | None = None,
                 password: str | None = None) -> None:
        self.directory = directory
        self.host = host
        self.port = free_port(host)
        self.user = user
        self.password = password
        self.unix_socket = directory / "redis.sock"
        self.conf = directory / "redis.conf"
        self.process = ManagedProcess("redis-server", ["redis-server", str(self.conf)],
                                      directory / "redis.log")

    def _config(self) -> str:
        lines = [
            f"bind {self.host}",
            f"port {self.port}",
            f"unixsocket {self.unix_socket}",
            "unixsocketperm 700",
            "daemonize no",
            'save ""',
            "appendonly no",
            f"dir {self.directory}",
            "protected-mode yes",
        ]
        if self.password is not None:
            if self.user:
                lines.append("user default off")
                lines.append(f"user {self.user} on >{self.password} ~* &* +@all")
            else:
                lines.append(f"requirepass {self.password}")
        return "\n".join(lines) + "\n"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.unix_socket}?db=0"

    def start(self) -> RedisServer:
        self.conf.write_text(self._config())
        self.process.start(ready=lambda: _redis_answers(self.host, self.port, self.password,
                                                        self.user))
        return self

    def stop(self) -> None:
        self.process.stop()

    def restart(self) -> None:
        self.stop()
        self.start()


class RedisSentinel:
    """A real Sentinel (``redis-server --sentinel``) watching one master under ``master_name``."""

    def __init__(self, directory: Path, host: str, master: RedisServer,
                 master_name: str = "postward") -> None:
        self.directory = directory
        self.host = host
        self.port = free_port(host)
        self.master = master
        self.master_name = master_name
        self.conf = directory / "sentinel.conf"
        self.process = ManagedProcess("redis-sentinel",
                                      ["redis-server", str(self.conf), "--sentinel"],
                                      directory / "sentinel.log")

    def start(self) -> RedisSentinel:
        m = self.master
        lines = [f"bind {self.host}", f"port {self.port}", "daemonize no",
                 f"dir {self.directory}",
                 f"sentinel monitor {self.master_name} {m.host} {m.port} 1"]
        if m.password is not None:
            if m.user:
                lines.append(f"sentinel auth-user {self.master_name} {m.user}")
            lines.append(f"sentinel auth-pass {self.master_name} {m.password}")
        # Sentinel rewrites its config file, so it must be writable.
        self.conf.write_text("\n".join(lines) + "\n")
        self.process.start(ready=lambda: _redis_answers(self.host, self.port))
        return self

    def stop(self) -> None:
        self.process.stop()
