"""The daemons and the load of the DKIM benchmark (tests/benchmarks/bench_dkim.py).

One :class:`Rig` holds everything, all on one private 127.x.y.z address and under one
directory, and stops all of it when its ``with`` block ends:

* the test bed's unbound on port 53 of that address, publishing the benchmark key's TXT record
  (OpenDKIM's ``Nameservers`` option takes addresses without a port; see :func:`shared_conf`);
* one Redis (postward's DNS cache);
* one ``smtp-sink -d`` (dumping every message to a tmpfs directory, so that every run can be
  checked message by message);
* the milters: postward-dkim (started through tests/dkim/milter_fixture.py's ``DkimDaemon``)
  and OpenDKIM 2.11 (``opendkim -f -x CONF``), one process per (mode, socket), both reading the
  same opendkim.conf settings, KeyTable, SigningTable and TrustedHosts files;
* one Postfix per milter process (plus one without a milter), each with
  postfix-snippets/dkim.main.cf aimed at its milter and relaying everything to the sink.

The load is Postfix's ``smtp-source -F FILE``: the same prepared message (exactly 2 KB or
100 KB) over 1 or N parallel sessions, a new SMTP connection per message (smtp-source's
default; Postfix then opens a new milter connection per message too).
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dkim

from tests.dkim.milter_fixture import DkimDaemon, KeySpec
from tests.dkim.peers import DkimKey, generate_key
from tests.testbed.dns_servers import LocalZone, Unbound, txt
from tests.testbed.mail import postfix_tool
from tests.testbed.net import free_port, wait_until
from tests.testbed.postfix import PostfixInstance, SmtpSink
from tests.testbed.process import ManagedProcess
from tests.testbed.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = ROOT / "postfix-snippets" / "dkim.main.cf"
OPENDKIM = "/usr/sbin/opendkim"

# Not below .test: libunbound (OpenDKIM's resolver) answers NXDOMAIN for .test itself unless
# configured otherwise, which only ResolverConfiguration can do (see shared_conf).
DOMAIN = "dkim-bench.example"
SELECTOR = "bench"
SENDER = f"alice@{DOMAIN}"
RECIPIENT = "bob@receiver.test"
RECIPIENT_DOMAIN = "receiver.test"
CLIENT_HELO = "client.bench.test"
# smtp-source cannot bind a source address: its connections to 127.x.y.z come from 127.0.0.1.
CLIENT_ADDRESS = "127.0.0.1"
# Verify mode: InternalHosts/ExternalIgnoreList name only an address no client uses.
NOBODY = "192.0.2.1"
OVERSIGN = "From,To,Subject,Date"  # postward's default; OpenDKIM's is none: say it for both

MILTERS = ("postward", "opendkim")
SOCKETS = ("tcp", "unix")
MODES = ("sign", "verify")


# --------------------------------------------------------------------------------------------
# Messages


def _lines(n_bytes: int) -> str:
    """Plain text of exactly ``n_bytes`` (LF line ends), lines of at most 72 characters."""
    words = ["The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog;", "pack",
             "my", "box", "with", "five", "dozen", "liquor", "jugs."]
    out, line, size = [], "", 0
    i = 0
    while size < n_bytes:
        word = words[i % len(words)]
        i += 1
        candidate = f"{line} {word}" if line else word
        if len(candidate) > 71:
            out.append(line + "\n")
            size += len(line) + 1
            line = word
        else:
            line = candidate
    text = "".join(out)
    return text[:n_bytes - 1] + "\n" if len(text) >= n_bytes else text


def unsigned_message(total: int, subject: str) -> bytes:
    """A message of exactly ``total`` bytes (LF line ends, as smtp-source -F wants them)."""
    head = (f"From: Alice Example <{SENDER}>\n"
            f"To: Bob Receiver <{RECIPIENT}>\n"
            f"Subject: {subject}\n"
            f"Date: {email.utils.formatdate(localtime=False)}\n"
            f"Message-ID: <{subject.replace(' ', '-')}@{DOMAIN}>\n"
            "MIME-Version: 1.0\n"
            "Content-Type: text/plain; charset=us-ascii\n\n")
    body = _lines(total - len(head))
    message = (head + body).encode("ascii")
    assert len(message) == total, (len(message), total)
    return message


def dkimpy_sign(message: bytes, key: DkimKey) -> bytes:
    """``message`` (LF) with a relaxed/relaxed rsa-sha256 signature by dkimpy on top (LF)."""
    crlf = message.replace(b"\n", b"\r\n")
    header = dkim.sign(crlf, key.selector.encode(), key.domain.encode(), key.private_pem,
                       canonicalize=(b"relaxed", b"relaxed"))
    return (header + crlf).replace(b"\r\n", b"\n")


def signed_message(total: int, subject: str, key: DkimKey) -> bytes:
    """A message carrying one valid signature, ``total`` bytes with the signature."""
    size = total
    for _ in range(4):  # the signature's length hardly depends on the body: converges at once
        signed = dkimpy_sign(unsigned_message(size, subject), key)
        if len(signed) == total:
            return signed
        size -= len(signed) - total
    raise RuntimeError(f"could not make a signed message of {total} bytes")


def dkimpy_verifies(raw: bytes, key: DkimKey) -> bool:
    """Whether the topmost DKIM-Signature of ``raw`` verifies (independently, with dkimpy)."""
    record = key.public_record.encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return record if name.rstrip(b".").decode() == key.record_name else b""

    return bool(dkim.verify(re.sub(rb"\r?\n", b"\r\n", raw), dnsfunc=dnsfunc))


# --------------------------------------------------------------------------------------------
# Milters


def shared_conf(directory: Path, mode: str, authserv_id: str, nameserver: str) -> str:
    """The opendkim.conf settings both milters run with (Socket/PidFile are added per daemon).

    The guide's file (as tests/dkim/milter_fixture.py writes it), with: Mode s or v; logging
    off (OpenDKIM has no syslog daemon to write to here; postward's per-message log lines off
    too); RequireSafeKeys no (the key lives below /tmp); the same OversignHeaders for both;
    UMask 000 so that Postfix's smtpd can connect to a unix socket; and ``Nameservers`` for
    OpenDKIM (postward reads postward.conf's [dns] instead, the same server).

    Not ResolverConfiguration (a libunbound config file), the test bed's usual way to point
    OpenDKIM at the test DNS: OpenDKIM 2.11 sets up a new libunbound context for every message
    and so re-reads that file every time, and libunbound's config parser (flex) is not
    thread-safe: with 10 concurrent sessions OpenDKIM tempfails messages ("syntax error" in
    the file) and soon dies with "fatal flex scanner internal error--end of buffer missed".
    ``Nameservers`` (libunbound's ub_ctx_set_fwd) parses nothing; it takes no port, so the
    benchmark's unbound listens on port 53 of the private address."""
    return (f"Canonicalization        relaxed/relaxed\n"
            f"ExternalIgnoreList      refile:{directory / 'TrustedHosts'}\n"
            f"InternalHosts           refile:{directory / 'TrustedHosts'}\n"
            f"KeyTable                refile:{directory / 'KeyTable'}\n"
            f"SigningTable            refile:{directory / 'SigningTable'}\n"
            f"MinimumKeyBits          1024\n"
            f"Mode                    {'s' if mode == 'sign' else 'v'}\n"
            f"OversignHeaders         {OVERSIGN}\n"
            f"RequireSafeKeys         no\n"
            f"Nameservers             {nameserver}\n"
            f"Syslog                  no\n"
            f"SyslogSuccess           no\n"
            f"LogWhy                  no\n"
            f"UMask                   000\n"
            f"AuthservID              {authserv_id}\n")


@dataclass
class Milter:
    """One running milter process."""

    kind: str  # "postward" or "opendkim"
    mode: str
    socket: str
    spec: str  # for Postfix's smtpd_milters
    authserv_id: str
    process: ManagedProcess
    directory: Path

    @property
    def label(self) -> str:
        return "postward-dkim" if self.kind == "postward" else "OpenDKIM 2.11"

    @property
    def pid(self) -> int:
        return self.process.pid


def _accepts(host: str, port: int) -> bool:
    import socket
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# One load run


@dataclass
class LoadRun:
    messages: int
    sessions: int
    seconds: float  # smtp-source's wall time: every message accepted by Postfix
    delivered_seconds: float  # from the start to the last message written by smtp-sink
    latencies: list[float] = field(default_factory=list)  # Postfix's delays= "a", per message
    milter_cpu: float = 0.0  # CPU seconds of the milter process during the run

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def delivered_rate(self) -> float:
        return self.messages / self.delivered_seconds

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class CheckFailed(RuntimeError):
    """A sanity check of the benchmark failed: a message missing, unsigned or unverified."""




def _sent_delays(log: str) -> list[float]:
    out = []
    for line in log.splitlines():
        if "status=sent" in line:
            m = re.search(r"delays=([0-9.eE+-]+)/", line)
            out.append(float(m.group(1)) if m else float("nan"))
    return out


# --------------------------------------------------------------------------------------------
# The rig


class Rig:
    def __init__(self, directory: Path, address: str) -> None:
        self.directory = directory
        self.address = address
        self.stack = contextlib.ExitStack()
        self.key: DkimKey | None = None
        self.dns: Unbound | None = None
        self.redis: RedisServer | None = None
        self.sink: SmtpSink | None = None
        self.postfixes: dict[str, PostfixInstance] = {}
        self.milters: dict[tuple[str, str, str], Milter] = {}

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def subdir(self, name: str) -> Path:
        path = self.directory / name
        path.mkdir(mode=0o755, parents=True)
        path.chmod(0o755)
        return path

    # -- shared daemons ----------------------------------------------------------------------

    def start_common(self) -> None:
        self.key = generate_key(self.subdir("key"), DOMAIN, SELECTOR, "rsa", 2048)
        zone = LocalZone(DOMAIN, [txt(self.key.record_name, self.key.public_record, 3600)])
        self.dns = Unbound(self.subdir("dns"), self.address, [zone], port=53)
        self.stack.callback(self.dns.stop)
        self.dns.start()
        self.redis = RedisServer(self.subdir("redis"), self.address)
        self.stack.callback(self.redis.stop)
        self.redis.start()
        # The dump on tmpfs: 100 KB messages by the thousand, read back and removed per run.
        shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
        sink_dir = Path(tempfile.mkdtemp(prefix="postward-dkim-sink-", dir=shm))
        sink_dir.chmod(0o755)
        self.stack.callback(shutil.rmtree, sink_dir, True)
        self.sink = SmtpSink(sink_dir, self.address)
        self.stack.callback(self.sink.stop)
        self.sink.start()

    # -- milters -----------------------------------------------------------------------------

    def start_milter(self, kind: str, mode: str, socket: str) -> Milter:
        assert self.redis is not None and self.dns is not None and self.key is not None
        name = f"{kind}-{mode}-{socket}"
        directory = self.subdir(name)
        trusted = [CLIENT_ADDRESS, self.address] if mode == "sign" else [NOBODY]
        authserv_id = f"{kind}.bench.test"
        # DkimDaemon writes the KeyTable, SigningTable, TrustedHosts, the key and postward.conf
        # (Redis, DNS, metrics off); its opendkim.conf is replaced by the shared settings.
        daemon = DkimDaemon(directory, self.address, redis_url=self.redis.url,
                            nameserver=self.dns.nameserver,
                            keys=[KeySpec(DOMAIN, SELECTOR, self.key.private_pem)],
                            trusted_hosts=trusted, unix_socket=socket == "unix", umask="000")
        conf = shared_conf(directory, mode, authserv_id, self.dns.address)
        if kind == "postward":
            sock = (f"local:{daemon.socket_path}" if socket == "unix"
                    else f"inet:{daemon.port}@{self.address}")
            daemon.opendkim_conf.write_text(
                conf + f"Socket                  {sock}\n"
                       f"PidFile                 {directory / 'postward-dkim.pid'}\n")
            self.stack.callback(daemon.stop)
            daemon.process.name = f"postward-dkim ({mode}, {socket})"
            daemon.start()
            milter = Milter(kind, mode, socket, daemon.milter, authserv_id, daemon.process,
                            directory)
        else:
            port = free_port(self.address)
            path = directory / "opendkim.sock"
            sock = f"local:{path}" if socket == "unix" else f"inet:{port}@{self.address}"
            conf_path = directory / "opendkim-2.11.conf"
            conf_path.write_text(conf + f"Socket                  {sock}\n"
                                        f"PidFile                 {directory / 'opendkim.pid'}\n")
            process = ManagedProcess(f"OpenDKIM ({mode}, {socket})",
                                     [OPENDKIM, "-f", "-x", str(conf_path)],
                                     directory / "opendkim.log")
            self.stack.callback(process.stop)
            if socket == "unix":
                process.start(ready=path.exists)
            else:
                process.start(ready=lambda: _accepts(self.address, port))
            spec = f"unix:{path}" if socket == "unix" else f"inet:{self.address}:{port}"
            milter = Milter(kind, mode, socket, spec, authserv_id, process, directory)
        self.milters[(kind, mode, socket)] = milter
        return milter

    # -- Postfix -----------------------------------------------------------------------------

    def start_postfix(self, name: str, milter: Milter | None) -> PostfixInstance:
        assert self.sink is not None
        overrides = {
            # Sub-second "delays=" in the log: the per-message latencies come from there.
            "delay_logging_resolution_limit": "6",
        }
        snippets: list[Path] = []
        if milter is not None:
            snippets.append(SNIPPET)
            overrides["postward_dkim_milter"] = milter.spec
        instance = PostfixInstance(self.directory / f"postfix-{name}", self.address,
                                   name=f"pf-{name}", domains=("postfix.bench.test",),
                                   relay_routes={RECIPIENT_DOMAIN: self.sink.nexthop},
                                   snippets=snippets, overrides=overrides)
        self.stack.callback(instance.stop)
        instance.start()
        self.postfixes[name] = instance
        return instance

    # -- load --------------------------------------------------------------------------------

    def clear_sink(self) -> None:
        assert self.sink is not None
        for path in self.sink.dump_dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def sink_files(self) -> list[Path]:
        assert self.sink is not None
        return list(self.sink.dump_dir.iterdir())

    def send(self, postfix: PostfixInstance, message_file: Path, messages: int, sessions: int,
             milter: Milter | None = None, timeout: float = 600.0) -> LoadRun:
        """smtp-source → Postfix → smtp-sink; returns once every message is at the sink (and
        raises CheckFailed if one is not within ``timeout``)."""
        from tests.benchmarks.bench_policyd import tree_cpu

        self.clear_sink()
        log_start = len(postfix.log_text())
        argv = [postfix_tool("smtp-source"), "-4", "-m", str(messages), "-s", str(sessions),
                "-M", CLIENT_HELO, "-f", SENDER, "-t", RECIPIENT, "-F", str(message_file),
                f"inet:{postfix.address}:{postfix.port}"]
        cpu = tree_cpu(milter.pid) if milter else 0.0
        start_wall = time.time()
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise CheckFailed(f"smtp-source exited with {done.returncode}: "
                              f"{done.stdout}{done.stderr}\n--- maillog ---\n"
                              f"{postfix.log_tail(20)}")

        def all_sent() -> list[float] | None:
            delays = _sent_delays(postfix.log_text()[log_start:])
            return delays if len(delays) >= messages else None

        try:
            delays = wait_until(all_sent, timeout=max(30.0, seconds * 2), interval=0.05,
                                what=f"{messages} deliveries to smtp-sink")
        except TimeoutError as e:
            sent = len(_sent_delays(postfix.log_text()[log_start:]))
            raise CheckFailed(f"{e}: only {sent} of {messages} were delivered\n--- maillog "
                              f"---\n{postfix.log_tail(20)}") from None
        cpu = (tree_cpu(milter.pid) - cpu) if milter else 0.0
        files = self.sink_files()
        if len(files) != messages or len(delays) != messages:
            raise CheckFailed(f"{messages} messages sent, {len(delays)} delivered, "
                              f"{len(files)} in the sink's dump")
        last = max(f.stat().st_mtime for f in files)
        return LoadRun(messages, sessions, seconds, last - start_wall, delays, cpu)

    def dump_heads(self, limit: int | None = None) -> list[tuple[Path, bytes]]:
        """The header sections of the messages at the sink (the first ``limit`` of them)."""
        out = []
        for path in sorted(self.sink_files())[:limit]:
            with open(path, "rb") as f:
                data = f.read(16384)
            head = data.split(b"\n\n", 1)[0]
            out.append((path, head))
        return out


def header_values(head: bytes, name: str) -> list[str]:
    """Unfolded values of every ``name`` field in a header section."""
    fields = re.split(rb"\r?\n(?![ \t])", head)
    prefix = name.lower().encode() + b":"
    return [re.sub(rb"\s+", b" ", f[len(prefix):]).strip().decode("ascii", "replace")
            for f in fields if f.lower().startswith(prefix)]


def check_dump(rig: Rig, mode: str | None, milter: Milter | None, key: DkimKey,
               expected: int) -> str:
    """Every message at the sink carries what the milter under test must have added: a
    DKIM-Signature for example.test (sign; the first one also verified by dkimpy) or an
    Authentication-Results with the milter's authserv-id and dkim=pass (verify). Without a
    milter: no DKIM-Signature was added. Returns a one-line summary."""
    heads = rig.dump_heads()
    if len(heads) != expected:
        raise CheckFailed(f"{expected} messages expected at the sink, {len(heads)} there")
    for path, head in heads:
        signatures = header_values(head, "DKIM-Signature")
        if milter is None or mode == "sign":
            want = 0 if milter is None else 1
            if len(signatures) != want or (want and f"d={DOMAIN};" not in
                                           signatures[0].replace(" ", "")):
                raise CheckFailed(f"{path}: {len(signatures)} DKIM-Signature fields "
                                  f"(expected {want} for d={DOMAIN}):\n{head.decode()}")
            continue
        results = [v for v in header_values(head, "Authentication-Results")
                   if v.split(";", 1)[0].strip() == milter.authserv_id]
        if len(results) != 1 or not re.search(r"\bdkim=pass\b", results[0]):
            raise CheckFailed(f"{path}: no 'dkim=pass' from {milter.authserv_id}:\n"
                              f"{head.decode()}")
    if milter is None:
        return f"{expected} messages, none signed"
    path, _ = heads[0]
    if mode == "sign":
        if not dkimpy_verifies(path.read_bytes(), key):
            raise CheckFailed(f"{path}: the signature by {milter.label} does not verify "
                              f"with dkimpy")
        return (f"{expected} messages signed (d={DOMAIN}, s={SELECTOR}); the first verified "
                f"by dkimpy")
    return f"{expected} messages with Authentication-Results: {milter.authserv_id}; dkim=pass"


def write_message_files(directory: Path, key: DkimKey,
                        sizes: Sequence[int]) -> dict[tuple[str, int], Path]:
    """The files smtp-source sends: (mode, size) -> path; sign mode's are unsigned."""
    files = {}
    for size in sizes:
        for mode in MODES:
            subject = f"dkim bench {mode} {size}"
            raw = (unsigned_message(size, subject) if mode == "sign"
                   else signed_message(size, subject, key))
            path = directory / f"{mode}-{size}.eml"
            path.write_bytes(raw)
            path.chmod(0o644)
            files[(mode, size)] = path
    return files


def os_facts() -> dict[str, str]:
    version = subprocess.run([OPENDKIM, "-V"], capture_output=True, text=True, check=False)
    first = (version.stdout or version.stderr).splitlines()[:1]
    postconf = subprocess.run([postfix_tool("postconf"), "-dh", "mail_version"],
                              capture_output=True, text=True, check=False)
    return {"opendkim": first[0].strip() if first else "?",
            "postfix": postconf.stdout.strip(), "pid": str(os.getpid())}
