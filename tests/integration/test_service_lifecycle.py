"""The shared daemon life cycle, in a real process: SIGHUP reloads a good config and keeps the
running one on a bad config; SIGTERM stops accepting, finishes work in flight, exits 0."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import pytest

from tests.testbed.net import wait_until
from tests.testbed.process import ManagedProcess

pytestmark = pytest.mark.integration


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rwb")

    def ask(self, line: str) -> str:
        self.send(line)
        return self.read()

    def send(self, line: str) -> None:
        self.file.write(line.encode() + b"\n")
        self.file.flush()

    def read(self) -> str:
        return self.file.readline().decode().strip()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def line_service(testbed_dir: Path):
    conf = testbed_dir / "postward.conf"
    conf.write_text("[dns]\nnegative_ttl = 60s\n")
    port_file = testbed_dir / "port"
    release = testbed_dir / "release"
    proc = ManagedProcess("line_service",
                          [sys.executable, "-m", "tests.programs.line_service", str(conf),
                           str(port_file), str(release)],
                          testbed_dir / "service.log", cwd=Path(__file__).parents[2])
    proc.start(ready=port_file.exists)
    yield proc, conf, int(port_file.read_text()), release
    proc.stop()


def test_sighup_reloads_a_good_config_and_keeps_the_old_on_errors(line_service) -> None:
    proc, conf, port, _ = line_service
    client = Client(port)
    assert client.ask("q") == "60"

    conf.write_text("[dns]\nnegative_ttl = 2m\n")
    proc.signal(signal.SIGHUP)
    wait_until(lambda: "event=reloaded" in proc.log_tail(), what="reload")
    assert client.ask("q") == "120"

    conf.write_text("[dns]\nnegative_ttl = 5m\ntries = lots\n[redis]\npool_size = 0\n")
    proc.signal(signal.SIGHUP)
    wait_until(lambda: "event=reload_kept_running_config" in proc.log_tail(),
               what="rejected reload")
    log = proc.log_tail()
    assert f"problem=\"{conf}:3: [dns] tries: expected a whole number, got 'lots'\"" in log
    assert f'problem="{conf}:5: [redis] pool_size: must be at least 1, got 0"' in log
    assert proc.running()
    assert client.ask("q") == "120"  # the running config stands
    client.close()


def test_sigterm_finishes_work_in_flight_then_exits_0(line_service) -> None:
    proc, _, port, release = line_service
    client = Client(port)
    client.send("hold")
    wait_until(lambda: "event=request_held" in proc.log_tail(), what="request in flight")

    proc.signal(signal.SIGTERM)
    wait_until(lambda: "event=stopping in_flight=1" in proc.log_tail(), what="stopping")

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    assert wait_until(refused, what="listener closed")
    assert proc.running()  # still busy with the held request

    release.touch()
    assert client.read() == "60"  # the held request got its answer
    assert proc.proc is not None and proc.proc.wait(10) == 0
    assert "event=stopped" in proc.log_tail()
    client.close()


def test_a_bad_config_at_start_exits_2_naming_file_and_line(testbed_dir: Path) -> None:
    import subprocess

    conf = testbed_dir / "postward.conf"
    conf.write_text("[redis]\nurl = redis://127.0.0.1\n\n[metrics]\npolicyd = 192.0.2.1:80\n")
    r = subprocess.run([sys.executable, "-m", "tests.programs.line_service", str(conf),
                        str(testbed_dir / "p"), str(testbed_dir / "r")],
                       capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert r.returncode == 2
    assert f"{conf}:5: [metrics] policyd: 192.0.2.1:80 is not a loopback address" in r.stderr
    assert not (testbed_dir / "p").exists()  # it never started serving
