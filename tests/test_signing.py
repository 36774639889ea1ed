"""Envelopes, canonical bytes, disclosure commitments and batch signatures (pure core)."""

from __future__ import annotations

import os
import random
from typing import Any

import msgspec
import pytest
from cloudevents.core.formats.json import JSONFormat
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import assume, given
from hypothesis import strategies as st

from exchange.core import disclosure, signing
from exchange.core.datasets.base import DatasetSpec
from exchange.core.envelope import Envelope, canonical_bytes
from exchange.core.errors import AuthError, ExchangeError, IntegrityError
from exchange.core.seal import seal
from tests.conftest import SEALED_AT

NODE = "vn.gov.test.registry"


class Person(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    id: str
    name: str
    city: str
    ward: str
    note: str | None = None


SPEC = DatasetSpec(
    name="people", version=1, record_type=Person, key=lambda r: r.id,
    groups={"identity": ("id", "name"), "residence": ("city", "ward"), "extra": ("note",)},
    required=("id", "name"), recommended=("note",))

KEY = Ed25519PrivateKey.generate()
VERIFIER = signing.Verifier({NODE: KEY.public_key()})

text = st.text(max_size=12)
people = st.lists(
    st.fixed_dictionaries({"id": st.from_regex(r"\A[0-9]{12}\Z"), "name": text, "city": text,
                           "ward": text}, optional={"note": text}),
    min_size=1, max_size=9)


def _items(datas: list[dict[str, Any]]) -> list[tuple[str, int, dict[str, Any]]]:
    return [(d["id"], i + 1, d) for i, d in enumerate(datas)]


def _deliver(batch: signing.Batch, granted: set[str], groups: dict[str, tuple[str, ...]]
             ) -> list[tuple[Envelope, dict[str, bytes], dict[str, bytes], signing.BatchProof]]:
    """What a broker would hand a subscriber: projected records with their proofs."""
    commitments, _, paths = VERIFIER.verify_batch(batch, groups)
    out = []
    for i, rec in enumerate(batch.records):
        data, salts, withheld = disclosure.project(rec.event.data, groups, rec.salts,
                                                   commitments[i], granted)
        event = msgspec.structs.replace(rec.event, data=data)
        proof = signing.BatchProof(batch.statement, batch.signature, i, paths[i])
        out.append((event, salts, withheld, proof))
    return out


@given(people)
def test_batch_round_trips_json_and_msgpack(datas: list[dict[str, Any]]) -> None:
    batch = seal(KEY, NODE, SPEC, _items(datas), os.urandom(32), time=SEALED_AT)
    for mod in (msgspec.json, msgspec.msgpack):
        again = mod.decode(mod.encode(batch), type=signing.Batch)
        assert again == batch
        VERIFIER.verify_batch(again, SPEC.groups)


@given(people, st.randoms())
def test_canonical_bytes_stable_under_key_order(datas: list[dict[str, Any]],
                                                rnd: random.Random) -> None:
    salts = {g: bytes([i]) * 16 for i, g in enumerate(SPEC.groups)}
    data = datas[0]
    shuffled = dict(rnd.sample(list(data.items()), len(data)))
    attrs = {"id": "x", "version": 1, "source": NODE, "type": SPEC.type}
    shuffled_attrs = dict(reversed(list(attrs.items())))
    assert canonical_bytes(attrs, disclosure.commitments(data, SPEC.groups, salts)) == \
        canonical_bytes(shuffled_attrs, disclosure.commitments(shuffled, SPEC.groups, salts))


@given(people)
def test_commitments_of_a_record_are_each_groups_commit(datas: list[dict[str, Any]]) -> None:
    # the one-pass hot path gives, group by group, what commit() gives (a projected record's
    # verification recomputes withheld-or-not groups with commit())
    salts = {g: os.urandom(16) for g in SPEC.groups}
    for data in datas:
        assert disclosure.commitments(data, SPEC.groups, salts) == {
            g: disclosure.commit(salts[g], g, data, fields) for g, fields in SPEC.groups.items()}


def test_envelope_round_trips_through_cloudevents_sdk() -> None:
    batch = seal(KEY, NODE, SPEC, _items([{"id": "001200000001", "name": "Nguyễn Văn A",
                                                     "city": "01", "ward": "00004"}]),
                         os.urandom(32), time=SEALED_AT)
    event = batch.records[0].event
    fmt = JSONFormat()
    ce = fmt.read(None, msgspec.json.encode(event))
    assert ce.get_type() == "vn.exchange.people.v1"
    assert ce.get_extension("version") == 1
    back = msgspec.json.decode(fmt.write(ce), type=Envelope)
    assert back == event


@given(people, st.sets(st.sampled_from(sorted(SPEC.groups))))
def test_projected_records_verify_and_reveal_only_granted(datas: list[dict[str, Any]],
                                                          granted: set[str]) -> None:
    batch = seal(KEY, NODE, SPEC, _items(datas), os.urandom(32), time=SEALED_AT)
    fresh = signing.Verifier({NODE: KEY.public_key()})
    for event, salts, withheld, proof in _deliver(batch, granted, dict(SPEC.groups)):
        fresh.verify_record(event, SPEC.groups, salts, withheld, proof)
        assert set(withheld) == set(SPEC.groups) - granted
        allowed = {f for g in granted for f in SPEC.groups[g]}
        assert set(event.data) <= allowed
    # one signature check for the whole batch, however many records were verified
    assert fresh.verifications == 1


@given(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=8, unique=True),
       st.data())
