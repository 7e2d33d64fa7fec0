"""postward-policyd as a process: both listeners, malformed clients, Redis outages, reload, and
two daemons sharing greylisting state through one Redis."""

from __future__ import annotations

import signal
import socket

import pytest

from tests.policyd.daemon_fixture import requests_for
from tests.testbed.net import wait_until
from tests.testbed.redis_server import RedisServer

pytestmark = pytest.mark.integration

RULES = """\
id=BAD ; client_address=192.0.2.0/24 ; action=REJECT listed $$client_address
id=LIMIT ; client_address=203.0.113.7 ; action=rate(client_address/2/3600/450 4.7.1 slow down)
id=GREY ; client_address=198.51.100.0/24 ; action=greylist()
"""


def test_answers_on_tcp_and_unix_socket(make_policyd, redis_server: RedisServer) -> None:
    d = make_policyd(RULES, redis_server)
    reqs = requests_for(["192.0.2.9", "203.0.113.99"])
    assert d.ask(*reqs) == ["REJECT listed 192.0.2.9", "DUNNO"]
    assert d.ask(*reqs, unix=True) == ["REJECT listed 192.0.2.9", "DUNNO"]


def test_rate_limit_counts_in_redis_across_connections(make_policyd,
                                                       redis_server: RedisServer) -> None:
    d = make_policyd(RULES, redis_server)
    [req] = requests_for(["203.0.113.7"])
    answers = [d.ask(req)[0] for _ in range(3)]
    assert answers == ["DUNNO", "DUNNO", "450 4.7.1 slow down"]


def test_malformed_clients_are_dropped_and_the_daemon_goes_on(make_policyd,
                                                              redis_server: RedisServer) -> None:
    d = make_policyd(RULES, redis_server)
    [req] = requests_for(["192.0.2.9"])
    # binary garbage and lines without '=' are skipped; the request still gets its answer
    garbage = b"\x00\xff\xfe garbage\nno equals sign\n"
    payload = garbage + b"request=smtpd_access_policy\nclient_address=192.0.2.9\n\n"
    assert d.exchange(payload, 1) == ["action=REJECT listed 192.0.2.9"]
    # a request that is not a policy request gets the default answer
    assert d.exchange(b"client_address=192.0.2.9\n\n", 1) == ["action=DUNNO"]
    # a line longer than max_line_length: disconnected without an answer
    assert d.exchange(b"request=smtpd_access_policy\nx=" + b"A" * 100_000 + b"\n\n", 1) == []
    # too many attributes: disconnected
    many = b"".join(b"a%d=1\n" % i for i in range(300))
    assert d.exchange(many + b"\n", 1) == []
    # no final empty line, then the client goes away: no answer, no harm
    s = socket.create_connection((d.address, d.port), timeout=5)
    s.sendall(b"request=smtpd_access_policy\nclient_address=1.2.3.4\n")
    s.close()
    # the daemon still serves
    assert d.ask(req) == ["REJECT listed 192.0.2.9"]
    assert d.process.running()
    events = ("garbage_line", "not_a_policy_request", "line_too_long", "too_many_attributes",
              "request_truncated")
    # The truncated connection's end may be read after the last answer: wait for its line.
    wait_until(lambda: all(f"event={e}" in d.process.log_tail(200) for e in events),
               timeout=10, what="every malformed client logged")


def test_redis_down_answers_the_default_action(make_policyd, redis_server: RedisServer) -> None:
    d = make_policyd(RULES, redis_server)
    redis_server.stop()
    reqs = requests_for(["198.51.100.5", "203.0.113.7", "192.0.2.9"])
    reqs[0]["client_name"] = "mx.example.test"
    # greylisting and rate limits need Redis: DUNNO; a plain rule still rejects
    assert d.ask(*reqs) == ["DUNNO", "DUNNO", "REJECT listed 192.0.2.9"]
    assert "event=redis_error" in d.process.log_tail(100)
    redis_server.start()
    assert d.ask(reqs[0])[0].startswith("DEFER_IF_PERMIT")


