"""parse_request (a whole request at once, with an ASCII fast path) reads every request exactly
as parse_attribute_bytes reads it line by line, postfwd's way."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from postward.policyd.request import parse_request, parse_request_lines
from tests.policyd.requests import postfix_request

_piece = st.sampled_from([b"=", b"a", b"Z", b"_", b"\xc3\xa9", b"\xff", b" ", b"\r", b"x" * 300,
                          b"y" * 511, b"client_address", b"=="])
_line = st.lists(_piece, max_size=6).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(st.lists(_line, max_size=8))
def test_same_as_line_by_line(lines: list[bytes]) -> None:
    block = b"\n".join(lines)
    assert parse_request(block) == parse_request_lines(block)


def test_a_postfix_request_takes_the_fast_path_unchanged() -> None:
    block = "\n".join(f"{k}={v}" for k, v in postfix_request("RCPT").items()).encode()
    attrs, garbage = parse_request(block)
    assert garbage == [] and attrs == parse_request_lines(block)[0]
    assert attrs["request"] == "smtpd_access_policy"


def test_limits_and_garbage_on_the_ascii_path() -> None:
    name, value = "n" * 513, "v" * 600
    block = f"a=1\n\n=x\nnoequals\n{name}=1\nb={value}\na=2".encode()
    attrs, garbage = parse_request(block)
    assert attrs == {"a": "2", "b": "v" * 512}
    assert garbage == [b"=x", b"noequals", f"{name}=1".encode()]
