"""postward-policyd against postfwd2 + postgrey, on one machine, one DNS test bed, one Redis.

    .venv/bin/python -m tests.benchmarks.bench_policyd            # the full run; writes docs
    .venv/bin/python -m tests.benchmarks.bench_policyd --quick    # a short run; prints only

What runs (all on one private loopback address, ports handed out by the kernel):

* the DNS test bed (unbound in front of rbldnsd) with its default data, where dnsbl-a/-b/-c.test
  also list every other address of a generated block (10.0.0.0, 10.0.0.2, ...: a large zone, so
  that a stream of fresh client addresses misses every cache, half listed on all three lists);
* one Redis, shared by every postward-policyd process;
* postward-policyd with the guide's rules (tests/policyd/rules/guide_testbed.cf, its ask() line
  turned into greylist()), and with one rule ``action=greylist()``; with 1 worker, and with 2
  when [policyd] has a ``workers`` key;
* postfwd2 1.35 in daemon mode with the same guide rules, its ask() pointed at
* postgrey 1.37, which is also measured alone for greylisting;
* the "physical limit": a do-nothing asyncio server answering DUNNO (tests/benchmarks/loadgen.py).

Streams: (a) a few clients listed on three lists, again and again (warm caches: postfwd answers
them from its request cache); (b) a clean client, again and again (matches no rule; postfwd never
caches DUNNO); (c) a fresh client address per request (every cache misses, DNS all the way to
rbldnsd); (greylist) a fresh triplet per request against postgrey. (a)-(c) never reach the
greylisting rule, so they compare the DNSBL part of the guide's rules; greylisting is measured on
its own. Each measurement is a fixed number of requests over 1, 4 and 32 persistent connections,
one request in flight per connection, repeated; the median run (by requests/s) is reported.
Every answer is checked against the expected one, before timing and during it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import ipaddress
import os
import platform
import shutil
import signal
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from postward.policyd.settings import PolicydSettings
from tests.benchmarks.common import raise_interrupt, workdir
from tests.benchmarks.loadgen import LoadError, LoadResult, ask, encode, run_load, verb
from tests.policyd.postfwd_peer import resolv_conf
from tests.policyd.requests import postfix_request
from tests.testbed.dns_fixtures import (
    CLIENT_CLEAN,
    CLIENT_ON_ONE,
    CLIENT_ON_THREE,
    DEFAULT_LOCAL_ZONES,
    DEFAULT_ZONES,
)
from tests.testbed.dns_servers import DnsTestbed, Zone
from tests.testbed.net import free_port, private_loopback, wait_for_tcp
from tests.testbed.process import ManagedProcess
from tests.testbed.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "benchmarks.md"
GUIDE_RULES = ROOT / "tests" / "policyd" / "rules" / "guide_testbed.cf"
GUIDE_ASK = "action=ask(127.0.0.1:10023)"
POSTFWD2 = "/usr/sbin/postfwd2"
POSTGREY = "/usr/sbin/postgrey"
# Debian's /etc/default/postfwd: RUNAS=postfw, ARGS="--summary=600 --cache=600
# --cache-rdomain-only --cache-no-size"
POSTFWD_ARGS = ("--user", "postfw", "--group", "postfw", "--summary=600", "--cache=600",
                "--cache-rdomain-only", "--cache-no-size")
SECTION = "## postward-policyd"
DOCS_INTRO = """# Benchmarks

