"""Sending mail into the test bed and reading back what was delivered.

Sending speaks SMTP with :mod:`smtplib` one command at a time, so a test sees the reply to every
RCPT (a policy service's 450 or 554 is the whole point of many tests) instead of smtplib's
all-or-nothing ``sendmail``. Bulk load goes through Postfix's own ``smtp-source``.

Reading never sleeps a fixed time: :meth:`MessageStore.wait_for` polls until the expected number
of messages is there. Maildir delivery is atomic (``tmp/`` then rename into ``new/``), so a message
seen in ``new/`` or ``cur/`` is always complete.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import re
import shutil
import smtplib
import subprocess
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime, localtime
from functools import cached_property
from pathlib import Path

from tests.testbed.net import wait_until

# Postfix's test tools live in /usr/sbin on Debian; other builds put them in the daemon directory.
_TOOL_DIRS = ("/usr/sbin", "/usr/lib/postfix/sbin", "/usr/libexec/postfix")


def postfix_tool(name: str) -> str:
    """Path of a Postfix program such as ``smtp-source`` or ``smtp-sink``."""
    for d in _TOOL_DIRS:
        candidate = Path(d) / name
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found in {_TOOL_DIRS} or on PATH")
    return found


# --------------------------------------------------------------------------------------------
# Building messages


def make_message(
    sender: str = "sender@sender.test",
    recipients: str | Sequence[str] = ("user@example.test",),
    subject: str = "test-bed message",
    body: str = "Hello from the postward test bed.\n",
    headers: Mapping[str, str] | None = None,
) -> EmailMessage:
    """A simple RFC 5322 message with Date and a unique Message-ID (so tests can find it)."""
    if isinstance(recipients, str):
        recipients = [recipients]
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(localtime())
    domain = sender.rpartition("@")[2] or "testbed.test"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@{domain}>"
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg


def _wire_bytes(message: bytes | str | EmailMessage) -> bytes:
    """The message as SMTP DATA wants it: CRLF line ends (smtplib leaves bytes untouched)."""
    if isinstance(message, EmailMessage):
        return message.as_bytes(policy=email.policy.SMTP)
    raw = message.encode("utf-8") if isinstance(message, str) else message
    return re.sub(rb"\r?\n", b"\r\n", raw)


# --------------------------------------------------------------------------------------------
# Sending with smtplib


@dataclass(frozen=True)
class SmtpReply:
    code: int
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


def _reply(code_and_text: tuple[int, bytes | str]) -> SmtpReply:
    code, text = code_and_text
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return SmtpReply(code, text)


@dataclass
class SendResult:
    """Every reply of one SMTP transaction. ``data`` is None when no recipient was accepted (or
    the transaction ended earlier), and so is ``mail`` when the banner or EHLO already failed."""

    banner: SmtpReply
    helo: SmtpReply | None = None
    mail: SmtpReply | None = None
    rcpt: dict[str, SmtpReply] = field(default_factory=dict)
    data: SmtpReply | None = None

    @property
    def accepted(self) -> list[str]:
        return [r for r, reply in self.rcpt.items() if reply.ok]

    @property
    def rejected(self) -> dict[str, SmtpReply]:
        return {r: reply for r, reply in self.rcpt.items() if not reply.ok}

    @property
    def delivered(self) -> bool:
        """True when the server took responsibility for the message (250 after DATA)."""
        return self.data is not None and self.data.ok

    @property
    def queue_id(self) -> str | None:
        """Postfix's queue id from "250 2.0.0 Ok: queued as 4Xyz..."."""
        if self.data is None:
            return None
        m = re.search(r"queued as (\S+)", self.data.text)
        return m.group(1) if m else None

    def first_failure(self) -> SmtpReply | None:
        for reply in (self.banner, self.helo, self.mail, *self.rcpt.values(), self.data):
            if reply is not None and not reply.ok:
                return reply
        return None


