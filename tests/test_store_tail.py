"""The sqlite store's in-memory tail: live reads from memory give exactly what the database
gives, across trims, datasets and a reopen."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.natsserver import NatsCluster
from exchange.signing import Statement
from exchange.store.base import BatchRow, StoredRecord, Tail
from exchange.store.nats import NatsStore
from exchange.store.sqlite import SqliteStore
from tests import nats_fixtures
from tests.conftest import make_pki, people
from tests.nats_fixtures import store_url
from tests.test_store_contract import batch_of, publish

nats_single = nats_fixtures.nats_single


def _rec(seq: int, dataset: str) -> StoredRecord:
    return StoredRecord(seq, dataset, f"k{seq}", 1, seq, 0, 0.0, b"", b"")


@given(st.lists(st.sampled_from(["a", "b"]), max_size=60), st.integers(2, 9),
       st.integers(-1, 3), st.randoms())
def test_tail_reads_what_a_full_scan_reads(datasets: list[str], capacity: int, head: int,
                                           rnd: random.Random) -> None:
    tail = Tail(head, capacity)
    stored = [_rec(head + 1 + i, ds) for i, ds in enumerate(datasets)]
    at = 0
    while at < len(stored):  # commits of random sizes
        n = rnd.randint(1, 5)
        tail.add(stored[at:at + n], [])
        at += n
    for ds in ("a", "b"):
        for after in range(head - 1, head + len(stored) + 1):
            limit = rnd.randint(1, 6)
            got = tail.read(ds, after, limit)
            want = [r for r in stored if r.dataset == ds and r.seq > after][:limit]
            if got is None:
                assert after + 1 < tail.since(ds)  # only when older records were dropped
                continue
            assert got == want
    assert all(len(held) <= capacity for held in tail._records.values())


def test_tail_batches_are_bounded() -> None:
    tail = Tail(-1, 4)
    st_ = Statement(node="vn.gov.x", dataset="a", root=b"\0" * 32, size=1, time="t")
    tail.add([], [BatchRow(i, st_, b"\0" * 64) for i in range(1, 10)])
    held = tail.batches(range(1, 10))
    assert len(held) <= 4 and 9 in held and 1 not in held


async def test_sqlite_live_reads_match_the_database(tmp_path: Path) -> None:
    pki_dir = make_pki(tmp_path / "pki")
    store = SqliteStore(tmp_path / "x.sqlite", tail_records=6)
    await store.open()
    try:
        ps = people(30, seed=5)
        for i in range(0, 30, 4):
            await publish(store, pki_dir, batch_of(pki_dir, ps[i:i + 4], seed=i + 1))
        cold = SqliteStore(tmp_path / "x.sqlite")  # a second handle: an empty tail
        await cold.open()
        try:
            head = await store.head()
            assert head == 29
            for after in range(-1, head + 1):
                live = await store.read("population", after, 3)
                db = await cold.read("population", after, 3)
                assert live == db  # every column, the body's bytes included
            live_batches = await store.batches(range(1, 9))
            assert live_batches == await cold.batches(range(1, 9))
            assert store._tail.read("population", 27, 5) == await cold.read("population", 27, 5)
        finally:
            await cold.close()
    finally:
        await store.close()


async def test_a_cancelled_append_still_records_what_it_committed(tmp_path: Path) -> None:
    # the transaction runs on the writer's thread; cancelling the broker's task meanwhile must
    # not leave the store's head (and so every later seq) behind what is on disk
    pki_dir = make_pki(tmp_path / "pki")
    store = SqliteStore(tmp_path / "x.sqlite")
    await store.open()
    try:
        gate = threading.Event()
        pool = store._writer_pool
        assert pool is not None
        blocker = asyncio.get_running_loop().run_in_executor(pool, gate.wait, 10)
        queued = asyncio.Event()
        submit = pool.submit

        def submitted(fn: Any, /, *args: Any) -> Any:
            fut = submit(fn, *args)
            queued.set()
            return fut

        pool.submit = submitted  # type: ignore[method-assign,assignment]
        ps = people(6, seed=9)
        task = asyncio.create_task(publish(store, pki_dir, batch_of(pki_dir, ps[:3])))
        await asyncio.wait_for(queued.wait(), 10)  # the append is queued behind the blocker
        task.cancel()
        gate.set()
        await blocker
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await store.head() == 2  # committed, and known to be
        _, _, first = await publish(store, pki_dir, batch_of(pki_dir, ps[3:], seed=2))
        assert first == 3
    finally:
        await store.close()
    again = SqliteStore(tmp_path / "x.sqlite")
    await again.open()
    try:
        assert [r.seq for r in await again.read("population", -1, 10)] == list(range(6))
    finally:
        await again.close()


async def test_nats_live_reads_match_the_stream(tmp_path: Path,
                                                nats_single: NatsCluster) -> None:
    # the NATS store's tailer fills the same in-memory tail; reads from it give what direct
    # gets from the stream give
    pki_dir = make_pki(tmp_path / "pki")
    url = store_url(nats_single)
    store = NatsStore(url)
    await store.open()
    try:
        ps = people(20, seed=8)
        for i in range(0, 20, 3):
            await publish(store, pki_dir, batch_of(pki_dir, ps[i:i + 3], seed=i + 1))
        head = await store.head()
        assert head == 19
        live = {a: await store.read("population", a, 4) for a in range(-1, head + 1)}
        batch_ids = sorted({r.batch_id for rows in live.values() for r in rows})
        live_batches = await store.batches(batch_ids)
        store._recent = Tail(head)  # forget the tail: reads go to the stream
        for after, rows in live.items():
            assert rows == await store.read("population", after, 4)
        assert live_batches == await store.batches(batch_ids)
    finally:
        await store.close()
