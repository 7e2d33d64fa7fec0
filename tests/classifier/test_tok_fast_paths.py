"""The tokenizer's fast paths against the plain code they replace, on generated input: URL
matching at candidate places vs. a full regex scan, the punctuation regex, the word filter,
OSB pairs, HTML tag replacement by ``split`` vs. ``sub``, the part fields read from a
reduced copy of a part vs. from the part itself, and the Received reader."""

from __future__ import annotations

import re
from email.message import Message

from hypothesis import given, settings
from hypothesis import strategies as st

from postward.classifier import mime_html, mime_text, tok_hosts, tok_words, tokenizer

_URLISH = st.text(alphabet="hwtpfs:/.@[]1a- <\"'\n", max_size=80) | st.lists(
    st.sampled_from(["http://", "https://", "ftp://", "ftps://", "www.", "wwww.", "x", " ",
                     "a@", "[::1]", "host.example", "://", "/path", "@", "\"", "-", "."]),
    max_size=12).map("".join)


@settings(derandomize=True, max_examples=500, deadline=None)
@given(_URLISH)
def test_url_matches_are_what_a_full_scan_finds(text: str) -> None:
    expected = [(m.span(), m.group(1)) for m in tok_hosts._URL.finditer(text)]
    assert [(m.span(), m.group(1)) for m in tok_hosts._url_matches(text)] == expected
    assert tok_hosts.take_urls(text) == (tok_hosts._URL.sub(" ", text), [h for _, h in expected])


def _punct_tokens_by_alternation(text: str) -> list[str]:
    """The punctuation tokens as first written, with a pattern the engine cannot skip with."""
    tokens = []
    for match in re.finditer(r"([!?$*€£¥])\1+|([$€£¥])(?=\s?\d)", text):
        if match.group(2):
            tokens.append(f"money:{match.group(2)}")
        else:
            run = match.group(0)
            tokens.append(f"punct:{run[:2]}" if len(run) == 2 else f"punct:{run[:3]}")
    return tokens


@settings(derandomize=True, max_examples=500, deadline=None)
@given(st.text(alphabet="!?$*€£¥ 1\u0661x\t", max_size=40))
def test_punctuation_tokens_match_the_alternation(text: str) -> None:
    assert tokenizer._punct_tokens(text) == _punct_tokens_by_alternation(text)


def _words_by_filter(text: str, low: int, high: int) -> tuple[list[str], list[str]]:
    """split_words without its shortcut: every word through the full length test."""
    found = tok_words._WORD.findall(text.replace("_", " "))
    words = [w for w in found if low <= len(w) <= high]
    return words, [f"skip:{w[0]}:{len(w) // 10 * 10}" for w in found if len(w) > high]


@settings(derandomize=True, max_examples=500, deadline=None)
@given(st.text(alphabet="ab_1 .é\u00b2", max_size=120), st.integers(1, 4), st.integers(4, 12))
def test_split_words_matches_the_full_length_test(text: str, low: int, high: int) -> None:
    assert tok_words.split_words(text, low, high) == _words_by_filter(text, low, high)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "cc", "d"]), max_size=30), st.integers(1, 5),
       st.sampled_from(["", "subject:"]))
def test_osb_pairs_are_the_distance_tagged_pairs(words: list[str], window: int,
                                                 prefix: str) -> None:
    out: list[str] = []
    tok_words.add_osb(out, words, window, 10**6, prefix)
    expected = [prefix + w for w in words]
    for j in range(1, window):
        expected += [f"{prefix}{a}~{j}~{b}" for a, b in zip(words, words[j:], strict=False)]
    assert out == expected


def _tag_text(match: re.Match[str]) -> str:
    """One tag's replacement, as the ``sub`` callback computed it."""
    name = match.group(2)
    if name is None:
        return ""
    attrs = match.group(3)
    if attrs and not match.group(1) and ("alt" in attrs or "title" in attrs):
        shown = [a or b or c for a, b, c in mime_html._SHOWN_ATTR.findall(attrs)]
        if shown:
            return f" {' '.join(shown)} "
    return " " if name in mime_html._BLOCK_TAGS else ""


_MARKUP = st.lists(st.sampled_from([
    "<p>", "</p>", "<b>", "</b>", "<br/>", "<img alt='x y' src=a>", '<a title="t">', "</a>",
    "<td alt=z>", "</td alt=z>", "<!doctype html>", "<?xml?>", "</ junk>", "<", ">", "text",
    " ", "alt", "title=", "<div title=>", "<x:y>", "<1>", "<span\n>",
]), max_size=20).map("".join)


@settings(derandomize=True, max_examples=500, deadline=None)
@given(_MARKUP)
def test_tag_replacement_by_split_matches_sub(markup: str) -> None:
    assert mime_html._replace_tags(markup) == mime_html._TAG.sub(_tag_text, markup)


_FIELDS = st.lists(st.tuples(
    st.sampled_from(["Content-Type", "content-type", "Content-Disposition",
                     "Content-Transfer-Encoding", "Subject", "X-A", "Content-Type "]),
    st.sampled_from(["text/plain; charset=utf-8", 'application/pdf; name="a.pdf"',
                     "attachment; filename*=utf-8''%C3%A9.txt", "base64", "inline",
                     "text/html; charset*=us-ascii'en'x", "garbage", ""]),
), max_size=12)


def _part_info(node: Message) -> tuple[object, ...]:
    return (node.get_content_type(), node.get_content_charset(),
            node.get("content-transfer-encoding"), node.get_filename(),
            node.get_content_disposition())


@settings(derandomize=True, max_examples=300, deadline=None)
@given(_FIELDS, st.sampled_from(["text/plain", "message/rfc822"]))
def test_part_fields_answer_as_the_part_does(fields: list[tuple[str, str]],
                                             default: str) -> None:
    node = Message()
    for name, value in fields:
        node.set_raw(name, value)
    node.set_default_type(default)
    assert _part_info(mime_text._part_fields(node)) == _part_info(node)


def _received_tokens_as_first_written(value: str) -> list[str]:
    tokens: list[str] = []
    hosts = tokenizer._RECEIVED_HOSTS.match(value)
    if hosts:
        names = [h.strip(".-") for h in hosts.groups() if h]
        for host in (h for h in names if h):
            tokens.append(f"received:{host}")
            if not tok_hosts.NUMERIC_HOST.fullmatch(host):
                tokens.append(f"received:domain:{tok_hosts.registrable_domain(host)}")
    address = tokenizer._RECEIVED_IP.search(value)
    if address:
        ip = address.group(1)
        octets = ip.split(".")
        if ":" in ip:
            tokens.append("received:ipv6")
        elif len(octets) == 4 and all(o.isdigit() for o in octets):
            tokens += (f"received:ip:{'.'.join(octets[:3])}",
                       f"received:ip:{'.'.join(octets[:2])}")
    return tokens


@settings(derandomize=True, max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([
    "from", " ", "(", "[", "]", "ipv6:", "h.example", "-", ".", "1", "10", "0x1", ":", "a",
    "by", "co.uk", "192.0.2.1", "..",
]), max_size=14).map("".join))
def test_received_tokens_match_the_first_version(value: str) -> None:
    assert tokenizer._received_tokens(value) == _received_tokens_as_first_written(value)