def test_random_groupings_verify(fields: list[str], data: st.DataObject) -> None:
    n_groups = data.draw(st.integers(1, len(fields)))
    assignment = [data.draw(st.integers(0, n_groups - 1)) for _ in fields]
    groups = {f"g{i}": tuple(f for f, a in zip(fields, assignment, strict=True) if a == i)
              for i in range(n_groups)}
    # integers within ±(2**53 - 1): the canonical encoding (RFC 8785) holds no others
    safe = st.integers(-(2**53 - 1), 2**53 - 1)
    record = {f: data.draw(st.one_of(safe, text, st.none())) for f in fields}
    spec = DatasetSpec(name="people", version=1, record_type=Person, key=lambda r: "k",
                       groups=groups, required=(), recommended=())
    batch = seal(KEY, NODE, spec, [("k", 1, record)], os.urandom(32), time=SEALED_AT)
    granted = data.draw(st.sets(st.sampled_from(sorted(groups))))
    ((event, salts, withheld, proof),) = _deliver(batch, granted, groups)
    VERIFIER.verify_record(event, groups, salts, withheld, proof)
    visible = {f: v for f, v in record.items() if any(f in groups[g] for g in granted)}
    assert event.data == visible


def _flip(value: Any, bit: int) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value ^ (1 << (bit % 53))
    if isinstance(value, bytes):
        b = bytearray(value)
        b[(bit // 8) % len(b)] ^= 1 << (bit % 8)
        return bytes(b)
    if isinstance(value, str):
        raw = bytearray(value.encode())
        if not raw:
            return value + "\x00"
        raw[(bit // 8) % len(raw)] ^= 1 << (bit % 8)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return value + "\x01"
    raise AssertionError(type(value))


def _leaves(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _leaves(v, (*path, k))]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _leaves(v, (*path, i))]
    return [path] if obj is not None else []


class Delivered(msgspec.Struct):
    event: Envelope
    salts: dict[str, bytes]
    withheld: dict[str, bytes]
    proof: signing.BatchProof


@given(people, st.sets(st.sampled_from(sorted(SPEC.groups))), st.data())
def test_any_single_bit_change_fails(datas: list[dict[str, Any]], granted: set[str],
                                     data: st.DataObject) -> None:
    """A one-bit change anywhere — a field, an attribute, a salt, a commitment, the path, the
    statement or the signature — must fail verification."""
    batch = seal(KEY, NODE, SPEC, _items(datas), os.urandom(32), time=SEALED_AT)
    delivered = _deliver(batch, granted, dict(SPEC.groups))
    event, salts, withheld, proof = delivered[data.draw(st.integers(0, len(delivered) - 1))]
    tree = msgspec.to_builtins(Delivered(event, salts, withheld, proof), builtin_types=(bytes,))
    leaves = _leaves(tree)
    where = data.draw(st.sampled_from(leaves))
    bit = data.draw(st.integers(0, 511))
    node: Any = tree
    for k in where[:-1]:
        node = node[k]
    before = node[where[-1]]
    node[where[-1]] = _flip(before, bit)
    assume(node[where[-1]] != before)
    with pytest.raises((ExchangeError, msgspec.ValidationError)):
        bad = msgspec.convert(tree, Delivered, builtin_types=(bytes,))
        VERIFIER.verify_record(bad.event, SPEC.groups, bad.salts, bad.withheld, bad.proof)


def _one(granted: set[str]) -> tuple[signing.Batch, list[Any]]:
    datas = [{"id": "079203001234", "name": "Trần Thị Bích", "city": "79", "ward": "26734"},
             {"id": "001090004321", "name": "Lê Văn Hòa", "city": "01", "ward": "00004"}]
    batch = seal(KEY, NODE, SPEC, _items(datas), os.urandom(32), time=SEALED_AT)
    return batch, _deliver(batch, granted, dict(SPEC.groups))


def test_tampered_projection_fails() -> None:
    _, [(event, salts, withheld, proof), (_event2, salts2, withheld2, _)] = _one({"residence"})
    VERIFIER.verify_record(event, SPEC.groups, salts, withheld, proof)
    cases = {
        "altered field": (msgspec.structs.replace(event, data={**event.data, "ward": "00008"}),
                          salts, withheld),
        "added field": (msgspec.structs.replace(event, data={**event.data, "name": "X"}),
                        salts, withheld),
        "removed field": (msgspec.structs.replace(event, data={"city": event.data["city"]}),
                          salts, withheld),
        "swapped commitment": (event, salts, {**withheld, "identity": withheld2["identity"]}),
        "another record's salt": (event, {"residence": salts2["residence"]}, withheld),
        "claimed group": (msgspec.structs.replace(
            event, data={**event.data, "id": "079203001234", "name": "Trần Thị Bích"}),
            {**salts, "identity": os.urandom(16)},
            {g: c for g, c in withheld.items() if g != "identity"}),
        "both disclosed and withheld": (event, {**salts, "identity": os.urandom(16)}, withheld),
    }
    for name, (ev, sl, wh) in cases.items():
        with pytest.raises(IntegrityError):
            VERIFIER.verify_record(ev, SPEC.groups, sl, wh, proof)
            pytest.fail(f"{name} verified")


def test_tampered_full_record_fails() -> None:
    # every group disclosed: the verifier's one-pass path refuses the same tampering
    _, [(event, salts, withheld, proof), (_, salts2, _, _)] = _one(set(SPEC.groups))
    assert not withheld
    VERIFIER.verify_record(event, SPEC.groups, salts, withheld, proof)
    cases = {
        "altered field": (msgspec.structs.replace(event, data={**event.data, "ward": "00008"}),
                          salts),
        "field outside every group": (
            msgspec.structs.replace(event, data={**event.data, "nickname": "X"}), salts),
        "removed field": (msgspec.structs.replace(
            event, data={k: v for k, v in event.data.items() if k != "name"}), salts),
        "another record's salt": (event, {**salts, "identity": salts2["identity"]}),
        "short salt": (event, {**salts, "extra": salts["extra"][:8]}),
    }
    for name, (ev, sl) in cases.items():
        with pytest.raises(IntegrityError):
            VERIFIER.verify_record(ev, SPEC.groups, sl, {}, proof)
            pytest.fail(f"{name} verified")


def test_other_nodes_key_and_forged_signature_fail() -> None:
    batch, [(event, salts, withheld, proof), _] = _one(set(SPEC.groups))
    other = Ed25519PrivateKey.generate()
    forged = signing.BatchProof(proof.statement, other.sign(signing.statement_bytes(
        proof.statement)), proof.index, proof.path)
    with pytest.raises(IntegrityError):
        signing.Verifier({NODE: KEY.public_key()}).verify_record(
            event, SPEC.groups, salts, withheld, forged)
    # a batch signed by another node's key under this node's name is refused as a whole
    resigned = signing.Batch(batch.statement, forged.signature, batch.records)
    with pytest.raises(IntegrityError):
        signing.Verifier({NODE: KEY.public_key()}).verify_batch(resigned, SPEC.groups)


def test_a_received_record_verifies_on_msgspec_bytes_but_never_a_value_they_share() -> None:
    """A subscriber encodes a record whose type vouches for it with msgspec, unchecked
    (``canonical.received``); the one pair of values msgspec writes alike, null and NaN (or
    an infinity), must not let an altered record verify, and a value outside the type's
    domain fails as altered, as with the careful encoding."""
    import datetime as dt

    from exchange.core import canonical, datasets, merkle
    from exchange.core.envelope import digest as env_digest
    from exchange.core.signing import BatchProof, Verifier
    from exchange.sim.generate import Generator

    spec = datasets.get("population", 1)
    shape = canonical.shape(spec.record_type)
    assert shape is not None and shape.numbers == ()
    key = Ed25519PrivateKey.generate()
    people = Generator(3, today=dt.date(2026, 11, 22)).population(3)
    people[0]["death_date"] = None  # a null the publisher signed
    batch = seal(key, "vn.gov.mps.population", spec,
                 [(p["id"], 1, p) for p in people], b"\x05" * 32, time=SEALED_AT)
    verifier = Verifier({"vn.gov.mps.population": key.public_key()})

    digests = [env_digest(r.event.attributes(), disclosure.commitments(
        r.event.data, spec.groups, r.salts)) for r in batch.records]
    _, paths = merkle.inclusion_paths([merkle.leaf_hash(d) for d in digests])

    def check(i: int, data: dict[str, Any]) -> None:
        rec = batch.records[i]
        event = msgspec.structs.replace(rec.event, data=data)
        verifier.verify_record(event, spec.groups, rec.salts, {},
                               BatchProof(batch.statement, batch.signature, i, paths[i]),
                               shape=shape)

    for i, p in enumerate(people):
        check(i, p)  # as signed: verifies on the fast path
    for forged in (float("nan"), float("inf")):
        with pytest.raises(IntegrityError):
            check(0, {**people[0], "death_date": forged})
    with pytest.raises(IntegrityError):
        check(1, {**people[1], "full_name": 1.5})  # outside the type: fails as altered


def test_a_statement_remembered_is_judged_as_one_verified() -> None:
    """A gate worker verified it: after a rotation a retry of the batch gets the answer the
    broker would give had it verified the statement itself (its cache, not the history)."""
    from exchange.core.signing import Statement, Verifier, key_id, statement_bytes

    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys = {"n": old.public_key()}

    def history(node: str, kid: str, time: str | None) -> Any:
        return old.public_key() if kid == key_id(old.public_key()) else None

    statement = Statement(node="n", dataset="population", root=b"\0" * 32, size=1,
                   time="2026-01-01T00:00:00Z", kid=key_id(old.public_key()))
    sig = old.sign(statement_bytes(statement))
    verified, remembered, cold = (Verifier(keys, history=history, current_only=True)
                                  for _ in range(3))
    verified.verify_statement(statement, sig)
    remembered.remember(statement, sig)
    keys["n"] = new.public_key()  # rotated
    verified.verify_statement(statement, sig)
    remembered.verify_statement(statement, sig)
    assert remembered.verifications == 0
    with pytest.raises(AuthError) as err:
        cold.verify_statement(statement, sig)
    assert err.value.code == "key_retired"