Speed measurements of postward's daemons against the programs they replace, on one machine, with
the test bed's real daemons. They are scripts in `tests/benchmarks/` (never run by pytest; no
test asserts a time); each section says how its numbers were made and by which command.
"""

LISTED_BLOCK = ipaddress.IPv4Address("10.0.0.0")  # even offsets listed on dnsbl-a, -b and -c
LISTED_LISTS = ("dnsbl-a.test", "dnsbl-b.test", "dnsbl-c.test")
# The rbl= zones of tests/policyd/rules/guide_testbed.cf: what a new client is looked up in.
GUIDE_RBL_ZONES = (*LISTED_LISTS, "allow.test")
REPEATED_CLIENTS = 8
RESERVED = 2 * REPEATED_CLIENTS  # the first addresses of the block: the repeated clients


@dataclass(frozen=True)
class Plan:
    requests: int  # per measurement (streams that miss every cache: DISTINCT_SHARE of it)
    repeats: int
    connections: tuple[int, ...]
    warmup: int  # untimed requests per connection before each measurement
    time_limit: float  # seconds: a measurement stops early past this


# 5,000 requests take 2-30 s per run here (postward and postfwd2 answer a few hundred to a few
# thousand requests per second); streams that miss every cache run 2,000 (DISTINCT_SHARE).
FULL = Plan(requests=5_000, repeats=3, connections=(1, 4, 32), warmup=4, time_limit=60.0)
QUICK = Plan(requests=500, repeats=3, connections=(1, 4, 32), warmup=4, time_limit=20.0)
DISTINCT_SHARE = 0.4


# --------------------------------------------------------------------------------------------
# Requests


@dataclass
class Batch:
    """What one measurement sends: the timed requests, the answer verb each must get, and the
    untimed warm-up requests of each connection."""

    requests: list[bytes]
    expected: list[str]
    warmup: list[list[bytes]]


class AddressPool:
    """Client addresses never used before: offset ``i`` of LISTED_BLOCK is listed iff even."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.next = RESERVED

    def take(self, n: int) -> list[tuple[str, bool]]:
        if self.next + n > self.size:
            raise RuntimeError(f"address pool of {self.size} exhausted")
        start, self.next = self.next, self.next + n
        return [(str(LISTED_BLOCK + i), i % 2 == 0) for i in range(start, start + n)]


def listed_entries(size: int) -> list[str]:
    return [str(LISTED_BLOCK + i) for i in range(0, size, 2)]


def rcpt(client: str, **overrides: str) -> bytes:
    return encode(postfix_request("RCPT", client=client, **overrides))


def cycle(items: Sequence[bytes], n: int) -> list[bytes]:
    return [items[i % len(items)] for i in range(n)]


class Streams:
    """Makes each stream's Batch; fresh clients and triplets come from counters, so no two
    measurements (of any system) share one."""

    def __init__(self, pool: AddressPool, warmup: int) -> None:
        self.pool = pool
        self.warmup = warmup
        self.triplets = 0
        repeated = [str(LISTED_BLOCK + i) for i in range(0, RESERVED, 2)]
        self.repeated = [rcpt(c, client_name="unknown") for c in repeated]
        self.clean = rcpt(CLIENT_CLEAN)

    def repeated_clients(self, n: int, connections: int) -> Batch:
        # Every connection sees every client twice first: postfwd's caches are per process.
        warm = [list(self.repeated) * 2 for _ in range(connections)]
        return Batch(cycle(self.repeated, n), ["554"] * n, warm)

    def clean_client(self, n: int, connections: int) -> Batch:
        warm = [[self.clean] * self.warmup for _ in range(connections)]
        return Batch([self.clean] * n, ["DUNNO"] * n, warm)

    def distinct_clients(self, n: int, connections: int) -> Batch:
        def request(address: str) -> bytes:
            return rcpt(address, client_name="unknown")

        timed = self.pool.take(n)
        warm = self.pool.take(self.warmup * connections)
        return Batch([request(a) for a, _ in timed],
                     ["554" if listed else "DUNNO" for _, listed in timed],
                     [[request(a) for a, _ in warm[i::connections]] for i in range(connections)])

    def fresh_triplets(self, n: int, connections: int) -> Batch:
        def request() -> bytes:
            self.triplets += 1
            return rcpt(CLIENT_CLEAN, sender=f"bench{self.triplets}x@sender.example.test")

        timed = [request() for _ in range(n)]
        warm = [[request() for _ in range(self.warmup)] for _ in range(connections)]
        return Batch(timed, ["DEFER_IF_PERMIT"] * n, warm)

    def anything(self, n: int, connections: int) -> Batch:
        warm = [[self.clean] * self.warmup for _ in range(connections)]
        return Batch([self.clean] * n, ["DUNNO"] * n, warm)


# --------------------------------------------------------------------------------------------
# The systems under test


