"""Hosts and domains for the tokenizer: URLs found in text, and registrable domains.

The token rules are in the ``tokenizer`` module docstring. ``take_urls`` and ``url_tokens``
find URLs as ``_URL.finditer`` would, but try the pattern only where a URL can start (see
``_url_matches``): the pattern opens with ``\\b``, which gives the regex engine nothing to
skip ahead with, so a plain scan tried a match at every character of every text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["NUMERIC_HOST", "domain_tokens", "host_tokens", "registrable_domain", "take_urls",
           "url_tokens"]

_URL = re.compile(
    r"""(?:\b(?:https?|ftps?)://(?:[^\s/?#<>"'@]{0,256}@)?|\b(?=www\.))"""
    r"""(\[[0-9a-f:.]{1,64}\]|[\w.-]{1,255})[^\s<>"']*"""
)
NUMERIC_HOST = re.compile(r"(?:0x[0-9a-f]+|\d+)(?:\.(?:0x[0-9a-f]+|\d+)){0,3}\.?")
# Two-level public suffixes under which the registrable domain has three labels.
_TWO_LEVEL_SUFFIXES = frozenset({
    "co.uk", "org.uk", "ac.uk", "gov.uk", "me.uk", "ltd.uk", "plc.uk", "net.uk", "sch.uk",
    "com.au", "net.au", "org.au", "edu.au", "gov.au", "co.nz", "net.nz", "org.nz",
    "co.jp", "ne.jp", "or.jp", "ac.jp", "go.jp", "co.kr", "or.kr", "co.in", "net.in",
    "org.in", "co.za", "co.id", "co.il", "co.th", "com.br", "net.br", "org.br", "com.cn",
    "net.cn", "org.cn", "gov.cn", "com.tw", "com.hk", "com.sg", "com.my", "com.mx", "com.ar",
    "com.tr", "com.ua", "com.pl", "com.ru", "com.vn", "com.ph", "com.pk", "com.ng", "com.eg",
})


def take_urls(text: str) -> tuple[str, list[str]]:
    """``text`` with its URLs replaced by spaces, and their hosts."""
    matches = _url_matches(text)
    pieces: list[str] = []
    done = 0
    for match in matches:
        pieces += (text[done : match.start()], " ")
        done = match.end()
    pieces.append(text[done:])
    return "".join(pieces), [match.group(1) for match in matches]


def url_tokens(text: str) -> list[str]:
    """``url:`` tokens of the URLs in ``text``."""
    return host_tokens(match.group(1) for match in _url_matches(text))


def _url_matches(text: str) -> list[re.Match[str]]:
    """What ``_URL.finditer(text)`` finds, found faster. ``_URL`` starts with ``\\b``, so the
    regex engine tries a whole match at every position; but a match can only start at "www."
    or 3 to 5 characters before "://" (ftp, http, ftps, https). So only those places, found
    with C substring searches, are tried, left to right, each from the end of the last match
    on, as ``finditer`` would."""
    starts: set[int] = set()
    found = text.find("://")
    while found >= 0:
        starts.update(range(max(found - 5, 0), found - 2))
        found = text.find("://", found + 1)
    found = text.find("www.")
    while found >= 0:
        starts.add(found)
        found = text.find("www.", found + 1)
    matches = []
    end = 0
    for start in sorted(starts):
        if start >= end and (match := _URL.match(text, start)) is not None:
            matches.append(match)
            end = match.end()
    return matches


def host_tokens(hosts: Iterable[str]) -> list[str]:
    """``url:<host>`` and ``url:<registrable domain>`` (``url:ip`` for a numeric host)."""
    tokens: list[str] = []
    for raw in hosts:
        host = raw.strip(".-")
        if not host:
            continue
        if host.startswith("[") or NUMERIC_HOST.fullmatch(host):
            tokens += ("url:ip", f"url:{host}")
        else:
            tokens += (f"url:{host}", f"url:{registrable_domain(host)}")
    return tokens


def registrable_domain(host: str) -> str:
    """The last two labels of ``host``, or three under a known two-level public suffix."""
    labels = host.rsplit(".", 3)
    if len(labels) <= 2:
        return host
    last_two = ".".join(labels[-2:])
    return ".".join(labels[-3:]) if last_two in _TWO_LEVEL_SUFFIXES else last_two


def domain_tokens(prefix: str, domains: Iterable[str]) -> list[str]:
    """``<prefix><domain>`` and ``<prefix><registrable domain>`` of each domain."""
    tokens = []
    for domain in domains:
        domain = domain.strip(".-")
        if domain:
            tokens += (prefix + domain, prefix + registrable_domain(domain))
    return tokens
