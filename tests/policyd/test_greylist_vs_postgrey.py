"""Differential tests: the real postgrey 1.37 and the Greylister answer the same requests alike.

postgrey takes "now" from a request's ``policy_test_time`` attribute (/usr/sbin/postgrey l. 322,
its test hook), so both run one timeline of simulated seconds: nothing sleeps. Not comparable so:
max_age expiry (postgrey prunes on the real clock) and the header's %d (real time; left out).
Two finer checks run postgrey's own Perl subs, cut out of /usr/sbin/postgrey, on hypothesis'
inputs: sender normalisation, and whitelist line parsing with matching.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postward.core.metrics import Metrics
from postward.core.redis_store import RedisStore
from postward.core.settings import RedisSettings
from postward.policyd.greylist import Greylister, normalise_sender
from postward.policyd.greylist_lists import GreylistLists
from postward.policyd.greylist_settings import DEBIAN_CLIENT_FILES, GreylistSettings
from tests.testbed.net import free_port
from tests.testbed.process import ManagedProcess
from tests.testbed.redis_server import RedisServer

POSTGREY = Path("/usr/sbin/postgrey")
T0 = 1_700_000_000
DAY = 86400
TEXT = "Greylisted for %s seconds, see https://postgrey.schweikert.ch/help/%r.html"
HEADER = "X-Greylist: delayed %t seconds by postgrey-%v at %h"  # no %d: postgrey uses real time


def _unavailable() -> str | None:
    if not POSTGREY.exists():
        return "postgrey is not installed (apt-get install postgrey)"
    if os.geteuid() != 0:
        return "postgrey is run as its own user, which needs root"
    try:
        pwd.getpwnam("postgrey")
    except KeyError:
        return "no postgrey user"
    return None


pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))]


class PolicyClient:
    """Postfix's side of the policy protocol, on one connection kept open (as smtpd does)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.file = self.sock.makefile("rwb")

    def ask(self, attributes: dict[str, str]) -> str:
        lines = [f"{k}={v}\n" for k, v in attributes.items()]
        self.file.write(("".join(lines) + "\n").encode())
        self.file.flush()
        answer = self.file.readline().decode().rstrip("\n")
        assert self.file.readline() == b"\n", "an answer is one line and a blank one"
        return answer

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@dataclass
class Postgrey:
    """postgrey on a private address, as user postgrey, with its own database and whitelists."""

    directory: Path
    host: str
    port: int = 0
    process: ManagedProcess | None = None
    client_files: list[str] = field(default_factory=list)
    recipient_files: list[str] = field(default_factory=list)

    def start(self, clients: str, recipients: str) -> Postgrey:
        dbdir = self.directory / "db"
        dbdir.mkdir()
        shutil.chown(dbdir, "postgrey", "postgrey")
        local_clients = self.directory / "whitelist_clients.local"
        local_clients.write_text(clients)
        local_recipients = self.directory / "whitelist_recipients"
        local_recipients.write_text(recipients)
        self.client_files = [*DEBIAN_CLIENT_FILES[:1], str(local_clients)]
        self.recipient_files = [str(local_recipients)]
        self.port = free_port(self.host)
        argv = [str(POSTGREY), f"--inet={self.host}:{self.port}", f"--dbdir={dbdir}",
                "--user=postgrey", "--group=postgrey", "--hostname=mx.test",
                f"--greylist-text={TEXT}", f"--x-greylist-header={HEADER}",
                *(f"--whitelist-clients={f}" for f in self.client_files),
                *(f"--whitelist-recipients={f}" for f in self.recipient_files)]
        self.process = ManagedProcess("postgrey", argv, self.directory / "postgrey.log")
        # Ready once it accepts: a refused connection raises OSError, which start() retries.
        self.process.start(ready=lambda: socket.create_connection(
            (self.host, self.port), timeout=1).close() is None)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


