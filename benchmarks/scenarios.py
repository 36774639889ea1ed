"""The bench's scenarios, each against a fresh broker subprocess over TLS.

- ``publish_only``: pre-sealed batches over the publish WebSocket, as fast as the broker takes
  them (gate + store + log + receipt); nobody subscribes. With batches of one it is the
  broker's ingest with one signature per record.
- ``replay``: a new subscription from seq 0 reads the backlog ``publish_only`` left.
- ``e2e``: the node SDK signs and publishes, the broker gates, stores, logs and delivers, the
  SDK verifies every record against its publisher's signature and acks: closed loop (as fast as
  it goes) or open loop (a fixed offered rate, latency measured from the scheduled send time, so
  queueing in the publisher counts too). Batch signatures, or one signature per record.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import PUBLISHER, SUBSCRIBER, BrokerGroup
from benchmarks.load import Pool, Sink, WsPublisher, node_config, seal_batches, wait_connected
from exchange import pki
from exchange.node import Node

__all__ = ["Context", "Result", "e2e", "publish_only", "replay"]


@dataclass
class Result:
    scenario: str
    records: int
    seconds: float
    nbytes: int
    broker_cpu_s: float
    broker_peak_rss_mb: float
    latency: dict[str, float] | None = None
    offered_per_s: float | None = None
    subscribers: int = 0
    signatures: str = "batch"
    note: str = ""
    #: where the load ran: this process, or processes of its own (``--load-procs``)
    load: str = "in-process"
    #: CPU seconds and µs per record of each party (``procs.parties``), when measured
    parties: dict[str, Any] | None = None

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "records": self.records,
                "seconds": round(self.seconds, 3),
                "records_per_s": round(self.records_per_s, 1),
                "mb_per_s": round(self.mb_per_s, 3), "subscribers": self.subscribers,
                "signatures": self.signatures,
                "offered_per_s": None if self.offered_per_s is None else round(
                    self.offered_per_s, 1),
                "latency": self.latency, "broker_cpu_s": round(self.broker_cpu_s, 2),
                "broker_cpu_per_record_us": round(
                    self.broker_cpu_s / self.records * 1e6, 1) if self.records else None,
                "broker_peak_rss_mb": round(self.broker_peak_rss_mb, 1), "note": self.note,
                "load": self.load, "parties": self.parties}


class Progress:
    """A one-line progress bar on stderr (only when it is a terminal)."""

    def __init__(self, enabled: bool) -> None:
        import sys

        self.enabled = enabled and sys.stderr.isatty()
        self.label = ""
        self.step = ""
        self._last = 0.0

    def start(self, label: str, step: str = "") -> None:
        self.label, self.step = label, step
        self._last = 0.0
        self.update(0.0, "")

    def update(self, fraction: float, detail: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and fraction < 1:
            return
        self._last = now
        import sys

        width = 24
        filled = int(width * max(0.0, min(1.0, fraction)))
        bar = "█" * filled + "░" * (width - filled)
        sys.stderr.write(f"\r\x1b[K{self.step:>5} {self.label:<26} {bar} {fraction:4.0%} "
                         f"{detail}")
        sys.stderr.flush()

    def done(self, detail: str) -> None:
        if self.enabled:
            import sys

            sys.stderr.write(f"\r\x1b[K{self.step:>5} {self.label:<26} {detail}\n")
            sys.stderr.flush()


@dataclass
class Context:
    root: Path
    pki_dir: Path
    store: str = "sqlite"
    pool: Pool = field(default_factory=Pool)
    progress: Progress = field(default_factory=lambda: Progress(False))
    #: wire bytes of one published record (MessagePack batch body / records), for MB/s
    record_bytes: float = 650.0
    #: where each broker serves, ``HOST:PORT`` (port 0: any free one)
    listen: str = "127.0.0.1:0"
    #: publisher processes of the load (0: publishers and subscribers in this process)
    load_procs: int = 0
    #: broker processes per scenario (over one JetStream: ``store="nats"``)
    brokers: int = 1
    #: more ``exchange broker serve`` options (``--workers N``)
    broker_args: list[str] = field(default_factory=list)

    def broker(self, name: str) -> BrokerGroup:
        return BrokerGroup(self.root / name, self.pki_dir, self.store, self.brokers,
                           listen=self.listen, args=self.broker_args)

    def ssl(self, node: str) -> Any:
        return pki.client_ssl_context(self.pki_dir, node)


async def publish_only(ctx: Context, broker: BrokerGroup, total: int, batch: int = 1000,
                       window: int = 8, label: str = "publish only") -> Result:
    """Broker ingest: pre-sealed batches, ``window`` in flight on one publish WebSocket."""
    if ctx.load_procs:
        from benchmarks import procs

        return await procs.publish_only(ctx, broker, total, batch, window, label)
    ctx.progress.update(0, "sealing batches")
    batches = list(seal_batches(ctx.pki_dir, PUBLISHER, ctx.pool, total, batch))
    nbytes = sum(len(b) for _, b in batches)
    if batch > 1:
        ctx.record_bytes = nbytes / total  # what MB/s of later scenarios count per record
    stats = broker.stats
    cpu0 = stats.cpu_s()
    stats.reset_peak()
    pub = WsPublisher(broker.url, ctx.ssl(PUBLISHER), window=window)
    t0 = time.perf_counter()

    def progress(done: int) -> None:
        el = time.perf_counter() - t0
        ctx.progress.update(done / total, f"{done / el if el else 0:,.0f} rec/s")

    await pub.run(iter(batches), progress)
    seconds = time.perf_counter() - t0
    return Result(label, pub.accepted, seconds, nbytes, stats.cpu_s() - cpu0,
                  stats.peak_rss_mb(), signatures="batch" if batch > 1 else "per-record",
                  note=f"batches of {batch}, pre-sealed, {window} in flight")


async def replay(ctx: Context, broker: BrokerGroup, total: int, label: str = "replay from seq 0"
                 ) -> Result:
    """A new subscription reads ``total`` stored records from seq 0, verifying each."""
    if ctx.load_procs:
        from benchmarks import procs

        return await procs.replay(ctx, broker, total, label)
    stats = broker.stats
    cpu0 = stats.cpu_s()
    stats.reset_peak()
    sink = Sink(expected=total)
    async with Node(node_config(ctx.pki_dir, SUBSCRIBER, broker.url)) as node:
        t0 = time.time()
        node.subscribe("population", f"replay{int(t0)}", sink.handler(), start="earliest",
                       credits=10_000)
        while not sink.done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sink.done.wait(), 0.2)
            el = time.time() - t0
            ctx.progress.update(sink.delivered / total, f"{sink.delivered / el:,.0f} rec/s")
            if el > 600:
                raise RuntimeError(f"replay stalled at {sink.delivered} of {total}")
        seconds = sink.last_at - t0
    return Result(label, sink.delivered, seconds, int(sink.delivered * ctx.record_bytes),
                  stats.cpu_s() - cpu0, stats.peak_rss_mb(), subscribers=1,
                  note="subscribe start=earliest, every record verified")


async def e2e(ctx: Context, *, subscribers: int = 1, duration: float = 5.0,
              rate: float | None = None, per_record: bool = False, label: str = "") -> Result:
    """Sign → publish → gate → store/log → deliver → verify → ack, against a fresh broker.

    ``rate`` None: closed loop, the publisher keeps enough batches in flight to saturate;
    otherwise open loop at ``rate`` records/s. Records/s counts records delivered to (and
    verified by) every subscriber, over the time from the first send to the last delivery.
    """
    broker = ctx.broker("e2e").start()
    try:
        if ctx.load_procs:
            from benchmarks import procs

            return await procs.e2e(ctx, broker, subscribers, duration, rate, per_record, label)
        return await _e2e(ctx, broker, subscribers, duration, rate, per_record, label)
    finally:
        broker.stop()


async def _e2e(ctx: Context, broker: BrokerGroup, subscribers: int, duration: float,
               rate: float | None, per_record: bool, label: str) -> Result:
    # one signature per record: batches of one, streamed on the publish WebSocket
    pub_kw: dict[str, Any] = {"batch_size": 1, "linger_s": 0.0, "max_in_flight": 64,
                              "transport": "websocket"} if per_record else {}
    sink = Sink(subscribers=subscribers)
    stats = broker.stats
    async with Node(node_config(ctx.pki_dir, PUBLISHER, broker.url, **pub_kw)) as pub, \
            Node(node_config(ctx.pki_dir, SUBSCRIBER, broker.url)) as sub:
        handler = sink.handler()
        subs = [sub.subscribe("population", f"bench{i}", handler, credits=5000)
                for i in range(subscribers)]
        await wait_connected(sub, subs)
        # warm up: TLS sessions, key trust, sqlite pages; not measured
        warm = ctx.pool.records(200)
        sink.expected = len(warm) * subscribers
        await pub.publish("population", warm)
        await asyncio.wait_for(sink.done.wait(), 60)
        base = sink.delivered
        sink.done.clear()
        cpu0 = stats.cpu_s()
        stats.reset_peak()
        t0 = time.time()
        sink.measure_from = t0
        sent = 0
        tasks: set[asyncio.Task[Any]] = set()
        chunk = 200 if per_record else 1000

        def show() -> None:
            el = time.time() - t0
            got = (sink.delivered - base) / subscribers
            ctx.progress.update(min(1.0, el / duration),
                                f"{got / el if el > 0 else 0:,.0f} rec/s delivered")

        if rate is None:
            async def closed() -> None:
                nonlocal sent
                while time.time() - t0 < duration:
                    recs = ctx.pool.records(chunk)
                    now = time.time()
                    for r in recs:
                        sink.sent_at[(r.data["id"], r.version)] = now
                    sent += len(recs)
                    await pub.publish("population", recs)
                    show()

            await asyncio.gather(*(closed() for _ in range(2 if per_record else 6)))
        else:
            tick = 0.005
            while (now := time.time()) < t0 + duration:
                due = int((now - t0) * rate) - sent
                if due > 0:
                    recs = ctx.pool.records(due)
                    for i, r in enumerate(recs):
                        sink.sent_at[(r.data["id"], r.version)] = t0 + (sent + i) / rate
                    sent += due
                    t = asyncio.create_task(pub.publish("population", recs))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                show()
                await asyncio.sleep(tick)
            await asyncio.gather(*tasks)
        sink.expected = base + sent * subscribers
        deadline = time.time() + max(60.0, duration * 4)
        while sink.delivered < sink.expected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sink.done.wait(), 0.2)
            show()
            if time.time() > deadline:
                break
        delivered = (sink.delivered - base) // subscribers
        seconds = sink.last_at - t0
        for s in subs:
            if s.evidence:
                raise RuntimeError(f"records failed verification: {s.evidence[:3]}")
    name = label or (f"e2e {'per-record' if per_record else 'batch'} sigs, {subscribers} sub"
                     + ("s" if subscribers > 1 else "")
                     + ("" if rate is None else f", open loop {rate:,.0f}/s"))
    note = "" if delivered >= sent else f"only {delivered} of {sent} delivered in time"
    return Result(name, delivered, seconds, int(delivered * ctx.record_bytes),
                  stats.cpu_s() - cpu0, stats.peak_rss_mb(), latency=sink.hist.summary(),
                  offered_per_s=rate, subscribers=subscribers,
                  signatures="per-record" if per_record else "batch", note=note)
