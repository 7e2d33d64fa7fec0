"""MIME walking and text extraction for the tokenizer: what a message says, never raising.

``extract()`` turns raw message bytes into top-level header fields, the leaf parts (content
type, charset, transfer encoding, file name) and, for text/plain and text/html parts, their
text as Unicode. The choices behind it, and why:

* **Bounded work before parsing.** The input is cut at ``max_message_bytes``. Python's
  ``email`` feedparser checks every line against every open multipart (cost = depth x lines;
  1 MB at depth 300 took 1.5 s) and recurses once per nesting level (RecursionError near
  5000). So before parsing, the message is also cut in front of the (max_depth + 1)-th
  multipart or message/* container declaration and after 2 x max_parts boundary delimiter
  lines. That caps both the depth and the parser's work, and a cut message is marked
  ``truncated``. The walk itself is iterative and also stops at ``max_depth`` and
  ``max_parts``.
* **Obsolete header syntax mended.** ``Name : value`` (space before the colon, RFC 5322
  obs-syntax) is rewritten as ``Name: value`` in the top header block before parsing.
  compat32 would otherwise end the header section there.
* **compat32, caught per part.** ``email.policy.compat32`` records defects instead of
  raising. Header values are read with ``raw_items()`` (compat32's ``get()`` turns 8-bit
  values into ``Header`` objects). Each leaf is handled inside its own ``try``, and a parser
  failure falls back to a headers-only parse whose body is read as a single text part. Nothing
  ever raises to the caller.
* **Own body decoding.** Well-formed base64 goes straight to ``binascii``. Otherwise it is
  cleaned (non-alphabet characters and padding dropped, the tail re-padded), so broken
  base64 decodes to as much as can be read and never raises.
  Quoted-printable goes through ``binascii.a2b_qp``, which tolerates invalid escapes. The
  encoded input is cut before decoding so that no more than ``max_part_bytes`` is produced.
  Attachments are never decoded: only their type and name matter.
* **Charsets never raise.** A tiny alias table follows WHATWG and common mail practice
  (gb2312 -> gb18030, ks_c_5601-1987 -> cp949, shift_jis -> cp932, big5 -> big5hkscs). For
  us-ascii, latin-1 and windows-1252 the text is tried as UTF-8 first (mislabelled UTF-8 is
  common) and falls back to cp1252. Unknown, malformed and non-text codec names get the same
  fallback, and errors are replaced.
* **HTML to text** is ``mime_html``'s work: linear regex passes instead of ``html.parser``,
  which is quadratic on unterminated tags (its docstring has the details).
* **The parse** is ``mime_parse.parse_message``: the stdlib ``compat32`` parse, with its own
  faster path for single-part messages that builds the identical tree.
"""

from __future__ import annotations

import binascii
import contextlib
import email.header
import email.parser
import email.policy
import re
from dataclasses import dataclass
from email.message import Message
from itertools import islice
from types import MappingProxyType

from postward.classifier.mime_html import HtmlText, html_to_text
from postward.classifier.mime_parse import parse_message

__all__ = [
    "Extracted",
    "HtmlText",
    "Part",
    "bytes_to_text",
    "decode_body",
    "extract",
    "header_text",
    "html_to_text",
]

# Top-level header fields kept; a message with more is garbage, and each one costs a look.
MAX_HEADERS = 500
# The longest header value looked at, in characters (a 1 MB Subject is not a subject).
MAX_HEADER_CHARS = 4096
# Distinct defect names kept per message.
_MAX_DEFECTS = 20

_TEXT_TYPES = frozenset({"text/plain", "text/html"})
# The fields that describe a leaf part, and the field count below which reading them from the
# part itself is as cheap as copying them out (see _part_fields).
_PART_FIELDS = frozenset({"content-type", "content-transfer-encoding", "content-disposition"})
_FEW_FIELDS = 4

# A multipart boundary parameter (its value captured) or a message/* container header.
_CONTAINER = re.compile(
    rb"""boundary\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))|content-type:\s*message/""",
    re.IGNORECASE,
)
_DASH_LINE = re.compile(rb"^--", re.MULTILINE)
_SPACED_NAME = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]+:", re.MULTILINE)
_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]+")
_CHARSET_NAME = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,39}")

