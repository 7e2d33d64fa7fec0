"""The fast header hashing gives exactly dkimpy's hash_headers result."""

from __future__ import annotations

import hashlib

import dkim
from dkim.canonicalization import CanonicalizationPolicy, Relaxed, unfold_header_value
from hypothesis import given, settings
from hypothesis import strategies as st

from postward.dkim.header_hash import hash_signed_fields, relaxed_headers, without_b
from postward.dkim.headers import unfold

_WS = st.sampled_from([b"", b" ", b"\t", b"\r\n ", b"\r\n\t", b"  "])
_B64 = st.text("ABCab019+/=", min_size=0, max_size=40).map(str.encode)


@settings(max_examples=300, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from([b"v", b"a", b"bh", b"d", b"b", b"h"]), _WS, _B64,
                          _WS), min_size=1, max_size=6), st.booleans())
def test_b_is_emptied_as_dkimpy_does(tags, final_newline: bool) -> None:  # type: ignore[no-untyped-def]
    seen, parts = set(), []
    for name, ws1, val, ws2 in tags:
        if name in seen:
            continue
        seen.add(name)
        parts.append(b" " + name + b"=" + ws1 + val + ws2)
    value = b";".join(parts) + (b"\r\n" if final_newline else b"")
    assert without_b(value) == dkim.RE_BTAG.sub(rb"\1", value)


FIELDS = [(b"Received", b" from a\r\n"), (b"From", b" Alice <a@example.test>\r\n"),
          (b"To", b"  bob@x.test,\r\n\tcarol@x.test \r\n"), (b"Subject", b" hi  there\r\n"),
          (b"B ", b" Y\r\n"), (b"To", b" second@x.test\r\n")]
SIG = (b"DKIM-Signature", b" v=1; a=rsa-sha256; d=example.test; s=s;\r\n h=from:to:subject:to:b;"
       b" bh=abc=; b=AbCd\r\n EfGh==\r\n")


def test_same_digest_as_dkimpy_hash_headers() -> None:
    include = [b"from", b"to", b"subject", b"to", b"b", b"x"]
    for c in (b"relaxed/relaxed", b"simple/simple"):
        policy = CanonicalizationPolicy.from_c_value(c)
        ours, theirs = hashlib.sha256(), hashlib.sha256()
        # "B : Y" (obsolete syntax): dkimpy's simple form does not find field "B" (it compares
        # "b " with "b"); its relaxed form does, as we do in both (the field's name is "B").
        fields = FIELDS if c == b"relaxed/relaxed" else [f for f in FIELDS if f[0] != b"B "]
        hash_signed_fields(ours, policy, fields, include, SIG)
        dkim.hash_headers(theirs, policy, policy.canonicalize_headers(fields), include, SIG, {})
        assert ours.digest() == theirs.digest(), c


# Bytes that matter to folding and whitespace, plus ordinary ones.
_FIELD_BYTES = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b" ", b"\t", b"  ", b"\x0b",
                                         b"a", b"B", b";", b"=", b"b", b":"]),
                        max_size=24).map(b"".join)


@settings(max_examples=500, derandomize=True)
@given(_FIELD_BYTES)
def test_unfold_is_dkimpys_regex(value: bytes) -> None:
    assert unfold(value) == unfold_header_value(value)


@settings(max_examples=500, derandomize=True)
@given(st.lists(st.tuples(_FIELD_BYTES, _FIELD_BYTES), max_size=4))
def test_relaxed_headers_are_dkimpys(fields: list[tuple[bytes, bytes]]) -> None:
    assert relaxed_headers(fields) == Relaxed.canonicalize_headers(fields)


# Tag lists as validate_signature_fields lets them through (b= is base64 and FWS), with any
# folding: CRLF or bare LF, spaces or tabs, around names, '=' and values.
_FWS_ANY = st.lists(st.sampled_from([b" ", b"\t", b"\r\n ", b"\n\t", b"\r\n\t ", b"\n "]),
                    max_size=3).map(b"".join)


# Base64 with its padding; no lowercase b, so that no value (after FWS) reads "b=": dkimpy's
# RE_BTAG would empty that as if it were the b= tag, postward only the tag itself.
_B64_PADDED = st.tuples(st.text("ABCa019+/", max_size=40),
                        st.sampled_from(["", "=", "=="])).map(lambda t: (t[0] + t[1]).encode())


@settings(max_examples=1000, derandomize=True)
@given(st.lists(st.tuples(_FWS_ANY, st.sampled_from([b"v", b"a", b"bh", b"d", b"b", b"h"]),
                          _FWS_ANY, _FWS_ANY, _B64_PADDED, _FWS_ANY), min_size=1, max_size=6),
       st.sampled_from([b"", b"\r\n", b"\n", b";", b";\r\n"]))
def test_b_is_emptied_as_dkimpy_does_with_any_folding(tags, end: bytes) -> None:  # type: ignore[no-untyped-def]
    seen, parts = set(), []
    for ws0, name, ws1, ws2, val, ws3 in tags:
        if name not in seen:
            seen.add(name)
            parts.append(ws0 + name + ws1 + b"=" + ws2 + val + ws3)
    value = b" " + b";".join(parts) + end   # the space after the colon (SMFIP_HDR_LEADSPC)
    assert without_b(value) == dkim.RE_BTAG.sub(rb"\1", value)
