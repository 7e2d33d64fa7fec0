"""Tokens of a message for the classifier: unigrams plus OSB pairs, URL, header and MIME tokens.

``tokenize(message, settings)`` returns the message's distinct tokens as strings, in a fixed
order, at most ``settings.max_tokens`` of them. The same bytes always give the same list.
``mime_text`` does the MIME work (bounded parse, decoding, charsets, HTML to text). This
module turns its output into tokens, with ``tok_words`` (words and OSB pairs) and
``tok_hosts`` (URLs, hosts, registrable domains) for the inner loops. The choices, and why:

* **Order = priority.** Tokens are produced in this order: header tokens, structure tokens,
  URL and punctuation tokens of every text part, then the words and OSB pairs of each text
  part. When ``max_tokens`` cuts a huge message, the short, telling tokens survive and body
  pairs from the end go. Production stops one chunk of words (or 16K characters of text)
  after the cap, so the work stays bounded too.
* **Text normalization.** NFKC and then lower case, so that full-width and compatibility
  forms and case variants count as one word. Words are runs of Unicode letters and digits
  (``\\w`` without ``_``), so "don't" gives "don" and a too-short "t". For ASCII text
  ``str.translate`` plus ``split`` finds the same words 4-5x faster than the regex. Han and
  kana are written without spaces, so each of their characters is a word of its own, and
  single characters from U+3040 on are exempt from ``min_length``; the OSB pairs then stand
  for CJK bigrams and skip-grams. Other words shorter than ``min_length`` are dropped.
  Longer than ``max_length`` gives ``skip:<first char>:<length rounded down to 10>``
  (SpamBayes): base64 blobs and hashes carry no words, only their shape.
* **OSB** (orthogonal sparse bigrams, as dspam's and rspamd's ``osb``): for word ``w[i]`` and
  ``1 <= j < osb_window``, the token ``f"{w[i]}~{j}~{w[i+j]}"``. The distance is part of the
  token, which is what makes the pairs orthogonal. The default window is 2 (each word with
  the next): on the development corpus the pairs at distance 2-4 more than doubled the tokens
  (so the Redis lookups and the store) and added no accuracy once the model weighs a pair as a
  fraction of a word (model.py; ``~`` in a token is how it knows a pair, and no other token
  can hold one: words are letters and digits, hosts ``[\\w.-]``). The pairs run over the word
  sequence of one part, after short and skipped words are removed. Within each chunk of 2,048 words
  the unigrams come first, then the pairs at distance 1, 2 and so on. For "a b c" with
  window 3 that gives ``a, b, c, a~1~b, b~1~c, a~2~c``.
* **URLs** (http, https, ftp, ``www.`` in text, and href/src/action in HTML): each gives
  ``url:<host>`` and ``url:<registrable domain>``. The registrable domain is the last two
  labels, or three under a short list of two-level public suffixes such as co.uk, kept here
  to avoid a dependency. A numeric host (dotted, single-integer, hex, IPv6) gives ``url:ip``
  and ``url:<host>``. A userinfo ``user@`` is skipped, because the host is what the link
  opens. URLs are removed from the word stream: their paths are mostly one-off ids that
  would only fill the store.
* **Punctuation**: runs of ``! ? $ * € £ ¥`` give ``punct:!!`` (2) or ``punct:!!!`` (3 or
  more). A currency sign before a digit gives ``money:$``.
* **Headers** (``settings.headers``; ``"*"`` means every header field): words become
  ``<name>:<word>``, after RFC 2047 decoding with ``email.header`` and 8-bit values decoded
  as UTF-8, else cp1252. Some fields are read more narrowly, where their words are noise:
  - Subject also gets OSB pairs (``subject:a~1~b``).
  - From, Reply-To, Return-Path and Sender also give ``<name>:domain:<domain>`` and the
    registrable domain. The prefix is per field, so a From domain and a Reply-To domain are
    different evidence.
  - Received gives only the ``from`` (HELO) and reverse-DNS host names as
    ``received:<host>`` and ``received:domain:<domain>``, plus IPv4 classes
    ``received:ip:a.b.c`` and ``received:ip:a.b`` (``received:ipv6`` for IPv6). Only the
    first 10 Received fields are read.
  - Message-ID gives ``message-id:domain:<right side>`` (or ``message-id:malformed``). Its
    left side is random by design.
  - Content-Type gives ``content-type:<type/subtype>``. The boundary is random.
  A field in ``ignore_headers`` never gives a token, even if ``headers`` names it. Entries
  there ending in ``*`` match as prefixes; the default ``x-dspam-*`` covers every result
  header this program writes, so retraining never learns from our own verdict. At most 10
  fields of one name are read, and 4,096 characters of each. When the parser finds a line
  that is not a header inside a header block, the fields after it end up in body text. In
  that case (and in the parser fallback), lines shaped like an ignored field are removed
  from the text as well.
* **Structure**: ``mime:parts:<1|2|3|4-5|6-10|11-20|21+>`` for the number of leaf parts,
  ``mime:<type>`` for each multipart and message/* container, ``html:only`` (HTML but no
  text/plain), ``mime:notext``, ``encoding:<cte>``, ``charset:<declared charset>``, and
  ``html:<tag>`` for img, form, input, script, iframe, object, embed and base. Non-text
  parts and named parts give ``attach:type:<type/subtype>`` and ``attach:ext:<extension>``.
  Parser defects give ``mime:defect:<defect class>``, and hitting a cap gives
  ``mime:truncated``, ``mime:toodeep``, ``mime:toomany`` or ``mime:unparsed``. Broken
  structure is itself evidence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from itertools import islice

from postward.classifier.mime_text import Extracted, Part, extract, header_text
from postward.classifier.tok_hosts import (
    NUMERIC_HOST,
    domain_tokens,
    host_tokens,
    registrable_domain,
    take_urls,
    url_tokens,
)
from postward.classifier.tok_words import add_osb, full, normalize, split_words

__all__ = [
    "DEFAULT_HEADERS",
    "DEFAULT_IGNORE_HEADERS",
    "TokenizerSettings",
    "registrable_domain",
    "tokenize",
]

DEFAULT_HEADERS = (
    "subject", "from", "to", "reply-to", "return-path", "content-type", "received",
    "x-mailer", "user-agent", "message-id", "list-id",
)
# dspam.conf's IgnoreHeader lines from the guide, plus our own result headers.
DEFAULT_IGNORE_HEADERS = (
    "x-spam-status", "x-spam-scanned", "x-virus-scanner-result", "x-virus-scanned", "x-dkim",
    "dkim-signature", "domainkey-signature", "x-google-dkim-signature",
    "x-dspam-result", "x-dspam-confidence", "x-dspam-probability", "x-dspam-signature",
    "x-dspam-factors", "x-dspam-processed", "x-dspam-improbability", "x-dspam-reclassified",
    "x-dspam-*",
)


@dataclass(frozen=True)
class TokenizerSettings:
    """Bounds and choices of the tokenizer; the defaults suit the daemon."""

    max_message_bytes: int = 1_000_000  # bytes of the raw message looked at; the rest ignored
    max_part_bytes: int = 300_000  # decoded bytes per MIME part
    max_tokens: int = 5_000  # distinct tokens kept per message
    min_length: int = 2  # shorter words are dropped (CJK characters excepted)
    max_length: int = 40  # longer words become a "skip:" token of their length class
    osb_window: int = 2  # OSB window (dspam/rspamd use 5); 1 means unigrams only
    headers: tuple[str, ...] = DEFAULT_HEADERS  # tokenized with a "name:" prefix; "*" = all
    ignore_headers: tuple[str, ...] = DEFAULT_IGNORE_HEADERS  # never tokenized; "x-a-*": prefix
    max_parts: int = 100  # leaf MIME parts looked at
    max_depth: int = 20  # MIME nesting (and multipart/message containers) looked at

    def __post_init__(self) -> None:
        if min(self.max_message_bytes, self.max_part_bytes, self.max_tokens) < 0:
            raise ValueError("the size caps must not be negative")
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError("need 1 <= min_length <= max_length")
        if self.osb_window < 1 or self.max_parts < 1 or self.max_depth < 1:
            raise ValueError("osb_window, max_parts and max_depth must be at least 1")

    @cached_property
    def _header_names(self) -> frozenset[str]:
        return frozenset(name.lower() for name in self.headers)

    @cached_property
    def _ignored(self) -> tuple[frozenset[str], tuple[str, ...]]:
        names = [name.lower() for name in self.ignore_headers]
        return (frozenset(n for n in names if not n.endswith("*")),
                tuple(n[:-1] for n in names if n.endswith("*")))

    @cached_property
    def ignored_line(self) -> re.Pattern[str] | None:
        """An ignored header field as a line of (lower-case) text, with its continuation
        lines; None if nothing is ignored."""
        exact, prefixes = self._ignored
        names = [re.escape(n) for n in sorted(exact)]
        names += [re.escape(p) + r"[^\s:]*" for p in sorted(prefixes)]
        if not names:
            return None
        return re.compile(rf"^[ \t]*(?:{'|'.join(names)})[ \t]*:.*(?:\r?\n[ \t]+.*)*",
                          re.MULTILINE)

    def wants_header(self, name: str) -> bool:
        """Whether header field ``name`` (lower case) is tokenized."""
        exact, prefixes = self._ignored
        if name in exact or name.startswith(prefixes):
            return False
        wanted = self._header_names
        return name in wanted or "*" in wanted


_DEFAULTS = TokenizerSettings()

_PIECE = 16_384  # characters split into words at a time; the cap is checked between pieces
_MAX_SAME_HEADER = 10
_ADDRESS_HEADERS = frozenset({"from", "reply-to", "return-path", "sender"})

# A run of one sign (2 or more long), or a single currency sign before a number. It starts
# with a character class so that the regex engine skips ahead to the next sign at C speed; a
# pattern starting with an alternation tries a full match at every position (10x slower).
_PUNCT = re.compile(r"([!?$*€£¥])(?:(\1++)|(?<=[$€£¥])(?=\s?\d))")
_PUNCT_HINTS = ("!!", "??", "**", "$", "€", "£", "¥")
_ADDRESS_DOMAIN = re.compile(r"@([\w-]+(?:\.[\w-]+)+)")
_RECEIVED_HOSTS = re.compile(r"^\s*from\s+([\w.-]+)(?:\s+\(([\w.-]+))?", re.IGNORECASE)
_RECEIVED_IP = re.compile(r"\[(?:ipv6:)?([0-9a-f:.]{2,45})\]", re.IGNORECASE)
_MSGID_DOMAIN = re.compile(r"@\[?([\w.-]+)")
_SAFE_VALUE = re.compile(r"[\w.+-]{1,40}")
_MIME_TYPE = re.compile(r"[\w.+-]{1,40}/[\w.+-]{1,60}")
_EXTENSION = re.compile(r"[^\W_]{1,10}")


def tokenize(message: bytes, settings: TokenizerSettings = _DEFAULTS) -> list[str]:
    """The distinct tokens of ``message`` in order of first production, at most
    ``settings.max_tokens`` of them. Deterministic, never raises on any bytes, bounded work."""
    extracted = extract(message, max_message_bytes=settings.max_message_bytes,
                        max_part_bytes=settings.max_part_bytes, max_parts=settings.max_parts,
                        max_depth=settings.max_depth)
    limit = settings.max_tokens
    out = _header_tokens(extracted.headers, settings)
    out += _structure_tokens(extracted)
    scrub = settings.ignored_line if _header_block_broken(extracted) else None
    texts = [_prepare_text(part, out, scrub) for part in extracted.parts if part.text]
    for text in texts:
        _add_text(out, text, settings)
    return list(islice(dict.fromkeys(out), limit))


def _header_block_broken(extracted: Extracted) -> bool:
    """Whether header lines may have ended up in body text: the parser ended a header block
    at a line that was not a header, or the fallback read the whole body raw. Then lines
    shaped like ignored headers (our own X-DSPAM-* verdict) are removed from the text."""
    return not extracted.parsed or "missingheaderbodyseparatordefect" in extracted.defects


def _add_text(out: list[str], text: str, settings: TokenizerSettings) -> None:
    """Words and OSB pairs of one part's text, a piece at a time so that a long text stops
    soon after the cap. The last window-1 words are carried into the next piece, so the
    pairs are the same as in one go (the repeats are removed with the other duplicates)."""
    window, limit = settings.osb_window, settings.max_tokens
    carry: list[str] = []
    for piece in _pieces(text):
        if full(out, limit):
            return
        words, skipped = split_words(piece, settings.min_length, settings.max_length)
        out += skipped
        add_osb(out, carry + words, window, limit)
        carry = (carry + words)[1 - window :] if window > 1 else []


def _pieces(text: str) -> Iterator[str]:
    """``text`` in pieces of about ``_PIECE`` characters, cut at a space or line break."""
    start, end = 0, len(text)
    while start < end:
        stop = start + _PIECE
        if stop < end:
            cut = max(text.rfind(" ", start, stop), text.rfind("\n", start, stop))
            stop = cut if cut > start else stop
        yield text[start:stop]
        start = stop


def _prepare_text(part: Part, out: list[str], scrub: re.Pattern[str] | None = None) -> str:
    """Normalize a part's text (and remove ``scrub`` matches); add its URL and punctuation
    tokens to ``out``; return the text with the URLs taken out (their words are noise)."""
    text = normalize(part.text or "")
    if scrub is not None:
        text = scrub.sub(" ", text)
    if part.urls:
        out += url_tokens(normalize(" ".join(part.urls)))
    if "://" in text or "www." in text:
        text, hosts = take_urls(text)
        out += host_tokens(hosts)
    out += _punct_tokens(text)
    return text


def _punct_tokens(text: str) -> list[str]:
    if not any(hint in text for hint in _PUNCT_HINTS):  # substring tests beat a regex scan
        return []
    return [f"punct:{sign * min(len(run) + 1, 3)}" if run else f"money:{sign}"
            for sign, run in _PUNCT.findall(text)]


def _header_tokens(headers: Iterable[tuple[str, str]], settings: TokenizerSettings) -> list[str]:
    """Tokens of the wanted top-level header fields, at most 10 fields of one name. (The
    ``wants_header`` test is inlined: a message has dozens of fields, most not wanted.)"""
    out: list[str] = []
    seen: dict[str, int] = {}
    wanted = settings._header_names
    every = "*" in wanted
    exact, prefixes = settings._ignored
    for name, raw in headers:
        if not (every or name in wanted) or name in exact or name.startswith(prefixes):
            continue
        seen[name] = count = seen.get(name, 0) + 1
        if count <= _MAX_SAME_HEADER:
            text = header_text(raw)
            out += _one_header(name, text.lower() if text.isascii() else normalize(text),
                               settings)
    return out


def _one_header(name: str, value: str, settings: TokenizerSettings) -> list[str]:
    """Dispatch one field to its reader (see the module docstring for why they differ)."""
    if name == "received":
        return _received_tokens(value)
    if name == "message-id":
        match = _MSGID_DOMAIN.search(value)
        return [f"message-id:domain:{match.group(1).strip('.')}" if match
                else "message-id:malformed"]
    if name == "content-type":
        ctype = value.split(";", 1)[0].strip()
        return [f"content-type:{ctype if _MIME_TYPE.fullmatch(ctype) else 'invalid'}"]
    words, skipped = split_words(value, settings.min_length, settings.max_length)
    prefix = f"{name}:"
    out = [prefix + s for s in skipped]
    if name == "subject":
        add_osb(out, words, settings.osb_window, settings.max_tokens, prefix)
    else:
        out += map(prefix.__add__, words)
    if name in _ADDRESS_HEADERS:
        out += domain_tokens(f"{name}:domain:", _ADDRESS_DOMAIN.findall(value))
    return out


def _received_tokens(value: str) -> list[str]:
    """HELO and reverse-DNS names with their domains, and the sending IP's classes."""
    tokens: list[str] = []
    hosts = _RECEIVED_HOSTS.match(value)
    if hosts:
        for host in hosts.groups():
            if host and (host := host.strip(".-")):
                tokens.append("received:" + host)
                if not NUMERIC_HOST.fullmatch(host):
                    tokens.append("received:domain:" + registrable_domain(host))
    address = _RECEIVED_IP.search(value)
    if address:
        ip = address.group(1)
        if ":" in ip:
            tokens.append("received:ipv6")
        elif ip.count(".") == 3 and all(octet.isdigit() for octet in ip.split(".")):
            classes = ip.rsplit(".", 2)
            tokens += ("received:ip:" + ip.rpartition(".")[0], "received:ip:" + classes[0])
    return tokens