# Charset labels decoded with a superset or with the browser's interpretation. None means
# "try UTF-8, else cp1252" (see the module docstring).
_CHARSET_ALIASES = MappingProxyType({
    "us-ascii": None, "ascii": None, "iso-8859-1": None, "iso8859-1": None,
    "iso_8859-1": None, "latin1": None, "latin-1": None, "windows-1252": None,
    "cp1252": None, "x-unknown": None, "unknown-8bit": None, "unknown": None,
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "gb_2312-80": "gb18030",
    "euc-cn": "gb18030", "ks_c_5601-1987": "cp949", "euc-kr": "cp949", "ks_c_5601": "cp949",
    "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "x-sjis": "cp932",
    "ms_kanji": "cp932", "big5": "big5hkscs", "tis-620": "cp874", "iso-8859-11": "cp874",
    "unicode-1-1-utf-7": "utf-7",
})

@dataclass(frozen=True, slots=True)
class Part:
    """One leaf MIME part. ``text`` is set for text/plain and text/html (as plain text)."""

    content_type: str
    charset: str | None
    encoding: str | None
    filename: str | None
    attachment: bool
    text: str | None = None
    html: bool = False
    urls: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Extracted:
    """The parts of a message that the tokenizer reads."""

    # (name stripped and lower-cased, raw value), top-level, in order. Stripped because the
    # parser keeps the space of "X-DSPAM-Result : Spam" in the name.
    headers: tuple[tuple[str, str], ...]
    parts: tuple[Part, ...]
    containers: tuple[str, ...]  # content types of multipart and message/* containers
    defects: tuple[str, ...]  # names of the parser's defect classes, lower-case
    truncated: bool = False  # the input was cut (size, container or delimiter cap)
    too_deep: bool = False
    too_many_parts: bool = False
    parsed: bool = True  # False when the MIME parse failed and the fallback was used


def extract(
    message: bytes, *, max_message_bytes: int, max_part_bytes: int, max_parts: int, max_depth: int
) -> Extracted:
    """Parse ``message`` within the given bounds. Never raises for any input bytes."""
    data, truncated = _bounded_input(bytes(message), max_message_bytes, max_parts, max_depth)
    data = _mend_header_names(data)
    try:
        root = parse_message(data)
        return _from_tree(root, truncated, max_part_bytes, max_parts, max_depth)
    except Exception:  # the parser or the walk gave up: read the body as one text part
        return _fallback(data, truncated, max_part_bytes)


def _bounded_input(
    data: bytes, max_bytes: int, max_parts: int, max_depth: int
) -> tuple[bytes, bool]:
    """Cut the input so that the parser's work is bounded (see the module docstring). The
    regex scans run only when cheap substring counts say a cap may be reached."""
    truncated = len(data) > max_bytes
    data = data[: max(max_bytes, 0)]
    lowered = data.lower()
    if lowered.count(b"boundary") + lowered.count(b"message/") > max_depth:
        cut = _container_cut(data, max_depth)
        if cut is not None:
            data, truncated = data[:cut], True
    limit = 2 * max_parts
    if data.count(b"\n--") > limit:
        boundaries = tuple(m.group(1) or m.group(2) for m in _CONTAINER.finditer(data)
                           if m.group(1) or m.group(2))
        cut = _delimiter_cut(data, boundaries, limit) if boundaries else None
        if cut is not None:
            data, truncated = data[:cut], True
    return data, truncated


def _mend_header_names(data: bytes) -> bytes:
    """Accept the obsolete ``Name : value`` (RFC 5322 4.5.2) in the top header block. The
    parser takes such a line for the start of the body, and every header after it, our own
    X-DSPAM-* included, would be read as body text."""
    end = min((i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0),
              default=len(data))
    head = data[:end]
    if b" :" not in head and b"\t:" not in head:
        return data
    return _SPACED_NAME.sub(rb"\1:", head) + data[end:]


def _container_cut(data: bytes, max_depth: int) -> int | None:
    """Start of the line holding the (max_depth + 1)-th container declaration, if any."""
    for count, match in enumerate(_CONTAINER.finditer(data), 1):
        if count > max_depth:
            return data.rfind(b"\n", 0, match.start()) + 1
    return None


