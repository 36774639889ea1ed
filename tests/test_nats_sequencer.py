"""NATS scale-out: one sequencer reads the records stream back, the other brokers gate and serve.

Real nats-server processes; two stores on one stream prefix stand for two broker processes."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from exchange import pki
from exchange.core import datasets, gate, ledger, merkle, tlog
from exchange.core.access import Limits
from exchange.core.errors import UnavailableError
from exchange.core.seal import seal
from exchange.core.signing import Verifier
from exchange.store.nats.direct import Client
from exchange.store.nats.lease import KEY as LEASE_KEY
from exchange.store.nats.lease import Lease
from exchange.store.nats.server import NatsCluster
from exchange.store.nats.store import NatsStore, parse_url
from tests import nats_fixtures
from tests.conftest import SEALED_AT, TODAY, eventually, make_pki, people, until
from tests.nats_fixtures import store_url, two_stores
from tests.test_store_contract import POP, SPEC, batch_of, publish

nats_single = nats_fixtures.nats_single


async def stream_last(store: NatsStore, seq: int) -> bool:
    info = await store.nc.jetstream().stream_info(store.records_stream)
    return bool(info.state.last_seq == seq)


def read_back(store: NatsStore) -> int:
    """Messages this store has read from the records stream (every read is a direct get)."""
    return store.direct.received.get(store.records_stream, 0)


async def consistent(store: NatsStore, old: tuple[int, bytes], new: tuple[int, bytes]) -> None:
    """``new`` extends ``old``: checked with a consistency proof from ``store``'s log nodes."""
    wanted: list[tuple[int, int]] = []

    def plan(level: int, index: int) -> bytes:
        wanted.append((level, index))
        return b"\x00" * 32

    merkle.consistency_proof(plan, old[0], new[0])
    nodes = await store.log_nodes(wanted)
    proof = merkle.consistency_proof(lambda lv, ix: nodes[(lv, ix)], old[0], new[0])
    merkle.verify_consistency(old[0], new[0], old[1], new[1], proof)  # raises if not


async def test_only_the_sequencer_reads_the_stream_back(tmp_path: Path,
                                                        nats_single: NatsCluster) -> None:
    pki_dir = make_pki(tmp_path / "pki")
    async with two_stores(nats_single) as (seq, gate):
        assert seq.sequencing and not gate.sequencing
        # direct gets' replies come straight from the client's reader (its own fast path)
        assert isinstance(gate.nc, Client) and len(gate.nc._direct) == 1
        ps = people(60, seed=3)
        sizes = []
        for i in range(0, 60, 20):
            await publish(gate, pki_dir, batch_of(pki_dir, ps[i:i + 20], seed=i + 1))
            sizes.append(gate.log_state())
        # new keys: the gate broker decided them without reading a record back, and its
        # receipts signed the log with its records in it (the sequencer's tree)
        assert read_back(gate) == 0
        assert [s for s, _ in sizes] == [20, 40, 60]
        assert seq.tailer.size == 60 and gate.log_state() == seq.log_state()
        for old, new in itertools.pairwise(sizes):
            await consistent(gate, old, new)  # proofs served by the sequencer
        # new versions of five keys: it reads exactly their current versions, no more
        await publish(gate, pki_dir, batch_of(pki_dir, ps[:5], version=2, seed=99))
        assert read_back(gate) == 5
        assert await gate.head("population") == 64 and await gate.head() == 64
        # a subscriber near the head: only the records after its position, its dataset's
        rows = await gate.read("population", 60, 100)
        assert [r.seq for r in rows] == [61, 62, 63, 64]
        assert read_back(gate) == 9 and gate.feeds.records_read == {"population": 4}
        # what only a reader of every record knows, asked of the sequencer
        assert await gate.count_after("population", 59) == 5
        assert await gate.unresolved_counts() == {}


