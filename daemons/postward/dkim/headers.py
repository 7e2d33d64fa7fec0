"""A message's header as the milter sees it, in the form dkimpy's header hashing wants.

Postfix hands a milter each header as a name and a value. With SMFIP_HDR_LEADSPC negotiated the
value keeps the whitespace after the colon, so simple canonicalization sees the header exactly
as it stands in the message; folded lines arrive joined by a bare LF, which this module turns
back into CRLF. dkimpy keeps a header as ``(name, value + CRLF)``.
"""

from __future__ import annotations

import re
from email.utils import getaddresses

_BARE_LF = re.compile(rb"(?<!\r)\n")


def wire_value(value: bytes) -> bytes:
    """A header value from the milter, with its line breaks as they are on the wire (CRLF)."""
    return _BARE_LF.sub(b"\r\n", value)


class HeaderBlock:
    """The header fields of one message, top to bottom, as dkimpy ``(name, value+CRLF)``."""

    def __init__(self, max_bytes: int = 1_000_000) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self._size = 0
        self._max = max_bytes
        self.truncated = False

    def add(self, name: bytes, value: bytes) -> None:
        if self.truncated:
            return
        self._size += len(name) + len(value) + 3
        if self._size > self._max:
            # Postfix limits a header to header_size_limit (100 KB by default); this only
            # guards the daemon against a peer that does not.
            self.truncated = True
            return
        # Most fields are one line: no regex pass for them.
        self.fields.append((name, (wire_value(value) if b"\n" in value else value) + b"\r\n"))

    def named(self, name: str) -> list[bytes]:
        """The raw values (CRLF-terminated) of every field called ``name``, top to bottom."""
        wanted = name.lower().encode()
        return [v for n, v in self.fields if n.lower() == wanted]

    def count(self, name: str) -> int:
        return len(self.named(name))

    def from_address(self) -> str | None:
        """The first address of the (single) From: field, lowercased; None when absent."""
        values = self.named("from")
        if not values:
            return None
        text = values[0].decode("utf-8", errors="replace")
        for _display, address in getaddresses([" ".join(text.split())]):
            if "@" in address:
                return address.strip().lower()
        return None


def unfold(value: bytes) -> bytes:
    """The value with its folding removed (tag lists are parsed unfolded): every CRLF and bare
    LF gone, as dkimpy's ``\\r?\\n`` regex does, with bytes methods (the regex took ~12 µs on a
    signature field)."""
    return value.replace(b"\r\n", b"").replace(b"\n", b"") if b"\n" in value else value