class StepClock:
    """A clock set to each step's time; unlike FakeClock it may go back (clock skew)."""

    def __init__(self) -> None:
        self.now = float(T0)

    def time(self) -> float:
        return self.now

    monotonic = time


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: list[tuple[int, dict[str, str]]]  # (seconds after T0, request attributes)
    clients: str = ""  # extra whitelist_clients lines
    recipients: str = "postmaster@\nabuse@\n"


def request(**overrides: str) -> dict[str, str]:
    r = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
         "client_address": "192.0.2.7", "client_name": "mail.sender.test",
         "reverse_client_name": "mail.sender.test", "helo_name": "mail.sender.test",
         "sender": "alice@sender.test", "recipient": "bob@example.org", "queue_id": "",
         "instance": "m0", "size": "0", "etrn_domain": ""}
    r.update(overrides)
    return r


def _senders() -> list[tuple[str, str]]:
    """Pairs that postgrey folds into one triplet, or keeps apart."""
    return [("prvs=1234567890=bob@batv.test", "prvs=0987654321=bob@batv.test"),
            ("prvs=bob=1234567890@batv.test", "prvs=bob=abcdefghij@batv.test"),
            ("PRVS=1234567890=carl@batv.test", "PRVS=0987654321=carl@batv.test"),
            ("list+bounce-77@l.test", "list+other@l.test"),
            ("bounce-1-22@v.test", "bounce-333-4@v.test"),
            ("news2024@v.test", "news2025@v.test"),
            ("Mixed.Case@Sender.TEST", "mixed.case@sender.test"),
            ("", ""),
            ("a@b@c.test", "a@b@c.test"),
            ("SRS0=HHH=TT=orig.test=user@fwd.test", "SRS0=HHH=TT=orig.test=user@fwd.test")]


def _awl_steps() -> list[tuple[int, dict[str, str]]]:
    steps, t = [], 0
    for n in range(7):  # the fifth pass is one within the hour of another: it does not count
        sender = f"u{n}@s.test"
        steps += [(t, request(sender=sender, instance=f"a{n}")),
                  (t + 300, request(sender=sender, instance=f"b{n}"))]
        t += 3600 if n != 3 else 600
    return [*steps, (t, request(sender="brand-new@s.test", instance="z")),
            (t, request(sender="brand-new@s.test", client_address="192.0.2.8"))]


