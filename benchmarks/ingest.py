"""Broker ingest in-process, without the network: what the gate, the quality bookkeeping and the
transparency log cost per record. ``python -m benchmarks.ingest [RECORDS]``; with
``--workers 0,1,2`` the same ingest with each number of gate worker processes instead.

Runs the real ``Publisher`` over a real sqlite file, with pre-sealed batches of 1,000 population
records; every variant in the same run, alternating, best of three. Then each stage of an
append on its own (decode, gate, decide + plan, the store's append: rows, log nodes, commit),
and the machine's decode + schema + rules limit (``benchmarks.validate``) in the same run: the
issue's target is ingest ≥ 0.4× that limit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from benchmarks.validate import validate_rate
from exchange import pki
from exchange.broker.app import Broker
from exchange.core import datasets, gate, ledger, merkle, quality, tlog
from exchange.core.access import BrokerConfig, DatasetConfig, Limits
from exchange.core.envelope import rfc3339
from exchange.core.seal import seal
from exchange.core.signing import Verifier
from exchange.core.wire import decode_batch
from exchange.sim.generate import Generator
from exchange.store.sqlite import SqliteStore

NODE = "vn.gov.mps.population"


async def _run(pki_dir: Path, bodies: list[bytes], records: int, *, quality: bool) -> float:
    data = Path(tempfile.mkdtemp())
    config = BrokerConfig(data_dir=str(data), pki_dir=str(pki_dir), quality=quality,
                          datasets=[DatasetConfig("population", NODE)])
    store = SqliteStore(data / "exchange.sqlite")
    broker = Broker(config, store)
    await store.open()
    if broker.quality is not None:
        await broker.quality.load()
    t = time.perf_counter()
    for body in bodies:
        await broker.publisher.publish(NODE, "population", body, "application/msgpack")
    elapsed = time.perf_counter() - t
    await store.close()
    return records / elapsed


async def _pooled(pki_dir: Path, bodies: list[bytes], records: int, workers: int,
                  window: int = 8) -> dict[str, float]:
    """Ingest with ``workers`` gate processes (0: none), ``window`` batches in flight: records/s,
    and CPU per record of the broker's own process (all its threads: the part that does not
    grow with workers) and of its workers together."""
    from benchmarks.harness import ProcStats
    from exchange.broker.workers import GatePool

    data = Path(tempfile.mkdtemp())
    config = BrokerConfig(data_dir=str(data), pki_dir=str(pki_dir),
                          datasets=[DatasetConfig("population", NODE)])
    store = SqliteStore(data / "exchange.sqlite")
    broker = Broker(config, store)
    await store.open()
    assert broker.quality is not None
    await broker.quality.load()
    pool = GatePool(workers) if workers else None
    if pool is not None:
        await pool.start()
        broker.publisher.pool = pool
    gate_ = asyncio.Semaphore(window)

    async def one(body: bytes) -> None:
        async with gate_:
            await broker.publisher.publish(NODE, "population", body, "application/msgpack")

    me = ProcStats(os.getpid())
    loop_thread = ProcStats(os.getpid(), tid=os.getpid())
    all0, main0, loop0 = me.cpu_s(), me.main_cpu_s(), loop_thread.main_cpu_s()
    t = time.perf_counter()
    await asyncio.gather(*(one(b) for b in bodies))
    elapsed = time.perf_counter() - t
    all1, main1, loop1 = me.cpu_s(), me.main_cpu_s(), loop_thread.main_cpu_s()
    if pool is not None:
        await pool.close()
    await store.close()
    return {"workers": workers, "records_per_s": round(records / elapsed),
            "main_us_per_record": round((main1 - main0) / records * 1e6, 1),
            # the event loop's thread alone (the rest of the process: the sqlite writer thread)
            "loop_us_per_record": round((loop1 - loop0) / records * 1e6, 1),
            "workers_us_per_record": round((all1 - all0 - (main1 - main0)) / records * 1e6, 1)}


def pooled(records: int, counts: list[int]) -> None:
    """``--workers 0,1,2``: ingest with each number of gate workers, alternating, best of
    three each; the broker process's CPU per record bounds what any number of workers gives
    (1 s / that) on a machine with a core for each."""
    pki_dir, bodies = _setup(records)
    best: dict[int, dict[str, float]] = {}
    for _ in range(3):
        for n in counts:
            r = asyncio.run(_pooled(pki_dir, bodies, records, n))
            if n not in best or r["records_per_s"] > best[n]["records_per_s"]:
                best[n] = r
    cores = os.cpu_count() or 1
    print(f"broker ingest with gate workers, {records} population records in batches of "
          f"1,000, 8 in flight, best of 3, {cores} cores:")
    base = best[counts[0]]["records_per_s"]
    for n, r in best.items():
        bound = 1e6 / r["main_us_per_record"] if r["main_us_per_record"] else 0
        ratio = r["records_per_s"] / base
        print(f"  {n} workers  {r['records_per_s']:>9,.0f} records/s ({ratio:.2f}×)"
              f"   broker process {r['main_us_per_record']:.1f} µs/record (event loop "
              f"{r['loop_us_per_record']:.1f}), workers "
              f"{r['workers_us_per_record']:.1f}: bound {bound:,.0f}/s with a core each")
    print(msgspec.json.encode({"records": records, "cores": cores,
                               "runs": list(best.values())}).decode())


def _log_cost(records: int) -> float:
    """µs per record of the log's own work in an append: entry, leaf, tree nodes."""
    digest, root = os.urandom(32), os.urandom(32)
    nodes: list[tuple[int, int, bytes]] = []
    tree = merkle.CompactRange(on_node=lambda lvl, i, h: nodes.append((lvl, i, h)))
    t = time.perf_counter()
    for seq in range(records):
        tree.append(tlog.entry_leaf(seq, "population", NODE, digest, root, 1_700_000_000_000_000))
    return (time.perf_counter() - t) / records * 1e6


