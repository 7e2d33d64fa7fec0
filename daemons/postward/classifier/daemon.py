"""postward-classifierd: holds the tokenizer, the model settings and the Redis pool, and answers
postward-filter on a unix socket (the protocol is in ``filter_client``).

A request is bounded: its header (64 KB), its message (``max_message_size``) and its time
(``request_timeout``); a client that breaks the protocol is logged and disconnected, and the
daemon goes on. SIGHUP reloads postward.conf (a config with errors is logged, the running one
kept); SIGTERM closes the socket and finishes the requests in flight.

With ``workers`` above 1, the pre-fork supervisor policyd uses too (``postward.core.workers``)
binds the socket and runs that many copies of the daemon accepting on it, so the CPU-bound part
of classifying (tokenizing, hashing, the model) uses every core; the models are in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
from pathlib import Path

from postward.classifier.filter_client import PROTOCOL
from postward.classifier.handler import Handler, Reply
from postward.classifier.metrics import ClassifierMetrics
from postward.classifier.service import Classifier
from postward.classifier.store import TokenStore
from postward.core.logs import get_log
from postward.core.runtime import Runtime, load_config_or_exit
from postward.core.service import InFlight, serve
from postward.core.workers import bind_listeners, supervise
from postward.schema import Config, load_config

log = get_log("classifierd")
MAX_HEAD = 65536
OPS = ("PROCESS", "CLASSIFY", "RETRAIN")
GC_GEN0 = 10_000  # allocations between young collections (CPython: 700)


class ProtocolError(Exception):
    pass


class Oversized(Exception):
    """A message over max_message_size: read to the end (the client must see the answer) and
    answered 552, which the filter takes as "deliver it unclassified", as dspam did."""


def build_handler(config: Config, runtime: Runtime, metrics: ClassifierMetrics,
                  global_cache: bool = True) -> Handler:
    """``global_cache``: keep a cache of the global model's counts (store.GlobalCountsCache)
    in this process, unless ``global_training`` changes that model with every learnt message
    (each change empties the cache, so it would only cost memory and copying)."""
    c = config.classifier
    entries = c.global_cache_entries if global_cache and not c.global_training else 0
    store = TokenStore(runtime.store, c.signature_ttl, entries)
    classifier = Classifier(store, config.classifier, runtime.clock)
    return Handler(classifier, config.classifier, metrics)


class _Connection(asyncio.Protocol):
    """One client: parses the request from the bytes as they come (usually all in one or two
    reads), without a StreamReader/StreamWriter pair and a wake-up per line (~12 % less CPU
    for the socket side of a request; the kernel's accept/read/write/close is the rest).
    ``request`` resolves to (op, fields, message), or fails with
    what the stream server raised on the same input (ProtocolError, Oversized,
    IncompleteReadError, LimitOverrunError, ConnectionError), so ``_serve`` answers alike."""

    def __init__(self, daemon: ClassifierDaemon) -> None:
        self.daemon = daemon
        self.max_message = daemon.config.classifier.max_message_size
        self.transport: asyncio.Transport | None = None
        self.request: asyncio.Future[tuple[str, list[tuple[str, str]], bytes]] = (
            asyncio.get_running_loop().create_future())
        self.pending = bytearray()  # an unfinished header line
        self.op = ""
        self.fields: list[tuple[str, str]] = []
        self.head_size = 0
        self.length = -1            # -1: still reading the header
        self.chunks: list[bytes | bytearray] = []
        self.got = 0
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.task = asyncio.get_running_loop().create_task(self.daemon._serve(self))

    def data_received(self, data: bytes) -> None:
        if self.request.done():  # bytes after the message (or after an error): ignored
            return
        try:
            body: bytes | bytearray | None = data
            if self.length < 0:
                body = self._head(data)
                if body is None:
                    return
            self._body(body)
        except (ProtocolError, Oversized, asyncio.LimitOverrunError) as e:
            self.request.set_exception(e)

    def eof_received(self) -> bool:
        if not self.request.done():
            self.request.set_exception(asyncio.IncompleteReadError(b"", None))
        return True  # a client that shut down its side still waits for the reply

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.request.done():
            self.request.set_exception(
                exc if isinstance(exc, ConnectionError) else
                asyncio.IncompleteReadError(b"", None) if exc is None else
                ConnectionError(str(exc)))

    def _head(self, data: bytes) -> bytes | bytearray | None:
        """Takes the header lines in ``data``; returns what follows the header, or None
        while it is unfinished. The bounds are the stream server's: a line over MAX_HEAD
        bytes (StreamReader's limit) is LimitOverrunError, a header over MAX_HEAD in all a
        ProtocolError."""
        buf: bytes | bytearray
        if self.pending:
            search = len(self.pending)  # the unfinished line has no newline: look at the new
            self.pending += data
            buf = self.pending
        else:
            search, buf = 0, data
        pos = 0
        while True:
            end = buf.find(b"\n", search)
            if end < 0:
                if len(buf) - pos > MAX_HEAD:
                    raise asyncio.LimitOverrunError("header line too long", len(buf) - pos)
                if buf is self.pending:
                    del self.pending[:pos]
                else:
                    self.pending = bytearray(buf[pos:])
                return None
            if end - pos > MAX_HEAD:
                raise asyncio.LimitOverrunError("header line too long", end - pos)
            line = bytes(buf[pos:end + 1])
            pos = search = end + 1
            if self._line(line):
                rest = buf[pos:]
                self.pending = bytearray()
                return rest

    def _line(self, line: bytes) -> bool:
        """True once ``line`` ended the header."""
        if not self.op:
            parts = line.decode("utf-8", "replace").split()
            if len(parts) != 2 or parts[0] != PROTOCOL or parts[1] not in OPS:
                raise ProtocolError(f"bad request line {line[:60]!r}")
            self.op, self.head_size = parts[1], len(line)
            return False
        self.head_size += len(line)
        if self.head_size > MAX_HEAD:
            raise ProtocolError("request header too long")
        if line not in (b"\n", b"\r\n"):
            name, sep, value = line.decode("utf-8", "surrogateescape").partition(":")
            if not sep:
                raise ProtocolError(f"bad header line {line[:60]!r}")
            self.fields.append((name.strip().lower(), value.strip()))
            return False
        try:
            length = int(dict(self.fields).get("length", ""))
        except ValueError:
            raise ProtocolError("no length") from None
        if length < 0:
            raise ProtocolError("negative length")
        self.length = length
        return True

    def _body(self, data: bytes | bytearray) -> None:
        if self.length > self.max_message:  # counted, not kept: the client gets its answer
            self.got += len(data)
            if self.got >= self.length:
                raise Oversized(f"message of {self.length} bytes over max_message_size "
                                f"{self.max_message}", self.fields)
            return
        if data:
            self.chunks.append(data)
            self.got += len(data)
        if self.got >= self.length:
            chunks, self.chunks = self.chunks, []
            message = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if len(message) != self.length or not isinstance(message, bytes):
                message = bytes(message[:self.length])
            self.request.set_result((self.op, self.fields, message))


def encode_reply(reply: Reply) -> bytes:
    lines = [f"{PROTOCOL} {reply.code} {reply.text}".replace("\n", " ")]
    lines += [f"{n}: {v}".replace("\n", " ") for n, v in reply.fields]
    lines.append(f"header-length: {len(reply.extra)}")
    return ("\n".join(lines) + "\n\n").encode("utf-8", "surrogateescape") + reply.extra


class ClassifierDaemon:
    def __init__(self, config: Config, runtime: Runtime,
                 listener: socket.socket | None = None) -> None:
        self.config = config
        self.runtime = runtime
        self.metrics = ClassifierMetrics(runtime.metrics)
        self.handler = build_handler(config, runtime, self.metrics)
        self.inflight = InFlight()
        # A worker gets the socket its supervisor bound (and unlinks); None: bind our own.
        self.listener = listener
        self._server: asyncio.AbstractServer | None = None

    @property
    def socket_path(self) -> Path:
        return Path(self.config.classifier.socket)

    async def start(self) -> None:
        path = self.socket_path
        loop = asyncio.get_running_loop()
        if self.listener is not None:
            self._server = await loop.create_unix_server(lambda: _Connection(self),
                                                         sock=self.listener)
            log.info("listening", socket=str(path), pid=os.getpid())
            return
        check_socket_path(path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._server = await loop.create_unix_server(lambda: _Connection(self), path=str(path))
        os.chmod(path, int(self.config.classifier.socket_mode, 8))
        log.info("listening", socket=str(path))

    async def _serve(self, conn: _Connection) -> None:
        settings = self.config.classifier
        transport = conn.transport
        assert transport is not None
        try:
            async with self.inflight.track():
                try:
                    async with asyncio.timeout(settings.request_timeout):
                        op, fields, message = await conn.request
                        reply = await self.handler.handle(op, fields, message)
                except Oversized as e:
                    self.metrics.errors("oversized").inc()
                    reply = self.handler.unclassified(e.args[1], e.args[0])
                except ProtocolError as e:
                    self.metrics.errors("protocol").inc()
                    log.warning("bad_request", reason=str(e))
                    reply = Reply(500, str(e))
                except TimeoutError:
                    self.metrics.errors("timeout").inc()
                    self.metrics.tempfails.inc()  # a 4xx like the handler's: the filter exits 75
                    reply = Reply(451, "request timed out")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        ConnectionError) as e:
                    self.metrics.errors("protocol").inc()
                    log.warning("client_gone", reason=type(e).__name__)
                    return
                if not transport.is_closing():  # else the client went away meanwhile
                    transport.write(encode_reply(reply))
        finally:
            transport.close()  # after the reply is flushed

    async def close_listeners(self) -> None:
        if self._server is not None:
            self._server.close()
            if self.listener is None:  # a worker's socket is its supervisor's to remove
                with contextlib.suppress(FileNotFoundError):
                    self.socket_path.unlink()

    async def reload(self, config: Config) -> None:
        self.config = config
        self.handler = build_handler(config, self.runtime, self.metrics)

    async def aclose(self) -> None:
        await self.runtime.aclose()


def check_socket_path(path: Path) -> None:
    if len(os.fsencode(path)) > 107:
        raise SystemExit(f"postward-classifierd: [classifier] socket {path}: longer than "
                         f"the 107 bytes a unix socket path may have")


def run_daemon(config_path: Path) -> int:
    config = load_config_or_exit(config_path)

    def run_worker(listener: socket.socket | None, serve_metrics: bool = True) -> int:
        async def main() -> int:
            runtime = Runtime.create(config, "classifierd", serve_metrics=serve_metrics)
            daemon = ClassifierDaemon(config, runtime, listener)
            # What exists now (modules, config, the handler) lives as long as the process:
            # frozen, the cyclic GC's full collections no longer walk it, and a message makes
            # thousands of short-lived containers, so gen-0 runs every 10,000 instead of 700.
            # Measured over 1,000 corpus messages: GC from ~5 % of the daemon's CPU per
            # message (0.034 of ~0.7 ms, mostly one full collection) to ~0.3 %.
            gc.collect()
            gc.freeze()
            gc.set_threshold(GC_GEN0, *gc.get_threshold()[1:])
            return await serve(daemon, daemon.inflight, lambda: load_config(config_path))

        return asyncio.run(main())

    c, m = config.classifier, config.metrics
    if c.workers <= 1:
        return run_worker(None)
    path = Path(c.socket)
    check_socket_path(path)
    listeners = bind_listeners((f"unix:{path}",))
    os.chmod(path, int(c.socket_mode, 8))
    try:
        return supervise(c.workers, listeners,
                         lambda socks: run_worker(socks[0], serve_metrics=False),
                         lambda: load_config(config_path),
                         m.classifierd if m.enabled else None, config.logging.level,
                         daemon="classifierd")
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
