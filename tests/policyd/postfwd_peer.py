"""Run postfwd 1.35 (the ground truth) and postward-policyd on the same policy requests.

Both run in postfwd's stdin mode: ``PROGRAM -f RULEFILE [-n] < requests`` reads Postfix policy
requests (``name=value`` lines, a blank line) and writes ``action=...`` plus a blank line for each.
:func:`run_postfwd` and :func:`run_postward` take the same arguments and return one answer line
(the whole ``action=...`` text) per request, in order.

How postfwd is run (the facts behind each choice are in docs/postfwd-quirks.md):

* DNS goes to the test bed through a private mount namespace. postfwd1 runs under Perl's taint
  mode (``#!/usr/bin/perl -T``) and Net::DNS 1.36 untaints /etc/resolv.conf only: a nameserver
  from ``RES_NAMESERVERS``/``RES_OPTIONS`` (or ~/.resolv.conf) is tainted and postfwd dies with
  "Insecure dependency while running with -T switch" at the first query. So the harness writes a
  resolv.conf with ``nameserver ADDR`` and ``options port:PORT`` (Net::DNS reads ``port`` as a
  resolver option; glibc ignores it) and runs ``unshare --mount`` + ``mount --bind`` over
  /etc/resolv.conf for that one process: the machine's file is never touched. Without a
  nameserver, the resolv.conf names a loopback port nobody listens on, so a stray query is
  refused at once and never leaves the machine.
* ``-L`` sends postfwd's log lines to stdout as ``[LOG prio]: ...`` (never to syslog); they are
  split from the answers and kept, per request, for diagnostics.
* ``--cache=0`` turns off postfwd's in-process request cache (identical requests would otherwise
  get the first answer again for 600 s); every run is a new process, so nothing persists between
  runs (no ``--save_rates``).
* TZ=UTC, a private HOME, cwd = the rule file's directory (relative ``file:`` paths resolve there)
  and a hard timeout that kills the whole process group.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.testbed.net import free_port

POSTFWD = Path("/usr/sbin/postfwd1")
POSTWARD_MODULE = "postward.policyd"
POSTFWD_BASE_ARGS: tuple[str, ...] = ("-L", "--cache=0")
DEFAULT_TZ = "UTC"
Request = Mapping[str, str]
Nameserver = tuple[str, int]


class PeerError(RuntimeError):
    """A policy program failed: it timed out, or answered a different number of requests."""


@dataclass(frozen=True)
class PolicyRun:
    """What one run of a policy program produced."""

    argv: tuple[str, ...]
    answers: tuple[str, ...]
    # logs[i]: the log lines printed before answer i; logs[len(answers)]: those after the last.
    logs: tuple[tuple[str, ...], ...]
    stderr: str
    returncode: int
    expected: int = field(default=0)

    @property
    def complete(self) -> bool:
        return len(self.answers) == self.expected

    def describe(self) -> str:
        tail = "\n".join(self.stderr.splitlines()[-15:])
        return (f"argv: {' '.join(self.argv)}\nexit code: {self.returncode}, "
                f"{len(self.answers)} answers for {self.expected} requests\nstderr tail:\n{tail}")


def encode_requests(requests: Sequence[Request]) -> bytes:
    """The policy-protocol bytes for ``requests``: ``name=value`` lines and a blank line each."""
    out = []
    for request in requests:
        for name, value in request.items():
            _check_attribute(name, value)
            out.append(f"{name}={value}\n")
        out.append("\n")
    return "".join(out).encode("utf-8", errors="surrogateescape")


def _check_attribute(name: str, value: str) -> None:
    if not name or "=" in name or any(c in name + value for c in "\r\n"):
        raise ValueError(f"attribute cannot be sent in the policy protocol: {name!r}={value!r}")


def parse_output(stdout: bytes) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """Answers (``action=...`` lines) and the log lines around them, from a run's stdout."""
    answers: list[str] = []
    logs: list[tuple[str, ...]] = []
    pending: list[str] = []
    for line in stdout.decode("utf-8", errors="surrogateescape").split("\n"):
        if line.startswith("action="):
            answers.append(line)
            logs.append(tuple(pending))
            pending = []
        elif line:
            pending.append(line)
    logs.append(tuple(pending))
    return tuple(answers), tuple(logs)


