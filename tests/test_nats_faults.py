"""Faults under load on NATS: a steady publish + subscribe load through real broker processes
(``python -m exchange broker serve``) on a real 3-node cluster with R3 streams, while

- the NATS server leading the records stream is killed with SIGKILL, then restarted;
- one of two brokers serving the same exchange, the sequencer, is killed with SIGKILL (the
  nodes, given both URLs, fail over to the other, which takes the sequencer role over once the
  lease runs out).

Either way every record that got a receipt reaches the handler of every entitled subscriber
exactly once: each handler sees strictly increasing seqs, and exactly the receipted ones."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats
import pytest

from exchange import audit
from exchange.core import tlog
from exchange.core.errors import ExchangeError
from exchange.node import Delivery, Node, NodeConfig, PublishResult, Record, Subscription
from exchange.sim.agencies import OWNERS
from exchange.store.nats.server import NatsCluster, free_port
from tests.conftest import broker_config, eventually, make_pki, people
from tests.nats_fixtures import prefix
from tests.test_broker_crash import BrokerProcess

POP = OWNERS["population"]
#: every node the agreements entitle to population records
SUBSCRIBERS = [OWNERS["tax"], OWNERS["land"], OWNERS["vehicle"]]
CHUNK = 40
#: the load stops at this many chunks or seconds, whatever happens (the test stops it sooner)
MAX_CHUNKS = 1000
MAX_LOAD_S = 60.0
#: the people published, again and again with rising versions (as a live registry does)
POOL = 400


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """This module's own 3-node cluster: its servers get killed, the session's must not."""
    c = NatsCluster(tmp_path_factory.mktemp("nats-faults"), 3)
    c.start()
    try:
        c.wait_healthy_sync()
        yield c
    finally:
        c.stop()


@dataclass
class Load:
    """A publisher sending chunks one after another, and what each subscriber's handler saw."""

    pop: Node
    people: list[dict[str, object]]
    results: list[PublishResult] = field(default_factory=list)
    failures: list[ExchangeError] = field(default_factory=list)
    handled: dict[str, list[int]] = field(default_factory=dict)
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def handler(self, node: str) -> Callable[[Delivery], Awaitable[None]]:
        seen = self.handled.setdefault(node, [])

        async def on_record(d: Delivery) -> None:
            seen.append(d.seq)

        return on_record

    async def publish(self) -> None:
        deadline = asyncio.get_running_loop().time() + MAX_LOAD_S
        for i in range(0, MAX_CHUNKS * CHUNK, CHUNK):
            if self.stop.is_set() or asyncio.get_running_loop().time() > deadline:
                return
            chunk = [Record(self.people[n % POOL], version=1 + n // POOL)
                     for n in range(i, i + CHUNK)]
            try:
                self.results.append(await self.pop.publish("population", chunk))
            except ExchangeError as err:  # no receipt: allowed, and then not expected either
                self.failures.append(err)
            self.progress.set()

    def done(self) -> int:
        return len(self.results) + len(self.failures)

    async def receipts(self, n: int, within: float = 60.0) -> None:
        """Until ``n`` publishes have returned (the load goes on meanwhile)."""
        async def wait() -> None:
            while self.done() < n:
                self.progress.clear()
                await self.progress.wait()
        await asyncio.wait_for(wait(), within)

    def receipted(self) -> set[int]:
        return {s for res in self.results for s in res.seqs if s is not None}


def node_config(pki_dir: Path, node: str, urls: list[str]) -> NodeConfig:
    # retries and timeouts sized for a NATS leader election (seconds), not for a healthy run;
    # each chunk leaves as four batches in flight at once, so a fault hits several together
    return NodeConfig(node_id=node, pki_dir=str(pki_dir), brokers=urls, linger_s=0.002,
                      batch_size=CHUNK // 4, max_in_flight=4, retries=60, timeout_s=10)


async def start_brokers(tmp_path: Path, store: str, n: int) -> tuple[Path, list[BrokerProcess]]:
    """``n`` broker processes on one exchange: same PKI, config and store, own data dirs;
    started one after another, so the first holds the sequencer lease."""
    pki_dir = make_pki(tmp_path)
    brokers = []
    for i in range(n):
        port = free_port()
        config = msgspec.structs.replace(broker_config(pki_dir, tmp_path / f"data{i}"),
                                         listen=f"127.0.0.1:{port}", store=store)
        config_file = tmp_path / f"broker{i}.json"
        config_file.write_bytes(msgspec.json.encode(config))
        logs = tmp_path / f"logs{i}"
        logs.mkdir()
        brokers.append(BrokerProcess(config_file, port, logs))
    try:
        for b in brokers:
            await b.start()
    except BaseException:
        # one did not start: the ones that did must not outlive the test
        for b in brokers:
            if b.proc is not None:
                await b.kill(signal.SIGKILL)
        raise
    return pki_dir, brokers


async def stop_brokers(brokers: list[BrokerProcess]) -> None:
    for b in brokers:
        if b.proc is not None:
            assert await b.kill(signal.SIGTERM) == 0


def check(load: Load) -> None:
    """Exactly the receipted seqs reached each handler, once each, in increasing order."""
    expected = load.receipted()
    assert len(expected) >= 10 * CHUNK
    assert all(not res.rejected and not res.failed for res in load.results)
    for node in SUBSCRIBERS:
        seqs = load.handled[node]
        assert all(a < b for a, b in itertools.pairwise(seqs)), node
        assert set(seqs) == expected, (node, sorted(set(seqs) ^ expected)[:10])


async def run_until_caught_up(load: Load, task: asyncio.Task[None], extra: int) -> None:
    await load.receipts(load.done() + extra)
    load.stop.set()
    await asyncio.wait_for(task, 60)
    expected = load.receipted()
    # a poll: the subscribers catch up on their own schedules, across broker fail-overs
    await eventually(lambda: all(expected <= set(load.handled[n]) for n in SUBSCRIBERS),
                     within=60, what="every subscriber has every receipted record")


async def checkpointed(node: Node, size: int) -> bool:
    try:
        return (await node.tlog.refresh()).size >= size
    except ExchangeError:  # 503 while NATS elects the checkpoints stream's leader
        return False


async def records_leader(cluster: NatsCluster, stream: str) -> str:
    nc = await nats.connect(servers=[s.url for s in cluster.servers], connect_timeout=2)
    try:
        info = await nc.jetstream(timeout=5).stream_info(stream)
    finally:
        await nc.close()
    assert info.cluster is not None and info.cluster.leader
    return info.cluster.leader


@contextlib.asynccontextmanager
async def loaded(pki_dir: Path, urls: list[str], *, seed: int
                 ) -> AsyncIterator[tuple[Load, list[Node], list[Subscription]]]:
    """The publisher and the three entitled subscribers, connected, with the load to drive."""
    async with contextlib.AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(Node(node_config(pki_dir, n, urls)))
                 for n in (POP, *SUBSCRIBERS)]
        load = Load(nodes[0], people(POOL, seed=seed))
        subs = [n.subscribe("population", "faults", load.handler(n.config.node_id), credits=200)
                for n in nodes[1:]]
        await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in subs)), 30)
        yield load, nodes, subs