class SmtpRejected(Exception):
    """``send`` got a 4xx/5xx reply somewhere; ``result`` holds every reply."""

    def __init__(self, result: SendResult) -> None:
        self.result = result
        failure = result.first_failure()
        super().__init__(f"SMTP transaction failed: {failure}; replies: {result}")

    @property
    def code(self) -> int:
        failure = self.result.first_failure()
        return failure.code if failure else 0


def try_send(
    host: str,
    port: int,
    sender: str,
    recipients: str | Sequence[str],
    message: bytes | str | EmailMessage,
    *,
    helo: str = "client.sender.test",
    source_address: str | None = None,
    timeout: float = 30.0,
) -> SendResult:
    """Run one SMTP transaction and return every reply without raising on 4xx/5xx.

    DATA is sent only if at least one recipient was accepted, as a real client would. Connection
    errors (nothing listening, server hung up without a reply) still raise. ``source_address``
    binds the client socket, so a test can connect from an address inside or outside the
    instance's ``mynetworks``.
    """
    if isinstance(recipients, str):
        recipients = [recipients]
    source = (source_address, 0) if source_address else None
    smtp = smtplib.SMTP(local_hostname=helo, timeout=timeout, source_address=source)
    try:
        result = SendResult(banner=_reply(smtp.connect(host, port)))
        if result.banner.ok:
            _transaction(smtp, result, sender, recipients, _wire_bytes(message))
        return result
    finally:
        smtp.close()


def _transaction(
    smtp: smtplib.SMTP, result: SendResult, sender: str, recipients: Sequence[str], raw: bytes
) -> None:
    result.helo = _reply(smtp.ehlo())
    if not result.helo.ok:
        result.helo = _reply(smtp.helo())
        if not result.helo.ok:
            return
    options = ["BODY=8BITMIME"] if smtp.has_extn("8bitmime") and not raw.isascii() else []
    result.mail = _reply(smtp.mail(sender, options))
    if not result.mail.ok:
        return
    for rcpt in recipients:
        result.rcpt[rcpt] = _reply(smtp.rcpt(rcpt))
    if result.accepted:
        result.data = _reply(smtp.data(raw))
    else:
        smtp.rset()
    # A polite QUIT; a server that already hung up (421) is not an error of the transaction.
    with contextlib.suppress(smtplib.SMTPServerDisconnected):
        smtp.quit()


def send(
    host: str,
    port: int,
    sender: str,
    recipients: str | Sequence[str],
    message: bytes | str | EmailMessage,
    *,
    helo: str = "client.sender.test",
    source_address: str | None = None,
    timeout: float = 30.0,
) -> SendResult:
    """Like :func:`try_send`, but raise :class:`SmtpRejected` unless every recipient and the
    message were accepted."""
    result = try_send(host, port, sender, recipients, message, helo=helo,
                      source_address=source_address, timeout=timeout)
    if result.first_failure() is not None or not result.delivered:
        raise SmtpRejected(result)
    return result


# --------------------------------------------------------------------------------------------
# Bulk sending with Postfix's smtp-source