def _structure_tokens(extracted: Extracted) -> list[str]:
    """Tokens for the shape of the message: parts, containers, encodings, attachments."""
    tokens = [f"mime:parts:{_bucket(len(extracted.parts))}"]
    tokens += (f"mime:{_safe_type(ctype)}" for ctype in extracted.containers)
    kinds = {part.content_type for part in extracted.parts if part.text is not None}
    if "text/html" in kinds and "text/plain" not in kinds:
        tokens.append("html:only")
    if not kinds:
        tokens.append("mime:notext")
    for part in extracted.parts:
        tokens += _part_tokens(part)
    tokens += (f"mime:defect:{name}" for name in extracted.defects)
    flags = (("truncated", extracted.truncated), ("toodeep", extracted.too_deep),
             ("toomany", extracted.too_many_parts), ("unparsed", not extracted.parsed))
    tokens += (f"mime:{flag}" for flag, on in flags if on)
    return tokens


def _part_tokens(part: Part) -> list[str]:
    tokens = []
    if part.encoding:
        tokens.append(f"encoding:{_safe_value(part.encoding)}")
    if part.charset:
        tokens.append(f"charset:{_safe_value(part.charset)}")
    tokens += (f"html:{tag}" for tag in part.tags)
    if part.attachment or part.text is None:
        tokens.append(f"attach:type:{_safe_type(part.content_type)}")
    if part.filename:
        stem, dot, ext = part.filename.strip().rpartition(".")
        ext = ext.lower()
        if dot and stem and _EXTENSION.fullmatch(ext):
            tokens.append(f"attach:ext:{ext}")
    return tokens


def _bucket(count: int) -> str:
    if count <= 3:
        return str(count)
    if count <= 5:
        return "4-5"
    if count <= 10:
        return "6-10"
    return "11-20" if count <= 20 else "21+"


def _safe_type(ctype: str) -> str:
    return ctype if _MIME_TYPE.fullmatch(ctype) else "invalid"


def _safe_value(value: str) -> str:
    value = value.strip().strip("\"'").lower()
    return value if _SAFE_VALUE.fullmatch(value) else "invalid"