async def test_nats_server_killed_and_restarted_under_load(tmp_path: Path,
                                                           cluster: NatsCluster) -> None:
    p = prefix()
    pki_dir, brokers = await start_brokers(tmp_path, f"{cluster.url}?prefix={p}", 1)
    urls = [f"https://127.0.0.1:{brokers[0].port}"]
    try:
        async with loaded(pki_dir, urls, seed=71) as (load, _, subs):
            task = asyncio.create_task(load.publish())
            await load.receipts(5)
            # the server leading the records stream: its loss forces an election
            leader = await records_leader(cluster, f"{p.upper()}_RECORDS")
            victim = next(s for s in cluster.servers if s.name == leader)
            await asyncio.to_thread(victim.kill, signal.SIGKILL)
            await load.receipts(load.done() + 3)
            victim.start()
            await cluster.wait_healthy(servers=[victim])
            await run_until_caught_up(load, task, extra=3)
            for s in subs:
                await s.stop()
            # the transparency log came through too: a checkpoint covering every receipt, once
            # the checkpoints stream has a leader again (stopping the broker signs none then);
            # a poll: the test sees the broker's checkpoint timer only through the API
            await eventually(lambda: checkpointed(load.pop, max(load.receipted()) + 1), within=30,
                             what="a checkpoint covering every receipted record")
    finally:
        await stop_brokers(brokers)
    assert not load.failures, load.failures
    check(load)