def _stages(pki_dir: Path, bodies: list[bytes], records: int) -> dict[str, float]:
    """µs per record of each stage of the broker's ingest, each timed alone (best of 3):
    decode, gate (signature, commitments, digests, batch tree, limits, schema, rules, content
    hash, completeness), decide + plan (rows of the append), the store's append (log nodes,
    rows, one sqlite transaction with its fsync)."""
    spec = datasets.get("population")
    ctx = datasets.RuleContext(today=dt.datetime.now(dt.UTC).date())
    verifier = Verifier({NODE: pki.load_node_identity(pki_dir, NODE).signing_key.public_key()})
    limits = Limits()

    def best(step: Callable[[], object]) -> float:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        return min(times) / records * 1e6

    batches = [decode_batch(b, "application/msgpack") for b in bodies]

    def check() -> list[gate.Checked]:
        return [gate.check(b, node=NODE, spec=spec, verifier=verifier, limits=limits, ctx=ctx,
                           scorer=quality.completeness) for b in batches]

    checked = check()

    def plans() -> list[ledger.Plan]:
        return [ledger.plan([ledger.Append(NODE, "population", b, gate.decide(c, {}))],
                            time.time()) for b, c in zip(batches, checked, strict=True)]

    async def append() -> float:
        store = SqliteStore(Path(tempfile.mkdtemp()) / "exchange.sqlite")
        await store.open()
        todo = plans()
        t = time.perf_counter()
        for p in todo:
            await store.append(p)
        elapsed = time.perf_counter() - t
        await store.close()
        return elapsed

    out = {
        "decode": best(lambda: [decode_batch(b, "application/msgpack") for b in bodies]),
        "gate": best(check),
        "plan": best(plans),
        "append": min(asyncio.run(append()) for _ in range(3)) / records * 1e6,
    }
    out["sum"] = sum(out.values())
    return {k: round(v, 1) for k, v in out.items()}


def _setup(records: int) -> tuple[Path, list[bytes]]:
    root = Path(tempfile.mkdtemp())
    pki_dir = root / "pki"
    pki.init(pki_dir)
    pki.enroll(pki_dir, NODE)
    key = pki.load_node_identity(pki_dir, NODE).signing_key
    spec = datasets.get("population")
    people = Generator(1, today=dt.date(2026, 11, 22)).population(records)
    bodies = [msgspec.msgpack.encode(seal(key, NODE, spec, [(p["id"], 1, p) for p in
                                                            people[i:i + 1000]],
                                          os.urandom(32), time=rfc3339(time.time())))
              for i in range(0, records, 1000)]
    return pki_dir, bodies


def main(records: int = 20_000) -> None:
    pki_dir, bodies = _setup(records)
    on: list[float] = []
    off: list[float] = []
    for _ in range(3):
        on.append(asyncio.run(_run(pki_dir, bodies, records, quality=True)))
        off.append(asyncio.run(_run(pki_dir, bodies, records, quality=False)))
    best_on, best_off = max(on), max(off)
    log_us = _log_cost(records)
    stages = _stages(pki_dir, bodies, records)
    limit = validate_rate(records)
    result = {
        "records": records,
        "ingest_quality_on_per_s": round(best_on),
        "ingest_quality_off_per_s": round(best_off),
        "quality_cost_share": round(1 - best_on / best_off, 4),
        "ingest_us_per_record": round(1e6 / best_on, 1),
        "log_compute_us_per_record": round(log_us, 2),
        "log_compute_share": round(log_us / (1e6 / best_on), 4),
        "stages_us_per_record": stages,
        "decode_validate_limit_per_s": round(limit),
        "ingest_vs_limit": round(best_on / limit, 3),
    }
    print(f"broker ingest, {records} population records in batches of 1,000, best of 3:")
    print(f"  quality on   {best_on:>9,.0f} records/s")
    print(f"  quality off  {best_off:>9,.0f} records/s   (quality costs "
          f"{result['quality_cost_share']:.1%})")
    print(f"  log entry + leaf + tree nodes: {log_us:.2f} µs/record "
          f"({result['log_compute_share']:.1%} of ingest, before its rows are written)")
    print("  stages alone, µs/record: " + ", ".join(f"{k} {v}" for k, v in stages.items()))
    print(f"  decode + schema + rules limit {limit:,.0f} records/s (one core): ingest is "
          f"{result['ingest_vs_limit']:.2f}× of it")
    print(msgspec.json.encode(result).decode())


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--workers" in args:
        at = args.index("--workers")
        counts = [int(x) for x in args[at + 1].split(",")]
        del args[at:at + 2]
        pooled(int(args[0]) if args else 20_000, counts)
    else:
        main(int(args[0]) if args else 20_000)
