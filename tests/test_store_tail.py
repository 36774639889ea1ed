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

from exchange.core.ledger import BatchRow, StoredRecord
from exchange.core.signing import Statement
from exchange.store.base import Tail
from exchange.store.nats.feeds import Feeds
from exchange.store.nats.server import NatsCluster
from exchange.store.nats.store import NatsStore
from exchange.store.sqlite import SqliteStore
from tests import nats_fixtures
from tests.conftest import make_pki, people
from tests.nats_fixtures import store_url, two_stores
from tests.test_store_contract import POP, batch_of, dead, publish

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
    assert all(tail.held(ds) <= capacity for ds in ("a", "b"))


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
            assert store.tail.read("population", 27, 5) == await cold.read("population", 27, 5)
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
    # the NATS store's feeds hold a dataset's newest records in the same in-memory tail; reads
    # from it give what filtered direct gets from the stream give
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
        # a feed that keeps nothing: every read goes to the stream
        store.feeds = Feeds(store.direct, store.records_stream, store.prefix, store.view,
                            capacity=1)
        for after, rows in live.items():
            assert rows == await store.read("population", after, 4)
        assert live_batches == await store.batches(batch_ids)
    finally:
        await store.close()


async def test_concurrent_reads_never_pin_a_stale_snapshot(tmp_path: Path) -> None:
    # readers, appends and acks at once: every ack lands, a re-sent record is always found a
    # duplicate (the gate's read sees the last commit), and the log's nodes are all readable
    pki_dir = make_pki(tmp_path / "pki")
    store = SqliteStore(tmp_path / "x.sqlite", tail_records=4)  # most reads go to the db
    await store.open()
    try:
        for i in range(20):
            await store.create_subscription(f"n{i}", "population", "s", -1, 0.0)
        stop = asyncio.Event()

        async def reader() -> None:
            while not stop.is_set():
                await store.subscriptions()
                await store.read("population", -1, 50)
                size, _ = store.log_state()
                if size:
                    await store.log_nodes([(0, size - 1)])

        readers = [asyncio.create_task(reader()) for _ in range(3)]
        ps = people(30, seed=12)
        try:
            for i, p in enumerate(ps):
                first, _, _ = await publish(store, pki_dir, batch_of(pki_dir, [p], seed=2 * i))
                again, _, _ = await publish(store, pki_dir,
                                            batch_of(pki_dir, [p], seed=2 * i + 1))
                assert len(first.accepted) == 1
                assert not again.accepted and len(again.duplicates) == 1
                await store.ack(f"n{i % 20}", "population", "s", i)
                await store.add_dead_letters([dead(i)])
        finally:
            stop.set()
            await asyncio.gather(*readers)
        assert sorted(r.acked for r in await store.subscriptions()) == sorted(
            max(i for i in range(30) if i % 20 == n) for n in range(20))
        assert len(await store.dead_letters(POP, 0, 100)) == 30
        size, _ = store.log_state()
        nodes = await store.log_nodes([(0, i) for i in range(size)])
        assert len(nodes) == size == 30
    finally:
        await store.close()


async def test_nats_sequencer_announces_every_record_applied_before_a_bad_entry(
        tmp_path: Path, nats_single: NatsCluster) -> None:
    # a page whose later entry cannot be read: the records applied before it are in the tree,
    # so they must be announced too, or receipts and live readers would wait for them
    pki_dir = make_pki(tmp_path / "pki")
    async with two_stores(nats_single) as (sequencer, writer):
        assert sequencer.sequencing and not writer.sequencing
        await sequencer.tailer.stop()  # poll by hand below
        heard: list[tuple[str, int]] = []
        writer.watch(lambda dataset, last: heard.append((dataset, last)))
        published = asyncio.create_task(
            publish(writer, pki_dir, batch_of(pki_dir, people(3, seed=91), seed=1)))
        while sequencer.tailer.size < 3:
            await sequencer.tailer.poll()
        await published  # its receipt waited for the announcement of its records
        await writer.nc.publish(f"{writer.prefix}.rec.population.bad", b"\x93not an entry")
        await writer.nc.flush()
        with pytest.raises(Exception):  # noqa: B017 -- any decode error
            while True:
                await sequencer.tailer.poll()
        assert sequencer.log_state()[0] == writer.log_state()[0] == 3
        assert [r.seq for r in await writer.read("population", -1, 10)] == [0, 1, 2]
        assert heard == [("population", 2)]  # subscribers are woken for them too