async def test_a_read_never_runs_ahead_of_the_log(tmp_path: Path,
                                                  nats_single: NatsCluster) -> None:
    """A record stored but not yet in the log (the sequencer has not read it) reaches no
    subscriber, and no receipt is signed for it."""
    pki_dir = make_pki(tmp_path / "pki")
    async with two_stores(nats_single) as (seq, gate):
        await publish(gate, pki_dir, batch_of(pki_dir, people(2, seed=5), seed=1))
        await seq.tailer.stop()  # the sequencer stops reading: the stream runs ahead of the log
        stored = asyncio.create_task(
            publish(gate, pki_dir, batch_of(pki_dir, people(3, seed=6), seed=2)))
        # a poll: the stream's state raises no event here
        await eventually(lambda: stream_last(gate, 5), what="the second batch stored")
        assert not stored.done()  # no receipt while its records are not in the log
        assert [r.seq for r in await gate.read("population", -1, 10)] == [0, 1]
        assert await gate.head("population") == 1
        seq.tailer.start()
        await stored
        assert [r.seq for r in await gate.read("population", -1, 10)] == [0, 1, 2, 3, 4]


async def test_the_role_moves_when_the_sequencer_is_cut_off(tmp_path: Path,
                                                           nats_single: NatsCluster) -> None:
    """A sequencer that can no longer renew its lease gives the role up; another broker takes
    it once the lease expires, reads the log up and signs on: checkpoints keep extending."""
    pki_dir = make_pki(tmp_path / "pki")
    url = store_url(nats_single) + "&lease=1"
    a, b = NatsStore(url), NatsStore(url)
    await a.open()
    await b.open()
    try:
        assert a.sequencing and not b.sequencing and a.lease_s == 1.0
        await publish(b, pki_dir, batch_of(pki_dir, people(4, seed=7), seed=1))
        key = tlog.NoteKey.from_private("test/log", pki.load_node_identity(pki_dir, POP)
                                        .signing_key)
        first = tlog.sign_checkpoint(key, "test/log", *a.log_state())
        await a.add_checkpoint(first, 0.0)
        before = b.log_state()
        # cut off: a's connection goes (as in a partition); its lease runs out unrenewed
        assert a._nc is not None
        await a._nc.close()
        await until(lambda: b.sequencing, lambda: b.lease.changed, within=15,
                    what="b takes the sequencer role")
        await until(lambda: not a.sequencing, lambda: a.lease.changed, within=15,
                    what="a gives the role up")
        await publish(b, pki_dir, batch_of(pki_dir, people(3, seed=8), seed=2))
        after = b.log_state()
        assert after[0] == 7
        await consistent(b, before, after)
        second = tlog.sign_checkpoint(key, "test/log", *after)
        await b.add_checkpoint(second, 0.0)  # stored only if it extends the first
        assert [cp.size for cp in await b.checkpoints()] == [4, 7]
    finally:
        await b.close()
        await a.close()


async def test_a_clean_stop_hands_the_role_over_at_once(tmp_path: Path,
                                                        nats_single: NatsCluster) -> None:
    """Closing the sequencer deletes its lease: the next broker takes it at its next round,
    not after the lease runs out."""
    url = store_url(nats_single) + "&lease=60"
    a, b = NatsStore(url), NatsStore(url)
    await a.open()
    await b.open()
    try:
        assert a.sequencing
        await a.close()
        await until(lambda: b.sequencing, lambda: b.lease.changed, within=15,
                    what="b takes the role well before its next round (20 s)")
    finally:
        await b.close()


async def test_without_a_sequencer_a_receipt_is_refused_not_faked(
        tmp_path: Path, nats_single: NatsCluster) -> None:
    """The lease is held but no one sequences (a holder stuck before it serves): a publish
    stores its records but gets no receipt (503): the retry finds them as duplicates."""
    pki_dir = make_pki(tmp_path / "pki")
    url = store_url(nats_single) + "&lease=1"
    a = NatsStore(url)
    await a.open()
    b = NatsStore(url, request_timeout=0.5)
    await b.open()
    try:
        assert a._nc is not None
        await a.sequencer.stop()  # a keeps the lease but no longer sequences
        with pytest.raises(UnavailableError):
            await publish(b, pki_dir, batch_of(pki_dir, people(2, seed=9), seed=1))
        assert b.log_state()[0] == 0
    finally:
        await b.close()
        await a.close()