@dataclass(frozen=True)
class Target:
    label: str
    host: str
    port: int
    is_peer: bool = False
    pid: int = 0


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    description: str
    targets: tuple[Target, ...]
    make: Callable[[int, int], Batch]
    share: float = 1.0  # of Plan.requests

    def requests(self, plan: Plan) -> int:
        return max(1, round(plan.requests * self.share))

    @property
    def peer(self) -> Target | None:
        return next((t for t in self.targets if t.is_peer), None)


def workers_supported() -> bool:
    return "workers" in {f.name for f in dataclasses.fields(PolicydSettings)}


def _accepts(host: str, port: int) -> bool:
    wait_for_tcp(host, port, timeout=1)
    return True


class Bed:
    """Every daemon of the benchmark, stopped (all of them) when the ``with`` block ends."""

    def __init__(self, directory: Path, address: str, pool_size: int) -> None:
        self.directory = directory
        self.address = address
        self.pool_size = pool_size
        self.stack = contextlib.ExitStack()
        self.dns: DnsTestbed | None = None
        self.redis: RedisServer | None = None

    def __enter__(self) -> Bed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def subdir(self, name: str, owner: str | None = None) -> Path:
        path = self.directory / name
        path.mkdir(mode=0o755)
        path.chmod(0o755)
        if owner:
            shutil.chown(path, owner, owner)
        return path

    def managed(self, process: ManagedProcess, host: str, port: int) -> Target:
        self.stack.callback(process.stop)  # before start(): a failed start is cleaned too
        process.start(ready=lambda: _accepts(host, port), timeout=60)
        return Target(process.name, host, port, pid=process.pid)

    def start_dns_and_redis(self) -> None:
        zones = bench_zones(self.pool_size)
        self.dns = DnsTestbed(self.subdir("dns"), self.address, zones, DEFAULT_LOCAL_ZONES)
        # rbldnsd's query log would write a line per query: hundreds of MB here.
        self.dns.rbldnsd.query_log = False
        self.stack.callback(self.dns.stop)
        self.dns.start()
        self.redis = RedisServer(self.subdir("redis"), self.address)
        self.stack.callback(self.redis.stop)
        self.redis.start()

    def start_limit(self) -> Target:
        port = free_port(self.address)
        process = ManagedProcess(
            "do-nothing asyncio server",
            [sys.executable, "-m", "tests.benchmarks.loadgen", "serve-dunno", self.address,
             str(port)], self.subdir("limit") / "limit.log", cwd=ROOT)
        return self.managed(process, self.address, port)

    def start_dns_limit(self) -> Target:
        assert self.dns is not None
        port = free_port(self.address)
        process = ManagedProcess(
            "DNS lookups alone (c-ares, no cache)",
            [sys.executable, "-m", "tests.benchmarks.loadgen", "serve-dns", self.address,
             str(port), f"{self.dns.address}:{self.dns.port}", *GUIDE_RBL_ZONES],
            self.subdir("dnslimit") / "dnslimit.log", cwd=ROOT)
        return self.managed(process, self.address, port)

    def start_postgrey(self) -> Target:
        directory = self.subdir("postgrey")
        dbdir = self.subdir("postgrey/db", owner="postgrey")
        port = free_port(self.address)
        argv = [POSTGREY, f"--inet={self.address}:{port}", f"--dbdir={dbdir}",
                "--user=postgrey", "--group=postgrey"]
        process = ManagedProcess("postgrey 1.37", argv, directory / "postgrey.log")
        return self.managed(process, self.address, port)

    def start_postfwd2(self, rules: Path) -> Target:
        assert self.dns is not None
        directory = self.subdir("postfwd2")
        run = self.subdir("postfwd2/run", owner="postfw")
        resolv = directory / "resolv.conf"
        resolv.write_text(resolv_conf((self.dns.address, self.dns.port)))
        resolv.chmod(0o644)
        port = free_port(self.address)
        process = ManagedProcess("postfwd2 1.35", postfwd2_argv(
            resolv, rules, self.address, port, run), directory / "postfwd2.log")
        return self.managed(process, self.address, port)

    def start_postward(self, name: str, rules: Path, workers: int) -> Target:
        assert self.dns is not None and self.redis is not None
        directory = self.subdir(name)
        port = free_port(self.address)
        config = directory / "postward.conf"
        config.write_text(postward_config(self.redis.unix_url, self.dns.nameserver,
                                          f"{self.address}:{port}", rules, workers))
        process = ManagedProcess(
            f"postward-policyd, {workers} worker{'s' if workers > 1 else ''}",
            [sys.executable, "-m", "postward.policyd", "--daemon", "--config", str(config)],
            directory / "policyd.log", cwd=ROOT)
        return self.managed(process, self.address, port)


