"""The milter: one :class:`DkimMilter` per SMTP connection, driven by libmilter's threads.

Per message: the header fields are collected; at end of header postward-dkim decides whether
to sign (the client is an InternalHost or logged in with SASL, and the SigningTable has a key
for the From: address) or to verify (everything else); the body streams through the body
hashers; at end of message the signatures or the Authentication-Results field are added.

On TCP every callback answers Postfix (none is negotiated away as "no reply"): with
TCP_NODELAY on the socket this is what keeps a TCP milter from stalling 40 ms on delayed ACKs
(see docs/dkim.md). On a unix socket (:class:`UnixDkimMilter`) Postfix is told not to wait for
an answer to MAIL FROM, to each header field and to each body chunk. Any exception in a
callback is logged with the queue id and answered with the configured ``on_error`` (tempfail by
default: Postfix keeps the message and retries) -- by a "no reply" callback at the next step
that answers (end of header, end of message); the daemon never dies on a message.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import Milter

from postward.core.clock import Clock
from postward.core.logs import get_log
from postward.dkim import arc, authres, verifier
from postward.dkim.canonical import BodyHashes
from postward.dkim.headers import HeaderBlock
from postward.dkim.metrics import DkimMetrics
from postward.dkim.policy import DkimPolicy
from postward.dkim.signer import SigningKey, headers_to_sign, make_signature

log = get_log("dkim")

# The header postward-filter (and dspam before it) puts on every message it classified.
REINJECTED_MARK = "X-DSPAM-Result"

_REPLIES = {
    "reject": ("550", "5.7.1", "DKIM signature verification failed"),
    "tempfail": ("451", "4.7.1", "DKIM verification could not be completed; try again later"),
}


@dataclass
class Shared:
    """What every connection uses; ``policy`` is replaced whole on reload."""

    policy: DkimPolicy
    lookup: verifier.KeyLookup
    metrics: DkimMetrics
    clock: Clock
    on_error: str = "tempfail"
    in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def message_started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def message_ended(self) -> None:
        with self._lock:
            self.in_flight -= 1


@dataclass
class _Message:
    headers: HeaderBlock = field(default_factory=HeaderBlock)
    body: BodyHashes = field(default_factory=BodyHashes)
    keys: list[SigningKey] = field(default_factory=list)
    signatures: list[verifier.Signature] = field(default_factory=list)
    forged: list[int] = field(default_factory=list)
    verify: bool = False
    authenticated: bool = False
    spool: arc.BodySpool | None = None     # the body, kept only when ARC needs it
    arc_present: bool = False


def _guarded(name: str, no_reply: int = 0) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Times a callback and turns any exception into the configured answer.

    ``no_reply``: the protocol bit (``Milter.P_NR_*``) that lets Postfix skip waiting for this
    callback's answer. When it was negotiated the callback answers NOREPLY, and an exception is
    kept for the next callback that answers (see :meth:`DkimMilter._report_deferred`): an
    answer Postfix does not wait for would be read as the answer to its next command."""

    def wrap(func: Callable[..., int]) -> Callable[..., int]:
        def callback(self: DkimMilter, *args: Any) -> int:
            start = time.perf_counter()
            try:
                action = func(self, *args)
                if self._protocol & no_reply and action == Milter.CONTINUE:
                    return Milter.NOREPLY
                return action
            except Exception as e:
                if self._protocol & no_reply:
                    self._deferred = self._deferred or (name, e)
                    return Milter.NOREPLY
                return self._failed(name, e)
            finally:
                self._callback_seconds(name).observe(time.perf_counter() - start)

        callback.__name__ = func.__name__
        callback.__doc__ = func.__doc__
        # Keep pymilter's per-method attributes (decode strategy, protocol bits).
        callback.__dict__.update(func.__dict__)
        if no_reply:
            # What Milter.noreply declares: _own_protocol_mask reads it to negotiate the bit.
            callback.milter_protocol = no_reply  # type: ignore[attr-defined]
        return callback

    return wrap