def smtp_source(
    host: str,
    port: int,
    count: int = 1,
    sessions: int = 1,
    size: int | None = None,
    sender: str = "bulk@sender.test",
    recipient: str = "user@example.test",
    *,
    helo: str = "bulk.sender.test",
    subject: str | None = None,
    reuse_connection: bool = False,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Send ``count`` messages over ``sessions`` parallel SMTP sessions with ``smtp-source``.

    ``size`` is the body length in bytes (smtp-source's ``-l``); ``reuse_connection`` sends all of
    a session's messages over one connection (``-d``). Raises ``CalledProcessError`` (with the
    tool's output) when smtp-source gives up, which it does on the first unexpected reply.
    """
    argv = [postfix_tool("smtp-source"), "-4", "-m", str(count), "-s", str(sessions),
            "-M", helo, "-f", sender, "-t", recipient]
    if size is not None:
        argv += ["-l", str(size)]
    if subject is not None:
        argv += ["-S", subject]
    if reuse_connection:
        argv.append("-d")
    argv.append(f"inet:{host}:{port}")
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=True)


# --------------------------------------------------------------------------------------------
# Reading delivered mail


@dataclass(frozen=True)
class StoredMessage:
    """One delivered message: its file, raw bytes and (lazily) the parsed message."""

    path: Path
    raw: bytes
    recipient_headers: tuple[str, ...] = ("Delivered-To",)

    @cached_property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def recipients(self) -> list[str]:
        """Envelope recipients as the delivery agent recorded them, lower-cased."""
        found: list[str] = []
        for name in self.recipient_headers:
            for value in self.message.get_all(name, []):
                # "Delivered-To: a@b" (virtual) or "X-Rcpt-Args: TO:<a@b> ..." (smtp-sink)
                text = str(value)
                found += re.findall(r"<([^<>]+)>", text) or [text.strip()]
        return [addr.lower() for addr in found if addr]

    @property
    def body(self) -> str:
        part = self.message.get_body(preferencelist=("plain", "html"))
        return part.get_content() if part is not None else ""


class MessageStore:
    """Messages as files below a directory; subclasses say which files are complete messages."""

    recipient_headers: tuple[str, ...] = ("Delivered-To",)

    def __init__(self, root: Path) -> None:
        self.root = root

    def paths(self) -> list[Path]:
        raise NotImplementedError

    def messages(self, recipient: str | None = None) -> list[StoredMessage]:
        """All complete messages, oldest first, optionally only those for ``recipient``."""
        found = []
        for path in self.paths():
            try:
                raw = path.read_bytes()
            except FileNotFoundError:  # moved new/ -> cur/ by a reader meanwhile
                continue
            found.append(StoredMessage(path, raw, self.recipient_headers))
        if recipient is not None:
            found = [m for m in found if recipient.lower() in m.recipients]
        return found

    def count(self, recipient: str | None = None) -> int:
        return len(self.messages(recipient))

    def wait_for(
        self, count: int = 1, timeout: float = 20.0, recipient: str | None = None
    ) -> list[StoredMessage]:
        """Poll until at least ``count`` messages (for ``recipient``) are there; return them all."""
        def enough() -> list[StoredMessage] | None:
            msgs = self.messages(recipient)
            return msgs if len(msgs) >= count else None

        who = f" for {recipient}" if recipient else ""
        return wait_until(enough, timeout=timeout,
                          what=f"{count} message(s){who} in {self.root}")

    def find(self, predicate: Callable[[StoredMessage], bool]) -> list[StoredMessage]:
        return [m for m in self.messages() if predicate(m)]


def _by_age(paths: Iterable[Path]) -> list[Path]:
    def key(p: Path) -> tuple[int, str]:
        try:
            return (p.stat().st_mtime_ns, p.name)
        except FileNotFoundError:
            return (0, p.name)
    return sorted(paths, key=key)


class Maildir(MessageStore):
    """A Maildir, or a tree of Maildirs (the test Postfix keeps one per domain).

    Only ``new/`` and ``cur/`` are read: virtual(8) writes into ``tmp/`` and renames, so whatever
    is there is complete. virtual(8) prepends ``Delivered-To:``, which ``recipient=`` filters on.
    """

    def paths(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        files = [f for sub in ("new", "cur") for f in self.root.glob(f"**/{sub}/*") if f.is_file()]
        return _by_age(files)


class SinkDump(MessageStore):
    """Messages captured by ``smtp-sink -d``: one file per transaction, with ``X-Rcpt-Args:``
    headers naming the envelope recipients. ``is_complete`` says whether smtp-sink has finished
    writing a file (it writes a transaction's file while the transaction runs)."""

    recipient_headers = ("X-Rcpt-Args",)

    def __init__(self, root: Path, is_complete: Callable[[Path], bool] | None = None) -> None:
        super().__init__(root)
        self.is_complete = is_complete or (lambda _p: True)

    def paths(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        files = [f for f in self.root.rglob("*") if f.is_file() and self.is_complete(f)]
        return _by_age(files)