def test_the_lease_is_a_url_parameter() -> None:
    assert parse_url("nats://h:1?lease=2.5")[1]["lease"] == "2.5"
    for bad in ("0", "61", "x"):
        with pytest.raises(Exception, match="lease"):
            NatsStore(f"nats://h:1?lease={bad}")
    assert not NatsStore("nats://h:1?sequencer=no").eligible
    assert NatsStore("nats://h:1").eligible
    with pytest.raises(Exception, match="sequencer"):
        NatsStore("nats://h:1?sequencer=maybe")


async def test_a_long_start_keeps_the_lease(tmp_path: Path, nats_single: NatsCluster) -> None:
    """Reading a long log up takes longer than the lease: the renewals go on meanwhile, so no
    other broker takes the role from a sequencer still starting."""
    store = NatsStore(store_url(nats_single) + "&lease=1")
    await store.open()
    try:
        await store.lease.stop()  # the store gives the role up: two leases by hand below
        kv = await store._lease_kv()
        release = asyncio.Event()

        async def slow_start() -> None:
            await release.wait()

        async def nothing() -> None:
            pass

        a = Lease(store._lease_kv, "a", 1.0, on_gain=slow_start, on_lose=nothing)
        b = Lease(store._lease_kv, "b", 1.0, on_gain=nothing, on_lose=nothing)
        await a.step()
        assert a.held and a.gaining is not None and not a.gaining.done()
        first = (await kv.get(LEASE_KEY)).revision

        async def renewed_past_the_lease() -> bool:
            # four renewals, a third of a lease apart: longer than the lease itself
            return bool((await kv.get(LEASE_KEY)).revision >= first + 4)

        a.start()
        # a poll: the renewals show only as the key's revision
        await eventually(renewed_past_the_lease, within=15, what="renewals while starting")
        await b.step()
        assert not b.held  # the key never expired
        release.set()
        assert await a.gaining and a.held
        await a.stop()
        await b.step()
        assert b.held  # a clean stop deleted the key
        await b.stop()
    finally:
        await store.close()


async def test_the_sequencer_bench_reads_every_record_up() -> None:
    """``python -m benchmarks.sequencer`` on a small log: the new sequencer read all of it
    (the bench asserts that too) and every part was measured."""
    from benchmarks.sequencer import run

    report = await run(2000)
    assert report["records"] == 2000 and report["catch_up_per_s"] > 0
    assert set(report["parts_us"]) == {"headers", "decode", "tree_and_index"}
    assert all(v > 0 for v in report["parts_us"].values())


async def test_a_receipt_citing_duplicates_waits_for_the_log_to_hold_them(
        tmp_path: Path, nats_single: NatsCluster) -> None:
    """After a fail-over a retry finds its records stored but not yet logged: its receipt
    cites them as duplicates, so it is signed only with a log that holds them."""
    pki_dir = make_pki(tmp_path / "pki")
    url = store_url(nats_single) + "&lease=0.5"
    seq = NatsStore(url)
    await seq.open()
    gate_store = NatsStore(url, request_timeout=0.3)
    await gate_store.open()
    try:
        await seq.tailer.stop()  # the log stops growing, as while a new sequencer reads up
        batch = batch_of(pki_dir, people(3, seed=12), seed=1)
        with pytest.raises(UnavailableError):  # stored, but no receipt: not in the log
            await publish(gate_store, pki_dir, batch)
        checked = gate.check(batch, node=POP, spec=SPEC,
                             verifier=Verifier(pki.load_signing_registry(pki_dir)),
                             limits=Limits(), ctx=datasets.RuleContext(today=TODAY))
        retry = gate.decide(checked, await gate_store.current(
            "population", [c.key for c in checked.candidates]))
        assert not retry.accepted and [d.seq for d in retry.duplicates] == [0, 1, 2]
        plan = ledger.plan([ledger.Append(POP, "population", batch, retry)], time.time())
        with pytest.raises(UnavailableError):  # no receipt citing seqs the log lacks
            await gate_store.append(plan)
        seq.tailer.start()
        await gate_store.append(plan)
        assert gate_store.log_state()[0] >= 3
    finally:
        await gate_store.close()
        await seq.close()


