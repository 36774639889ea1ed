"""The broker's per-batch gate over real signed batches: check, then decide versions (pure)."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.core import datasets, gate
from exchange.core.access import Limits
from exchange.core.errors import AuthError, ExchangeError, IntegrityError
from exchange.core.seal import seal
from exchange.core.signing import Batch, Verifier
from exchange.core.wire import Duplicate
from exchange.sim.generate import Generator, fault

NODE = "vn.gov.mps.population"
TODAY = dt.date(2026, 11, 22)
CTX = datasets.RuleContext(today=TODAY)
SPEC = datasets.get("population")
KEY = Ed25519PrivateKey.generate()
VERIFIER = Verifier({NODE: KEY.public_key()})
LIMITS = Limits()
TIME = "2026-11-22T08:00:00Z"

Item = tuple[str, int, dict[str, Any]]


def people(n: int, seed: int = 7) -> list[dict[str, Any]]:
    return Generator(seed, today=TODAY).population(n)


def items(records: list[dict[str, Any]], version: int = 1) -> list[Item]:
    return [(r["id"], version, r) for r in records]


def sealed(its: list[Item], *, seed: bytes = b"s" * 32, key: Ed25519PrivateKey = KEY,
           node: str = NODE, time: str = TIME) -> Batch:
    return seal(key, node, SPEC, its, seed, time=time)


def check(batch: Batch, *, node: str = NODE, spec: datasets.DatasetSpec = SPEC,
          limits: Limits = LIMITS) -> gate.Checked:
    return gate.check(batch, node=node, spec=spec, verifier=VERIFIER, limits=limits, ctx=CTX)


def content(data: dict[str, Any]) -> bytes:
    return hashlib.sha256(msgspec.json.encode(data, order="sorted")).digest()


# -- check -----------------------------------------------------------------------------------


def test_valid_records_are_candidates() -> None:
    records = people(5)
    batch = sealed(items(records))
    checked = check(batch)
    assert checked.rejected == []
    assert [c.index for c in checked.candidates] == list(range(5))
    assert [c.key for c in checked.candidates] == [r["id"] for r in records]
    for c, r in zip(checked.candidates, records, strict=True):
        assert c.version == 1
        body = msgspec.msgpack.decode(c.body, type=gate.StoredBody)
        assert body.event == batch.records[c.index].event
        assert body.salts == batch.records[c.index].salts
        assert set(body.commitments) == set(SPEC.groups)
        assert len(c.digest) == 32
        assert c.content == content(r)
    # one batch, one signature check
    again = check(batch)
    assert [c.digest for c in again.candidates] == [c.digest for c in checked.candidates]


def test_every_generated_dataset_passes_the_gate() -> None:
    gen = Generator(3, today=TODAY)
    pop = gen.population(30)
    tax = gen.tax(10, pop)
    by_dataset = {"population": pop, "tax": tax, "land": gen.land(10, pop, tax),
                  "vehicle": gen.vehicle(10, pop, tax)}
    for name, records in by_dataset.items():
        spec = datasets.get(name)
        node = f"vn.gov.test.{name}"
        key = Ed25519PrivateKey.generate()
        its = [(spec.key(spec.validate(r, CTX).record), 1, r) for r in records]
        batch = seal(key, node, spec, its, b"x" * 32, time=TIME)
        checked = gate.check(batch, node=node, spec=spec, verifier=Verifier({node: key
                                                                                .public_key()}),
                             limits=LIMITS, ctx=CTX)
        assert checked.rejected == [], name
        assert len(checked.candidates) == len(records)


def test_batch_signed_by_another_key_is_refused_whole() -> None:
    batch = sealed(items(people(3)), key=Ed25519PrivateKey.generate())
    with pytest.raises(IntegrityError) as info:
        check(batch)
    assert info.value.code == "signature_invalid"


def test_altered_record_is_refused_whole() -> None:
    batch = sealed(items(people(3)))
    rec = batch.records[1]
    altered = msgspec.structs.replace(rec, event=msgspec.structs.replace(
        rec.event, data={**rec.event.data, "full_name": "Trần Văn An"}))
    forged = Batch(batch.statement, batch.signature,
                   [batch.records[0], altered, batch.records[2]])
    with pytest.raises(IntegrityError) as info:
        check(forged)
    assert info.value.code == "signature_invalid"


def test_signer_not_enrolled() -> None:
    other = "vn.gov.unknown.node"
    batch = sealed(items(people(1)), node=other)
    with pytest.raises(AuthError) as info:
        check(batch, node=other)
    assert info.value.code == "unknown_signer"


def test_statement_node_must_be_the_connection_node() -> None:
    batch = sealed(items(people(2)))
    with pytest.raises(IntegrityError) as info:
        check(batch, node="vn.gov.mof.tax")
    assert info.value.code == "signer_mismatch"


def test_statement_dataset_must_be_the_target_dataset() -> None:
    batch = sealed(items(people(2)))
    with pytest.raises(IntegrityError) as info:
        check(batch, spec=datasets.get("tax"))
    assert info.value.code == "dataset_mismatch"


def test_batch_too_large() -> None:
    batch = sealed(items(people(3)))
    with pytest.raises(ExchangeError) as info:
        check(batch, limits=Limits(max_batch_records=2))
    assert info.value.code == "batch_too_large"
    assert info.value.status == 413  # the publisher's fault, not the broker's


def test_domain_rule_violation_rejects_that_record_alone() -> None:
    records = people(4)
    bad = fault(records[2], "bad_id")
    its = items(records)
    its[2] = (bad["id"], 1, bad)
    checked = check(sealed(its))
    assert [c.index for c in checked.candidates] == [0, 1, 3]
    assert [(v.index, v.path, v.code) for v in checked.rejected] == [
        (2, "$.id", "id_century_sex_mismatch")]


def test_schema_violation_rejects_that_record_alone() -> None:
    records = people(3)
    bad = fault(records[0], "missing_field")
    its = items(records)
    its[0] = (bad["id"], 1, bad)
    checked = check(sealed(its))
    assert [c.index for c in checked.candidates] == [1, 2]
    assert [(v.index, v.path, v.code) for v in checked.rejected] == [
        (0, "$.birth_date", "missing_field")]


def test_subject_must_be_the_record_key() -> None:
    records = people(3)
    its = items(records)
    its[1] = (records[0]["id"], 1, records[1])  # subject names another citizen
    checked = check(sealed(its))
    assert [c.index for c in checked.candidates] == [0, 2]
    assert [(v.index, v.path, v.code) for v in checked.rejected] == [
        (1, "$.subject", "key_mismatch")]


def test_too_many_fields() -> None:
    records = people(2)
    checked = check(sealed(items(records)), limits=Limits(max_fields=3))
    assert checked.candidates == []
    assert [(v.index, v.code) for v in checked.rejected] == [(0, "too_many_fields"),
                                                           (1, "too_many_fields")]


def test_fields_at_the_limit_pass() -> None:
    records = people(1)
    checked = check(sealed(items(records)), limits=Limits(max_fields=len(records[0])))
    assert len(checked.candidates) == 1


def test_too_deep() -> None:
    # data is level 1, the address object 2, its strings 3
    records = people(2)
    checked = check(sealed(items(records)), limits=Limits(max_depth=2))
    assert checked.candidates == []
    assert {v.code for v in checked.rejected} == {"too_deep"}
    assert [v.index for v in checked.rejected] == [0, 1]
    assert len(check(sealed(items(records)), limits=Limits(max_depth=3)).candidates) == 2


# -- decide ----------------------------------------------------------------------------------


def _current(c: gate.Candidate, seq: int) -> gate.Current:
    return gate.Current(c.version, c.content, seq)


def test_new_key_is_accepted() -> None:
    checked = check(sealed(items(people(3))))
    decided = gate.decide(checked, {})
    assert decided.accepted == checked.candidates
    assert decided.duplicates == []
    assert decided.rejected == []


def test_same_version_same_content_is_a_duplicate_even_resealed() -> None:
    records = people(2)
    first = check(sealed(items(records)))
    stored = {c.key: _current(c, seq) for c, seq in zip(first.candidates, (41, 42),
                                                         strict=True)}
    # a retry: new salts, ids and time, same data
    retry = sealed(items(records), seed=b"r" * 32, time="2026-11-22T09:30:00Z")
    was = msgspec.msgpack.decode(first.candidates[0].body, type=gate.StoredBody)
    assert retry.records[0].event.id != was.event.id
    assert retry.records[0].salts != was.salts
    checked = check(retry)
    assert [c.digest for c in checked.candidates] != [c.digest for c in first.candidates]
    decided = gate.decide(checked, stored)
    assert decided.accepted == []
    assert decided.duplicates == [Duplicate(0, 41), Duplicate(1, 42)]
    assert decided.rejected == []


def test_same_version_other_content_is_a_conflict() -> None:
    records = people(2)
    stored = {c.key: _current(c, 7) for c in check(sealed(items(records))).candidates}
    changed = {**records[0], "religion": "Công giáo" if records[0].get("religion") != "Công giáo"
               else "Không"}
    decided = gate.decide(check(sealed([(changed["id"], 1, changed)])), stored)
    assert decided.accepted == []
    assert decided.duplicates == []
    assert [(v.index, v.path, v.code) for v in decided.rejected] == [
        (0, "$.version", "version_conflict")]


def test_lower_version_is_stale() -> None:
    records = people(1)
    stored = {c.key: _current(c, 3) for c in check(sealed(items(records, 5))).candidates}
    decided = gate.decide(check(sealed(items(records, 4))), stored)
    assert decided.accepted == []
    assert [(v.index, v.code) for v in decided.rejected] == [(0, "stale_version")]


def test_higher_version_is_accepted() -> None:
    records = people(1)
    stored = {c.key: _current(c, 3) for c in check(sealed(items(records, 5))).candidates}
    checked = check(sealed(items(records, 6)))
    decided = gate.decide(checked, stored)
    assert decided.accepted == checked.candidates
    assert decided.rejected == []


def test_decide_keeps_rejections_from_check_in_index_order() -> None:
    records = people(4)
    its = items(records)
    bad = fault(records[3], "bad_id")
    its[3] = (bad["id"], 1, bad)
    stored = {records[0]["id"]: gate.Current(9, b"\0" * 32, 1)}  # record 0 is stale
    decided = gate.decide(check(sealed(its)), stored)
    assert [c.index for c in decided.accepted] == [1, 2]
    assert [(v.index, v.code) for v in decided.rejected] == [
        (0, "stale_version"), (3, "id_century_sex_mismatch")]


def test_same_key_twice_in_a_batch_v1_then_v2() -> None:
    person = people(1)[0]
    moved = {**person, "religion": "Phật giáo" if person.get("religion") != "Phật giáo"
             else "Không"}
    checked = check(sealed([(person["id"], 1, person), (person["id"], 2, moved)]))
    decided = gate.decide(checked, {})
    assert [(c.index, c.version) for c in decided.accepted] == [(0, 1), (1, 2)]
    assert decided.duplicates == []
    assert decided.rejected == []


def test_same_key_twice_in_a_batch_v2_then_v1_is_stale() -> None:
    person = people(1)[0]
    checked = check(sealed([(person["id"], 2, person), (person["id"], 1, person)]))
    decided = gate.decide(checked, {})
    assert [c.index for c in decided.accepted] == [0]
    assert [(v.index, v.code) for v in decided.rejected] == [(1, "stale_version")]


def test_same_record_twice_in_a_batch_is_a_duplicate_of_its_first() -> None:
    a, b = people(2)
    # b is accepted first (offset 0), then a (offset 1); then a again: a duplicate of offset 1
    checked = check(sealed([(b["id"], 1, b), (a["id"], 1, a), (a["id"], 1, a),
                            (b["id"], 1, b)]))
    decided = gate.decide(checked, {})
    assert [c.index for c in decided.accepted] == [0, 1]
    assert decided.duplicates == []
    assert decided.echoes == [(2, 1), (3, 0)]
    assert decided.rejected == []
    assert decided.replaces == [None, None]


def _group(*batches: tuple[str, gate.Checked],
           current: dict[str, dict[str, gate.Current]] | None = None) -> list[gate.Decided]:
    return gate.decide_group(list(batches), current or {})


def test_a_group_is_decided_in_arrival_order_across_batches() -> None:
    a, b, c = people(3)
    stored = {c["id"]: _current(check(sealed(items([c]))).candidates[0], 17)}
    first = check(sealed(items([a, b])))
    second = check(sealed([(a["id"], 2, {**a, "religion": "Khác"}), (b["id"], 1, b),
                           (c["id"], 1, c)], seed=b"2" * 32))
    third = check(sealed([(a["id"], 1, a)], seed=b"3" * 32))
    d1, d2, d3 = _group(("population", first), ("population", second), ("population", third),
                        current={"population": stored})
    assert [x.index for x in d1.accepted] == [0, 1] and d1.offset == 0
    # a's version 2 replaces the group's own version 1; b is a duplicate of the group's b;
    # c one of the stored c
    assert [x.index for x in d2.accepted] == [0] and d2.offset == 2
    assert d2.replaces == [gate.IN_GROUP]
    assert d2.echoes == [(1, 1)] and d2.duplicates == [Duplicate(2, 17)]
    # version 1 of a is stale now: the group saw version 2
    assert [(v.index, v.code) for v in d3.rejected] == [(0, "stale_version")]
    assert d3.offset == 3 and d3.accepted == []


def test_a_group_keeps_datasets_apart() -> None:
    a = people(1)[0]
    pop = check(sealed(items([a])))
    same_key_elsewhere = gate.Checked([*pop.candidates], [])
    d1, d2 = _group(("population", pop), ("tax", same_key_elsewhere))
    # one key in two datasets is two records
    assert len(d1.accepted) == len(d2.accepted) == 1 and d2.echoes == []


def test_same_version_twice_in_a_batch_with_other_content_is_a_conflict() -> None:
    person = people(1)[0]
    other = {**person, "religion": "Cao Đài" if person.get("religion") != "Cao Đài"
             else "Không"}
    checked = check(sealed([(person["id"], 1, person), (person["id"], 1, other)]))
    decided = gate.decide(checked, {})
    assert [c.index for c in decided.accepted] == [0]
    assert [(v.index, v.code) for v in decided.rejected] == [(1, "version_conflict")]


# -- decide_group against a plain reference ---------------------------------------------------


def _reference_decide(batches: list[tuple[str, gate.Checked]],
                      current: dict[str, dict[str, gate.Current]]) -> list[gate.Decided]:
    """The rule in its plainest form: each candidate against the latest version of its key,
    the store's or one accepted earlier in the group."""
    from exchange.core.errors import Code, Violation

    latest: dict[tuple[str, str], tuple[int, bytes, int | None, int | None]] = {}
    out, offset = [], 0
    for dataset, checked in batches:
        decided = gate.Decided([], [], list(checked.rejected), offset=offset)
        for c in checked.candidates:
            found = latest.get((dataset, c.key))
            if found is None:
                stored = current.get(dataset, {}).get(c.key)
                found = None if stored is None else (stored.version, stored.content, None,
                                                     stored.seq)
            if found is not None:
                version, content, in_group, seq = found
                if c.version < version:
                    decided.rejected.append(Violation(
                        Code.STALE_VERSION, f"version {c.version} of {c.key} is older than the "
                        f"stored version {version}", "$.version", c.index))
                    continue
                if c.version == version:
                    if c.content != content:
                        decided.rejected.append(Violation(
                            Code.VERSION_CONFLICT, f"version {c.version} of {c.key} is already "
                            "stored with different content", "$.version", c.index))
                    elif in_group is not None:
                        decided.echoes.append((c.index, in_group))
                    else:
                        assert seq is not None
                        decided.duplicates.append(Duplicate(c.index, seq))
                    continue
                decided.replaces.append(gate.IN_GROUP if in_group is not None else seq)
            else:
                decided.replaces.append(None)
            latest[(dataset, c.key)] = (c.version, c.content, offset, None)
            decided.accepted.append(c)
            offset += 1
        decided.rejected.sort(key=lambda v: v.index or 0)
        out.append(decided)
    return out