def default_timeout(requests: Sequence[Request]) -> float:
    return 30.0 + 0.5 * len(requests)


def _run(argv: Sequence[str], stdin: bytes, *, cwd: Path, env: Mapping[str, str],
         timeout: float) -> tuple[bytes, bytes, int]:
    """Run argv in its own process group; on timeout kill the group and raise PeerError."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=cwd, env=dict(env),
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        answers, _ = parse_output(stdout)
        raise PeerError(f"{' '.join(argv)} did not finish within {timeout:.0f}s "
                        f"({len(answers)} answers so far)\nstderr:\n"
                        f"{stderr.decode(errors='replace')[-2000:]}") from None
    return stdout, stderr, proc.returncode


def resolv_conf(nameserver: Nameserver | None) -> str:
    """A resolv.conf for postfwd's Net::DNS: the test bed, or a refused loopback port."""
    if nameserver is None:
        nameserver = ("127.0.0.1", free_port("127.0.0.1"))
    address, port = nameserver
    return f"nameserver {address}\noptions port:{port}\n"


def postfwd_argv(rule_file: Path, resolv: Path, *, nodns: bool,
                 extra_args: Sequence[str]) -> list[str]:
    # sh -c 'mount ... && exec "$@"' RESOLV postfwd1 ...: $0 is the resolv.conf to mount.
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script,
            str(resolv), str(POSTFWD), *POSTFWD_BASE_ARGS, *(["-n"] if nodns else []),
            "-f", str(rule_file), *extra_args]


def postfwd_env(home: Path) -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), "LC_ALL": "C",
            "TZ": DEFAULT_TZ}


def run_postfwd_raw(rule_file: Path, requests: Sequence[Request], *, nodns: bool,
                    nameserver: Nameserver | None, extra_args: Sequence[str] = (),
                    timeout: float | None = None,
                    extra_env: Mapping[str, str] | None = None) -> PolicyRun:
    """Run postfwd1 once on ``requests``; the answers may be fewer (quit(), a Perl die).

    ``extra_env`` adds variables to postfwd's small environment (PERL_HASH_SEED, say)."""
    rule_file = rule_file.resolve()
    with tempfile.TemporaryDirectory(prefix="postfwd-peer-") as tmp:
        resolv = Path(tmp) / "resolv.conf"
        resolv.write_text(resolv_conf(nameserver))
        resolv.chmod(0o644)
        argv = postfwd_argv(rule_file, resolv, nodns=nodns, extra_args=extra_args)
        stdout, stderr, code = _run(argv, encode_requests(requests), cwd=rule_file.parent,
                                    env={**postfwd_env(Path(tmp)), **(extra_env or {})},
                                    timeout=timeout or default_timeout(requests))
    answers, logs = parse_output(stdout)
    return PolicyRun(tuple(argv), answers, logs, stderr.decode(errors="replace"), code,
                     expected=len(requests))


def postward_argv(rule_file: Path, *, nodns: bool, nameserver: Nameserver | None,
                  extra_args: Sequence[str]) -> list[str]:
    argv = [sys.executable, "-m", POSTWARD_MODULE, "-f", str(rule_file)]
    if nodns:
        argv.append("-n")
    if nameserver is not None:
        argv += ["--nameserver", f"{nameserver[0]}:{nameserver[1]}"]
    return [*argv, *extra_args]


