"""The append plan and what the broker answers for it (pure): one plan for every store, and the
receipts and replies derived from a group decision."""

from __future__ import annotations

from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exchange.core import gate, ledger, quality, receipts, tlog
from exchange.core.errors import Code, InputError, Violation
from exchange.core.wire import Duplicate, Receipt
from tests.test_gate import check, items, people, sealed

NOW = 1_795_000_000.25
POP = "vn.gov.mps.population"
BROKER_KEY = Ed25519PrivateKey.generate()


def _group() -> tuple[list[ledger.Append], list[gate.Checked]]:
    a, b, c = people(3, seed=21)
    first = sealed(items([a, b]))
    second = sealed([(a["id"], 2, {**a, "religion": "Khác"}), (b["id"], 1, b), (c["id"], 1, c)],
                    seed=b"2" * 32)
    third = sealed([(c["id"], 1, {**c, "religion": "Khác"})], seed=b"3" * 32)
    checked = [check(x) for x in (first, second, third)]
    decisions = gate.decide_group([("population", ch) for ch in checked], {})
    dead = [ledger.dead_letters(POP, "population", batch, d.rejected, NOW)
            for batch, d in zip((first, second, third), decisions, strict=True)]
    group = [ledger.Append(POP, "population", batch, d, dl,
                           [("population", "001099000001", "population", b["id"])] if i == 1
                           else [])
             for i, (batch, d, dl) in enumerate(zip((first, second, third), decisions, dead,
                                                    strict=True))]
    return group, checked


def test_the_plan_lays_out_the_group_in_order() -> None:
    group, _ = _group()
    plan = ledger.plan(group, NOW, quality=[("population", POP, b"1"),
                                            ("population", POP, b"2")])
    keys = [(e.key, e.version, e.n, e.index) for e in plan.entries]
    a, b, c = (group[0].batch.records[0].event.subject, group[0].batch.records[1].event.subject,
               group[1].batch.records[2].event.subject)
    assert keys == [(a, 1, 0, 0), (b, 1, 1, 1), (a, 2, 0, 0), (c, 1, 1, 2)]
    # the conditional append: a's second entry rides on its first
    assert plan.first() == [True, True, False, True]
    assert plan.replaces == [None, None, gate.IN_GROUP, None]
    assert [(x.offset, x.count) if x else None for x in plan.batches] == [(0, 2), (2, 2), None]
    # the statement travels with a batch's first entry only
    assert [bool(e.statement) for e in plan.entries] == [True, False, True, False]
    body = msgspec.msgpack.decode(plan.entries[0].body, type=ledger.StoredBody)
    assert body.event == group[0].batch.records[0].event
    # the third batch's conflicting c is a dead letter with the record as received
    assert [(d.index, d.code) for d in plan.dead] == [(0, "version_conflict")]
    assert msgspec.json.decode(plan.dead[0].record)["event"]["subject"] == c
    # quality rows are totals: the last for a pair wins
    assert plan.quality == [("population", POP, b"2")]
    assert plan.references()[("population", c)] == []
    assert plan.references()[("population", b)] == []


def test_leaves_bind_the_seq_the_store_gives() -> None:
    group, _ = _group()
    plan = ledger.plan(group, NOW)
    leaves = list(plan.leaves(40))
    e = plan.entries[3]
    assert leaves[3] == tlog.entry_leaf(43, "population", POP, e.digest, e.batch_root,
                                         tlog.micros(NOW))
    assert len(set(leaves)) == 4


def test_receipts_resolve_every_duplicate_to_its_seq() -> None:
    group, _ = _group()
    got = ledger.receipts("vn.gov.ndc.broker", group, 100, 104, b"r" * 32, "2026-11-22T09:00:00Z")
    assert [(r.first_seq, r.last_seq, r.accepted) for r in got] == [(100, 101, 2), (102, 103, 2),
                                                                   (0, -1, 0)]
    # b again in the second batch: a duplicate of the group's own b (seq 101)
    assert got[1].duplicates == [Duplicate(1, 101)]
    assert [(v.index, v.code) for v in got[2].rejected] == [(0, "version_conflict")]
    assert all(r.log_size == 104 for r in got)


