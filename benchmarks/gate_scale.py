"""The parallel gate: broker ingest with 0, 1, 2 and 4 gate workers, in the same run.

    python -m benchmarks.gate_scale [--workers 0,1,2,4] [--records N] [--load-procs N] [--json]

Each count gets a fresh ``exchange broker serve --workers N`` on sqlite and the same load:
pre-sealed batches of 1,000 population records from ``--load-procs`` publisher processes, 8 in
flight each (``benchmarks.procs.publish_only``). The counts alternate over ``--rounds`` and the
best round of each is kept.

Besides records/s it reports the CPU per record of each part of the broker, from
``/proc/<pid>/task/<tid>/stat``: the event loop's thread (TLS, HTTP, decisions, plans,
receipts), the rest of its process (the sqlite writer thread: rows and the commit, which
releases the GIL inside SQLite), and its gate workers together. On a machine with a core for
each, ingest is bounded by the busiest serial part: the prediction is ``1 s / (whole process
µs)`` when the broker's two threads take turns on one core, ``1 s / (busier thread µs)`` when
each has a core of its own (SQLite's own work runs without the GIL), and the workers bound it at
``N × 1 s / (worker µs)``. With fewer cores than parts (2 here), the
measured records/s is bounded by the sum instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import scenarios
from benchmarks.harness import machine, make_pki
from benchmarks.scenarios import Context


async def one(root: Path, pki_dir: Path, workers: int, records: int, load_procs: int,
              name: str) -> dict[str, Any]:
    ctx = Context(root=root, pki_dir=pki_dir, load_procs=load_procs,
                  broker_args=["--workers", str(workers)])
    broker = ctx.broker(name).start()
    proc = broker.stats.procs[0]
    try:
        before = proc.threads()
        r = await scenarios.publish_only(ctx, broker, records)
        after = proc.threads()
    finally:
        broker.stop()
    # the threads besides the event loop's: the sqlite writer (the busiest), the WAL
    # checkpointer and the executor's others
    others = sorted((after[t] - before.get(t, 0.0) for t in after if t != proc.pid),
                    reverse=True)
    b = (r.parties or {}).get("broker", {})
    total = b.get("us_per_record") or 0.0
    main = b.get("main_us_per_record", total)
    loop = b.get("loop_us_per_record", main)
    gate = b.get("workers_us_per_record", 0.0)
    n = r.records or 1
    writer = round(others[0] / n * 1e6, 1) if others else 0.0
    out = {"workers": workers, "records_per_s": round(r.records_per_s),
           "broker_us_per_record": total, "loop_us_per_record": loop,
           "writer_us_per_record": writer,
           "other_threads_us_per_record": round(sum(others[1:]) / n * 1e6, 1),
           "workers_us_per_record": gate}
    # the prediction: the busiest part. At worst the broker's threads take turns (its whole
    # process on one core); at best each has a core (SQLite runs without the GIL)
    busiest = max(loop, writer)
    serial_best = 1e6 / busiest if busiest else 0.0
    serial_worst = 1e6 / main if main else 0.0
    gate_bound = workers * 1e6 / gate if workers and gate else float("inf")
    out["predicted_per_s"] = [round(min(serial_worst, gate_bound)),
                              round(min(serial_best, gate_bound))]
    return out


async def run(counts: list[int], records: int, load_procs: int, rounds: int
              ) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="gate-scale-"))
    pki_dir = make_pki(root)
    best: dict[int, dict[str, Any]] = {}
    for k in range(rounds):
        for n in counts:
            r = await one(root, pki_dir, n, records, load_procs, f"w{n}r{k}")
            if n not in best or r["records_per_s"] > best[n]["records_per_s"]:
                best[n] = r
    return {"records": records, "load_procs": load_procs, "rounds": rounds,
            "machine": machine(), "runs": [best[n] for n in counts]}


def table(report: dict[str, Any]) -> str:
    runs = report["runs"]
    base = runs[0]["records_per_s"] or 1
    rows = ["| gate workers | records/s | × first | broker µs/rec: event loop · sqlite writer · "
            "other threads · workers | predicted records/s, a core each |",
            "|---:|---:|---:|---|---:|"]
    for r in runs:
        lo, hi = r["predicted_per_s"]
        rows.append(f"| {r['workers']} | {r['records_per_s']:,} | "
                    f"{r['records_per_s'] / base:.2f}× | {r['loop_us_per_record']:.1f} · "
                    f"{r['writer_us_per_record']:.1f} · {r['other_threads_us_per_record']:.1f} · "
                    f"{r['workers_us_per_record']:.1f} | "
                    f"{lo:,}–{hi:,} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gate_scale",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="0,1,2,4",
                   help="gate worker counts, comma-separated (default: %(default)s)")
    p.add_argument("--records", type=int, default=30_000, help="records per run")
    p.add_argument("--load-procs", type=int, default=2, help="publisher processes")
    p.add_argument("--rounds", type=int, default=2, help="runs of each count; best kept")
    p.add_argument("--json", action="store_true", help="one JSON object, no table")
    args = p.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    report = asyncio.run(run(counts, args.records, max(1, args.load_procs), args.rounds))
    if args.json:
        print(json.dumps(report))
    else:
        print(f"broker ingest, {args.records:,} records a run, {args.load_procs} publisher "
              f"processes, best of {args.rounds}, {os.cpu_count()} cores:")
        print(table(report))
        print(json.dumps(report))


if __name__ == "__main__":
    main()