_keys = st.sampled_from(["a", "b", "c", "d"])
_candidate = st.tuples(_keys, st.integers(1, 3), st.sampled_from([b"x", b"y"]))


@settings(max_examples=300, deadline=None)
@given(batches=st.lists(st.tuples(st.sampled_from(["population", "tax"]),
                                  st.lists(_candidate, max_size=6)), max_size=5),
       stored=st.dictionaries(st.tuples(st.sampled_from(["population", "tax"]), _keys),
                              st.tuples(st.integers(1, 3), st.sampled_from([b"x", b"y"]),
                                        st.integers(0, 99)), max_size=6))
def test_decide_group_agrees_with_the_plain_rule(
        batches: list[tuple[str, list[tuple[str, int, bytes]]]],
        stored: dict[tuple[str, str], tuple[int, bytes, int]]) -> None:
    group = [(ds, gate.Checked([gate.Candidate(i, k, v, b"d" * 32, content, b"")
                                for i, (k, v, content) in enumerate(cands)], []))
             for ds, cands in batches]
    current: dict[str, dict[str, gate.Current]] = {}
    for (ds, k), (v, content, seq) in stored.items():
        current.setdefault(ds, {})[k] = gate.Current(v, content, seq)
    assert gate.decide_group(group, current) == _reference_decide(group, current)