def bench_zones(pool_size: int) -> list[Zone]:
    """The default zones, with every other address of the generated block added to the three
    lists the guide counts (so those clients get its 554)."""
    generated = listed_entries(pool_size)
    return [zone.with_entries([*zone.entries, *generated])
            if zone.name.rstrip(".") in LISTED_LISTS and zone.kind == "ip4set" else zone
            for zone in DEFAULT_ZONES]


def postfwd2_argv(resolv: Path, rules: Path, host: str, port: int, run: Path) -> list[str]:
    """postfwd2 as a daemon, kept inside a PID namespace whose init we own.

    postfwd2 always daemonises (Net::Server::Daemonize: fork, setsid, stdout to /dev/null), so
    it would escape our process group. Inside ``unshare --pid --fork`` the shell is PID 1: it
    starts postfwd2, waits, and exits on SIGTERM, and the kernel then kills everything in the
    namespace. ``--mount`` + a bind-mounted resolv.conf point postfwd's Net::DNS at the test
    bed (see tests/policyd/postfwd_peer.py: ``options port:PORT``; perl -T trusts no other way).
    """
    script = ('mount --bind "$0" /etc/resolv.conf || exit 1; trap "exit 0" TERM INT; '
              '"$@" || exit 1; while :; do sleep 3600 & wait $!; done')
    return ["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "--",
            "sh", "-c", script, str(resolv),
            POSTFWD2, "--file", str(rules), "--server_socket", f"tcp:{host}:{port}",
            "--cache_socket", f"unix::{run / 'cache.sock'}", "--pidfile", str(run / "pid"),
            *POSTFWD_ARGS, "--perfmon"]


def postward_config(redis_url: str, nameserver: str, listen: str, rules: Path,
                    workers: int) -> str:
    worker_line = f"workers = {workers}\n" if workers_supported() else ""
    return (f"[redis]\nurl = {redis_url}\n\n"
            f"[dns]\nnameservers = {nameserver}\n\n"
            f"[metrics]\nenabled = no\n\n"
            f"[policyd]\nlisten = {listen}\nrules = {rules}\n{worker_line}")


def write_rules(directory: Path, postgrey: Target) -> tuple[Path, Path, Path]:
    """The guide's rules for postfwd2 (ask() -> our postgrey) and postward (greylist()), and
    the greylist-only rule."""
    guide = GUIDE_RULES.read_text()
    if GUIDE_ASK not in guide:
        raise RuntimeError(f"{GUIDE_RULES} no longer contains {GUIDE_ASK!r}")
    for_postfwd = directory / "guide_postfwd.cf"
    for_postfwd.write_text(guide.replace(GUIDE_ASK,
                                         f"action=ask({postgrey.host}:{postgrey.port})"))
    for_postward = directory / "guide_postward.cf"
    for_postward.write_text(guide.replace(GUIDE_ASK, "action=greylist()"))
    greylist = directory / "greylist.cf"
    greylist.write_text("id=GREYLIST ; action=greylist()\n")
    for path in (for_postfwd, for_postward, greylist):
        path.chmod(0o644)  # postfwd2 reads as root, but keep it readable for postfw anyway
    return for_postfwd, for_postward, greylist


# --------------------------------------------------------------------------------------------
# Measuring


@dataclass(frozen=True)
class Run:
    rate: float
    p50: float
    p99: float
    completed: int
    wrong: int
    cpu: float  # CPU seconds the system's processes used during the run

    @property
    def cpu_per_request(self) -> float:
        return self.cpu / self.completed if self.completed else 0.0


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system, with reaped children's) of ``root`` and its descendants."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rfind(")") + 2:].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        ticks[pid] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    tree, grew = {root}, True
    while grew:
        found = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= found
        grew = bool(found)
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


