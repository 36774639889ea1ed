"""Canonical bytes are RFC 8785 (JCS): the fast encoder agrees with the reference package on
every JSON value of the domain, and refuses what has no canonical form."""

from __future__ import annotations

import base64
import math
import random
import struct
from typing import Any

import msgspec
import pytest
import rfc8785
from hypothesis import example, given
from hypothesis import strategies as st

from exchange.core import canonical
from exchange.core.signing import Statement

SAFE = canonical.MAX_INT

# text with what tends to differ: control characters, quotes, backslashes, U+2028, astral
# characters (which sort differently by UTF-16 code unit), but no lone surrogates
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
keys = st.one_of(text, st.sampled_from(["a", "é", "\U0001f600", "\ufb33", "\u20ac", "\r", "1",
                                         "10", "", "\x7f", "\u2028"]))
floats = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-SAFE, SAFE), floats, text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(keys, inner, max_size=5)),
    max_leaves=30)


@given(json_values)
@example({"\U0001f600": 1, "\ufb33": 2, "\u20ac": 3, "a": 4})  # RFC 8785 §3.2.3's point
@example([100.0, -0.0, 1e16, 1e21, 1e-7, 1e-6, 4.8e-6, 1e-5, 9999999999999998.0, 5e-324])
@example({"n": 1.7976931348623157e308, "m": -2.2250738585072014e-308})
def test_encode_is_rfc8785(value: Any) -> None:
    assert canonical.encode(value) == rfc8785.dumps(value)


@given(floats)
def test_numbers_are_ecmascript(x: float) -> None:
    assert canonical.number(x).encode() == rfc8785.dumps(x)


def test_fast_float_range_is_msgspecs_own_layout() -> None:
    """``_plain`` lets msgspec write fractional floats in [1e-5, 1e16) itself: it must write
    them as RFC 8785 does (a million random doubles, and the edges)."""
    rnd = random.Random(8785)
    enc = msgspec.json.Encoder()
    checked = 0
    samples = [struct.unpack("<d", rnd.getrandbits(64).to_bytes(8, "little"))[0]
               for _ in range(200_000)]
    samples += [rnd.uniform(-1e6, 1e6) for _ in range(50_000)]
    samples += [rnd.uniform(1e-5, 1e-4) for _ in range(50_000)]
    samples += [rnd.uniform(1e14, 1e16) for _ in range(50_000)]
    samples += [math.nextafter(1e-5, 1), math.nextafter(1e16, 0), 1.5e-5, 0.1 + 0.2]
    for x in samples:
        if math.isfinite(x) and canonical._plain(x):
            checked += 1
            assert enc.encode(x) == rfc8785.dumps(x), x
    assert checked > 100_000


def test_the_differences_from_msgspec_it_fixes() -> None:
    enc = msgspec.json.Encoder(order="sorted")
    for value, jcs in [(100.0, b"100"), (-0.0, b"0"), (1e16, b"10000000000000000"),
                       (4.8e-6, b"0.0000048"), (1e20, b"100000000000000000000"),
                       ({"\U0001f600": 1, "\ufb33": 2},
                        # UTF-16: U+1F600 is D83D DE00, before FB33
                        '{"\U0001f600":1,"\ufb33":2}'.encode())]:
        assert enc.encode(value) != jcs
        assert canonical.encode(value) == jcs


@given(st.binary(max_size=40))
def test_bytes_are_standard_base64_strings(raw: bytes) -> None:
    assert canonical.encode({"b": raw}) == rfc8785.dumps({"b": base64.b64encode(raw).decode()})


def test_structs_encode_as_their_fields() -> None:
    st_ = Statement(node="vn.gov.a", dataset="population", root=b"\x01" * 32, size=2,
                    time="2026-01-01T00:00:00Z")
    assert canonical.encode(st_) == rfc8785.dumps(
        {"node": "vn.gov.a", "dataset": "population",
         "root": base64.b64encode(b"\x01" * 32).decode(), "size": 2,
         "time": "2026-01-01T00:00:00Z"})  # kid omitted when None (omit_defaults)


@pytest.mark.parametrize("value", [
    math.nan, math.inf, -math.inf, {"a": [math.nan]}, 2**53, -(2**53), {"v": 2**64},
    [10**30], {"x": {"y": math.inf}}, "\ud800", {"\ud800": 1}])
def test_values_with_no_canonical_form_are_refused(value: Any) -> None:
    with pytest.raises(ValueError):
        canonical.encode(value)


@pytest.mark.parametrize("value", [{1: "a"}, {"a": {2: 3}}, {"a": object()}, {"s": {1, 2}}])
def test_what_json_cannot_hold_is_refused(value: Any) -> None:
    with pytest.raises(TypeError):
        canonical.encode(value)


@given(json_values)
def test_encoder_for_parts_agrees(value: Any) -> None:
    if isinstance(value, dict):
        enc = canonical.encoder(value)
        for k, v in value.items():
            assert enc({k: v}) == rfc8785.dumps({k: v})