async def test_a_reader_ahead_of_the_feed_is_served(tmp_path: Path,
                                                    nats_single: NatsCluster) -> None:
    """A dataset's feed follows its slowest reader; a reader far ahead of it on the same
    broker is read for directly, not answered "nothing new"."""
    pki_dir = make_pki(tmp_path / "pki")
    async with two_stores(nats_single) as (_, reader):
        ps = people(2500, seed=14)
        for i in range(0, 2500, 500):
            await publish(reader, pki_dir, batch_of(pki_dir, ps[i:i + 500], seed=i + 1))
        assert [r.seq for r in await reader.read("population", -1, 10)] == list(range(10))
        ahead = await reader.read("population", 2000, 100)
        assert [r.seq for r in ahead] == list(range(2001, 2101))


async def test_a_broker_that_missed_announcements_learns_the_heads(
        tmp_path: Path, nats_single: NatsCluster) -> None:
    """Announcements are core NATS messages: one can be lost. The sequencer's idle
    announcement carries every dataset's head, so the loss lasts an idle poll."""
    pki_dir = make_pki(tmp_path / "pki")
    async with two_stores(nats_single) as (_, other):
        await publish(other, pki_dir, batch_of(pki_dir, people(3, seed=15), seed=1))
        other.view.heads.clear()  # as if the announcements of those records were lost
        assert await other.head("population") == -1
        # a poll: the idle announcement comes on the sequencer's own timer
        await eventually(lambda: other.view.heads.get("population") == 2, within=10,
                         what="the idle announcement's heads")


async def test_a_renewal_whose_reply_was_lost_keeps_the_lease(
        tmp_path: Path, nats_single: NatsCluster) -> None:
    store = NatsStore(store_url(nats_single) + "&lease=5")
    await store.open()
    try:
        await store.lease.stop()
        kv = await store._lease_kv()

        async def nothing() -> None:
            pass

        a = Lease(store._lease_kv, "a", 5.0, on_gain=nothing, on_lose=nothing)
        await a.step()
        assert a.gaining is not None and await a.gaining
        # a renewal that reached the server, its reply lost: the key moved past what a saw
        rev = (await kv.get(LEASE_KEY)).revision
        await kv.update(LEASE_KEY, b"a", last=rev)
        await a.step()
        assert a.held  # the key names a: the renewal is adopted, not taken for another's
        await a.stop()
    finally:
        await store.close()


async def test_a_broker_that_may_not_sequence_never_takes_the_role(
        tmp_path: Path, nats_single: NatsCluster) -> None:
    """``sequencer=no``: the broker gates and serves only. With no broker that may sequence,
    a publish is stored but gets no receipt; one that may takes the role and logs it."""
    pki_dir = make_pki(tmp_path / "pki")
    base = store_url(nats_single) + "&lease=1"
    eligible = NatsStore(base)
    await eligible.open()
    gate_only = NatsStore(base + "&sequencer=no", request_timeout=0.3)
    await gate_only.open()
    try:
        assert eligible.sequencing and not gate_only.sequencing
        await eligible.close()  # deletes the lease: a broker that may would take it now
        with pytest.raises(UnavailableError):
            await publish(gate_only, pki_dir, batch_of(pki_dir, people(2, seed=16), seed=1))
        assert not gate_only.sequencing
        again = NatsStore(base)
        await again.open()
        try:
            assert again.sequencing
            await gate_only.sync()  # the stored records are logged now
            assert gate_only.log_state()[0] == 2
        finally:
            await again.close()
    finally:
        await gate_only.close()


