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


async def read_request(reader: asyncio.StreamReader,
                       max_message: int) -> tuple[str, list[tuple[str, str]], bytes]:
    first = await reader.readuntil(b"\n")
    parts = first.decode("utf-8", "replace").split()
    if len(parts) != 2 or parts[0] != PROTOCOL or parts[1] not in OPS:
        raise ProtocolError(f"bad request line {first[:60]!r}")
    fields: list[tuple[str, str]] = []
    size = len(first)
    while True:
        line = await reader.readuntil(b"\n")
        size += len(line)
        if size > MAX_HEAD:
            raise ProtocolError("request header too long")
        if line in (b"\n", b"\r\n"):
            break
        name, sep, value = line.decode("utf-8", "surrogateescape").partition(":")
        if not sep:
            raise ProtocolError(f"bad header line {line[:60]!r}")
        fields.append((name.strip().lower(), value.strip()))
    try:
        length = int(dict(fields).get("length", ""))
    except ValueError:
        raise ProtocolError("no length") from None
    if length < 0:
        raise ProtocolError("negative length")
    if length > max_message:
        remaining = length
        while remaining:
            chunk = await reader.read(min(remaining, 1 << 20))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", remaining)
            remaining -= len(chunk)
        raise Oversized(f"message of {length} bytes over max_message_size {max_message}",
                        fields)
    return parts[1], fields, await reader.readexactly(length)


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
        if self.listener is not None:
            self._server = await asyncio.start_unix_server(self._serve, sock=self.listener,
                                                           limit=MAX_HEAD)
            log.info("listening", socket=str(path), pid=os.getpid())
            return
        check_socket_path(path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(path),
                                                       limit=MAX_HEAD)
        os.chmod(path, int(self.config.classifier.socket_mode, 8))
        log.info("listening", socket=str(path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        settings = self.config.classifier
        try:
            async with self.inflight.track():
                try:
                    async with asyncio.timeout(settings.request_timeout):
                        op, fields, message = await read_request(reader,
                                                                 settings.max_message_size)
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
                writer.write(encode_reply(reply))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

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
