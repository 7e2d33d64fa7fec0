"""One request of postward-filter's protocol, answered: what the daemon does per message.

Codes: 200 done; 451 a transient fault of ours (Redis down, a timeout) — the filter exits 75
and Postfix retries; 5xx a request that can never succeed (the filter reports it).
"""

from __future__ import annotations

import functools
import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from postward.classifier.metrics import ClassifierMetrics
from postward.classifier.service import Classifier
from postward.classifier.settings import ClassifierSettings
from postward.core.logs import get_log
from postward.core.redis_store import StoreUnavailable

log = get_log("classifierd")

_PLACEHOLDER = re.compile(r"%[usr]")
_SIGNATURE = re.compile(rb"^x-dspam-signature:[ \t]*([0-9a-fA-F]+)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Reply:
    code: int
    text: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    extra: bytes = b""


def agent_argv(template: str, user: str, sender: str, recipient: str) -> str:
    """The delivery agent for one recipient, tab-joined (or ``lmtp:...`` as it is)."""
    if template.startswith("lmtp:"):
        return template
    values = {"%u": user, "%s": sender, "%r": recipient}
    argv = [_PLACEHOLDER.sub(lambda m: values[m.group(0)], arg) if "%" in arg else arg
            for arg in _words(template)]
    return "\t".join(argv)


@functools.lru_cache(maxsize=16)
def _words(template: str) -> tuple[str, ...]:
    """The template split as a shell would: once per template (shlex took ~20-30 us of every
    request), not once per message. Bounded: a daemon has one template per configuration."""
    return tuple(shlex.split(template))


def header_block(headers: Sequence[tuple[str, str]]) -> bytes:
    """Header fields as the pipe filter's message carries them (LF line ends)."""
    return "".join(f"{name}: {value}\n" for name, value in headers).encode("utf-8")


def signature_in(message: bytes) -> str | None:
    """The X-DSPAM-Signature of a message (the first: ours is put on top)."""
    ends = [i for i in (message.find(b"\n\n"), message.find(b"\n\r\n")) if i >= 0]
    m = _SIGNATURE.search(message[:min(ends) + 1] if ends else message)
    return m.group(1).decode("ascii") if m else None


class Handler:
    def __init__(self, classifier: Classifier, settings: ClassifierSettings,
                 metrics: ClassifierMetrics) -> None:
        self.classifier = classifier
        self.settings = settings
        self.metrics = metrics

    async def handle(self, op: str, fields: list[tuple[str, str]], message: bytes) -> Reply:
        start = time.perf_counter()
        try:
            reply = await self._dispatch(op, fields, message)
        except StoreUnavailable as e:
            self.metrics.errors("redis").inc()
            reply = Reply(451, f"Redis unavailable: {e}")
        except (LookupError, ValueError) as e:
            self.metrics.errors("request").inc()
            reply = Reply(550, str(e))
        except Exception as e:  # a bug must defer the message, never drop or bounce it
            self.metrics.errors("internal").inc()
            log.error("request_failed", op=op, error=f"{type(e).__name__}: {e}")
            reply = Reply(451, f"internal error: {type(e).__name__}")
        self.metrics.requests(op, str(reply.code)).inc()
        self.metrics.latency(op).observe(time.perf_counter() - start)
        if reply.code >= 400 and reply.code < 500:
            self.metrics.tempfails.inc()
        return reply

    async def _dispatch(self, op: str, fields: list[tuple[str, str]], message: bytes) -> Reply:
        values = dict(fields)
        user = values.get("user", "")
        if op in ("PROCESS", "CLASSIFY"):
            return await self._classify(op, values, [v for n, v in fields if n == "recipient"],
                                        user, message)
        if op == "RETRAIN":
            label = values.get("class", "")
            source = values.get("source", "error")
            signature = values.get("signature") or signature_in(message)
            done = await self.classifier.retrain(user, label, source, signature,
                                                 message or None, values.get("mode"))
            if done.changed:
                self.metrics.trainings(source, label).inc()
            log.info("retrained", user=user, label=label, source=source, detail=done.detail)
            return Reply(200, done.detail)
        return Reply(500, f"unknown operation {op!r}")

    def unclassified(self, fields: list[tuple[str, str]], reason: str) -> Reply:
        """552 with the delivery agent: the filter hands the message on untouched."""
        values = dict(fields)
        recipients = [v for n, v in fields if n == "recipient"]
        user = values.get("user", "")
        agent = agent_argv(self.settings.delivery_agent, user, values.get("sender", ""),
                           recipients[0] if recipients else user)
        return Reply(552, reason, [("agent", agent)])

    async def _classify(self, op: str, values: dict[str, str], recipients: list[str],
                        user: str, message: bytes) -> Reply:
        learn = op == "PROCESS"
        done = await self.classifier.classify(message, user, values.get("mode"), learn=learn)
        verdict = done.verdict
        self.metrics.verdicts(verdict.result).inc()
        self.metrics.tokens.observe(verdict.evidence)
        if done.learnt:
            self.metrics.trainings("classified", verdict.result).inc()
        recipient = recipients[0] if recipients else user
        reply_fields = [
            ("result", verdict.result), ("class", verdict.result),
            ("probability", f"{verdict.probability:.4f}"),
            ("confidence", f"{verdict.confidence:.4f}"), ("signature", done.signature),
            ("agent", agent_argv(self.settings.delivery_agent, user,
                                 values.get("sender", ""), recipient)),
        ]
        block = header_block(done.headers)
        return Reply(200, "classified", reply_fields, block)