@Milter.header_leading_space
class DkimMilter(Milter.Base):
    _protocol = 0   # the negotiated protocol bits; pymilter's _setctx sets the real ones

    def __init__(self, shared: Shared) -> None:
        super().__init__()
        self.shared = shared
        self.policy = shared.policy   # one connection sees one config, even across a reload
        self.client_ip: str | None = None
        self.client_name: str | None = None
        self.msg = _Message()
        self._active = False
        # An exception in a callback Postfix did not wait for, reported at the next answer.
        self._deferred: tuple[str, Exception] | None = None
        self._callback_seconds = shared.metrics.callback_seconds

    # -- helpers -------------------------------------------------------------------------

    def _queue_id(self) -> str:
        try:
            return self.getsymval("i") or "-"
        except Exception:
            return "-"

    def _log_failure(self, stage: str, error: Exception) -> None:
        self.shared.metrics.errors("callback").inc()
        log.error("callback_failed", stage=stage, queue_id=self._queue_id(),
                  client=self.client_ip or "-", error=f"{type(error).__name__}: {error}")

    def _failed(self, stage: str, error: Exception) -> int:
        self._end()
        self._log_failure(stage, error)
        if self.shared.on_error == "accept":
            return Milter.ACCEPT
        self.shared.metrics.messages("tempfailed").inc()
        with contextlib.suppress(Exception):
            self.setreply("451", "4.7.1", "DKIM processing failed; try again later")
        return Milter.TEMPFAIL

    def _report_deferred(self) -> int | None:
        """The answer for a failure in an earlier "no reply" callback, if there was one."""
        if self._deferred is None:
            return None
        stage, error = self._deferred
        self._deferred = None
        return self._failed(stage, error)

    def _begin(self) -> None:
        if not self._active:
            self._active = True
            self.shared.message_started()

    def _end(self) -> None:
        if self._active:
            self._active = False
            self.shared.message_ended()

    def _originating(self) -> bool:
        """Mail we sign: from an InternalHost or a SASL-authenticated client."""
        return self.msg.authenticated or self.policy.is_internal(self.client_ip,
                                                                 self.client_name)

    # -- callbacks -----------------------------------------------------------------------

    @_guarded("connect")
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        self.client_name = hostname
        if isinstance(hostaddr, tuple) and hostaddr:
            self.client_ip = str(hostaddr[0])
        if self.policy.is_peer(self.client_ip, self.client_name):
            return Milter.ACCEPT   # PeerList: such connections are not looked at at all
        return Milter.CONTINUE

    @_guarded("helo")
    def hello(self, hostname: str) -> int:
        return Milter.CONTINUE

    def _start_message(self) -> int:
        self._begin()
        self._drop_deferred()
        self.msg = _Message(headers=HeaderBlock(self.policy.max_header_bytes))
        self.msg.authenticated = bool(self.getsymval("{auth_authen}"))
        return Milter.CONTINUE

    # The daemon hands envfrom the sender undecoded (it is not looked at).
    @_guarded("envfrom")
    def envfrom(self, sender: bytes | str, *params: bytes | str) -> int:
        return self._start_message()

    @_guarded("envrcpt")
    def envrcpt(self, recipient: str, *params: str) -> int:
        return Milter.CONTINUE

    @_guarded("data")
    def data(self) -> int:
        return Milter.CONTINUE

    @Milter.decode("bytes")
    def header(self, name: str, value: bytes) -> int:
        # What pymilter's own dispatch would call; the daemon calls on_header instead.
        return self.on_header(name, value)

    def on_header(self, name: str, value: bytes) -> int:
        """libmilter's header callback, called straight from the daemon's: it runs once per
        header field and only stores, so it is neither timed nor routed through pymilter's
        decoding and no-reply wrappers (four Python calls per field less)."""
        try:
            self.msg.headers.add(name.encode("ascii", "replace"), value)
        except Exception as e:
            if self._protocol & Milter.P_NR_HDR:
                self._deferred = self._deferred or ("header", e)
                return Milter.NOREPLY
            return self._failed("header", e)
        return Milter.NOREPLY if self._protocol & Milter.P_NR_HDR else Milter.CONTINUE

    @_guarded("eoh")
    def eoh(self) -> int:
        deferred = self._report_deferred()
        if deferred is not None:
            return deferred
        msg, policy = self.msg, self.policy
        fields = msg.headers.fields
        if (policy.sign and not msg.authenticated and self._originating()
                and msg.headers.count(REINJECTED_MARK)):
            # Inbound mail that postward-filter classified and handed back to sendmail (the
            # guide's re-injection) comes through non_smtpd_milters as local submission: signing
            # it would put our signature on a stranger's forged From: our-domain. The filter
            # strips X-DSPAM-* from what arrives and adds its own, so the header marks such mail
            # (and outbound mail from mynetworks, signed already at smtpd). A SASL user's mail
            # never went through the filter: a redirected message keeping the header is signed.
            log.info("not_signed", queue_id=self._queue_id(),
                     reason="re-injected by postward-filter")
        elif policy.sign and self._originating():
            sender = msg.headers.from_address()
            msg.keys = policy.signing_keys(sender) if sender else []
            if msg.keys:
                msg.body.want(policy.body_canonicalization)
            elif sender is None:
                log.info("not_signed", queue_id=self._queue_id(), reason="no From: address")
        if policy.verify and not self._originating():
            msg.verify = True
            msg.signatures = verifier.prepare(fields, policy.max_signatures, msg.body)
            msg.forged = authres.forged_indexes(fields, policy.authserv_id)
            msg.arc_present = policy.arc_verify and arc.has_arc(fields)
            if msg.arc_present or policy.arc_sealer is not None:
                msg.spool = arc.BodySpool(policy.arc_max_message_size,
                                          policy.temporary_directory)
        needs_eom = bool(msg.keys) or (msg.verify and (
            msg.signatures or msg.forged or policy.always_add_ar_header
            or msg.spool is not None))
        if not needs_eom:
            if msg.verify:
                self.shared.metrics.verifications("none").inc()
            self.shared.metrics.messages("skipped").inc()
            self._end()
            return Milter.ACCEPT
        return Milter.CONTINUE

    def _body_chunk(self, chunk: bytes) -> int:
        self.msg.body.update(chunk)
        if self.msg.spool is not None:
            self.msg.spool.write(chunk)
        return Milter.CONTINUE

    @_guarded("body")
    def body(self, chunk: bytes) -> int:
        return self._body_chunk(chunk)

    @_guarded("eom")
    def eom(self) -> int:
        msg = self.msg
        deferred = self._report_deferred()
        if deferred is not None:
            if msg.spool is not None:
                msg.spool.close()
            return deferred
        try:
            action = Milter.CONTINUE
            if msg.verify:
                action = self._finish_verify()
            if msg.keys and action == Milter.CONTINUE:
                self._sign()
            return action
        finally:
            if msg.spool is not None:
                msg.spool.close()
            self._end()

    def _drop_deferred(self) -> None:
        """The message ends without an answer to give: the failure is only logged."""
        if self._deferred is not None:
            self._log_failure(*self._deferred)
            self._deferred = None

    @_guarded("abort")
    def abort(self) -> int:
        if self.msg.spool is not None:
            self.msg.spool.close()
        self.msg = _Message()
        self._drop_deferred()
        self._end()
        return Milter.CONTINUE

    @_guarded("close")
    def close(self) -> int:
        self._drop_deferred()
        self._end()
        return Milter.CONTINUE

    # -- the work ------------------------------------------------------------------------

    def _sign(self) -> None:
        msg, policy = self.msg, self.policy
        fields = msg.headers.fields
        include = headers_to_sign(fields, policy.sign_headers, policy.oversign_headers)
        body_hash = msg.body.digest(policy.body_canonicalization)
        now = int(self.shared.clock.time())
        for key in msg.keys:
            value = make_signature(fields, body_hash, key, include, now,
                                   (policy.header_canonicalization,
                                    policy.body_canonicalization), linesep=b"\n")
            # At the top, like OpenDKIM: above every header the signature covers.
            self.addheader("DKIM-Signature", value.decode("ascii"), 0)
            self.shared.metrics.signatures(key.domain, key.key.algorithm).inc()
            if policy.log_success:
                log.info("signed", queue_id=self._queue_id(), domain=key.domain,
                         selector=key.selector, algorithm=key.key.algorithm)
        self.shared.metrics.messages("signed").inc()

    def _finish_verify(self) -> int:
        msg, policy, metrics = self.msg, self.policy, self.shared.metrics
        fields = msg.headers.fields
        outcomes = [verifier.check(sig, fields, msg.body, self.shared.lookup,
                                   policy.minimum_key_bits) for sig in msg.signatures]
        for outcome in outcomes:
            metrics.verifications(outcome.result).inc()
        if not outcomes:
            metrics.verifications("none").inc()
        # Bottom first: removing one shifts the positions of those below it.
        for index in sorted(msg.forged, reverse=True):
            self.chgheader("Authentication-Results", index, None)
            metrics.forged_ar_removed.inc()
        arc_outcome = self._check_arc()
        extra = [arc_outcome.resinfo()] if arc_outcome else []
        results = authres.header_value(policy.authserv_id, outcomes, extra)
        if outcomes or extra or policy.always_add_ar_header:
            self.addheader("Authentication-Results", results, 0)
        if policy.arc_sealer is not None and arc_outcome is not None:
            self._seal(results)
        if policy.log_why or policy.log_success:
            for o in outcomes:
                log.info("verified", queue_id=self._queue_id(), result=o.result,
                         domain=o.domain, selector=o.selector, reason=o.reason or "-")
        return self._apply(policy.action_for(outcomes))

    def _check_arc(self) -> arc.ArcOutcome | None:
        """The chain's verdict; None when ARC is not looked at for this message."""
        msg, policy = self.msg, self.policy
        if msg.spool is None:
            return None
        if msg.spool.too_big:
            self.shared.metrics.arc("skipped").inc()
            return None
        if not msg.arc_present:
            return arc.ArcOutcome("none")
        message = arc.whole_message(msg.headers.fields, msg.spool.read())
        outcome = arc.verify_chain(message, self.shared.lookup, policy.minimum_key_bits)
        self.shared.metrics.arc(outcome.result).inc()
        return outcome

    def _seal(self, results: str) -> None:
        msg, policy = self.msg, self.policy
        assert msg.spool is not None and policy.arc_sealer is not None
        ours = (b"Authentication-Results", results.replace("\n", "\r\n").encode() + b"\r\n")
        # As the message will leave: our results on top, forged ones gone.
        forged = set(msg.forged)
        fields, position = [ours], 0
        for name, value in msg.headers.fields:
            if name.lower() == b"authentication-results":
                position += 1
                if position in forged:
                    continue
            fields.append((name, value))
        message = arc.whole_message(fields, msg.spool.read())
        now = int(self.shared.clock.time())
        for name, value in reversed(arc.seal(message, policy.arc_sealer, policy.authserv_id,
                                             now)):
            self.addheader(name, value.decode("ascii"), 0)
        self.shared.metrics.arc_seals.inc()

    def _apply(self, action: str) -> int:
        metrics = self.shared.metrics
        if action == "reject":
            metrics.messages("rejected").inc()
            self.setreply(*_REPLIES["reject"])
            return Milter.REJECT
        if action == "tempfail":
            metrics.messages("tempfailed").inc()
            self.setreply(*_REPLIES["tempfail"])
            return Milter.TEMPFAIL
        if action == "discard":
            metrics.messages("discarded").inc()
            return Milter.DISCARD
        if action == "quarantine":
            metrics.messages("quarantined").inc()
            self.quarantine("DKIM verification failed")
        metrics.messages("verified").inc()
        return Milter.CONTINUE