def _delimiter_cut(data: bytes, boundaries: tuple[bytes, ...], limit: int) -> int | None:
    """Offset of the (limit + 1)-th boundary delimiter line, or None if there are fewer."""
    seen = 0
    for match in _DASH_LINE.finditer(data):
        if data.startswith(boundaries, match.end()):
            seen += 1
            if seen > limit:
                return match.start()
    return None


def _from_tree(
    root: Message, truncated: bool, max_part_bytes: int, max_parts: int, max_depth: int
) -> Extracted:
    """Walk the parsed tree iteratively, depth-first in document order."""
    parts: list[Part] = []
    containers: list[str] = []
    defects: dict[str, None] = {}
    too_deep = too_many = False
    stack: list[tuple[Message, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        _note_defects(node, defects)
        payload = _raw_payload(node)
        if isinstance(payload, list):
            if depth >= max_depth:
                too_deep = True
                continue
            containers.append(_safe_content_type(node))
            children = [child for child in payload if isinstance(child, Message)]
            stack.extend((child, depth + 1) for child in reversed(children))
            continue
        if len(parts) >= max_parts:
            too_many = True
            break
        part = _leaf(node, payload, max_part_bytes)
        if part is None:
            defects.setdefault("parterror", None)
        else:
            parts.append(part)
    return Extracted(_headers(root), tuple(parts), tuple(containers), tuple(defects), truncated,
                     too_deep, too_many)


def _headers(root: Message) -> tuple[tuple[str, str], ...]:
    """The first MAX_HEADERS top-level fields as (stripped lower-case name, raw value)."""
    return tuple((name.strip().lower(), value)
                 for name, value in islice(root.raw_items(), MAX_HEADERS))




def _raw_payload(node: Message) -> object:
    """The payload as parsed: a list of sub-messages, or the undecoded body as a str with
    8-bit bytes surrogate-escaped. Read directly because compat32's ``get_payload()`` turns
    8-bit bytes into U+FFFD through the declared charset (default ascii) before we can
    decode them properly."""
    return getattr(node, "_payload", None)


def _note_defects(node: Message, defects: dict[str, None]) -> None:
    """Record the defect class names the parser found on ``node`` (a spam signal)."""
    for defect in getattr(node, "defects", ()):
        if len(defects) >= _MAX_DEFECTS:
            return
        defects.setdefault(type(defect).__name__.lower(), None)


def _safe_content_type(node: Message) -> str:
    try:
        return node.get_content_type()
    except Exception:
        return "invalid/invalid"


def _leaf(node: Message, payload: object, max_part_bytes: int) -> Part | None:
    """Describe one leaf part, decoding its text if it is text. None if the part is beyond
    repair (any exception while reading it)."""
    try:
        fields = _part_fields(node)
        ctype = fields.get_content_type()
        charset = fields.get_content_charset()
        encoding = _header_str(fields.get("content-transfer-encoding"))
        filename = fields.get_filename()
        attachment = filename is not None or fields.get_content_disposition() == "attachment"
        if ctype not in _TEXT_TYPES and not ctype.startswith("multipart/"):
            return Part(ctype, charset, encoding, filename, attachment)
        # A multipart without a usable boundary is read as text: its content is still there.
        raw = payload if isinstance(payload, str) else ""
        body = decode_body(_payload_bytes(raw), encoding or "", max_part_bytes)
        text = bytes_to_text(body, charset)
        if ctype == "text/html":
            page = html_to_text(text)
            return Part(ctype, charset, encoding, filename, attachment, page.text, True,
                        page.urls, page.tags)
        return Part(ctype, charset, encoding, filename, attachment, text)
    except Exception:
        return None


def _part_fields(node: Message) -> Message:
    """``node`` reduced to the fields that ``_leaf`` reads, in their order and with its
    default type: the getters answer the same, for they read only these fields. Each getter
    scans every field (``get_param`` twice), and a top-level part has dozens of them."""
    if len(node) <= _FEW_FIELDS:
        return node
    fields = Message(policy=node.policy)
    for name, value in node.raw_items():
        if name.lower() in _PART_FIELDS:
            fields.set_raw(name, value)
    fields.set_default_type(node.get_default_type())
    return fields


def _header_str(value: object) -> str | None:
    """A header value as lower-case text, or None if absent (compat32 may give a Header)."""
    if value is None:
        return None
    return str(value).strip().lower()[:40] or None


def _payload_bytes(raw: str) -> bytes:
    """The part's undecoded bytes (the parser keeps 8-bit bytes as surrogate escapes)."""
    try:
        return raw.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return raw.encode("utf-8", "replace")


def decode_body(data: bytes, encoding: str, max_bytes: int) -> bytes:
    """Undo the transfer encoding, producing at most ``max_bytes``; never raises."""
    if encoding == "base64":
        return _decode_base64(data, max_bytes)
    if encoding == "quoted-printable":
        # Each decoded byte takes 1 to 3 encoded ones, plus soft line breaks.
        return binascii.a2b_qp(data[: max_bytes * 4])[:max_bytes]
    return data[:max_bytes]


def _decode_base64(data: bytes, max_bytes: int) -> bytes:
    """Decode whatever base64 there is. Well-formed input goes straight to binascii (which
    skips line breaks); otherwise junk and padding are dropped and the tail re-padded (a
    lone sixth-bit character cannot encode a byte and is dropped). Never raises."""
    groups = (max_bytes // 3 + 1) * 4  # encoded characters needed for max_bytes
    head = data[: groups + groups // 38 + 4]  # plus a CRLF per 76 characters
    with contextlib.suppress(binascii.Error):
        return binascii.a2b_base64(head)[:max_bytes]
    clean = _B64_JUNK.sub(b"", data)[:groups]
    ragged = len(clean) % 4
    if ragged == 1:
        clean = clean[:-1]
    elif ragged:
        clean += b"=" * (4 - ragged)
    return binascii.a2b_base64(clean)[:max_bytes]


def bytes_to_text(data: bytes, charset: str | None) -> str:
    """``data`` as Unicode in the declared charset: unknown or broken charsets fall back to
    UTF-8, then cp1252, and undecodable bytes become U+FFFD. Never raises."""
    codec = _codec_for(charset)
    if codec is not None:
        try:
            return data.decode(codec, "replace")
        except Exception:  # LookupError, non-text codecs, codecs that refuse "replace"
            pass
    if data.isascii():
        return data.decode("ascii")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def _codec_for(charset: str | None) -> str | None:
    """The codec to try for a declared charset, or None for the UTF-8/cp1252 guess."""
    if not charset:
        return None
    name = charset.strip().strip("\"'").lower()
    if name in _CHARSET_ALIASES:
        return _CHARSET_ALIASES[name]
    # Only plain codec names go to the codec registry.
    return name if _CHARSET_NAME.fullmatch(name) else None


def header_text(raw: str) -> str:
    """A header value as Unicode: raw 8-bit bytes decoded (UTF-8, else cp1252) and RFC 2047
    encoded-words decoded with ``email.header``. Never raises; undecodable words stay as
    they are."""
    text = raw[:MAX_HEADER_CHARS]
    if not text.isascii():
        with contextlib.suppress(UnicodeEncodeError):  # else it is real Unicode already
            text = bytes_to_text(text.encode("ascii", "surrogateescape"), None)
    if "=?" not in text:
        return text
    try:
        return "".join(_decoded_chunk(chunk, charset)
                       for chunk, charset in email.header.decode_header(text))
    except Exception:  # HeaderParseError on broken base64 words, and anything else
        return text


def _decoded_chunk(chunk: bytes | str, charset: str | None) -> str:
    if isinstance(chunk, str):
        return chunk
    if charset is None:  # decode_header gives unencoded text as raw-unicode-escape bytes
        return chunk.decode("raw-unicode-escape", "replace")
    return bytes_to_text(chunk, charset)


def _fallback(data: bytes, truncated: bool, max_part_bytes: int) -> Extracted:
    """Headers-only parse (never recursive) with the whole body as one text part."""
    try:
        root = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(data)
        headers = _headers(root)
        payload = _raw_payload(root)
        body = _payload_bytes(payload if isinstance(payload, str) else "")
    except Exception:
        headers, body = (), data
    part = Part("text/plain", None, None, None, False, bytes_to_text(body[:max_part_bytes], None))
    return Extracted(headers, (part,), (), (), truncated, parsed=False)
