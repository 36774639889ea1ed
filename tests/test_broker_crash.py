"""The broker killed with SIGKILL in the middle of a stream, then restarted on the same port and
data directory: every receipted record reaches the subscriber's handler exactly once, and the
store holds it exactly once. The broker runs as a real process (``python -m exchange``)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sqlite3
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

from exchange import audit
from exchange.core.errors import ExchangeError
from exchange.node import Delivery, Node, NodeConfig, PublishResult, Record
from exchange.store.nats.server import NatsCluster
from tests import nats_fixtures
from tests.conftest import OWNERS, broker_config, make_pki, people

nats_cluster = nats_fixtures.nats_cluster

POP = OWNERS["population"]
LAND = OWNERS["land"]
CHUNK = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class BrokerProcess:
    def __init__(self, config: Path, port: int, logs: Path) -> None:
        self.config = config
        self.port = port
        self.logs = logs
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        log = open(self.logs / f"broker-{self.starts}.log", "wb")  # noqa: SIM115
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "exchange", "broker", "serve", "--config",
                str(self.config), "--listen", f"127.0.0.1:{self.port}",
                stdout=asyncio.subprocess.PIPE, stderr=log)
        finally:
            log.close()
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
            if not line:
                raise AssertionError("broker exited: " + (self.logs / f"broker-{self.starts}.log"
                                                          ).read_text()[-2000:])
            if b'"listening"' in line:
                assert f'"port": {self.port}'.encode() in line
                return

    async def kill(self, sig: signal.Signals) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = await asyncio.wait_for(self.proc.wait(), 30)
        self.proc = None
        return rc


async def test_sigkill_mid_stream_loses_and_repeats_nothing(tmp_path: Path) -> None:
    await crash_rounds(tmp_path, kills=2)


async def crash_rounds(tmp_path: Path, *, kills: int, seed: int = 5,
                       rnd: random.Random | None = None, store: str = "sqlite"
                       ) -> dict[str, int]:
    """Publish while a subscriber reads; SIGKILL the broker ``kills`` times, each with a batch
    on the wire (at a random receipt count when ``rnd`` is given), restarting it on the same
    port and data; then check exactly-once delivery and storage, and audit the log. Returns
    the figures (``make faults`` runs it with a hundred kills)."""
    pki_dir = make_pki(tmp_path)
    port = free_port()
    config = msgspec.structs.replace(broker_config(pki_dir, tmp_path / "data"),
                                     listen=f"127.0.0.1:{port}", store=store)
    config_file = tmp_path / "broker.json"
    config_file.write_bytes(msgspec.json.encode(config))
    broker = BrokerProcess(config_file, port, tmp_path)
    url = f"https://127.0.0.1:{port}"

    def node_config(node: str) -> NodeConfig:
        return NodeConfig(node_id=node, pki_dir=str(pki_dir), brokers=[url], linger_s=0.002,
                          batch_size=CHUNK, retries=60, timeout_s=10)

    # enough records for every kill to land mid-stream
    everyone = people((8 * kills + 24) * CHUNK, seed=seed)
    thresholds, at = [], 0
    for _ in range(kills):
        at += rnd.randint(1, 8) if rnd is not None else 5
        thresholds.append(at)
    results: list[tuple[list[dict[str, Any]], PublishResult]] = []
    failures: list[ExchangeError] = []
    progress = asyncio.Event()
    handled: list[int] = []
    caught_up = asyncio.Event()
    expected: set[int] = set()

    async def handler(d: Delivery) -> None:
        handled.append(d.seq)
        if expected and expected <= set(handled):
            caught_up.set()

    stop = asyncio.Event()

    async def publisher(pop: Node) -> None:
        for i in range(0, len(everyone), CHUNK):
            if stop.is_set():
                return
            chunk = everyone[i:i + CHUNK]
            try:
                results.append((chunk, await pop.publish("population",
                                                          [Record(p) for p in chunk])))
            except ExchangeError as err:  # the batch in flight at the kill: never receipted
                failures.append(err)
            progress.set()

    async def wait_results(n: int) -> None:
        while len(results) < n:
            progress.clear()
            await asyncio.wait_for(progress.wait(), 60)

    await broker.start()
    try:
        async with Node(node_config(POP)) as pop, Node(node_config(LAND)) as land:
            sub = land.subscribe("population", "crash", handler, credits=100)
            task = asyncio.create_task(publisher(pop))
            for receipts in thresholds:  # each kill with a batch on the wire
                await wait_results(receipts)
                assert await broker.kill(signal.SIGKILL) == -signal.SIGKILL
                await broker.start()
            await wait_results(thresholds[-1] + 6)
            stop.set()
            await asyncio.wait_for(task, 60)
            for _, res in results:
                expected.update(s for s in res.seqs if s is not None)
            if not expected <= set(handled):
                await asyncio.wait_for(caught_up.wait(), 60)
            assert sub.reconnects >= kills
            await sub.stop()
    finally:
        if broker.proc is not None:
            assert await broker.kill(signal.SIGTERM) == 0

    # every receipted record reached the handler exactly once, in order, without a gap
    assert len(handled) == len(set(handled)), [s for s, n in Counter(handled).items() if n > 1]
    assert handled == list(range(len(handled)))
    assert expected <= set(handled)
    receipted = [(p["id"], seq) for chunk, res in results
                 for p, seq in zip(chunk, res.seqs, strict=True) if seq is not None]
    assert len(receipted) == len(expected) >= (thresholds[-1] + 6) * CHUNK - len(failures) * CHUNK
    assert all(not res.rejected for _, res in results)

    # the store holds each record exactly once, under the seq its receipt named
    rows = await _stored(tmp_path, store)
    assert [r[0] for r in rows] == list(range(len(rows)))
    keys = Counter((key, version) for _, key, version in rows)
    assert max(keys.values()) == 1
    by_seq = {seq: key for seq, key, _ in rows}
    assert all(by_seq[seq] == key for key, seq in receipted)
    assert set(handled) <= set(by_seq)

    # and the transparency log re-derives from what is stored: no partial batch, no gap
    # (offline on sqlite; on NATS the records stream is read back above, in order)
    entries = len(rows)
    if store == "sqlite":
        result = audit.audit_data(tmp_path / "data")
        assert result.ok, result.as_dict()
        entries = result.entries
    return {"kills": kills, "receipted": len(receipted), "failed_batches": len(failures),
            "delivered": len(handled), "audited_entries": entries}


async def _stored(tmp_path: Path, store: str) -> list[tuple[int, str, int]]:
    """(seq, key, version) of every stored population record, in seq order."""
    if store == "sqlite":
        db = sqlite3.connect(tmp_path / "data" / "exchange.sqlite")
        try:
            return [(int(r[0]), str(r[1]), int(r[2])) for r in db.execute(
                "SELECT seq, key, version FROM records WHERE dataset='population' "
                "ORDER BY seq").fetchall()]
        finally:
            db.close()
    from exchange.store.nats.store import NatsStore

    nats = NatsStore(store)
    await nats.open()
    try:
        rows: list[tuple[int, str, int]] = []
        after = -1
        while batch := await nats.read("population", after, 1000):
            rows.extend((r.seq, r.key, r.version) for r in batch)
            after = batch[-1].seq
        return rows
    finally:
        await nats.close()
    assert os.path.exists(tmp_path / "broker-3.log")


async def test_sigkill_mid_stream_on_a_nats_cluster(tmp_path: Path,
                                                   nats_cluster: NatsCluster) -> None:
    """The same on a 3-node JetStream cluster (R3): the broker is stateless over it."""
    from tests.nats_fixtures import store_url

    await crash_rounds(tmp_path, kills=2, store=store_url(nats_cluster))