def _own_protocol_mask(klass: type[DkimMilter]) -> type[DkimMilter]:
    """pymilter caches the negotiated-away steps on the class (``_protocol_mask``), so a
    subclass would inherit its parent's; work the subclass's out from its own methods, as
    ``Milter.Base.protocol_mask`` does, keeping SMFIP_HDR_LEADSPC."""
    mask = Milter.P_RCPT_REJ | Milter.P_HDR_LEADSPC
    for name, (no_reply, no_call) in Milter.OPTIONAL_CALLBACKS.items():
        declared = getattr(getattr(klass, name), "milter_protocol", 0)
        mask |= (no_reply | no_call) & ~declared
    klass._protocol_mask = mask & ~Milter.P_HDR_LEADSPC  # type: ignore[attr-defined]
    return klass


@_own_protocol_mask
class UnixDkimMilter(DkimMilter):
    """The milter on a unix socket, where no Nagle/delayed-ACK stall needs every step answered:
    Postfix is told to skip the steps postward-dkim does not use (HELO, RCPT, DATA) and not to
    wait for an answer to MAIL FROM, to each header field or to each body chunk (whose answer
    is always "continue"; a failure there is answered at end of header / end of message) —
    three answers per message (connect, end of header, end of message) instead of five."""

    @_guarded("envfrom", no_reply=Milter.P_NR_MAIL)
    def envfrom(self, sender: bytes | str, *params: bytes | str) -> int:
        return self._start_message()

    @_guarded("body", no_reply=Milter.P_NR_BODY)
    def body(self, chunk: bytes) -> int:
        return self._body_chunk(chunk)

    @Milter.nocallback
    def hello(self, hostname: str) -> int:
        return Milter.CONTINUE

    @Milter.nocallback
    def envrcpt(self, recipient: str, *params: str) -> int:
        return Milter.CONTINUE

    @Milter.nocallback
    def data(self) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    @Milter.decode("bytes")
    def header(self, name: str, value: bytes) -> int:
        # Declares P_NR_HDR for _own_protocol_mask; the daemon calls on_header, which
        # answers NOREPLY itself once the bit is negotiated.
        self.on_header(name, value)
        return Milter.CONTINUE
