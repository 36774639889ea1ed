"""The broker's ingest fast paths give exactly what the careful paths give (pure).

- ``canonical.shape``: a value a record type accepts is in msgspec's canonical domain but for
  the numbers of its ``numbers`` fields, so the gate may encode it unchecked;
- ``gate``: the unchecked pass and the careful pass agree, and a record outside the domain
  sends the batch down the careful pass;
- ``wire.decode_batch``: attribute patterns checked after decoding, the same value or error;
- ``merkle.CompactRange.extend``: the nodes ``append`` reports, in one loop.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from typing import Any

import msgspec
import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.core import canonical, datasets, gate, merkle
from exchange.core.access import Limits
from exchange.core.envelope import PRINTABLE
from exchange.core.errors import ExchangeError
from exchange.core.seal import seal
from exchange.core.signing import Batch, BatchIn, Verifier
from exchange.core.wire import _BatchLax, decode_batch, printable
from exchange.sim.generate import Generator

TODAY = dt.date(2026, 11, 22)
CTX = datasets.RuleContext(today=TODAY)
TIME = "2026-11-22T08:00:00Z"
KEY = Ed25519PrivateKey.generate()
OWNERS = {"population": "vn.gov.mps.population", "tax": "vn.gov.mof.tax",
          "land": "vn.gov.mae.land", "vehicle": "vn.gov.mps.vehicle"}
VERIFIER = Verifier(dict.fromkeys(OWNERS.values(), KEY.public_key()))


def records(dataset: str, n: int = 40) -> list[dict[str, Any]]:
    g = Generator(5, today=TODAY)
    people = g.population(max(n, 30))
    if dataset == "population":
        return people[:n]
    if dataset == "tax":
        return g.tax(n, people)
    return g.land(n, people) if dataset == "land" else g.vehicle(n, people)


def sealed(dataset: str, data: list[dict[str, Any]]) -> Batch:
    spec = datasets.get(dataset)
    items = []
    for d in data:
        try:
            key = spec.key(msgspec.convert(d, spec.record_type))
        except msgspec.ValidationError:
            key = "x"
        items.append((key, 1, d))
    return seal(KEY, OWNERS[dataset], spec, items, os.urandom(32), time=TIME)


def both(batch: Batch, dataset: str) -> tuple[gate.Checked | None, gate.Checked]:
    spec = datasets.get(dataset)
    shape = canonical.shape(spec.record_type)
    assert shape is not None
    args = (batch, OWNERS[dataset], spec, VERIFIER, Limits(), CTX, gate.Hooks(None, None), None)
    try:
        fast = gate._check_records(*args, shape)
    except ExchangeError:
        fast = None
    return fast, gate._check_records(*args, None)  # type: ignore[return-value]


def same(a: gate.Checked, b: gate.Checked) -> None:
    # the stored body holds the envelope, salts, commitments, audit path and completeness
    assert a.candidates == b.candidates
    assert a.rejected == b.rejected


# -- canonical.shape ---------------------------------------------------------------------------


def test_the_national_datasets_have_shapes() -> None:
    for name in ("population", "tax", "land", "vehicle"):
        for spec in datasets.versions(name):
            shape = canonical.shape(spec.record_type)
            assert shape is not None, spec.type
            assert shape.numbers == (("area_m2",) if name == "land" else ())
            assert shape.depth <= 2 and shape.fields == len(msgspec.structs.fields(
                spec.record_type))


class Loose(msgspec.Struct):
    a: str


class FreeDict(msgspec.Struct, forbid_unknown_fields=True):
    a: dict[str, Any]


class Nested(msgspec.Struct, forbid_unknown_fields=True):
    x: float


class Outer(msgspec.Struct, forbid_unknown_fields=True):
    inner: Nested


def test_free_form_types_have_no_shape() -> None:
    assert [canonical.shape(t) for t in (Loose, FreeDict, Outer)] == [None, None, None]


@pytest.mark.parametrize("dataset", ["population", "tax", "land", "vehicle"])
def test_accepted_values_are_msgspecs_own_rfc8785(dataset: str) -> None:
    spec = datasets.get(dataset)
    shape = canonical.shape(spec.record_type)
    assert shape is not None
    for d in records(dataset):
        msgspec.convert(d, spec.record_type)
        assert canonical.encode_checked(d) == rfc8785.dumps(d) or not shape.plain(d)
        assert shape.plain(d) == canonical._plain(d)


@given(st.floats(min_value=0.1, max_value=1e9, allow_nan=False))
def test_a_parcel_area_is_plain_iff_msgspec_writes_it_canonically(area: float) -> None:
    shape = canonical.shape(datasets.get("land").record_type)
    assert shape is not None
    d = {**records("land", 1)[0], "area_m2": area}
    assert shape.plain(d) == canonical._plain(d)
    if shape.plain(d):
        assert canonical.encode_checked(d) == rfc8785.dumps(d)


# -- the gate's two passes -------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["population", "tax", "land", "vehicle"])
def test_fast_and_careful_passes_agree(dataset: str) -> None:
    data = records(dataset, 30)
    data[3] = {**data[3], "as_of": "2026-13-01"}  # refused by the schema
    data[5] = {**data[5], "unknown": "x"}
    fast, careful = both(sealed(dataset, data), dataset)
    assert fast is not None
    same(fast, careful)
    assert len(careful.candidates) == 28


def test_integral_area_is_encoded_carefully_on_the_fast_pass() -> None:
    data = records("land", 10)
    data[2] = {**data[2], "area_m2": 250.0}  # RFC 8785: 250, msgspec: 250.0
    data[4] = {**data[4], "area_m2": 1234.5}
    fast, careful = both(sealed("land", data), "land")
    assert fast is not None
    same(fast, careful)
    assert len(fast.candidates) == 10


@pytest.mark.parametrize("odd", [100.0, 2**60, {"\U0001f600": 1, "\ufb33": 2}, 1e-7])
def test_a_refused_record_outside_the_domain_takes_the_careful_pass(odd: Any) -> None:
    data = records("population", 6)
    data[1] = {**data[1], "religion": odd}  # not text: refused by the schema
    batch = sealed("population", data) if odd != 2**60 else None
    if batch is None:  # no canonical form: sealing refuses it, so sign msgspec's bytes
        with pytest.raises(ValueError):
            sealed("population", data)
        return
    fast, careful = both(batch, "population")
    assert fast is None  # the careful pass decides
    checked = gate.check(batch, node=OWNERS["population"], spec=datasets.get("population"),
                         verifier=VERIFIER, limits=Limits(), ctx=CTX)
    same(checked, careful)
    assert [v.index for v in checked.rejected] == [1]


def test_limits_come_before_the_schema_on_the_fast_pass() -> None:
    data = records("population", 4)
    deep: dict[str, Any] = {"z": "deepest"}
    for _ in range(8):
        deep = {"n": deep}
    data[0] = {**data[0], "permanent_address": deep}
    data[1] = {**data[1], **{f"x{i}": "y" for i in range(70)}}
    batch = sealed("population", data)
    fast, careful = both(batch, "population")
    assert fast is not None
    same(fast, careful)
    assert [(v.index, v.code) for v in careful.rejected] == [(0, "too_deep"),
                                                            (1, "too_many_fields")]
    limits = Limits(max_depth=2)
    checked = gate.check(batch, node=OWNERS["population"], spec=datasets.get("population"),
                         verifier=VERIFIER, limits=limits, ctx=CTX)
    assert {v.code for v in checked.rejected if v.index in (2, 3)} == {"too_deep"}


# -- wire ------------------------------------------------------------------------------------


@settings(max_examples=3000)
@given(st.text(min_size=1, max_size=12))
def test_printable_is_the_pattern(s: str) -> None:
    assert printable(s) == (re.compile(PRINTABLE).search(s) is not None)


@pytest.mark.parametrize("binary", [True, False])
def test_lax_decode_gives_the_strict_value(binary: bool) -> None:
    batch = sealed("population", records("population", 5))
    body = msgspec.msgpack.encode(batch) if binary else msgspec.json.encode(batch)
    kind = "application/msgpack" if binary else "application/json"
    got = decode_batch(body, kind)
    assert isinstance(got, _BatchLax)
    assert msgspec.to_builtins(got) == msgspec.to_builtins(batch)
    assert msgspec.msgpack.encode(got.records[0].event) == msgspec.msgpack.encode(
        batch.records[0].event)


@pytest.mark.parametrize(("field", "value"), [
    ("time", "2026-11-22 08:00:00Z"), ("id", "a\tb"), ("subject", "   "),
    ("source", "Not.A.Node"), ("type", "vn.exchange.population.v01"), ("specversion", "1.1"),
    ("id", 5), ("subject", "\u202eevil")])
def test_a_broken_attribute_gets_the_strict_error(field: str, value: Any) -> None:
    batch = msgspec.to_builtins(sealed("population", records("population", 3)))
    batch["records"][2]["event"][field] = value
    batch["records"][1]["event"]["version"] = "x"  # a later error must not be reported first
    for kind, body in (("application/msgpack", msgspec.msgpack.encode(batch)),
                       ("application/json", msgspec.json.encode(batch))):
        with pytest.raises(ExchangeError) as err:
            decode_batch(body, kind)
        decoder = (msgspec.msgpack.Decoder if kind.endswith("msgpack") else msgspec.json.Decoder)
        with pytest.raises(msgspec.ValidationError) as strict:
            decoder(BatchIn).decode(body)
        assert str(strict.value) in err.value.message


# -- merkle ----------------------------------------------------------------------------------


@pytest.mark.parametrize("start", [0, 1, 5, 8, 13])
@pytest.mark.parametrize("count", [0, 1, 7, 100])
def test_extend_reports_what_append_does(start: int, count: int) -> None:
    leaves = [os.urandom(32) for _ in range(start + count)]
    seen: list[tuple[int, int, bytes]] = []
    one = merkle.CompactRange()
    for leaf in leaves[:start]:
        one.append(leaf)
    many = merkle.CompactRange(one.size, one.frontier)
    one = merkle.CompactRange(one.size, one.frontier,
                              on_node=lambda lvl, i, h: seen.append((lvl, i, h)))
    for leaf in leaves[start:]:
        one.append(leaf)
    assert many.extend(leaves[start:]) == seen
    assert (many.size, many.root()) == (one.size, one.root())
