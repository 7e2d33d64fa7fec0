"""Messages for the DKIM interop tests (test_interop.py): one plain message and the edge cases
RFC 6376 canonicalization and real-world mail throw at a signer and a verifier.

Every builder returns the message with LF line endings (as saved on a Unix box); the tests
turn it into CRLF where the line-ending convention is what is being tested. Nothing here is
random: the attachment is made from a fixed seed, so a failure is reproducible byte for byte.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable

FROM = b"From: Alice Example <alice@example.test>\n"
COMMON = (
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\n"
    b"Message-ID: <interop-1@example.test>\n"
    b"MIME-Version: 1.0\n"
)

PLAIN = (
    FROM
    + b"To: Bob <bob@example.com>\n"
    b"Subject: Quarterly figures\n"
    + COMMON
    + b"Content-Type: text/plain; charset=us-ascii\n"
    b"\n"
    b"Hello Bob,\n"
    b"\n"
    b"the figures  are attached.\tTrailing spaces here:   \n"
    b"\n"
    b"Alice\n"
)
"""An ordinary message; its body has inner and trailing whitespace for relaxed to fold."""

BODY_WORD = b"figures"
"""A word in every message's body (altered to test that a body change breaks a signature)."""


def altered_body(message: bytes) -> bytes:
    """``message`` with one body word changed (the first occurrence after the header)."""
    head, sep, body = _split(message)
    assert BODY_WORD in body, "the message's body must contain BODY_WORD"
    return head + sep + body.replace(BODY_WORD, BODY_WORD.upper(), 1)


def altered_subject(message: bytes) -> bytes:
    """``message`` with its (signed) Subject's value changed."""
    head, sep, body = _split(message)
    assert b"\nSubject:" in head, "the message must have a Subject field"
    return head.replace(b"\nSubject:", b"\nSubject: Re:", 1) + sep + body