def run_postward_raw(rule_file: Path, requests: Sequence[Request], *, nodns: bool,
                     nameserver: Nameserver | None, extra_args: Sequence[str] = (),
                     timeout: float | None = None) -> PolicyRun:
    """Run postward-policyd on ``requests`` the way :func:`run_postfwd_raw` runs postfwd."""
    rule_file = rule_file.resolve()
    argv = postward_argv(rule_file, nodns=nodns, nameserver=nameserver, extra_args=extra_args)
    env = {**os.environ, "TZ": DEFAULT_TZ}
    stdout, stderr, code = _run(argv, encode_requests(requests), cwd=rule_file.parent, env=env,
                                timeout=timeout or default_timeout(requests))
    answers, logs = parse_output(stdout)
    return PolicyRun(tuple(argv), answers, logs, stderr.decode(errors="replace"), code,
                     expected=len(requests))


def _complete(run: PolicyRun) -> list[str]:
    if not run.complete:
        raise PeerError("the policy program did not answer every request:\n" + run.describe())
    return list(run.answers)


def run_postfwd(rule_file: Path, requests: list[dict[str, str]], *, nodns: bool,
                nameserver: tuple[str, int] | None, extra_args: Sequence[str] = ()) -> list[str]:
    """postfwd1's ``action=...`` answer for each request (PeerError if one is missing)."""
    return _complete(run_postfwd_raw(rule_file, requests, nodns=nodns, nameserver=nameserver,
                                     extra_args=extra_args))


def run_postward(rule_file: Path, requests: list[dict[str, str]], *, nodns: bool,
                 nameserver: tuple[str, int] | None, extra_args: Sequence[str] = ()) -> list[str]:
    """postward-policyd's ``action=...`` answer for each request (PeerError if one is missing)."""
    return _complete(run_postward_raw(rule_file, requests, nodns=nodns, nameserver=nameserver,
                                      extra_args=extra_args))


def postward_unavailable() -> str | None:
    """Why postward-policyd cannot be run with ``python -m`` yet, or None when it can."""
    try:
        spec = importlib.util.find_spec(POSTWARD_MODULE + ".__main__")
    except ImportError as exc:
        return f"{POSTWARD_MODULE} is not importable ({exc})"
    if spec is None:
        return f"{POSTWARD_MODULE}.__main__ does not exist yet: `python -m {POSTWARD_MODULE}` fails"
    return None


def postfwd_unavailable() -> str | None:
    """Why postfwd1 cannot be run here (not installed, no mount namespaces), or None."""
    if not POSTFWD.exists():
        return f"{POSTFWD} is not installed (apt-get install postfwd)"
    if os.geteuid() != 0:
        return "running postfwd1 against the DNS test bed needs root (unshare --mount)"
    return None


# --- a policy service for ask() ---------------------------------------------------------------

Answerer = Callable[[dict[str, str]], str]


class _PolicyHandler(socketserver.StreamRequestHandler):
    server: _PolicyTCPServer

    def handle(self) -> None:
        request: dict[str, str] = {}
        for raw in self.rfile:
            line = raw.decode("utf-8", errors="surrogateescape").rstrip("\r\n")
            if not line:
                break
            name, _, value = line.partition("=")
            request[name] = value
        self.server.seen.append(request)
        self.wfile.write((self.server.answer(request) + "\n\n").encode("utf-8"))


class _PolicyTCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], answer: Answerer) -> None:
        super().__init__(address, _PolicyHandler)
        self.answer = answer
        self.seen: list[dict[str, str]] = []


@contextlib.contextmanager
def policy_server(address: str, answer: Answerer) -> Iterator[_PolicyTCPServer]:
    """A tiny Postfix policy service on ``address`` (a free port) for postfwd's ask():
    reads one request, answers ``answer(request)`` (a line such as ``action=DUNNO``)."""
    server = _PolicyTCPServer((address, 0), answer)
    thread = threading.Thread(target=server.serve_forever, name="ask-policy-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def endpoint(server: socketserver.TCPServer) -> str:
    host, port = server.server_address[:2]
    return f"{host}:{port}"


def closed_port(address: str) -> str:
    """ADDR:PORT where nothing listens (a free port, not kept)."""
    return f"{address}:{free_port(address)}"


def port_is_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False