SCENARIOS = [
    Scenario("life-of-a-triplet", [
        (0, request()), (100, request()), (299, request()), (300, request(instance="m1")),
        (301, request(instance="m2")), (10 * DAY, request(instance="m3"))]),
    Scenario("one-header-per-message", [
        (0, request(recipient="r1@example.org")), (0, request(recipient="r2@example.org")),
        (400, request(recipient="r1@example.org", instance="m1")),
        (400, request(recipient="r2@example.org", instance="m1")),
        (401, request(recipient="r3@example.org", instance="m1"))]),
    Scenario("retry-window", [
        (0, request(sender="a@s.test")), (0, request(sender="b@s.test")),
        (100, request(sender="b@s.test")),  # an early retry: last-seen moves, first-seen not
        (2 * DAY, request(sender="a@s.test", instance="m1")),
        (2 * DAY + 1, request(sender="b@s.test", instance="m2")),
        (2 * DAY + 301, request(sender="b@s.test", instance="m3"))]),
    Scenario("subnets", [
        (0, request(client_address="192.0.2.7")),
        (0, request(client_address="2001:db8:1:2::25")),
        (300, request(client_address="192.0.3.7", instance="m1")),
        (300, request(client_address="192.0.2.200", instance="m2")),
        (300, request(client_address="2001:db8:1:3::25", instance="m3")),
        (300, request(client_address="2001:db8:1:2:ffff::9", instance="m4")),
        (300, request(client_address="::ffff:192.0.2.7", instance="m5"))]),
    Scenario("senders",
             [(0, request(sender=a, instance=f"a{i}")) for i, (a, _) in enumerate(_senders())]
             + [(300, request(sender=b, instance=f"b{i}"))
                for i, (_, b) in enumerate(_senders())]
             + [(300, request(recipient="Bob+x@Example.ORG", instance="c")),
                (300, request(recipient="BOB@EXAMPLE.ORG", instance="d"))]),
    Scenario("whitelists", [
        (0, request(client_name=name, client_address=address, instance=f"w{i}"))
        for i, (name, address) in enumerate([
            ("mail-ot1-f41.google.com", "192.0.2.1"), ("ms-smtp-07.nyroc.rr.com", "192.0.2.1"),
            ("notgoogle.com", "192.0.2.1"), ("unknown", "195.235.39.200"),
            ("unknown", "51.4.80.31"), ("unknown", "51.4.80.32"),
            ("unknown", "2a01:4180:4050:400::25"), ("unknown", "10.20.0.9"),
            ("unknown", "10.20.1.9"), ("unknown", "8.1.1.1"), ("unknown", "10.1.1.1"),
            ("relay7.isp.test", "192.0.2.1"), ("MX.Partner.Test", "192.0.2.1")])]
        + [(0, request(recipient=r, instance=f"r{i}")) for i, r in enumerate([
            "postmaster@example.org", "Abuse+spam@example.org", "nogrey@example.org",
            "x@list.example.net", "x@example.nett", "list-owner@example.org"])],
        clients="partner.test\n/^relay\\d+\\./\n10.20\n010.1.1.1\n300.1.1.1\nbad line\n",
        recipients="postmaster@\nabuse@\nnogrey@example.org\nexample.net\n/^list-.*@/\n"),
    Scenario("ipv4-clients-within-an-ipv6-network", [
        (0, request(client_address="192.0.2.1")), (0, request(client_address="2001:db8::1"))],
        clients="::/96\n"),
    Scenario("auto-whitelist", _awl_steps()),
    Scenario("no-etrn-domain", [
        (0, {k: v for k, v in request().items() if k != "etrn_domain"}),
        (1, request())]),
    Scenario("clock-going-back", [
        (1000, request()), (0, request()), (299, request()), (300, request(instance="m1"))]),
    Scenario("missing-attribute", [
        (0, {k: v for k, v in request().items() if k != "client_name"})]),
]


@pytest.fixture
def postgrey(testbed_dir: Path, loopback: str,
             request: pytest.FixtureRequest) -> Iterator[Postgrey]:
    """postgrey with the whitelists of the test's scenario (its ``scenario`` parameter)."""
    scenario: Scenario = request.getfixturevalue("scenario")
    p = Postgrey(testbed_dir, loopback)
    try:
        yield p.start(scenario.clients, scenario.recipients)
    finally:
        p.stop()


@pytest.fixture
def redis(testbed_root: Path, loopback: str) -> Iterator[RedisServer]:
    """Like the ``redis_server`` fixture, in a directory named without the test's "[id]":
    redis-server 7 reads its config file path as a glob, and "name[id]-x/redis.conf" matches
    no file, so Redis would start without its config (on port 6379)."""
    directory = Path(tempfile.mkdtemp(prefix="greylist-vs-postgrey-", dir=testbed_root))
    directory.chmod(0o755)
    server = RedisServer(directory, loopback).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_same_answers_as_postgrey(scenario: Scenario, postgrey: Postgrey,
                                  redis: RedisServer) -> None:
    client = PolicyClient(postgrey.host, postgrey.port)
    try:
        theirs = [client.ask({**r, "policy_test_time": str(T0 + t)}) for t, r in scenario.steps]
    finally:
        client.close()

    async def ours() -> list[str]:
        settings = GreylistSettings(hostname="mx.test", greylist_text=TEXT,
                                    x_greylist_header=HEADER,
                                    whitelist_clients=tuple(postgrey.client_files),
                                    whitelist_recipients=tuple(postgrey.recipient_files))
        lists = GreylistLists.load(settings.whitelist_clients, settings.whitelist_recipients)
        metrics = Metrics("policyd")
        store = RedisStore.from_settings(RedisSettings(url=redis.url), metrics)
        clock = StepClock()
        greylister = Greylister(store, settings, lists, clock, metrics)
        answers = []
        try:
            for t, r in scenario.steps:
                clock.now = float(T0 + t)
                answers.append("action=" + (await greylister.check(r)).action)
        finally:
            await store.close()
        return answers

    mine = asyncio.run(ours())
    for (t, r), a, b in zip(scenario.steps, theirs, mine, strict=True):
        assert b == a, (f"at +{t}s for {r.get('client_name', '-')}"
                        f"[{r['client_address']}] {r['sender']!r} -> {r['recipient']!r}:\n"
                        f"  postgrey: {a}\n  postward: {b}\n{postgrey.process.log_tail()}")