@dataclass
class Results:
    runs: dict[tuple[str, int, str], list[Run]] = field(default_factory=dict)
    failures: dict[tuple[str, int, str], list[str]] = field(default_factory=dict)

    def add(self, scenario: str, connections: int, target: str, run: Run) -> None:
        self.runs.setdefault((scenario, connections, target), []).append(run)

    def median(self, scenario: str, connections: int, target: str) -> Run | None:
        runs = sorted(self.runs.get((scenario, connections, target), []), key=lambda r: r.rate)
        return runs[(len(runs) - 1) // 2] if runs else None


def wrong_answers(result: LoadResult, expected: Sequence[str]) -> tuple[int, Counter[str]]:
    got: Counter[str] = Counter()
    wrong = 0
    for answer, want in zip(result.answers, expected, strict=True):
        if answer is None:
            continue
        word = verb(answer)
        got[word] += 1
        wrong += word != want
    return wrong, got


def measure(target: Target, batch: Batch, connections: int, plan: Plan) -> Run:
    cpu = tree_cpu(target.pid)
    result = run_load(target.host, target.port, batch.requests, connections=connections,
                      warmup=batch.warmup, time_limit=plan.time_limit)
    cpu = tree_cpu(target.pid) - cpu  # includes the warm-up: a few requests per connection
    wrong, got = wrong_answers(result, batch.expected)
    if wrong:
        print(f"    !! {wrong} wrong answers from {target.label}: {dict(got)}", flush=True)
    return Run(result.rate, result.percentile(0.5), result.percentile(0.99), result.completed,
               wrong, cpu)


def run_all(scenarios: Sequence[Scenario], plan: Plan) -> Results:
    results = Results()
    for repeat in range(1, plan.repeats + 1):
        for scenario in scenarios:
            for connections in plan.connections:
                for target in scenario.targets:
                    batch = scenario.make(scenario.requests(plan), connections)
                    try:
                        run = measure(target, batch, connections, plan)
                    except (OSError, LoadError) as e:  # a timeout, a closed connection
                        problem = f"{type(e).__name__}: {e}"
                        results.failures.setdefault(
                            (scenario.key, connections, target.label), []).append(problem)
                        print(f"[{repeat}/{plan.repeats}] {scenario.key:9} c={connections:<3} "
                              f"{target.label:32} FAILED: {problem}", flush=True)
                        continue
                    results.add(scenario.key, connections, target.label, run)
                    print(f"[{repeat}/{plan.repeats}] {scenario.key:9} c={connections:<3} "
                          f"{target.label:32} {run.rate:9,.0f} req/s  p50 {run.p50 * 1e3:7.3f} ms"
                          f"  p99 {run.p99 * 1e3:7.3f} ms  cpu {run.cpu_per_request * 1e3:6.3f} "
                          f"ms/req  n={run.completed}", flush=True)
    return results


# --------------------------------------------------------------------------------------------
# Sanity: each system answers each stream as expected before anything is timed


def check_answers(target: Target, batch: Batch) -> list[str]:
    answers = ask(target.host, target.port, batch.requests)
    words = [verb(a) for a in answers]
    if words != batch.expected:
        raise SystemExit(f"sanity: {target.label} answered {words}, expected {batch.expected}:"
                         f"\n" + "\n".join(a.decode(errors="replace").strip() for a in answers))
    return [a.decode(errors="replace").strip() for a in answers]


def sanity(scenarios: Sequence[Scenario], guide_targets: Sequence[Target]) -> None:
    for scenario in scenarios:
        for target in scenario.targets:
            answers = check_answers(target, scenario.make(6, 1))
            shown = {a.split(" ", 1)[0]: a for a in answers}.values()
            print(f"sanity {scenario.key:9} {target.label:32} ok: " + " | ".join(
                a[:90] for a in shown), flush=True)
    # The guide's own clients: on three lists -> 554, on one -> greylisted, clean -> DUNNO.
    probes = Batch([rcpt(CLIENT_ON_THREE), rcpt(CLIENT_ON_ONE), rcpt(CLIENT_CLEAN)],
                   ["554", "DEFER_IF_PERMIT", "DUNNO"], [])
    for target in guide_targets:
        answers = check_answers(target, probes)
        print(f"sanity guide     {target.label:32} ok: " + " | ".join(a[:80] for a in answers),
              flush=True)


# --------------------------------------------------------------------------------------------
# Report


def machine() -> str:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} CPUs (`nproc`), {model}, Linux {platform.release()}, "
            f"Python {platform.python_version()}; load average at the end {load}")


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def fmt_ms(x: float) -> str:
    return f"{x * 1e3:.2f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def scenario_table(scenario: Scenario, results: Results, plan: Plan) -> list[str]:
    lines = [f"### {scenario.title}", "", scenario.description, "",
             "| connections | system | req/s | p50 ms | p99 ms | req/s ÷ peer | p99 ÷ peer |"
             " CPU ms/req | wrong answers |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    peer = scenario.peer
    for connections in plan.connections:
        base = results.median(scenario.key, connections, peer.label) if peer else None
        for target in scenario.targets:
            run = results.median(scenario.key, connections, target.label)
            failed = results.failures.get((scenario.key, connections, target.label), [])
            if run is None:
                lines.append(f"| {connections} | {target.label}: every run failed "
                             f"({failed[0]}) | | | | | | | |")
                continue
            compare = base is not None and not target.is_peer
            short = (f" ({run.completed:,} done)" if run.completed < scenario.requests(plan)
                     else "")
            if failed:
                short += f" ({len(failed)} of {plan.repeats} runs failed: {failed[0]})"
            lines.append(
                f"| {connections} | {target.label}{short} | {fmt_rate(run.rate)} | "
                f"{fmt_ms(run.p50)} | {fmt_ms(run.p99)} | "
                f"{ratio(run.rate, base.rate) if compare and base else ''} | "
                f"{ratio(run.p99, base.p99) if compare and base else ''} | "
                f"{run.cpu_per_request * 1e3:.2f} | {run.wrong} |")
    return [*lines, ""]


def render(scenarios: Sequence[Scenario], results: Results, plan: Plan, how: str,
           notes: Sequence[str]) -> str:
    command = " ".join([".venv/bin/python -m tests.benchmarks.bench_policyd", *sys.argv[1:]])
    lines = [SECTION, "",
             f"Measured {datetime.date.today().isoformat()} by `{command}` on "
             f"{machine()}.", "",
             f"Each row is the median (by requests/s) of {plan.repeats} runs of "
             f"{plan.requests:,} requests ({round(plan.requests * DISTINCT_SHARE):,} for the "
             f"streams of new clients and triplets; fewer where a run hit its "
             f"{plan.time_limit:.0f} s limit, as marked) over persistent connections, one "
             f"request in flight "
             f"per connection (as Postfix's smtpd does), after {plan.warmup}+ untimed requests "
             f"per connection. p50/p99 are per-request latencies seen by the client. "
             f"\"req/s ÷ peer\" above 1 and \"p99 ÷ peer\" below 1 favour postward. "
             f"\"CPU ms/req\" is the CPU time of all the system's processes (postfwd2's "
             f"children and cache daemon, postward's workers; not Redis or DNS) over the run "
             f"and its warm-up, per request. "
             f"\"wrong answers\" counts answers that differ from the expected one (always "
             f"checked).", "", how, ""]
    for scenario in scenarios:
        lines += scenario_table(scenario, results, plan)
    lines += ["Notes:", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)


def write_docs(section: str) -> None:
    text = DOCS.read_text() if DOCS.exists() else DOCS_INTRO
    start = text.find(SECTION + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + ("\n" + text[end + 1:] if end >= 0 else "")
    DOCS.write_text(text.rstrip("\n") + "\n")


# --------------------------------------------------------------------------------------------
# Main


HOW = """How each system runs (all on one private 127.x.y.z address; nothing else on the machine is
touched):

- **postward-policyd**: `python -m postward.policyd --daemon --config postward.conf` with
  `[redis] url` (a private redis-server on its unix socket, as docs/systemd.md recommends
  for Debian's Redis), `[dns] nameservers` (the test bed's unbound),
  `[metrics] enabled = no`, `[policyd] listen`, `rules`{workers}; everything else default (DNS
  answers cached in Redis, info-level logs to a file).
- **postfwd2 1.35** (Debian): daemon mode with Debian's options (`--user postfw --group postfw
  --summary=600 --cache=600 --cache-rdomain-only --cache-no-size`), its Net::Server pre-forked
  children (10 to 100), `--server_socket tcp:ADDR:PORT` and its cache daemon on a private unix
  socket; `--perfmon`, its "no logging at all" (postward logs nothing per request in streams
  (a)-(c) either; postfwd2's `-L` would write its log lines into the policy connection, as
  Net::Server ties STDOUT to the client, and there is no syslog daemon here). It runs in
  `unshare --mount --pid --fork` (the shell that starts it is the namespace's PID 1, so stopping
  that shell stops every postfwd2 process) with a bind-mounted resolv.conf
  (`nameserver ADDR` + `options port:PORT`) pointing Net::DNS at the same unbound.
- **postgrey 1.37** (Debian): `postgrey --inet=ADDR:PORT --dbdir=DIR --user=postgrey
  --group=postgrey` in the foreground (logs to a file), Debian's whitelist files; it is also
  the target of postfwd2's `ask()`.
- **DNS**: the test bed's unbound (1 thread) in front of rbldnsd (query log off) with the
  default data, plus {listed:,} generated addresses (10.0.0.0, 10.0.0.2, ...) listed on
  dnsbl-a/-b/-c.test.
- **Rules**: `tests/policyd/rules/guide_testbed.cf` (the guide's postfwd.cf): postfwd2 with its
  `ask()` aimed at the postgrey above, postward with `action=greylist()` instead. Streams
  (a)-(c) never reach that rule, so they compare the DNSBL part (lookups, counting, the 554).
  Greylisting is compared on its own: postward with the single rule
  `id=GREYLIST ; action=greylist()` against postgrey asked directly.
- **Requests**: Postfix 3.7's full attribute set at RCPT (`tests/policyd/requests.py`).
- **Load**: `tests/benchmarks/loadgen.py` (one thread, epoll, requests encoded beforehand, GC off
  while timing), in the same machine's other core. The do-nothing row is an asyncio server
  answering DUNNO unread: the ceiling any asyncio policy server could reach with this
  generator."""


def build_scenarios(streams: Streams, limit: Target, dns_limit: Target,
                    postward_guide: Sequence[Target],
                    postward_grey: Sequence[Target], postfwd: Target,
                    postgrey: Target) -> list[Scenario]:
    def peer(t: Target) -> Target:
        return dataclasses.replace(t, is_peer=True)

    return [
        Scenario("repeated", "(a) repeated clients: warm caches",
                 f"{REPEATED_CLIENTS} clients listed on dnsbl-a, -b and -c, in turn, the same "
                 f"requests again and again: every answer is the guide's 554. postfwd2 answers "
                 f"from its request cache (its cache key includes client_port, so in production "
                 f"that cache only helps within one SMTP session); postward answers from its "
                 f"own request cache too ([policyd] request_cache, 60 s), which keeps only "
                 f"decisions that used no Redis state, clock or failed lookup.",
                 (*postward_guide, peer(postfwd)), streams.repeated_clients),
        Scenario("clean", "(b) a clean client: no rule matches",
                 "The test bed's clean client (203.0.113.10, mail.clean.example.test) again and "
                 "again: DUNNO. postfwd2 never caches DUNNO, so it evaluates every rule (DNS "
                 "answers cached in each child); postward's request cache keeps this DUNNO as "
                 "any other decision.",
                 (*postward_guide, peer(postfwd)), streams.clean_client),
        Scenario("distinct", "(c) distinct clients: every cache misses",
                 "A client address never seen before in every request, half of them listed on "
                 "three lists (554), half on none (DUNNO): four DNSBL A lookups (plus TXT for "
                 "the listed) through unbound to rbldnsd per request.",
                 (*postward_guide, peer(postfwd)), streams.distinct_clients, DISTINCT_SHARE),
        Scenario("greylist", "Greylisting: a new triplet per request",
                 "The clean client with a new sender in every request: every answer is "
                 "DEFER_IF_PERMIT. postward: one rule `action=greylist()` (state in Redis); "
                 "postgrey 1.37 asked directly (state in BerkeleyDB).",
                 (*postward_grey, peer(postgrey)), streams.fresh_triplets, DISTINCT_SHARE),
        Scenario("dnslimit", "The DNS limit for distinct clients: the lookups alone",
                 "Stream (c) against an asyncio server that only makes the lookups the guide's "
                 "rules make for a new client, through postward's own c-ares transport with "
                 "no cache (an A query per DNSBL zone at once, then TXT for the zones that "
                 "list it), and answers 554 or DUNNO from them: what unbound and rbldnsd cost "
                 "on this machine, the least stream (c) can take.",
                 (dns_limit,), streams.distinct_clients, DISTINCT_SHARE),
        Scenario("limit", "The physical limit: a do-nothing asyncio server",
                 "The same generator against an asyncio server that answers DUNNO without "
                 "looking at the request.",
                 (limit,), streams.anything),
    ]


def pool_size(plan: Plan, postward_variants: int) -> int:
    per_run = plan.requests + plan.warmup * max(plan.connections)
    runs = plan.repeats * len(plan.connections) * (postward_variants + 2)  # + postfwd, DNS limit
    return RESERVED + runs * per_run + 1000  # + sanity checks





def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_policyd",
                                     description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.requests:,} requests per run instead of "
                             f"{FULL.requests:,}; prints, does not write docs")
    parser.add_argument("--write-docs", action="store_true",
                        help="write docs/benchmarks.md even with --quick")
    parser.add_argument("--no-docs", action="store_true", help="never write docs/benchmarks.md")
    parser.add_argument("--only", default="",
                        help="comma-separated scenarios: repeated,clean,distinct,greylist,"
                             "dnslimit,limit")
    parser.add_argument("--connections", default="", help="e.g. 1,32 (default 1,4,32)")
    parser.add_argument("--keep", action="store_true", help="keep the logs and data directory")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.connections:
        plan = dataclasses.replace(
            plan, connections=tuple(int(c) for c in args.connections.split(",")))
    signal.signal(signal.SIGTERM, raise_interrupt)
    workers = (1, 2) if workers_supported() else (1,)
    try:
        with workdir(args.keep, "postward-bench-") as directory:
            section = benchmark(directory, plan, workers, args.only)
    except KeyboardInterrupt:
        print("interrupted: every daemon stopped", file=sys.stderr)
        return 130
    print("\n" + section)
    if not args.no_docs and (args.write_docs or not args.quick) and not args.only:
        write_docs(section)
        print(f"written to {DOCS.relative_to(ROOT)}")
    return 0


