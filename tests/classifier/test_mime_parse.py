"""mime_parse: its fast path builds the very tree the stdlib compat32 parser builds, for
generated header blocks of every shape the feedparser has a rule for, and for any bytes."""

from __future__ import annotations

import email
from email.message import Message
from email.policy import compat32

from hypothesis import event, given, settings
from hypothesis import strategies as st

from postward.classifier.mime_parse import _single_part, parse_message


def _tree(message: Message) -> tuple[object, ...]:
    """Everything the parser sets on a message, recursively (defects by class and args). The
    payload as stored: ``get_payload()`` would show 8-bit bytes through a lossy decode."""
    payload = message._payload
    return (
        list(message.raw_items()),
        message.get_unixfrom(),
        [(type(defect).__name__, defect.args) for defect in message.defects],
        message.get_default_type(),
        message.preamble,
        message.epilogue,
        [_tree(part) for part in payload] if isinstance(payload, list) else payload,
    )


def _same_as_stdlib(data: bytes) -> bool:
    """Assert parse_message equals the stdlib parse; say whether the fast path took it."""
    assert _tree(parse_message(data)) == _tree(email.message_from_bytes(data, policy=compat32))
    return _single_part(data.decode("ascii", "surrogateescape")) is not None


def test_plain_message_takes_the_fast_path() -> None:
    data = (b"From sender@example.org Mon Jan  1 00:00:00 2024\n"
            b"Received: from a.example (b.example [192.0.2.1])\n\tby c.example; Mon\n"
            b"Subject:   spaced\t\n"
            b"X-Empty:\n"
            b"Content-Type: text/plain; charset=utf-8\n\nbody line\r\nmore\rlast")
    assert _same_as_stdlib(data)
    root = parse_message(data)
    assert root.get_unixfrom() == "From sender@example.org Mon Jan  1 00:00:00 2024"
    assert root["subject"] == "spaced\t"
    assert root.get_payload() == "body line\r\nmore\rlast"


def test_multipart_and_message_go_to_the_stdlib_parser() -> None:
    multipart = (b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n')
    rfc822 = b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nbody"
    for data in (multipart, rfc822):
        assert not _same_as_stdlib(data)
        assert parse_message(data).is_multipart()


def test_a_body_line_in_the_header_block_is_a_defect_on_both_paths() -> None:
    data = b"Subject: a\r\nthis is no header\r\nX-Later: b\r\n\r\nbody"
    assert _same_as_stdlib(data)
    assert [type(d).__name__ for d in parse_message(data).defects] == [
        "MissingHeaderBodySeparatorDefect"]


def test_header_lines_with_rules_of_their_own_go_to_the_stdlib_parser() -> None:
    for odd in (b" leading continuation\n", b"Subject: a\nFrom misplaced\nTo: b\n",
                b"Subject: a\n: no name\n", b"Subject: a\nFrom at the end\n"):
        assert not _same_as_stdlib(odd + b"\nbody")


_LINE_ENDS = st.sampled_from(["\r\n", "\n", "\r", ""])
_HEADER_LINES = st.one_of(
    st.tuples(st.sampled_from(["Subject", "From", "To", "X-A", "Content-Type", "content-type",
                               "Content-Transfer-Encoding", "Received", "a b", "From ", ""]),
              st.sampled_from([":", ": ", ":\t ", " :"]),
              st.sampled_from(["v", "", " ", "multipart/mixed; boundary=b", "message/rfc822",
                               "text/html", "a:b", "caf\udce9", "=?utf-8?q?x?="])
              ).map("".join),
    st.sampled_from([" folded", "\tfolded", " ", "From x", "From ", ": x", "no colon",
                     "", "--b", ">From x"]),
    st.text(alphabet=" \t:Fromx-\udce9", max_size=8),
)
_MESSAGES = st.tuples(
    st.lists(st.tuples(_HEADER_LINES, _LINE_ENDS), max_size=10),
    st.sampled_from(["", "\n", "\r\n", "\r", "\n\n", "body"]),
    st.text(alphabet="ab \r\n-:\udcff", max_size=30),
).map(lambda parts: "".join(line + end for line, end in parts[0]) + parts[1] + parts[2])


@settings(derandomize=True, max_examples=500, deadline=None)
@given(_MESSAGES)
def test_generated_header_blocks_parse_as_the_stdlib_parses_them(text: str) -> None:
    fast = _same_as_stdlib(text.encode("utf-8", "surrogateescape"))
    event("fast path" if fast else "stdlib parser")
    # Without "\r" the fast path uses its patterns for "\n"-only text.
    _same_as_stdlib(text.replace("\r", "").encode("utf-8", "surrogateescape"))


@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_parse_as_the_stdlib_parses_them(data: bytes) -> None:
    _same_as_stdlib(data)