def test_two_daemons_on_one_redis_share_greylisting(make_policyd,
                                                    redis_server: RedisServer) -> None:
    a = make_policyd(RULES, redis_server)
    b = make_policyd(RULES, redis_server)
    [req] = requests_for(["198.51.100.5"])
    req["client_name"] = "mx.example.test"
    assert a.ask(req)[0].startswith("DEFER_IF_PERMIT Greylisted")
    # after the 1 s delay, the retry reaches the *other* MX host and passes there
    wait_until(lambda: b.ask(req)[0].startswith("PREPEND X-Greylist:"), timeout=20,
               interval=0.3, what="triplet passes through the second daemon")


def test_sighup_with_broken_rules_keeps_the_running_rules(make_policyd,
                                                          redis_server: RedisServer) -> None:
    d = make_policyd(RULES, redis_server)
    [req] = requests_for(["192.0.2.9"])
    d.rules.write_text(RULES + "this is not a rule\n")
    d.process.signal(signal.SIGHUP)
    wait_until(lambda: "event=reload_kept_running_config" in d.process.log_tail(50),
               what="rejected reload")
    assert f"{d.rules}:4: not a rule" in d.process.log_tail(50)
    assert d.ask(req) == ["REJECT listed 192.0.2.9"]
    d.rules.write_text(RULES.replace("REJECT listed", "REJECT now"))
    d.process.signal(signal.SIGHUP)
    wait_until(lambda: d.ask(req) == ["REJECT now 192.0.2.9"], what="good reload")


def test_bad_rule_file_at_start_names_file_and_line(tmp_path) -> None:
    import subprocess
    import sys

    rules = tmp_path / "bad.cf"
    rules.write_text("id=A ; client_address=1.2.3.4 ; action=REJECT\n\n&&UNDEF ; action=OK\n")
    r = subprocess.run([sys.executable, "-m", "postward.policyd", "-f", str(rules), "-C"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert f"{rules}:3: undefined macro '&&UNDEF'" in r.stderr


def _children(pid: int) -> list[int]:
    from pathlib import Path

    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_workers_share_the_sockets_sum_their_metrics_and_are_restarted(
        make_policyd, redis_server: RedisServer, loopback: str) -> None:
    import os
    import urllib.request

    from tests.testbed.net import free_port

    metrics_port = free_port(loopback)
    d = make_policyd(RULES, redis_server, workers=2, metrics_port=metrics_port)
    workers = wait_until(lambda: len(_children(d.process.pid)) == 2 and _children(d.process.pid),
                         what="two workers")
    [req] = requests_for(["192.0.2.9"])
    for _ in range(20):  # separate connections: the kernel spreads them over the workers
        assert d.ask(req) == ["REJECT listed 192.0.2.9"]
    assert d.ask(req, unix=True) == ["REJECT listed 192.0.2.9"]

    def rejects_counted() -> bool:
        body = urllib.request.urlopen(f"http://{loopback}:{metrics_port}/metrics",
                                      timeout=5).read().decode()
        return 'postward_policyd_requests_total{action="REJECT",state="RCPT"} 21.0' in body

    wait_until(rejects_counted, what="both workers' requests summed in one /metrics")

    os.kill(workers[0], signal.SIGKILL)  # a worker dies: the supervisor starts another
    wait_until(lambda: len(_children(d.process.pid)) == 2
               and workers[0] not in _children(d.process.pid), what="worker restarted")
    assert d.ask(req) == ["REJECT listed 192.0.2.9"]
    assert "event=worker_died" in d.process.log_tail(50)

    d.rules.write_text(RULES + "garbage line\n")
    d.process.signal(signal.SIGHUP)  # checked once by the supervisor, workers keep their rules
    wait_until(lambda: "event=reload_kept_running_config" in d.process.log_tail(50),
               what="rejected reload")
    assert d.ask(req) == ["REJECT listed 192.0.2.9"]
    assert d.stop() == 0