# --------------------------------------------------------------------------------------------
# postgrey's own Perl subs against ours


def _perl_sub(name: str) -> str:
    source = POSTGREY.read_text(encoding="latin-1")
    m = re.search(rf"^sub {name}\(.*?^\}}\n", source, re.MULTILINE | re.DOTALL)
    assert m is not None, f"sub {name} not found in {POSTGREY}"
    return m.group(0)


def _perl(script: str, lines: list[str], *args: str) -> list[str]:
    out = subprocess.run(["perl", "-e", script, *args], input="".join(f"{x}\n" for x in lines)
                         .encode("utf-8", "surrogateescape"), capture_output=True, timeout=60,
                         check=True).stdout
    return out.decode("utf-8", "surrogateescape").split("\n")[:-1]


_SENDER_SCRIPT = ("package postgrey;\n" + (_perl_sub("do_sender_substitutions")
                                          if POSTGREY.exists() else "") +
                  "package main;\nwhile (my $l = <STDIN>) { chomp $l;"
                  " print postgrey->do_sender_substitutions($l), \"\\n\" }\n")
_LOCAL = st.text("abcXY0129+-_.=é", max_size=16)
# BATV tags are 10 characters of [0-9a-z] (postgrey tests a prefix, case-sensitively).
_TAG_OR_NOT = st.one_of(st.text("0123456789abcdefxyzQ", min_size=9, max_size=12), _LOCAL)
_SENDER = st.one_of(
    st.text("abcXY0129+-_.=@é", max_size=24),
    st.builds(lambda a, b, u, d: f"prvs={a}={b}{u}@{d}", _TAG_OR_NOT, _TAG_OR_NOT,
              st.sampled_from(["", "=x", "="]), st.sampled_from(["d.test", "", "x@y"])),
    st.builds(lambda u, d: f"{u}@{d}", _LOCAL, st.sampled_from(["d.test", "D.Test", ""])))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_SENDER, min_size=1, max_size=200))
def test_sender_normalisation_is_postgreys(senders: list[str]) -> None:
    assert [normalise_sender(s) for s in senders] == _perl(_SENDER_SCRIPT, senders)


# Postgrey's whitelist readers, and its matching loops (smtpd_access_policy, lines 341-362).
_LISTS_SCRIPT = ("use NetAddr::IP;\npackage postgrey;\n" +
                 (_perl_sub("read_clients_whitelists") + _perl_sub("read_recipients_whitelists")
                  if POSTGREY.exists() else "") + r"""
package main;
my $self = bless { postgrey => { whitelist_clients_files => [$ARGV[0]],
                                 whitelist_recipients_files => [$ARGV[1]] } }, 'postgrey';
$self->read_clients_whitelists(); $self->read_recipients_whitelists();
while (my $l = <STDIN>) {
    chomp $l; my ($kind, $x, $y) = split /\t/, $l, 3; my $hit = 0;
    if ($kind eq 'c') {
        for my $w (@{$self->{postgrey}{whitelist_clients}}) { if ($x =~ $w) { $hit = 1; last } }
        my $ip = NetAddr::IP->new($y);
        for my $w (@{$self->{postgrey}{whitelist_ips}}) { $hit = 1 if $ip->within($w) }
    } else {
        for my $w (@{$self->{postgrey}{whitelist_recipients}}) { $hit = 1 if $x =~ $w }
    }
    print "$hit\n";
}
""")
_OCTET = st.one_of(st.sampled_from(["0", "1", "2", "8", "10", "20", "255", "256", "00", "010",
                                    "012", "08", "0377", "999"]), st.integers(0, 255).map(str))
