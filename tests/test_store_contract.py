"""One contract, every store: sqlite on disk, NATS JetStream on one server (R1) and on a
3-node cluster (R3). Real signed batches through the gate, no mocks."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from exchange import pki
from exchange.core import datasets, gate, ledger, merkle, tlog
from exchange.core.access import Limits
from exchange.core.ledger import DeadLetter
from exchange.core.seal import seal
from exchange.core.signing import Batch, Verifier
from exchange.store.base import Store
from exchange.store.nats.store import NatsStore
from exchange.store.sqlite import SqliteStore
from tests import nats_fixtures
from tests.conftest import OWNERS, SEALED_AT, TODAY, make_pki, people
from tests.nats_fixtures import store_url

POP = OWNERS["population"]
TAX = OWNERS["tax"]
SPEC = datasets.get("population")
nats_single = nats_fixtures.nats_single
nats_cluster = nats_fixtures.nats_cluster


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(params=["sqlite", "nats-single", "nats-cluster"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path
                 ) -> AsyncIterator[Callable[[], Store]]:
    """Opens a store instance on the same backing data (so a test can reopen it)."""
    if request.param == "sqlite":
        def make() -> Store:
            return SqliteStore(tmp_path / "exchange.sqlite")
    else:
        cluster = request.getfixturevalue(request.param.replace("-", "_"))
        url = store_url(cluster)

        def make() -> Store:
            return NatsStore(url)
    yield make


@pytest.fixture
async def store(opener: Callable[[], Store]) -> AsyncIterator[Store]:
    s = opener()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def batch_of(pki_dir: Path, records: list[dict[str, Any]], version: int = 1,
             seed: int = 1) -> Batch:
    key = pki.load_node_identity(pki_dir, POP).signing_key
    return seal(key, POP, SPEC, [(r["id"], version, r) for r in records],
                seed.to_bytes(32, "big"), time=SEALED_AT)


async def publish(store: Store, pki_dir: Path, batch: Batch, dead: list[DeadLetter] | None = None
                  ) -> tuple[gate.Decided, int, int]:
    checked = gate.check(batch, node=POP, spec=SPEC,
                         verifier=Verifier(pki.load_signing_registry(pki_dir)), limits=Limits(),
                         ctx=datasets.RuleContext(today=TODAY))
    current = await store.current("population", [c.key for c in checked.candidates])
    decided = gate.decide(checked, current)
    if not decided.accepted:
        await store.add_dead_letters(dead or [])
        return decided, 0, 0
    appended = await store.append(ledger.plan(
        [ledger.Append(POP, "population", batch, decided, dead or [])], time.time()))
    return decided, appended.batch_ids[0], appended.first_seq


def dead(i: int, code: str = "schema_violation") -> DeadLetter:
    return DeadLetter(publisher=POP, dataset="population", received_at=time.time(), index=i,
                      code=code, path="$.x", message=f"refused {i}", record=b'{"i": %d}' % i)


async def test_append_read_current_and_batches(store: Store, pki_dir: Path) -> None:
    ps = people(8, seed=11)
    assert await store.head() == -1 and await store.head("population") == -1
    assert store.log_state() == (0, merkle.EMPTY_ROOT)
    d1, b1, first = await publish(store, pki_dir, batch_of(pki_dir, ps[:5]))
    assert first == 0 and len(d1.accepted) == 5
    # a new version of key 0, a same-version same-content duplicate of key 1, three new keys
    b2_records = [ps[0], ps[5], ps[6], ps[7]]
    d2, b2, first2 = await publish(store, pki_dir, batch_of(pki_dir, b2_records, version=2,
                                                            seed=2))
    assert first2 == 5 and len(d2.accepted) == 4 and b1 != b2
    assert await store.head() == 8 and await store.head("population") == 8
    assert await store.head("tax") == -1

    cur = await store.current("population", [ps[0]["id"], ps[1]["id"], "nobody"])
    assert set(cur) == {ps[0]["id"], ps[1]["id"]}
    assert (cur[ps[0]["id"]].version, cur[ps[0]["id"]].seq) == (2, 5)
    assert (cur[ps[1]["id"]].version, cur[ps[1]["id"]].seq) == (1, 1)
    # stale and conflicting versions against what the store holds
    await publish(store, pki_dir, batch_of(pki_dir, [ps[1]], seed=3))
    d3 = gate.decide(gate.check(batch_of(pki_dir, [ps[0], ps[1]], seed=4), node=POP, spec=SPEC,
                                verifier=Verifier(pki.load_signing_registry(pki_dir)),
                                limits=Limits(), ctx=datasets.RuleContext(today=TODAY)),
                     await store.current("population", [ps[0]["id"], ps[1]["id"]]))
    assert [v.code for v in d3.rejected] == ["stale_version"] and d3.duplicates[0].seq == 1

    rows = await store.read("population", -1, 100)
    assert [r.seq for r in rows] == list(range(9))
    assert [r.key for r in rows] == [p["id"] for p in ps[:5]] + [p["id"] for p in b2_records]
    assert [r.version for r in rows] == [1] * 5 + [2] * 4
    assert [r.index for r in rows] == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    assert {r.batch_id for r in rows[:5]} == {b1} and {r.batch_id for r in rows[5:]} == {b2}
    assert [r.seq for r in await store.read("population", 3, 2)] == [4, 5]
    assert await store.read("population", 8, 10) == []
    assert await store.read("tax", -1, 10) == []
    assert [r.seq for r in await store.read_range(2, 7)] == [2, 3, 4, 5, 6]
    assert [r.seq for r in await store.read_range(7, 100)] == [7, 8]
    assert await store.count_after("population", 4) == 4
    assert await store.count_after("population", 8) == 0

    got = await store.batches([b1, b2, b1])
    assert set(got) == {b1, b2}
    assert got[b1].statement.size == 5 and got[b2].statement.size == 4
    assert got[b2].statement.root != got[b1].statement.root


async def test_the_tree_is_rfc6962_over_the_records(store: Store, pki_dir: Path) -> None:
    ps = people(13, seed=12)
    for i, chunk in enumerate((ps[:6], ps[6:7], ps[7:])):
        await publish(store, pki_dir, batch_of(pki_dir, chunk, seed=10 + i))
    rows = await store.read_range(0, 13)
    batches = await store.batches([r.batch_id for r in rows])
    leaves = [tlog.entry_leaf(r.seq, r.dataset, POP, r.digest,
                              batches[r.batch_id].statement.root, tlog.micros(r.accepted_at))
              for r in rows]
    size, root = store.log_state()
    assert size == 13 and root == merkle.root(leaves)
    wanted: list[tuple[int, int]] = []

    def plan(level: int, index: int) -> bytes:
        wanted.append((level, index))
        return b"\0" * 32

    merkle.inclusion_proof(plan, 9, 13)
    nodes = await store.log_nodes(wanted)
    proof = merkle.inclusion_proof(lambda lv, ix: nodes[(lv, ix)], 9, 13)
    merkle.verify_inclusion(leaves[9], 9, 13, proof, root)


async def test_seq_before_time(store: Store, pki_dir: Path) -> None:
    ps = people(6, seed=13)
    await publish(store, pki_dir, batch_of(pki_dir, ps[:3]))
    t = time.time()
    assert await store.seq_before_time("population", t) == 2
    await publish(store, pki_dir, batch_of(pki_dir, ps[3:], seed=2))
    assert await store.seq_before_time("population", t) == 2
    assert await store.seq_before_time("population", 0) == -1
    assert await store.seq_before_time("population", time.time() + 1) == 5


async def test_dead_letters_by_publisher_and_id(store: Store, pki_dir: Path) -> None:
    await store.add_dead_letters([dead(0), dead(1)])
    await publish(store, pki_dir, batch_of(pki_dir, people(2, seed=14)), [dead(2, "too_deep")])
    await store.add_dead_letters([DeadLetter(publisher=TAX, dataset="tax", received_at=1.0,
                                             index=None, code="malformed", path="$",
                                             message="x", record=b"\xff")])
    rows = await store.dead_letters(POP, 0, 100)
    assert [(d.index, d.code) for d in rows] == [(0, "schema_violation"),
                                                 (1, "schema_violation"), (2, "too_deep")]
    ids = [d.id for d in rows]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [d.index for d in await store.dead_letters(POP, ids[0], 1)] == [1]
    assert await store.dead_letters(POP, ids[-1], 10) == []
    (t,) = await store.dead_letters(TAX, 0, 10)
    assert (t.index, t.record, t.dataset) == (None, b"\xff", "tax")
    assert rows[0].record == b'{"i": 0}' and rows[0].message == "refused 0"
    # what each publisher's dead-letter quota has used
    assert await store.dead_letter_count(POP) == 3
    assert await store.dead_letter_count(TAX) == 1
    assert await store.dead_letter_count("vn.gov.nobody.here") == 0


async def test_subscriptions_and_monotonic_acks(store: Store) -> None:
    assert await store.subscription(TAX, "population", "a") is None
    row = await store.create_subscription(TAX, "population", "a", -1, 100.0)
    assert (row.node, row.dataset, row.name, row.acked) == (TAX, "population", "a", -1)
    # creating again keeps the existing one
    again = await store.create_subscription(TAX, "population", "a", 50, 200.0)
    assert (again.acked, again.created_at) == (-1, 100.0)
    await store.create_subscription(OWNERS["land"], "population", "a", 4, 300.0)
    await store.ack(TAX, "population", "a", 7)
    await store.ack(TAX, "population", "a", 3)  # never backwards
    row2 = await store.subscription(TAX, "population", "a")
    assert row2 is not None and row2.acked == 7
    await store.ack(TAX, "population", "a", 9)
    rows = await store.subscriptions()
    assert [(r.node, r.name, r.acked) for r in rows] == [
        (OWNERS["land"], "a", 4), (TAX, "a", 9)] or [(r.node, r.name, r.acked) for r in rows] == [
        (TAX, "a", 9), (OWNERS["land"], "a", 4)]
    assert sorted(r.node for r in rows) == sorted([TAX, OWNERS["land"]])


async def test_checkpoints_and_reopen(opener: Callable[[], Store], store: Store,
                                      pki_dir: Path) -> None:
    key = tlog.NoteKey.from_private("test/log", pki.load_broker_identity(pki_dir).signing_key)
    assert await store.latest_checkpoint() is None
    ps = people(10, seed=15)
    await publish(store, pki_dir, batch_of(pki_dir, ps[:4]))
    cp1 = tlog.sign_checkpoint(key, "test/log", *store.log_state())
    await store.add_checkpoint(cp1, time.time())
    await publish(store, pki_dir, batch_of(pki_dir, ps[4:], seed=2))
    cp2 = tlog.sign_checkpoint(key, "test/log", *store.log_state())
    await store.add_checkpoint(cp2, time.time())
    latest = await store.latest_checkpoint()
    assert latest is not None and (latest.size, latest.root) == (10, cp2.root)
    assert [c.size for c in await store.checkpoints()] == [4, 10]
    assert [c.size for c in await store.checkpoints(since_size=5)] == [10]
    assert tlog.open_checkpoint(key.__class__(key.name, key.public), latest.note).size == 10

    # another instance on the same data sees everything, and its tree is the same
    other = opener()
    await other.open()
    try:
        assert other.log_state() == store.log_state()
        assert await other.head("population") == 9
        cur = await other.current("population", [ps[0]["id"]])
        assert cur[ps[0]["id"]].seq == 0
        assert [r.seq for r in await other.read("population", 5, 100)] == [6, 7, 8, 9]
    finally:
        await other.close()


async def test_group_append_is_one_commit_in_group_order(store: Store, pki_dir: Path) -> None:
    # every store takes a group of batches (the broker's group commit): consecutive seqs in
    # group order, an id per batch with records, 0 for one with none, its dead letters kept
    verifier = Verifier(pki.load_signing_registry(pki_dir))
    ps = people(7, seed=61)
    batches = [batch_of(pki_dir, ps[:3], seed=1), batch_of(pki_dir, ps[3:4], seed=2),
               batch_of(pki_dir, ps[4:], seed=3)]
    # the middle batch had nothing accepted: only its dead letter goes with the group
    checked = [gate.check(b, node=POP, spec=SPEC, verifier=verifier, limits=Limits(),
                          ctx=datasets.RuleContext(today=TODAY)) for b in batches]
    checked[1] = gate.Checked([], [])
    decisions = gate.decide_group([("population", c) for c in checked], {})
    appends = [ledger.Append(POP, "population", b, d, [dead(i)] if i == 1 else [])
               for i, (b, d) in enumerate(zip(batches, decisions, strict=True))]
    appended = await store.append(ledger.plan(appends, time.time()))
    ids, first = appended.batch_ids, appended.first_seq
    assert first == 0 and ids[1] == 0 and ids[0] and ids[2] and ids[0] != ids[2]
    rows = await store.read("population", -1, 10)
    assert [r.seq for r in rows] == list(range(6))
    assert [r.key for r in rows] == [p["id"] for p in ps[:3] + ps[4:]]
    assert [r.batch_id for r in rows] == [ids[0]] * 3 + [ids[2]] * 3
    assert [r.index for r in rows] == [0, 1, 2, 0, 1, 2]
    got = await store.batches([ids[0], ids[2]])
    assert got[ids[0]].statement.root == batches[0].statement.root
    assert got[ids[2]].statement.root == batches[2].statement.root
    assert store.log_state()[0] == 6
    assert [d.message for d in await store.dead_letters(POP, 0, 10)] == ["refused 1"]


async def test_versions_and_who_received_them(store: Store, pki_dir: Path) -> None:
    from exchange.store.base import AccessRow

    people_ = people(3, seed=41)
    await publish(store, pki_dir, batch_of(pki_dir, people_, version=1, seed=41))
    await publish(store, pki_dir, batch_of(pki_dir, people_[:1], version=2, seed=42))
    key = people_[0]["id"]
    versions = await store.versions("population", key)
    assert [(r.version, r.key) for r in versions] == [(1, key), (2, key)]
    assert await store.versions("population", "000000000000") == []
    first, second = versions[0].seq, versions[1].seq

    def row(node: str, name: str, lo: int, hi: int, kind: str = "delivery") -> AccessRow:
        return AccessRow(dataset="population", node=node, name=name, kind=kind,
                         agreement="agr-0123456789abcdef", purpose="checks",
                         groups=("residence",), first_seq=lo, last_seq=hi, at=1.0)

    await store.add_access([row(TAX, "a", 0, first), row(TAX, "a", first + 1, second)])
    await store.add_access([row("vn.gov.mae.land", "b", 0, first - 1)])  # before the record
    await store.add_access([row("vn.gov.mae.land", "", second, second, kind="lookup")])
    got = await store.access("population", [first, second])
    assert sorted((r.node, r.name, r.first_seq, r.last_seq) for r in got) == sorted([
        (TAX, "a", 0, first), (TAX, "a", first + 1, second),
        ("vn.gov.mae.land", "", second, second)])
    assert all(r.groups == ("residence",) for r in got)
    assert await store.access("tax", [first]) == []


async def _settled(store: SqliteStore) -> None:
    """Until the checkpoints the commits so far asked for have run."""
    while store._checkpointing is not None and (not store._checkpointing.done()
                                                 or store._checkpoint_again):
        await asyncio.wait([store._checkpointing])
        await asyncio.sleep(0)  # the done callback starts the one asked for meanwhile


async def test_sqlite_copies_the_wal_back_off_the_commits_path(tmp_path: Path,
                                                               pki_dir: Path) -> None:
    """The writer checkpoints only past a high mark; the checkpointer's thread does it after
    every commit (appends, and the small writes: acks, dead letters, quality, checkpoints),
    so the WAL stays short however long writes go on, appends or not."""
    store = SqliteStore(tmp_path / "exchange.sqlite")
    await store.open()
    wal = tmp_path / "exchange.sqlite-wal"
    sizes: list[int] = []
    try:
        ps = people(600, seed=21)
        for i in range(0, 600, 50):
            await publish(store, pki_dir, batch_of(pki_dir, ps[i:i + 50], seed=i + 1))
            await _settled(store)
            sizes.append(wal.stat().st_size)
        # no appends now: a subscriber catching up, quality counters, dead letters
        for i in range(300):
            await store.save_quality([("population", POP, os.urandom(3000) + i.to_bytes(2))])
            await _settled(store)
            sizes.append(wal.stat().st_size)
        db_size = (tmp_path / "exchange.sqlite").stat().st_size
        assert await store.head() == 599
    finally:
        await store.close()
    # every commit's frames went back into the database: the WAL restarts from its beginning
    # instead of growing by each commit (without the checkpointer it holds them all)
    assert max(sizes) < db_size / 4, (sizes, db_size)
    reopened = SqliteStore(tmp_path / "exchange.sqlite")
    await reopened.open()
    try:
        assert await reopened.head() == 599
    finally:
        await reopened.close()