def _split(message: bytes) -> tuple[bytes, bytes, bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        head, found, body = message.partition(sep)
        if found:
            return head, sep, body
    return message, b"", b""


def _message(headers: bytes, body: bytes, *, content_type: bytes = b"text/plain; "
             b"charset=utf-8") -> bytes:
    return (FROM + headers + COMMON + b"Content-Type: " + content_type + b"\n\n" + body)


def utf8_headers() -> bytes:
    """RFC 6532 raw UTF-8 in signed fields (Subject, the From display name is left ASCII so
    every peer can still find the address)."""
    return _message(
        "To: Jürgen Müller <juergen@example.com>\n"
        "Subject: Grüße aus Köln \N{EN DASH} 東京 ☃ 🎉\n".encode(),
        "The figures: 1 € each, ½ off.\n".encode())


def latin1_header() -> bytes:
    """A raw Latin-1 byte (not valid UTF-8) in a signed header field and in the body."""
    return _message(b"To: bob@example.com\nSubject: caf\xe9 cr\xe8me figures\n",
                    b"Latin-1 figures: na\xefve caf\xe9\n",
                    content_type=b"text/plain; charset=iso-8859-1")


def long_folded_to(size: int = 5000) -> bytes:
    """A To: field of about ``size`` bytes folded over many lines (RFC 5322 2.2.3), each
    continuation starting with a tab or a space."""
    addresses = [f"Recipient Number {i} <rcpt{i:04d}@example.com>".encode()
                 for i in range(size // 40 + 1)]
    lines, line = [], b"To: " + addresses[0]
    for i, address in enumerate(addresses[1:]):
        if len(line) + len(address) + 2 > 76:
            lines.append(line + b",")
            line = (b"\t" if i % 2 else b" ") + address
        else:
            line += b", " + address
    lines.append(line)
    field = b"\n".join(lines) + b"\n"
    assert len(field) >= size
    return _message(field + b"Subject: many recipients\n", b"The figures, for everyone.\n")


def long_unfolded_header(size: int = 2000) -> bytes:
    """One Subject line longer than RFC 5322's 998-character line limit, never folded."""
    subject = b"Subject: " + b" ".join([b"figures"] * (size // 8))
    assert len(subject) > 998
    return _message(b"To: bob@example.com\n" + subject + b"\n", b"The long figures.\n")


def empty_body() -> bytes:
    """The header, the empty separator line, and no body at all."""
    return _message(b"To: bob@example.com\nSubject: no figures\n", b"")


def body_without_final_line_break() -> bytes:
    """A body whose last line has no line break (possible outside SMTP, e.g. a file)."""
    return _message(b"To: bob@example.com\nSubject: figures\n",
                    b"Hello Bob,\n\nthe figures follow.\nno line break here")


def unterminated_line_with_trailing_whitespace() -> bytes:
    """The last line has trailing whitespace and no line break. Relaxed canonicalization
    must strip the whitespace and add CRLF (RFC 6376 3.4.4): "Hello \\r\\n" or "Hello\\r\\n"
    is where implementations may disagree."""
    return _message(b"To: bob@example.com\nSubject: figures\n",
                    b"the figures\nlast  line \t")


def trailing_whitespace_and_blank_lines() -> bytes:
    """Trailing spaces and tabs on lines, a line of only whitespace, and empty lines at the
    end of the body: simple keeps the whitespace and drops the trailing empty lines; relaxed
    also turns the whitespace-only line into an empty one, which then is trailing too."""
    return _message(b"To: bob@example.com\nSubject: figures\n",
                    b"the figures  \t\n\tindented\t line \n\n \t \n\n  \n\n\n")


def rfc6376_345_example() -> bytes:
    """The body of RFC 6376 section 3.4.5's example (`` C \\r\\nD \\t E\\r\\n\\r\\n\\r\\n``),
    below a header with the example's whitespace (``Y\\t`` folded onto ``\\tZ  ``).
    The example's ``B : Y`` (space before the colon, RFC 5322 obsolete syntax) is left out:
    see :func:`space_before_colon`."""
    return (FROM + b"A: X\nB: Y\t\n\tZ  \nSubject: figures\n" + COMMON
            + b"\n C \nD \t E\n\n\n")


def space_before_colon() -> bytes:
    """RFC 6376 3.4.5's ``B : Y`` header field: whitespace between the name and the colon
    (RFC 5322 4.5.3 obs-optional)."""
    return (FROM + b"B : Y\t\n\tZ  \nSubject: figures\n" + COMMON + b"\n C \nD \t E\n")


def tab_after_colon() -> bytes:
    """Signed fields with a tab (and tab + spaces) between the colon and the value: simple
    header canonicalization keeps it, relaxed removes it."""
    return (b"From:\tAlice Example <alice@example.test>\n"
            b"To:\t  bob@example.com\n"
            b"Subject:\tfigures\t\n" + COMMON
            + b"Content-Type: text/plain\n\nthe figures\n")


def duplicate_headers() -> bytes:
    """Two Received fields and two To fields (signers sign both To instances, a signer told
    to sign To once signs the bottom one: RFC 6376 5.4.2)."""
    return (b"Received: from relay2.example.com by mx.example.test; "
            b"Mon, 01 Jan 2024 10:00:02 +0000\n"
            b"Received: from relay1.example.com by relay2.example.com; "
            b"Mon, 01 Jan 2024 10:00:01 +0000\n"
            + FROM
            + b"To: first@example.com\n"
            b"Subject: figures\n"
            b"To: second@example.com\n"
            + COMMON + b"\nthe figures\n")


def large_attachment(size: int = 5 * 1024 * 1024) -> bytes:
    """A multipart message with a ``size``-byte binary attachment in base64 (76-column lines,
    ~6.8 MB of body): the body streams through the hashers in many chunks."""
    data = random.Random(6376).randbytes(size)
    encoded = base64.encodebytes(data)  # 76-character lines, LF-terminated
    boundary = b"=_interop_boundary_figures"
    body = (b"This is a multi-part message in MIME format.\n"
            b"--" + boundary + b"\n"
            b"Content-Type: text/plain; charset=us-ascii\n\n"
            b"The figures are attached.\n\n"
            b"--" + boundary + b"\n"
            b"Content-Type: application/octet-stream\n"
            b"Content-Transfer-Encoding: base64\n"
            b"Content-Disposition: attachment; filename=\"figures.bin\"\n\n"
            + encoded + b"\n--" + boundary + b"--\n")
    return _message(b"To: bob@example.com\nSubject: the figures, attached\n", body,
                    content_type=b"multipart/mixed; boundary=\"" + boundary + b"\"")


EDGE_CASES: dict[str, Callable[[], bytes]] = {
    "utf8-headers": utf8_headers,
    "latin1-header": latin1_header,
    "long-folded-to": long_folded_to,
    "long-unfolded-header": long_unfolded_header,
    "empty-body": empty_body,
    "no-final-line-break": body_without_final_line_break,
    "unterminated-trailing-whitespace": unterminated_line_with_trailing_whitespace,
    "trailing-whitespace-blank-lines": trailing_whitespace_and_blank_lines,
    "rfc6376-3.4.5-example": rfc6376_345_example,
    "tab-after-colon": tab_after_colon,
    "duplicate-headers": duplicate_headers,
}
"""Edge cases every peer must agree on, by name (large_attachment is tested on its own)."""