_V4_LINE = st.one_of(
    st.builds(lambda o, m: ".".join(o) + m, st.lists(_OCTET, min_size=4, max_size=4),
              st.sampled_from(["", "/8", "/08", "/24", "/30", "/32", "/33", "/0"])),
    st.lists(_OCTET, min_size=2, max_size=3).map(".".join))
_V6_LINE = st.builds(lambda a, m: a + m, st.sampled_from(
    ["2001:db8::", "2001:DB8:0:0:1::", "::", "::1", "::ffff:10.20.0.1", "::10.20.0.0",
     "2001:db8::1::2", "fe80::1%eth0", "a:b:c", "00001::", "2001:db8:0001::"]),
    st.sampled_from(["", "/48", "/64", "/96", "/120", "/128", "/129", "/064"]))
_NAME_LINE = st.one_of(st.sampled_from(["example.com", "Sub.Example.com", ".example.com",
                                        "bad line", "/^mx\\d+\\./", "/x y/", "1.2.3.4.5"]),
                       st.text("ab.-1", min_size=1, max_size=8))
_CLIENT = st.tuples(
    st.sampled_from(["unknown", "example.com", "mx.example.com", "mx1.sub.example.com",
                     "ab.a", "a..example.com", "1.2.3.4.5", "MX7.b"]),
    st.one_of(st.builds(lambda o: ".".join(o), st.lists(st.sampled_from(
        ["0", "1", "2", "8", "10", "20", "255"]), min_size=4, max_size=4)),
        st.sampled_from(["2001:db8::1", "2001:db8:0:1::5", "::1", "::a14:1", "::ffff:a14:1",
                         "fe80::1"])))
_RECIPIENT_LINE = st.sampled_from(["postmaster@", "bob@example.com", "example.com", "@x.test",
                                   "/^list-/", "a b@c", "Bob+x@Example.com", "x.test"])
_RECIPIENT = st.sampled_from(["postmaster@a.test", "Postmaster+z@b", "bob@example.com",
                              "bob+q@EXAMPLE.com", "bob@sub.example.com", "@x.test",
                              "list-a@x.test", "u@x.test", "u@ax.test", "bob+x@example.com"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(client_lines=st.lists(st.one_of(_V4_LINE, _V6_LINE, _NAME_LINE), max_size=12),
       recipient_lines=st.lists(_RECIPIENT_LINE, max_size=4),
       clients=st.lists(_CLIENT, min_size=1, max_size=30),
       recipients=st.lists(_RECIPIENT, min_size=1, max_size=10))
def test_whitelist_lines_parse_and_match_as_in_postgrey(
        tmp_path: Path, client_lines: list[str], recipient_lines: list[str],
        clients: list[tuple[str, str]], recipients: list[str]) -> None:
    cfile, rfile = tmp_path / "clients", tmp_path / "recipients"
    cfile.write_text("\n".join(client_lines) + "\n")
    rfile.write_text("\n".join(recipient_lines) + "\n")
    lists = GreylistLists.load([str(cfile)], [str(rfile)])
    queries = [f"c\t{n}\t{a}" for n, a in clients] + [f"r\t{r}" for r in recipients]
    theirs = _perl(_LISTS_SCRIPT, queries, str(cfile), str(rfile))
    ours = [str(int(lists.client_match(n, ipaddress.ip_address(a)) is not None))
            for n, a in clients] + [str(int(lists.recipient_match(r) is not None))
                                    for r in recipients]
    assert ours == theirs, list(zip(queries, theirs, ours, strict=True))
