"""HTML to the text a reader sees, for the tokenizer, in linear time and never raising.

``html_to_text(markup)`` gives the visible text of an HTML body (lower-cased), its
href/src/action targets and its notable tags. Linear regex passes, not ``html.parser``: on
this Python (3.11.2) ``html.parser`` is quadratic on unterminated tags: ``"<a href='x' " *
30000`` (360 KB) took 503 s and ``"<a" * 150000`` took 140 s. It is also slow on ordinary
mail (5.5 ms for a 22 KB newsletter). Instead, the markup is lower-cased (the tokenizer
lower-cases anyway, and case-insensitive patterns are 2-4x slower) and goes through three
whole-string regex passes at C speed. No pattern crosses a ``<`` inside a tag, and the
quantifiers are possessive or atomic, so every failed match stops at the next ``<``.
Comments and script/style bodies are skipped with ``str.find``/``search``. The result drops
comments, ``<script>`` and ``<style>``, keeps alt/title text in place, and collects
href/src/action targets for URL tokens. Only block-level tags separate words, so that
``V<b></b>iagra`` reads "viagra", as a browser shows it. Entities are decoded with
``html.unescape``; the few that exist only in capitals (``&NewLine;``) stay literal after
lower-casing. Quotes inside a tag are not tracked: a ``>`` inside a quoted attribute value
ends the tag early (rare, and harmless here).

The tags are replaced in a ``split`` pass rather than a ``sub`` with a function: ``split``
hands back the text between the tags and each tag's groups, and the replacement of most
tags is a table lookup done by ``map``. A Python call per tag (HTML mail has hundreds) was
most of the time spent here.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from itertools import repeat
from types import MappingProxyType

__all__ = ["HtmlText", "html_to_text"]

# HTML scanning, on lower-cased markup (case-insensitive patterns are 2-4x slower). No pattern
# crosses a "<" inside a tag and the quantifiers are possessive or atomic, so a failed match
# costs at most the distance to the next "<" (see the module docstring).
_TAG = re.compile(r"<(?:(/?+)([a-z][a-z0-9:-]*+)([^<>]*+)|[!?/][^<>]*+)>")
_SHOWN_ATTR = re.compile(r"""\b(?:alt|title)\s*+=\s*+(?:"([^"]*+)"|'([^']*+)'|([^\s"'>]++))""")
_URL_ATTR = re.compile(
    r"""<[a-z](?>[^<>]*?\b(?:href|src|action)\s*+=\s*+"""
    r"""(?:"([^"<>]*+)"|'([^'<>]*+)'|([^\s"'<>]++)))"""
)
# Tags whose mere presence is worth a token (images, forms, active content).
_NOTABLE_TAG = re.compile(r"<(img|form|input|script|iframe|object|embed|base)\b")
_DROP_START = re.compile(r"<(script|style)\b[^<>]*+>")
_DROP_END = MappingProxyType({
    "script": re.compile(r"</script\s*+>"),
    "style": re.compile(r"</style\s*+>"),
})
# Tags that separate words on screen; all others (b, span, font, a, ...) join their sides.
_BLOCK_TAGS = frozenset({
    "address", "area", "article", "aside", "blockquote", "body", "br", "caption", "center",
    "dd", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2",
    "h3", "h4", "h5", "h6", "head", "header", "hr", "html", "img", "input", "li", "main",
    "nav", "ol", "option", "p", "pre", "section", "select", "table", "tbody", "td", "textarea",
    "tfoot", "th", "thead", "title", "tr", "ul",
})
# What a tag without shown attribute text turns into: a space for a block tag, else nothing.
_TAG_GAP = MappingProxyType({name: " " for name in _BLOCK_TAGS})


@dataclass(frozen=True, slots=True)
class HtmlText:
    """What a reader sees in an HTML body, plus where its links and images point."""

    text: str
    urls: tuple[str, ...]
    tags: tuple[str, ...]  # notable tags present, first occurrence first


def html_to_text(markup: str) -> HtmlText:
    """What a reader sees in an HTML body, lower-cased, and its link/image/form targets, in
    linear time. Three whole-string regex passes: URLs, notable tags, and one ``split`` that
    turns each tag into nothing, a space or its alt/title text."""
    markup = _drop_scripts(_strip_comments(markup.lower()))
    if "<" not in markup:
        return HtmlText(html.unescape(markup), (), ())
    urls = tuple(html.unescape(a or b or c) for a, b, c in _URL_ATTR.findall(markup))
    tags = tuple(dict.fromkeys(_NOTABLE_TAG.findall(markup)))
    return HtmlText(html.unescape(_replace_tags(markup)), urls, tags)


def _replace_tags(markup: str) -> str:
    """``markup`` with each tag replaced by what it shows: its alt/title text, a space for a
    block tag, else nothing. ``_TAG`` has three groups, so ``split`` gives text, then the
    "/" of a closing tag, the name and the attributes of a tag (None for ``<!doctype>``,
    ``<?xml?>`` and ``</ junk>``), then text again, and so on."""
    pieces = _TAG.split(markup)
    slashes, names, attributes = pieces[1::4], pieces[2::4], pieces[3::4]
    shown = list(map(_TAG_GAP.get, names, repeat("")))
    attribute_text = "".join(filter(None, attributes))  # C-level test before a Python loop
    if "alt" in attribute_text or "title" in attribute_text:
        for index, attrs in enumerate(attributes):
            if attrs and not slashes[index] and ("alt" in attrs or "title" in attrs):
                values = [a or b or c for a, b, c in _SHOWN_ATTR.findall(attrs)]
                if values:
                    shown[index] = f" {' '.join(values)} "
    texts = pieces[0::4]
    joined = texts + shown  # the right length; then text and tag replacements interleaved
    joined[0::2], joined[1::2] = texts, shown
    return "".join(joined)


def _drop_scripts(markup: str) -> str:
    """Remove script and style elements (an unclosed one hides the rest, as in a browser).
    ``<script>`` itself is kept for the notable-tag token."""
    if "<s" not in markup:
        return markup
    kept: list[str] = []
    pos = 0
    while (start := _DROP_START.search(markup, pos)) is not None:
        kept.append(markup[pos : start.end()])
        close = _DROP_END[start.group(1).lower()].search(markup, start.end())
        if close is None:
            return "".join(kept)
        pos = close.end()
    kept.append(markup[pos:])
    return "".join(kept)


def _strip_comments(markup: str) -> str:
    """Drop ``<!-- ... -->`` (an unclosed comment hides the rest, as in a browser); linear."""
    if "<!--" not in markup:
        return markup
    kept: list[str] = []
    pos = 0
    while True:
        start = markup.find("<!--", pos)
        if start < 0:
            kept.append(markup[pos:])
            break
        kept.append(markup[pos:start])
        stop = markup.find("-->", start + 4)
        if stop < 0:
            break
        pos = stop + 3
    return "".join(kept)