async def test_heads_come_back_while_another_dataset_keeps_growing(
        tmp_path: Path, nats_single: NatsCluster) -> None:
    """The sequencer is never idle here (population keeps growing), yet a broker that missed
    the announcement of another dataset's records learns its head: every dataset's head goes
    out at least once a second, busy or idle."""
    from exchange.sim.agencies import OWNERS
    from exchange.sim.generate import Generator

    pki_dir = make_pki(tmp_path / "pki")
    tax_owner, tax_spec = OWNERS["tax"], datasets.get("tax")
    gen = Generator(5, today=TODAY)
    taxes = gen.tax(3, gen.population(3))
    async with two_stores(nats_single) as (_, other):
        batch = seal(pki.load_node_identity(pki_dir, tax_owner).signing_key, tax_owner,
                     tax_spec, [(r["tax_id"], 1, r) for r in taxes], b"\x07" * 32, time=SEALED_AT)
        checked = gate.check(batch, node=tax_owner, spec=tax_spec,
                             verifier=Verifier(pki.load_signing_registry(pki_dir)),
                             limits=Limits(), ctx=datasets.RuleContext(today=TODAY))
        decided = gate.decide(checked, {})
        assert len(decided.accepted) == 3
        await other.append(ledger.plan([ledger.Append(tax_owner, "tax", batch, decided)],
                                       time.time()))
        other.view.heads.clear()  # as if the announcement of the tax records were lost
        ps = people(400, seed=17)
        deadline = time.monotonic() + 15
        i = 0
        while other.view.heads.get("tax") != 2:
            assert time.monotonic() < deadline, "no announcement brought the tax head back"
            await publish(other, pki_dir, batch_of(pki_dir, ps[i % 400:i % 400 + 1],
                                                   version=1 + i // 400, seed=i + 1))
            i += 1
        assert other.view.heads["population"] >= 3


async def test_renewals_follow_the_lease_the_bucket_was_made_with(
        tmp_path: Path, nats_single: NatsCluster) -> None:
    """A broker asked for another lease than the bucket's would renew too seldom and lose the
    role again and again: it follows the bucket's expiry."""
    url = store_url(nats_single)
    first = NatsStore(url + "&lease=1")
    await first.open()
    later = NatsStore(url + "&lease=30")
    await later.open()
    try:
        assert later.lease_s == later.lease.ttl == 1.0
    finally:
        await later.close()
        await first.close()


async def test_a_broker_restarted_after_a_crash_takes_its_own_lease_back(
        tmp_path: Path, nats_single: NatsCluster) -> None:
    """The lease id lives in the broker's data directory: restarted after a crash, it takes
    back the lease its dead self held instead of waiting for it to expire (60 s here)."""
    url = store_url(nats_single) + "&lease=60"
    id_file = tmp_path / "data" / "nats-lease-id"
    crashed = NatsStore(url, lease_id_file=id_file)
    await crashed.open()
    assert crashed.sequencing and id_file.is_file()
    assert crashed._nc is not None
    await crashed._nc.close()  # gone without a word: its lease stays, naming its id
    restarted = NatsStore(url, lease_id_file=id_file)
    try:
        await asyncio.wait_for(restarted.open(), 20)
        assert restarted.sequencing
        assert restarted.lease.instance == crashed.lease.instance
        stranger = NatsStore(url, lease_id_file=tmp_path / "other" / "nats-lease-id")
        await stranger.open()
        try:
            assert not stranger.sequencing  # another id: the lease is not its
        finally:
            await stranger.close()
    finally:
        await restarted.close()
        await crashed.close()


def test_the_version_struct_is_the_entrys_leading_fields() -> None:
    """A decision decodes a stored entry's leading fields only (``_Version``, array-like): they
    must stay exactly ``ledger.Entry``'s first fields, in order and type."""
    from exchange.store.nats.store import _Version

    n = len(_Version.__struct_fields__)
    assert _Version.__struct_fields__ == ledger.Entry.__struct_fields__[:n]
    assert all(_Version.__annotations__[f] == ledger.Entry.__annotations__[f]
               for f in _Version.__struct_fields__)