async def audit_online(node: Node, size: int, checkpoints: list[tlog.Checkpoint]
                       ) -> audit.AuditResult:
    """``exchange audit --broker``'s check: every log entry as served, against checkpoints."""
    entries: list[dict[str, object]] = []
    while len(entries) < size:
        page = await node.get_json(f"/v1/log/entries?start={len(entries)}&end={size}")
        assert page, "the broker served fewer entries than its checkpoint covers"
        entries.extend(page)
    return audit.audit_entries(entries, checkpoints)


async def sequencing(node: Node) -> bool:
    """Whether the broker ``node`` talks to holds the sequencer lease (``/healthz``)."""
    health = await node.client.get_json("/healthz")
    return bool(health["cluster"]["sequencer"])


async def test_broker_killed_nodes_fail_over(tmp_path: Path, cluster: NatsCluster) -> None:
    pki_dir, brokers = await start_brokers(tmp_path, f"{cluster.url}?prefix={prefix()}", 2)
    urls = [f"https://127.0.0.1:{b.port}" for b in brokers]
    try:
        async with loaded(pki_dir, urls, seed=72) as (load, nodes, subs):
            assert await sequencing(nodes[0])  # the first broker: the sequencer
            task = asyncio.create_task(load.publish())
            await load.receipts(5)
            before = await load.pop.tlog.refresh()  # trusted: what comes later must extend it
            assert before.size > 0
            # everyone is on the first broker (the first URL): kill it, a batch on the wire;
            # the log stops growing until the other takes the lease over (receipts wait)
            assert await brokers[0].kill(signal.SIGKILL) == -signal.SIGKILL
            await run_until_caught_up(load, task, extra=6)
            for node, s in zip(nodes, (None, *subs), strict=True):
                assert node.url == urls[1]
                if s is not None:
                    assert s.reconnects >= 1
                    await s.stop()
            assert await sequencing(nodes[0])  # the survivor took the role over
            # and signs on: a checkpoint covering every receipt, consistent with the ones
            # before (the node checks each against the last it saw); a poll: the test sees
            # the broker's checkpoint timer only through the API
            await eventually(lambda: checkpointed(load.pop, max(load.receipted()) + 1),
                             within=30, what="a checkpoint covering every receipted record")
            # the audit passes across the fail-over: the log served by the survivor rebuilds
            # to the checkpoint the dead sequencer signed and to the one its successor did
            after = load.pop.tlog.trusted
            assert after is not None and after.size > before.size
            assert (await audit_online(load.pop, after.size, [before, after])).ok
    finally:
        await stop_brokers(brokers)
    assert not load.failures, load.failures
    check(load)


async def test_batches_failing_together_fail_over_once(tmp_path: Path) -> None:
    """Four batches in flight on a broker that dies each report it: the node moves to the next
    broker once, not four times (which would bring it back to the dead one)."""
    pki_dir = make_pki(tmp_path)
    node = Node(node_config(pki_dir, POP, ["https://127.0.0.1:1", "https://127.0.0.1:2"]))
    failed = node.url
    for _ in range(4):
        node.client.fail_over(failed)
    assert node.url == "https://127.0.0.1:2"
    node.client.fail_over(node.url)
    assert node.url == failed
