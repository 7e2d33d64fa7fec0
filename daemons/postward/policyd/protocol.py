"""Postfix's SMTP access policy delegation protocol: ``name=value`` lines and an empty line in,
``action=...`` and an empty line out, many requests per connection, many connections at once.

Every request gets an answer: an error of ours (Redis down, a rule that quits, a bug) answers
the configured default action and is logged and counted. A client that breaks the protocol
(a line too long, too many attributes, silence past the idle timeout) is logged and
disconnected; the server goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from postward.core.clock import Clock, SystemClock
from postward.core.logs import get_log
from postward.core.metrics import Labelled, Metrics
from postward.core.redis_store import StoreUnavailable
from postward.core.service import InFlight
from postward.policyd.actions import QuitRequested
from postward.policyd.engine import Engine
from postward.policyd.request import parse_request

log = get_log("policyd.protocol")


@dataclass(frozen=True)
class Limits:
    max_line_length: int = 8192
    max_attributes: int = 256
    idle_timeout: float = 600.0
    request_budget: float = 10.0
    default_action: str = "DUNNO"


class _Disconnect(Exception):
    pass


class _LineTooLong(Exception):
    pass


class _TooManyLines(Exception):
    pass


class _RequestReader:
    """Whole requests from a stream: read in large chunks, split once per request (a request
    is usually one read), CRLF taken as LF."""

    def __init__(self, reader: asyncio.StreamReader, max_line: int, max_lines: int) -> None:
        self.reader = reader
        self.max_line = max_line
        self.max_lines = max_lines
        self.buffer = b""
        self.offset = 0
        self.partial = False

    async def next(self) -> bytes | None:
        """The next request: its lines up to (not with) its empty line; None at the end of the
        stream (``partial`` then says whether an unfinished request was cut off)."""
        while True:
            end = self.buffer.find(b"\n\n", self.offset)
            if end >= 0:
                block = self.buffer[self.offset:end]
                self.offset = end + 2
                # No line can be longer than the whole request: most need no split here.
                if len(block) > self.max_line and any(
                        len(line) > self.max_line for line in block.split(b"\n")):
                    raise _LineTooLong
                return block
            self._check_unfinished()
            chunk = await self.reader.read(65536)
            if not chunk:
                self.partial = bool(self.buffer[self.offset:].strip())
                return None
            rest = self.buffer[self.offset:] + chunk
            if b"\r" in rest:  # a '\r' at the very end waits for its '\n' in the next read
                rest = rest.replace(b"\r\n", b"\n")
            self.buffer, self.offset = rest, 0

    def _check_unfinished(self) -> None:
        last = self.buffer.rfind(b"\n", self.offset)
        if len(self.buffer) - (last + 1 if last >= 0 else self.offset) > self.max_line:
            raise _LineTooLong
        if self.buffer.count(b"\n", self.offset) > self.max_lines:
            raise _TooManyLines


class _Watch:
    """The idle timeout and the request budget of one connection without a timer per request:
    one timer, moved on only when it fires, cancels the handler if it has waited ``idle``
    seconds for a request, or spent ``budget`` seconds on a decision. (asyncio.timeout per
    request made and cancelled a timer each time: a sixth of the CPU of a request answered
    from the cache, and 4-9 µs of every greylisting decision here.)"""

    def __init__(self, idle: float, budget: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.idle = idle
        self.budget = budget
        self.waiting_since: float | None = None  # None: not waiting for a request
        self.deciding_since: float | None = None  # None: no decision under way
        self.expired = False  # the idle timeout cancelled the handler
        self.over_budget = False  # the budget cancelled the handler
        self._timer = self.loop.call_later(self._period(), self._check)

    def _period(self) -> float:
        # The timer never waits longer than either limit: a wait or a decision starting just
        # after it was set must still end on time.
        return min(self.idle, self.budget)

    def configure(self, idle: float, budget: float) -> None:
        """New limits (a reload may change them): the timer is set again if they did."""
        if idle != self.idle or budget != self.budget:
            self.idle, self.budget = idle, budget
            self._timer.cancel()
            self._timer = self.loop.call_later(self._period(), self._check)

    def _check(self) -> None:
        now = self.loop.time()
        if self.waiting_since is not None:
            remaining = self.waiting_since + self.idle - now
        elif self.deciding_since is not None:
            remaining = self.deciding_since + self.budget - now
        else:
            remaining = self._period()
        if remaining > 0:
            # No later than one period: a wait or a decision may start meanwhile.
            self._timer = self.loop.call_later(min(remaining, self._period()), self._check)
        elif self.task is not None:
            if self.waiting_since is not None:
                self.expired = True  # the connection ends: no timer any more
            else:
                self.over_budget = True  # the connection goes on, and so does the timer
                self._timer = self.loop.call_later(self._period(), self._check)
            self.task.cancel()

    def stop(self) -> None:
        self._timer.cancel()


# Every errors_total kind (docs/metrics.md): the first five were answered default_action, the
# others are clients breaking the protocol.
ERROR_KINDS = ("redis", "budget", "quit", "internal", "bad_request", "garbage", "truncated",
               "line_too_long", "too_many_attributes")


def action_class(action: str) -> str:
    """A low-cardinality label for an answer: its verb, or 4xx/5xx for numeric replies."""
    word = action.split(None, 1)[0] if action.strip() else "DUNNO"
    if word[:1].isdigit():
        return f"{word[0]}xx"
    return word.upper()


class PolicyServer:
    def __init__(self, engine: Callable[[], Engine], limits: Limits, metrics: Metrics,
                 inflight: InFlight, clock: Clock | None = None) -> None:
        self.engine = engine  # a callable: a reload swaps the engine between requests
        self.limits = limits
        self.inflight = inflight
        self.clock = clock or SystemClock()
        self._requests = Labelled(metrics.counter(
            "requests_total", "Policy requests answered, by protocol state and answer",
            ["state", "action"]))
        self._rule_hits = Labelled(metrics.counter(
            "rule_hits_total", "Requests whose answer came from a rule, by rule id", ["rule"]))
        self._errors = Labelled(metrics.counter(
            "errors_total", "Requests answered with the default action because of an error, "
            "and clients disconnected for breaking the protocol, by kind", ["kind"]))
        for kind in ERROR_KINDS:  # at 0 from the start: rate() then sees the first error
            self._errors(kind)
        self._latency = metrics.histogram("decision_seconds",
                                          "Time from a complete request to its answer")
        self._connections = metrics.gauge("client_connections", "Open client connections")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or "unix"
        self._connections.inc()
        requests = _RequestReader(reader, self.limits.max_line_length,
                                  self.limits.max_attributes)
        watch = _Watch(self.limits.idle_timeout, self.limits.request_budget)
        try:
            while True:
                attrs = await self._read_request(requests, peer, watch)
                if attrs is None:
                    return
                if not attrs:
                    continue  # a stray empty line
                with self.inflight.track():
                    start = self.clock.monotonic()
                    action, rule = await self._decide(attrs, watch)
                    elapsed = self.clock.monotonic() - start
                    writer.write(f"action={action}\n\n".encode("utf-8", "surrogateescape"))
                    # Counted once the answer is on its way: off the client's wait.
                    self._account(attrs, action, rule, elapsed)
                    await writer.drain()
        except _Disconnect:
            pass
        except (ConnectionError, OSError) as e:
            log.info("client_gone", peer=str(peer), error=type(e).__name__)
        finally:
            watch.stop()
            self._connections.dec()
            writer.close()

    async def _read_request(self, requests: _RequestReader, peer: object,
                            watch: _Watch) -> dict[str, str] | None:
        """The next request's attributes; None at a clean end of the connection."""
        # One deadline for the whole request, from the moment we wait for it.
        watch.configure(self.limits.idle_timeout, self.limits.request_budget)
        watch.waiting_since = watch.loop.time()
        try:
            block = await requests.next()
        except asyncio.CancelledError:
            task = watch.task
            if not watch.expired or task is None or task.uncancel() > 0:
                raise  # cancelled by someone else (shutdown): not ours to swallow
            log.info("client_idle", peer=str(peer), timeout=self.limits.idle_timeout)
            raise _Disconnect from None
        except _LineTooLong:
            log.warning("line_too_long", peer=str(peer), limit=self.limits.max_line_length)
            self._errors("line_too_long").inc()
            raise _Disconnect from None
        except _TooManyLines:
            self._too_many(peer)
        finally:
            watch.waiting_since = None
        if block is None:
            if requests.partial:
                log.warning("request_truncated", peer=str(peer))
                self._errors("truncated").inc()
            return None
        if block.count(b"\n") >= self.limits.max_attributes:  # more lines than allowed
            self._too_many(peer)
        attrs, garbage = parse_request(block)  # stray empty lines are skipped
        for line in garbage:
            log.warning("garbage_line", peer=str(peer),
                        line=line[:100].decode("utf-8", "replace"))
            self._errors("garbage").inc()
        return attrs

    def _too_many(self, peer: object) -> None:
        log.warning("too_many_attributes", peer=str(peer), limit=self.limits.max_attributes)
        self._errors("too_many_attributes").inc()
        raise _Disconnect

    async def answer(self, attrs: dict[str, str]) -> str:
        """The answer to one request, counted in the metrics."""
        start = self.clock.monotonic()
        action, rule = await self._decide(attrs)
        self._account(attrs, action, rule, self.clock.monotonic() - start)
        return action

    async def _decide(self, attrs: dict[str, str],
                      watch: _Watch | None = None) -> tuple[str, str | None]:
        """The answer and the id of the rule that gave it (None: no rule, or an error of ours,
        then logged and counted, answered the default action). The connection's ``watch``
        enforces the request budget; without one, asyncio.timeout does."""
        action, rule = self.limits.default_action, None
        if attrs.get("request") != "smtpd_access_policy":
            log.warning("not_a_policy_request", request=attrs.get("request", "")[:100])
            self._errors("bad_request").inc()
        else:
            try:
                engine = self.engine()
                key, decision = engine.cached(attrs)  # a cached answer needs no budget
                if decision is None and watch is None:
                    # asyncio.timeout, not wait_for: no extra task per request.
                    async with asyncio.timeout(self.limits.request_budget):
                        decision = await engine.decide(attrs, key)
                elif decision is None:
                    watch.configure(self.limits.idle_timeout, self.limits.request_budget)
                    watch.deciding_since = watch.loop.time()
                    try:
                        decision = await engine.decide(attrs, key)
                    except asyncio.CancelledError:
                        task = watch.task
                        if not watch.over_budget or task is None or task.uncancel() > 0:
                            raise  # cancelled by someone else (shutdown): not ours to swallow
                        raise TimeoutError from None  # as asyncio.timeout would
                    finally:
                        watch.deciding_since = None
                        watch.over_budget = False
                action, rule = decision.action, decision.rule_id
            except TimeoutError:
                log.warning("request_budget_exceeded", budget=self.limits.request_budget,
                            client=attrs.get("client_address", ""))
                self._errors("budget").inc()
            except StoreUnavailable:
                self._errors("redis").inc()  # RedisStore logged the cause
            except QuitRequested as e:
                log.error("rule_quit_ignored", code=e.code)
                self._errors("quit").inc()
            except Exception:
                log.exception("decision_failed", client=attrs.get("client_address", ""))
                self._errors("internal").inc()
        return action, rule

    def _account(self, attrs: dict[str, str], action: str, rule: str | None,
                 elapsed: float) -> None:
        self._latency.observe(elapsed)
        state = attrs.get("protocol_state", "").upper()[:20] or "NONE"
        self._requests(state, action_class(action)).inc()
        if rule is not None:
            self._rule_hits(rule).inc()