def benchmark(directory: Path, plan: Plan, workers: Sequence[int], only: str) -> str:
    size = pool_size(plan, len(workers))
    with Bed(directory, private_loopback(), size) as bed:
        print(f"starting the daemons on {bed.address} in {directory} "
              f"({size // 2:,} generated listings)", flush=True)
        bed.start_dns_and_redis()
        postgrey = bed.start_postgrey()
        rules_postfwd, rules_postward, rules_grey = write_rules(directory, postgrey)
        postfwd = bed.start_postfwd2(rules_postfwd)
        guide = [bed.start_postward(f"postward-guide-{w}", rules_postward, w) for w in workers]
        grey = [bed.start_postward(f"postward-grey-{w}", rules_grey, w) for w in workers]
        limit = bed.start_limit()
        dns_limit = bed.start_dns_limit()
        for t in (limit, dns_limit, postgrey, postfwd, *guide, *grey):
            print(f"  {t.label:32} {t.host}:{t.port} pid {t.pid}", flush=True)
        streams = Streams(AddressPool(size), plan.warmup)
        scenarios = build_scenarios(streams, limit, dns_limit, guide, grey, postfwd, postgrey)
        if only:
            scenarios = [s for s in scenarios if s.key in only.split(",")]
        sanity(scenarios, [*guide, postfwd])
        results = run_all(scenarios, plan)
        how = HOW.format(listed=size // 2, workers=", `workers`" if workers_supported() else "")
        return render(scenarios, results, plan, how, notes(workers))


def notes(workers: Sequence[int]) -> list[str]:
    out = [
        "The machine is shared and noisy: runs of one configuration vary by 10-30 %; compare "
        "rows of one table (measured interleaved, minutes apart), not across dates.",
        "The load generator shares the 2 CPUs with the systems under test, and so do Redis, "
        "unbound and rbldnsd: a second postward worker competes with them for the same cores.",
    ]
    if len(workers) == 1:
        out.append("`[policyd] workers` did not exist yet when this ran: postward-policyd ran "
                   "as one process (one core at most).")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