def test_stored_duplicates_and_echoes_come_in_index_order() -> None:
    a, b = people(2, seed=5)
    stored = {a["id"]: _stored(a, 7)}
    batch = sealed([(b["id"], 1, b), (a["id"], 1, a), (b["id"], 1, b)])
    (decided,) = gate.decide_group([("population", check(batch))], {"population": stored})
    (receipt,) = ledger.receipts("x", [ledger.Append(POP, "population", batch, decided)], 50, 51,
                                 b"r" * 32, "t")
    assert receipt.duplicates == [Duplicate(1, 7), Duplicate(2, 50)]


def _stored(record: dict[str, Any], seq: int) -> gate.Current:
    c = check(sealed(items([record]))).candidates[0]
    return gate.Current(c.version, c.content, seq)


def _signed(rejected: list[Violation], accepted: int = 1) -> ledger.Outcome:
    r = Receipt(broker="b", publisher=POP, dataset="population", batch_root=b"x" * 32,
                first_seq=0, last_seq=accepted - 1, accepted=accepted, rejected=rejected,
                time="t")
    return ledger.outcome(receipts.sign(BROKER_KEY, [r])[0])


def test_outcome_picks_the_status_from_the_catalogue() -> None:
    ok = _signed([])
    assert (ok.status, ok.problem, ok.last_seq) == (200, None, 0)
    conflict = _signed([Violation(Code.VERSION_CONFLICT, "m", "$.version", 1),
                        Violation(Code.STALE_VERSION, "m", "$.version", 2)])
    assert conflict.status == 409 and conflict.problem is not None
    assert conflict.problem["code"] == "records_rejected" and conflict.problem["status"] == 409
    assert conflict.problem["title"] == "Conflict"
    invalid = _signed([Violation(Code.UNKNOWN_WARD, "m", "$.w", 0),
                       Violation(Code.VERSION_CONFLICT, "m", "$.version", 1)])
    assert invalid.status == 422 and invalid.problem is not None
    one = _signed([Violation(Code.UNKNOWN_WARD, "m", "$.w", 0),
                   Violation(Code.UNKNOWN_WARD, "m", "$.x", 0)])
    assert one.problem is not None and one.problem["code"] == "unknown_ward"
    assert one.problem["type"].endswith("/unknown_ward")
    assert "1 of 2 records refused" in one.problem["detail"]
    assert one.problem["receipt"]["receipt"]["accepted"] == 1
    assert [e["code"] for e in one.problem["errors"]] == ["unknown_ward", "unknown_ward"]


def test_a_batch_refused_whole_is_dead_lettered_record_by_record() -> None:
    batch = sealed(items(people(3, seed=9)))
    err = InputError("nope", code=Code.MALFORMED)
    dead = ledger.refused(POP, "population", err, batch, b"", NOW)
    assert [(d.index, d.code, d.message) for d in dead] == [(i, "malformed", "nope")
                                                            for i in range(3)]
    body = b"\x93" * 10_000
    (undecodable,) = ledger.refused(POP, "population", err, None, body, NOW)
    assert undecodable.index is None and undecodable.record == body[:4096]


def test_quality_counts_a_decided_batch_as_a_delta() -> None:
    group, checked = _group()
    deltas = [quality.gated(ch, a.decided, NOW, references=i)
              for i, (ch, a) in enumerate(zip(checked, group, strict=True))]
    assert [(d.received, d.accepted, d.duplicates) for d in deltas] == [(2, 2, 0), (3, 2, 1),
                                                                        (1, 0, 0)]
    assert deltas[2].rejected == {"version_conflict": 1} and deltas[2].conflicts == 1
    assert deltas[2].last_accepted_at == 0.0 and deltas[0].last_accepted_at == NOW
    total = deltas[0].merge(deltas[1]).merge(deltas[2])
    assert (total.received, total.accepted, total.references) == (6, 4, 3)
    assert quality.refused(4, "signature_invalid").rejected == {"signature_invalid": 4}
    # the records' as_of ages, against the acceptance day
    assert deltas[0].as_of_count == 2 and deltas[0].as_of_age_sum_s >= 0
