"""Scale-out on NATS: end-to-end records/s with 1, 2 and 3 broker processes on a 3-node NATS
cluster (R3 streams), beside one broker on the sqlite store, in the same run.

    python -m benchmarks.nats_scale [--duration S] [--json] [--work-dir DIR]

Every configuration gets the same load: three publisher nodes (two closed loops of 1,000-record
batches each) and three subscriptions, publisher ``i`` and subscription ``i`` on broker
``i mod n``. Records/s is records delivered to (and verified by) every subscription, over the
time from the first send to the last delivery.

One machine (2 cores here) runs everything, so the figures are bounded by the sum of all CPU.
The CPU seconds each process used in the window (utime + stime from ``/proc/<pid>/stat``) say
what each part costs per record and predict throughput once each has a machine of its own: a
process that used ``u`` cores while the exchange delivered ``r`` records/s could carry about
``r * C / u`` on a machine where it gets ``C`` cores (C = 1 for a broker, a Python process with
one event loop; C = 2 for a nats-server, which is multi-threaded). The prediction for a
configuration is the lowest of those over brokers and nats-servers; the load generator stands
for the agencies' own machines and is left out.

On NATS one broker is the sequencer (it reads the whole records stream back, grows the log,
signs checkpoints); the others only gate and serve their own clients. From the largest NATS
run, the CPU of a broker that is not the sequencer gives ``g``, µs per record it gates,
together with its share of serving the subscriptions (they are spread evenly, as the
publishers are), and the sequencer's CPU less that same share gives ``s``, µs per record of
the whole log; with N brokers each taking 1/N of the publishers and subscriptions, N brokers
carry about ``min(N * 1e6 / g, 1e6 / (s + g / N))`` records/s (``scaling`` in the JSON),
beside the nats-servers' own bound; with the sequencer on a process of its own that takes no
clients (the others ``?sequencer=no``), N processes carry ``min((N - 1) * 1e6 / g, 1e6 / s)``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import PUBLISHER, SUBSCRIBER, BrokerProcess, ProcStats, make_pki
from benchmarks.load import Pool, Sink, node_config, wait_connected
from exchange.node import Node
from exchange.store.nats.server import NatsCluster

__all__ = ["Run", "main", "run"]

PUBLISHERS = 3
LOOPS_PER_PUBLISHER = 2
SUBSCRIPTIONS = 3
CHUNK = 1000
#: cores one process can use on a machine of its own (see the module docstring)
BROKER_CORES = 1.0
NATS_CORES = 2.0


@dataclass
class Run:
    label: str
    store: str
    brokers: int
    records: int = 0
    seconds: float = 0.0
    broker_cpu_s: list[float] = field(default_factory=list)
    nats_cpu_s: list[float] = field(default_factory=list)
    load_cpu_s: float = 0.0
    #: which broker held the sequencer lease (NATS; -1: none or sqlite)
    sequencer: int = -1
    note: str = ""

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def us_per_record(self, cpu_s: float) -> float:
        return cpu_s / self.records * 1e6 if self.records else 0.0

    def predicted_per_s(self) -> float:
        """Records/s once every broker and nats-server has a machine (utilisation law)."""
        bounds = [self.records_per_s * BROKER_CORES * self.seconds / c
                  for c in self.broker_cpu_s if c > 0]
        bounds += [self.records_per_s * NATS_CORES * self.seconds / c
                   for c in self.nats_cpu_s if c > 0]
        return min(bounds) if bounds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "store": self.store, "brokers": self.brokers,
                "records": self.records, "seconds": round(self.seconds, 3),
                "records_per_s": round(self.records_per_s, 1),
                "broker_cpu_s": [round(c, 2) for c in self.broker_cpu_s],
                "nats_cpu_s": [round(c, 2) for c in self.nats_cpu_s],
                "load_cpu_s": round(self.load_cpu_s, 2),
                "broker_us_per_record": round(self.us_per_record(sum(self.broker_cpu_s)), 1),
                "nats_us_per_record": round(self.us_per_record(sum(self.nats_cpu_s)), 1),
                "load_us_per_record": round(self.us_per_record(self.load_cpu_s), 1),
                "predicted_per_s": round(self.predicted_per_s(), 1),
                "sequencer": self.sequencer, "note": self.note}

    def scaling(self, up_to: int = 8) -> dict[str, Any] | None:
        """The per-part costs of a NATS run with a sequencer and at least one other broker,
        and the records/s they predict for 1..``up_to`` brokers (module docstring)."""
        if self.sequencer < 0 or self.brokers < 2 or not self.records:
            return None
        n = self.brokers
        others = [c for i, c in enumerate(self.broker_cpu_s) if i != self.sequencer]
        g = sum(others) / len(others) / (self.records / n) * 1e6  # µs per record it gates
        s = max(0.0, self.us_per_record(self.broker_cpu_s[self.sequencer]) - g / n)
        nats = (NATS_CORES * 1e6 / self.us_per_record(max(self.nats_cpu_s))
                if self.nats_cpu_s and max(self.nats_cpu_s) > 0 else float("inf"))
        predicted = {k: round(min(k * 1e6 / g, 1e6 / (s + g / k), nats))
                     for k in range(1, up_to + 1)}
        # the same processes with the sequencer on one that takes no clients (the others
        # ``?sequencer=no``): k - 1 brokers gate and serve, one only sequences
        dedicated = {k: round(min((k - 1) * 1e6 / g, 1e6 / s if s else float("inf"), nats))
                     for k in range(2, up_to + 1)}
        return {"from": self.label, "gate_us_per_record": round(g, 1),
                "sequencer_us_per_record": round(s, 1),
                "nats_bound_per_s": None if nats == float("inf") else round(nats),
                "predicted_per_s": predicted, "predicted_dedicated_per_s": dedicated}


async def measure(root: Path, pki_dir: Path, pool: Pool, label: str, store: str, n: int,
                  nats: list[ProcStats], duration: float) -> Run:
    """Start ``n`` brokers on ``store``, run the load for ``duration`` s, stop them."""
    brokers = [BrokerProcess(root / f"{label}-{i}", pki_dir, store) for i in range(n)]
    try:
        for b in brokers:
            b.start()
        return await _load(brokers, pki_dir, pool, label, store, nats, duration)
    finally:
        for b in brokers:
            b.stop()


async def _load(brokers: list[BrokerProcess], pki_dir: Path, pool: Pool, label: str,
                store: str, nats: list[ProcStats], duration: float) -> Run:
    n = len(brokers)

    def urls(i: int) -> list[str]:
        # slot i first, the others as fail-over
        return [brokers[(i + k) % n].url for k in range(n)]

    pubs = [Node(node_config(pki_dir, PUBLISHER, urls(i)[0], batch_size=CHUNK))
            for i in range(PUBLISHERS)]
    subs = [Node(node_config(pki_dir, SUBSCRIBER, urls(i)[0])) for i in range(SUBSCRIPTIONS)]
    for node in (*pubs, *subs):
        await node.__aenter__()
    try:
        sink = Sink(subscribers=SUBSCRIPTIONS)
        handler = sink.handler()
        running = [s.subscribe("population", f"scale-{label}-{i}", handler, credits=5000)
                   for i, s in enumerate(subs)]
        await wait_connected(subs[0], running)
        # warm up: TLS sessions, key trust, the brokers' caches; not measured
        warm = pool.records(200)
        sink.expected = len(warm) * SUBSCRIPTIONS
        await pubs[0].publish("population", warm)
        await asyncio.wait_for(sink.done.wait(), 60)
        base = sink.delivered
        sink.done.clear()
        me = ProcStats(os.getpid())
        procs = [b.stats for b in brokers]
        cpu0 = [p.cpu_s() for p in procs], [p.cpu_s() for p in nats], me.cpu_s()
        t0 = time.time()
        accepted = 0

        async def closed(pub: Node) -> None:
            nonlocal accepted
            while time.time() - t0 < duration:
                res = await pub.publish("population", pool.records(CHUNK))
                accepted += res.accepted

        await asyncio.gather(*(closed(p) for p in pubs for _ in range(LOOPS_PER_PUBLISHER)))
        sink.expected = base + accepted * SUBSCRIPTIONS
        note = ""
        if sink.delivered < sink.expected:
            try:
                await asyncio.wait_for(sink.done.wait(), max(60.0, duration * 4))
            except TimeoutError:
                note = f"only {(sink.delivered - base) // SUBSCRIPTIONS} of {accepted} delivered"
        cpu1 = [p.cpu_s() for p in procs], [p.cpu_s() for p in nats], me.cpu_s()
        for s in running:
            if s.evidence:
                raise RuntimeError(f"records failed verification: {s.evidence[:3]}")
        sequencer = -1
        for i in range(min(n, len(pubs))):  # publisher i talks to broker i
            cluster = (await pubs[i].client.get_json("/healthz")).get("cluster") or {}
            if cluster.get("sequencer"):
                sequencer = i
        return Run(label, store.split("?")[0].split(":")[0], n,
                   records=(sink.delivered - base) // SUBSCRIPTIONS, seconds=sink.last_at - t0,
                   broker_cpu_s=[b - a for a, b in zip(cpu0[0], cpu1[0], strict=True)],
                   nats_cpu_s=[b - a for a, b in zip(cpu0[1], cpu1[1], strict=True)],
                   load_cpu_s=cpu1[2] - cpu0[2], sequencer=sequencer, note=note)
    finally:
        for node in (*subs, *pubs):
            await node.close()


async def run(duration: float = 8.0, work_dir: Path | None = None) -> dict[str, Any]:
    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="exchange-nats-scale-")
        root = Path(tmp.name)
    else:
        root = work_dir
        root.mkdir(parents=True, exist_ok=True)
    try:
        pki_dir = make_pki(root)
        pool = Pool(20_000)  # six loops of 1,000 never hold two versions of a key at once
        runs = [await measure(root, pki_dir, pool, "sqlite", "sqlite", 1, [], duration)]
        cluster = NatsCluster(root / "nats", 3)
        cluster.start()
        try:
            await cluster.wait_healthy()
            nats = [ProcStats(s.proc.pid) for s in cluster.servers if s.proc is not None]
            for n in (1, 2, 3):
                # a fresh prefix per configuration: each starts from empty streams
                store = f"{cluster.url}?prefix=scale{n}&sync=always"
                runs.append(await measure(root, pki_dir, pool, f"nats{n}", store, n, nats,
                                          duration))
        finally:
            cluster.stop()
        return {"benchmark": "nats_scale", "cores": os.cpu_count(),
                "python": sys.version.split()[0], "duration_s": duration,
                "publishers": PUBLISHERS, "loops_per_publisher": LOOPS_PER_PUBLISHER,
                "subscriptions": SUBSCRIPTIONS, "batch": CHUNK,
                "runs": [r.to_json() for r in runs],
                "scaling": next((sc for r in reversed(runs) if (sc := r.scaling())), None)}
    finally:
        if tmp is not None:
            tmp.cleanup()


def table(report: dict[str, Any]) -> str:
    rows = ["| store | brokers | records/s | broker CPU s (each; * sequencer) | "
            "nats-server CPU s (each) | load CPU s | µs CPU/rec broker · nats · load | "
            "predicted rec/s, own machines |",
            "|---|---:|---:|---|---|---:|---|---:|"]
    for r in report["runs"]:
        each = " + ".join(f"{c:.1f}" + ("*" if i == r.get("sequencer") else "")
                          for i, c in enumerate(r["broker_cpu_s"]))
        nats = " + ".join(f"{c:.1f}" for c in r["nats_cpu_s"]) or "-"
        rows.append(f"| {r['store']} | {r['brokers']} | {r['records_per_s']:,.0f} | {each} | "
                    f"{nats} | {r['load_cpu_s']:.1f} | {r['broker_us_per_record']:.0f} · "
                    f"{r['nats_us_per_record']:.0f} · {r['load_us_per_record']:.0f} | "
                    f"{r['predicted_per_s']:,.0f} |" + (f" {r['note']}" if r["note"] else ""))
    sc = report.get("scaling")
    if sc:
        rows += ["", f"From the {sc['from']} run: a broker that is not the sequencer spends "
                 f"{sc['gate_us_per_record']:.0f} µs per record it gates (with its share of "
                 "the subscriptions); the sequencer "
                 f"{sc['sequencer_us_per_record']:.0f} µs per record of the log besides; "
                 "the nats-servers bound at "
                 + (f"{sc['nats_bound_per_s']:,} rec/s." if sc["nats_bound_per_s"] else "-."),
                 "", "| brokers | " + " | ".join(str(k) for k in sc["predicted_per_s"]) + " |",
                 "|---|" + "---:|" * len(sc["predicted_per_s"]),
                 "| predicted rec/s | " + " | ".join(f"{v:,}" for v in
                                                    sc["predicted_per_s"].values()) + " |",
                 "| with a sequencer that takes no clients | - | " + " | ".join(
                     f"{v:,}" for v in sc["predicted_dedicated_per_s"].values()) + " |"]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.nats_scale")
    p.add_argument("--duration", type=float, default=8.0, help="seconds of load per "
                   "configuration (default 8)")
    p.add_argument("--json", action="store_true", help="only the JSON line")
    p.add_argument("--work-dir", type=Path, help="keep PKI, broker and NATS data here")
    args = p.parse_args(argv)
    report = asyncio.run(run(args.duration, args.work_dir))
    if not args.json:
        print(table(report))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
