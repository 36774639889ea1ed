"""Group commit: concurrent batches stored in one transaction keep every per-batch guarantee —
versions decided in arrival order, duplicates pointing at the right seq, references resolved
across the group, and each receipt naming its own seq range."""

from __future__ import annotations

import asyncio
import copy
import os
from typing import Any

import msgspec
import pytest

from exchange import pki
from exchange.core import datasets
from exchange.core.receipts import ReceiptChecker
from exchange.core.seal import seal
from exchange.sim.generate import Generator
from tests.conftest import OWNERS, SEALED_AT, TODAY, Env, people, sealed

POP = OWNERS["population"]


def _body(env: Env, records: list[dict[str, object]], *, version: int = 1) -> bytes:
    return msgspec.msgpack.encode(sealed(env, POP, records, version=version,
                                         seed=os.urandom(32)))


async def test_concurrent_batches_share_one_commit(env: Env) -> None:
    publisher = env.broker.publisher
    a, b, c = people(3, seed=21), people(3, seed=22), people(2, seed=23)
    changed = copy.deepcopy(a[0])
    changed["full_name"] = "Trần Văn Khác"
    bodies = [_body(env, a), _body(env, b), _body(env, [a[0], *c]), _body(env, [changed])]
    before = env.broker.store.log_state()[0]
    outcomes = await asyncio.gather(*(publisher.publish(POP, "population", body,
                                                        "application/msgpack")
                                      for body in bodies))
    receipts = [o.receipt.receipt for o in outcomes]
    # arrival order decides: a then b take seqs 0..5; the third batch's a[0] is a duplicate of
    # seq 0 and its two new records take 6..7; the changed a[0] is a version conflict
    assert [(r.first_seq, r.last_seq, r.accepted) for r in receipts] == [
        (0, 2, 3), (3, 5, 3), (6, 7, 2), (0, -1, 0)]
    assert [(d.index, d.seq) for d in receipts[2].duplicates] == [(0, 0)]
    assert [v.code for v in receipts[3].rejected] == ["version_conflict"]
    assert outcomes[3].status == 409
    assert env.broker.store.log_state()[0] == before + 8
    # every receipt carries the log as committed, covering its own records
    assert all(r.log_size >= r.last_seq + 1 for r in receipts)
    # and the group's receipts share one broker signature, each verifiable alone
    signed = [o.receipt for o in outcomes]
    assert {s.group_size for s in signed} == {4} and len({s.signature for s in signed}) == 1
    key = pki.load_broker_identity(env.pki_dir).signing_key.public_key()
    checker = ReceiptChecker()
    for s in signed:
        checker.check(key, s)
    assert checker.verifications == 1


async def test_a_reference_resolves_within_the_same_commit(env: Env) -> None:
    gen = Generator(24, today=TODAY)
    person = gen.population(1)
    vehicle = gen.vehicle(1, person)[0]
    vehicle["owner_id"] = person[0]["id"]
    key = pki.load_node_identity(env.pki_dir, OWNERS["vehicle"]).signing_key
    vbody = msgspec.msgpack.encode(seal(key, OWNERS["vehicle"], datasets.get("vehicle"),
                                        [(vehicle["plate"].replace("-", "").replace(".", "")
                                          .replace(" ", ""), 1, vehicle)], os.urandom(32),
                                        time=SEALED_AT))
    publisher = env.broker.publisher
    # the vehicle arrives first in the group, its owner right after it
    v, p = await asyncio.gather(
        publisher.publish(OWNERS["vehicle"], "vehicle", vbody, "application/msgpack"),
        publisher.publish(POP, "population", _body(env, person), "application/msgpack"))
    assert v.status == 200 and p.status == 200
    assert await env.broker.store.unresolved_counts() == {}


async def test_a_group_holds_at_most_max_group_records(env: Env,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # past its first batch, a group stops before it would exceed the record cap
    from exchange.broker import publish as publish_mod

    monkeypatch.setattr(publish_mod, "MAX_GROUP_RECORDS", 5)
    store = env.broker.store
    sizes: list[list[int]] = []
    append = store.append

    async def counted(plan: Any) -> Any:
        sizes.append([b.count if b else 0 for b in plan.batches])
        return await append(plan)

    monkeypatch.setattr(store, "append", counted)
    bodies = [_body(env, people(3, seed=30 + i)) for i in range(4)] + [
        _body(env, people(7, seed=40))]
    outcomes = await asyncio.gather(*(env.broker.publisher.publish(
        POP, "population", body, "application/msgpack") for body in bodies))
    firsts = [o.receipt.receipt.first_seq for o in outcomes]
    assert firsts == [0, 3, 6, 9, 12]  # arrival order kept across groups
    assert all(sum(g) <= 5 or len(g) == 1 for g in sizes)  # a lone batch may be larger
    assert sum(sum(g) for g in sizes) == 19 and len(sizes) >= 4
