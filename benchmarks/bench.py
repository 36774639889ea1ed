"""``exchange bench``: throughput, latency and scale of the exchange, beside its baselines.

    exchange bench [--quick] [--json] [--plot FILE.png] [--duration S] [--scale N]
    python -m benchmarks.bench ...

One run measures, on this machine: the baselines (Ed25519 verifications/s, msgspec
decode + validate/s, sqlite batched inserts/s, NATS JetStream via nats-py), then the exchange's
scenarios against a broker subprocess over TLS, and prints every headline figure as a ratio to
the baselines. ``benchmarks/README.md`` explains the method.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Options", "add_arguments", "main", "run", "stores"]


def stores() -> list[str]:
    """Stores the broker can run on here; ``nats`` once ``exchange.store.nats`` exists."""
    out = ["sqlite"]
    if importlib.util.find_spec("exchange.store.nats.store") is not None:
        out.append("nats")
    return out


@dataclass
class Options:
    quick: bool = False
    #: seconds of load per closed- or open-loop phase
    duration: float | None = None
    subscribers: list[int] = field(default_factory=lambda: [1, 4, 16])
    store: str = "sqlite"
    #: records stored for the scale scenario (0: skip it)
    scale: int = 0
    work_dir: Path | None = None
    progress: bool = True
    #: where each broker serves, ``HOST:PORT`` (port 0: any free one)
    listen: str = "127.0.0.1:0"
    #: publisher processes, each subscriber a process of its own (0: the load in this process)
    load_procs: int = 1
    #: broker processes per scenario (``store="nats"``: over one JetStream)
    brokers: int = 1
    #: ``exchange broker serve --workers N`` (None: the broker's default)
    workers: int | None = None

    @property
    def phase_s(self) -> float:
        if self.duration is not None:
            return self.duration
        return 2.5 if self.quick else 8.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="short phases and smaller backlogs: done within 60 s on 2 cores")
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    p.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="draw throughput and latency percentiles vs offered load "
                        "(needs matplotlib: pip install 'vn-data-exchange[bench]')")
    p.add_argument("--duration", type=float, metavar="S",
                   help="seconds of load per phase (default 8, or 2.5 with --quick)")
    p.add_argument("--subscribers", default="1,4,16",
                   help="end-to-end subscriber counts, comma-separated (default 1,4,16)")
    p.add_argument("--scale", type=int, nargs="?", const=1_000_000, default=0, metavar="N",
                   help="also store N records (default 1,000,000) and report broker RSS and "
                        "replay at that size")
    avail = stores()
    p.add_argument("--store", choices=avail, default="sqlite",
                   help=f"broker store ({', '.join(avail)})")
    p.add_argument("--work-dir", type=Path, help="keep PKI and broker data here (default: a "
                   "temporary directory, removed afterwards)")
    p.add_argument("--listen", default="127.0.0.1:0", type=_listen, metavar="HOST:PORT",
                   help="where each broker serves, one after another (default %(default)s: a "
                        "free port on loopback)")
    p.add_argument("--load-procs", type=int, default=1, metavar="N",
                   help="run the load in processes of its own: N publisher processes (each "
                        "its own node and keys) and one process per subscriber, each party's "
                        "CPU per record reported (default 1; 0: publishers and subscribers in "
                        "the bench's own process, as before)")
    p.add_argument("--brokers", type=int, default=1, metavar="N",
                   help="broker processes per scenario over one JetStream (--store nats, "
                        "--load-procs >= 1)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="pass --workers N to `exchange broker serve` (the parallel gate)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _listen(text: str) -> str:
    from exchange.core.access import parse_listen
    from exchange.core.errors import ExchangeError

    try:
        parse_listen(text)
    except ExchangeError as err:
        raise argparse.ArgumentTypeError(err.message) from None
    return text


def options_from(args: argparse.Namespace) -> Options:
    return Options(quick=args.quick, duration=args.duration,
                   subscribers=[int(x) for x in str(args.subscribers).split(",") if x.strip()],
                   store=args.store, scale=args.scale, work_dir=args.work_dir,
                   progress=not args.no_progress, listen=args.listen,
                   load_procs=args.load_procs, brokers=args.brokers, workers=args.workers)


def refusal(opts: Options) -> str | None:
    """Why these options cannot run here (None: they can)."""
    from benchmarks.harness import broker_has_option
    from exchange.core.access import parse_listen

    if opts.load_procs < 0 or opts.brokers < 1:
        return "--load-procs is 0 or more and --brokers 1 or more"
    if opts.brokers > 1:
        if opts.store != "nats":
            return "--brokers N needs --store nats (brokers share one store only on NATS)"
        if opts.load_procs < 1:
            return "--brokers N needs --load-procs 1 or more (each party picks its broker)"
        if parse_listen(opts.listen)[1] != 0:
            return "--brokers N needs --listen on port 0 (each broker takes a free port)"
    if opts.workers is not None:
        if opts.workers < 1:
            return "--workers is 1 or more"
        if not broker_has_option("--workers"):
            return "this broker has no --workers"
    return None


async def run(opts: Options) -> dict[str, Any]:
    """Run every scenario and baseline; return the JSON-ready report."""
    from benchmarks import baselines, scenarios
    from benchmarks.harness import machine, make_pki
    from benchmarks.scenarios import Context, Progress, Result

    started = time.perf_counter()
    if opts.work_dir is not None:
        opts.work_dir.mkdir(parents=True, exist_ok=True)
        tmp = None
        root = opts.work_dir
    else:
        tmp = tempfile.TemporaryDirectory(prefix="exchange-bench-")
        root = Path(tmp.name)
    progress = Progress(opts.progress)
    quick = opts.quick
    phase = opts.phase_s
    from exchange.sim.process import connect_host

    ctx = Context(root=root, pki_dir=make_pki(root, connect_host(opts.listen)),
                  store=opts.store, progress=progress, listen=opts.listen,
                  load_procs=opts.load_procs, brokers=opts.brokers,
                  broker_args=[] if opts.workers is None else ["--workers", str(opts.workers)])
    # the nodes' process, like the broker's, keeps what it loaded (modules, the record pool)
    # out of the cycle collector's full passes, as a long-running node would
    gc.collect()
    gc.freeze()
    steps = 9 + len(opts.subscribers) + (1 if opts.scale else 0) + (2 if quick else 4)
    step = 0
    results: list[Result] = []

    def begin(label: str) -> None:
        nonlocal step
        step += 1
        progress.start(label, f"{step}/{steps}")

    try:
        # -- baselines ----------------------------------------------------------------------
        begin("machine limits")
        verify = baselines.verify_limit(0.5 if quick else 2.0)
        validate = baselines.validate_limit(10_000 if quick else 50_000)
        sqlite_rate = baselines.sqlite_insert_rate(0.5 if quick else 2.0)
        progress.done(f"verify {verify:,.0f}/s, validate {validate:,.0f}/s, "
                      f"sqlite {sqlite_rate:,.0f}/s")
        begin("NATS JetStream (nats-py)")
        js_total = 20_000 if quick else 150_000
        eq_total = 10_000 if quick else 60_000
        if opts.load_procs:
            from benchmarks import procs

            js = await procs.jetstream(js_total, work="bare", procs=opts.load_procs,
                                       pki_dir=ctx.pki_dir, log_dir=root / "jetstream")
            progress.done(f"{js['records_per_s']:,.0f} rec/s")
            begin("JetStream, equal work")
            js_eq = await procs.jetstream(eq_total, work="equal", procs=opts.load_procs,
                                          pki_dir=ctx.pki_dir, log_dir=root / "jetstream")
        else:
            js = await baselines.jetstream(
                js_total, progress=lambda n: progress.update(n / js_total, f"{n:,}"))
            progress.done(f"{js['records_per_s']:,.0f} rec/s")
            begin("JetStream, equal work")
            js_eq = await baselines.jetstream(
                eq_total, work="equal", pki_dir=ctx.pki_dir,
                progress=lambda n: progress.update(n / eq_total, f"{n:,}"))
        progress.done(f"{js_eq['records_per_s']:,.0f} rec/s")

        # -- publish only, then replay of that backlog ---------------------------------------
        begin("publish only")
        backlog = 30_000 if quick else 200_000
        broker = ctx.broker("publish").start()
        try:
            r = await scenarios.publish_only(ctx, broker, backlog)
            results.append(r)
            progress.done(f"{r.records_per_s:,.0f} rec/s")
            begin("replay from seq 0")
            r = await scenarios.replay(ctx, broker, r.records)
            results.append(r)
            progress.done(f"{r.records_per_s:,.0f} rec/s")
            begin("publish only, per-record sigs")
            ingest_per_record = await scenarios.publish_only(
                ctx, broker, 2_000 if quick else 12_000, batch=1, window=64,
                label="publish only, per-record sigs")
            results.append(ingest_per_record)
            progress.done(f"{ingest_per_record.records_per_s:,.0f} rec/s")
        finally:
            broker.stop()

        # -- end to end, closed loop ---------------------------------------------------------
        e2e_by_subs: dict[int, Result] = {}
        for n in opts.subscribers:
            begin(f"e2e batch sigs, {n} sub{'s' if n > 1 else ''}")
            r = await scenarios.e2e(ctx, subscribers=n, duration=phase if n == 1 else phase * .6)
            e2e_by_subs[n] = r
            results.append(r)
            progress.done(f"{r.records_per_s:,.0f} rec/s")
        begin("e2e per-record sigs, 1 sub")
        per_record = await scenarios.e2e(ctx, per_record=True, duration=phase * .6)
        results.append(per_record)
        progress.done(f"{per_record.records_per_s:,.0f} rec/s")

        # -- open loop at fractions of the closed-loop max ------------------------------------
        base = e2e_by_subs.get(1) or next(iter(e2e_by_subs.values()))
        max_rate = base.records_per_s
        fractions = [0.5, 0.9] if quick else [0.25, 0.5, 0.75, 0.9]
        open_loop: dict[float, Result] = {}
        for f in fractions:
            begin(f"open loop {f:.0%} of max")
            r = await scenarios.e2e(ctx, subscribers=1, duration=phase, rate=max_rate * f,
                                    label=f"e2e open loop {f:.0%} of max")
            open_loop[f] = r
            results.append(r)
            lat = r.latency or {}
            progress.done(f"{r.records_per_s:,.0f} rec/s, p99 {lat.get('p99_ms', 0):.1f} ms")

        # -- scale: N records stored --------------------------------------------------------
        scale: dict[str, Any] = {}
        if opts.scale:
            begin(f"scale {opts.scale:,} stored")
            broker = ctx.broker("scale").start()
            try:
                r = await scenarios.publish_only(ctx, broker, opts.scale, batch=2000)
                r.scenario = f"publish {opts.scale:,} (scale)"
                results.append(r)
                rss_filled = broker.stats.peak_rss_mb()
                r2 = await scenarios.replay(ctx, broker, r.records,
                                            label=f"replay {opts.scale:,} from seq 0")
                results.append(r2)
                scale = {"scale_records": r.records, "scale_publish_records_per_s":
                         round(r.records_per_s, 1), "scale_replay_records_per_s":
                         round(r2.records_per_s, 1), "scale_broker_peak_rss_mb":
                         round(max(rss_filled, r2.broker_peak_rss_mb), 1)}
            finally:
                broker.stop()
            progress.done(f"peak RSS {scale['scale_broker_peak_rss_mb']:.0f} MB")
    finally:
        if tmp is not None:
            tmp.cleanup()

    e2e = e2e_by_subs.get(1, base)
    half = open_loop.get(0.5)
    ninety = open_loop.get(0.9)
    replay_r = next(r for r in results if r.scenario == "replay from seq 0")
    publish_r = results[0]
    jsr = js["records_per_s"]
    jse = js_eq["records_per_s"]
    peak = max(r.broker_peak_rss_mb for r in results)

    def p99(r: Result | None) -> float | None:
        return None if r is None or not r.latency else r.latency["p99_ms"]

    report: dict[str, Any] = {
        "e2e_records_per_s": round(e2e.records_per_s, 1),
        "e2e_mb_per_s": round(e2e.mb_per_s, 3),
        "p99_ms_at_half_load": p99(half),
        "p99_ms_at_90pct_load": p99(ninety),
        "jetstream_baseline_records_per_s": round(jsr, 1),
        "ratio_vs_jetstream": round(e2e.records_per_s / jsr, 3),
        "jetstream_equal_work_records_per_s": round(jse, 1),
        "ratio_vs_jetstream_equal_work": round(e2e.records_per_s / jse, 3),
        "load_procs": opts.load_procs,
        "brokers": opts.brokers,
        "workers": opts.workers,
        "e2e_parties": e2e.parties,
        "verify_limit_per_s": round(verify, 1),
        "per_record_sig_records_per_s": round(per_record.records_per_s, 1),
        "ratio_per_record_vs_verify_limit": round(per_record.records_per_s / verify, 3),
        "ingest_per_record_sig_records_per_s": round(ingest_per_record.records_per_s, 1),
        "ratio_ingest_per_record_vs_verify_limit": round(
            ingest_per_record.records_per_s / verify, 3),
        "validate_limit_per_s": round(validate, 1),
        "ratio_e2e_vs_validate_limit": round(e2e.records_per_s / validate, 3),
        "sqlite_insert_limit_per_s": round(sqlite_rate, 1),
        "publish_only_records_per_s": round(publish_r.records_per_s, 1),
        "ratio_publish_vs_sqlite_limit": round(publish_r.records_per_s / sqlite_rate, 3),
        "replay_records_per_s": round(replay_r.records_per_s, 1),
        "ratio_replay_vs_jetstream": round(replay_r.records_per_s / jsr, 3),
        "broker_peak_rss_mb": round(peak, 1),
        **scale,
        "jetstream": {k: round(v, 3) if isinstance(v, float) else v for k, v in js.items()},
        "jetstream_equal_work": {k: round(v, 3) if isinstance(v, float) else v
                                 for k, v in js_eq.items()},
        "scenarios": [r.to_json() for r in results],
        "machine": {**machine(), "python": platform.python_version(),
                    "platform": platform.platform(), "store": opts.store, "quick": quick,
                    "phase_s": phase},
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    return report


def _fmt(v: float | None, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def table(report: dict[str, Any]) -> str:
    """The results as a Markdown table plus the headline ratios."""
    rows = ["| scenario | records/s | MB/s | p50 ms | p95 ms | p99 ms | max ms | broker CPU s "
            "| broker µs/rec | peak RSS MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in report["scenarios"]:
        lat = s["latency"] or {}
        rows.append(
            f"| {s['scenario']} | {_fmt(s['records_per_s'])} | {_fmt(s['mb_per_s'], '.1f')} | "
            f"{_fmt(lat.get('p50_ms'), '.1f')} | {_fmt(lat.get('p95_ms'), '.1f')} | "
            f"{_fmt(lat.get('p99_ms'), '.1f')} | {_fmt(lat.get('max_ms'), '.1f')} | "
            f"{s['broker_cpu_s']:.1f} | {_fmt(s['broker_cpu_per_record_us'], '.1f')} | "
            f"{s['broker_peak_rss_mb']:.0f} |")
    js = report["jetstream"]
    rows.append(f"| *baseline*: NATS JetStream, nats-py | {_fmt(js['records_per_s'])} | "
                f"{js['mb_per_s']:.1f} | - | - | - | - | {js['server_cpu_s']:.1f} (nats-server) "
                "| - | - |")
    eq = report["jetstream_equal_work"]
    rows.append(f"| *baseline*: JetStream + equal work (seal, validate, verify) | "
                f"{_fmt(eq['records_per_s'])} | {eq['mb_per_s']:.1f} | - | - | - | - | "
                f"{eq['server_cpu_s']:.1f} (nats-server) | - | - |")
    r = report
    lines = [
        "",
        "| headline | value | baseline | ratio |",
        "|---|---:|---:|---:|",
        f"| e2e, batch signatures, 1 subscriber | {_fmt(r['e2e_records_per_s'])}/s | JetStream "
        f"{_fmt(r['jetstream_baseline_records_per_s'])}/s | {r['ratio_vs_jetstream']:.2f}× |",
        f"| e2e, batch signatures, 1 subscriber | {_fmt(r['e2e_records_per_s'])}/s | JetStream + "
        f"equal work {_fmt(r['jetstream_equal_work_records_per_s'])}/s | "
        f"{r['ratio_vs_jetstream_equal_work']:.2f}× |",
        f"| e2e vs decode + validate limit | {_fmt(r['e2e_records_per_s'])}/s | "
        f"{_fmt(r['validate_limit_per_s'])}/s | {r['ratio_e2e_vs_validate_limit']:.2f}× |",
        f"| per-record signatures | {_fmt(r['per_record_sig_records_per_s'])}/s | Ed25519 "
        f"verify {_fmt(r['verify_limit_per_s'])}/s | "
        f"{r['ratio_per_record_vs_verify_limit']:.2f}× |",
        f"| broker ingest, per-record signatures | "
        f"{_fmt(r['ingest_per_record_sig_records_per_s'])}/s | Ed25519 verify "
        f"{_fmt(r['verify_limit_per_s'])}/s | {r['ratio_ingest_per_record_vs_verify_limit']:.2f}× "
        "|",
        f"| publish only (broker ingest) | {_fmt(r['publish_only_records_per_s'])}/s | sqlite "
        f"inserts {_fmt(r['sqlite_insert_limit_per_s'])}/s | "
        f"{r['ratio_publish_vs_sqlite_limit']:.2f}× |",
        f"| replay from seq 0 | {_fmt(r['replay_records_per_s'])}/s | JetStream "
        f"{_fmt(r['jetstream_baseline_records_per_s'])}/s | {r['ratio_replay_vs_jetstream']:.2f}× "
        "|",
        f"| p99 publish→deliver at 50% / 90% of max | {_fmt(r['p99_ms_at_half_load'], '.1f')} / "
        f"{_fmt(r['p99_ms_at_90pct_load'], '.1f')} ms | target 50 ms | - |",
        f"| broker peak RSS | {r['broker_peak_rss_mb']:.0f} MB | target 300 MB | - |",
    ]
    if "scale_records" in r:
        lines.append(f"| broker peak RSS, {r['scale_records']:,} stored | "
                     f"{r['scale_broker_peak_rss_mb']:.0f} MB | target 300 MB | - |")
    return "\n".join(rows + lines + parties_table(report))


def parties_table(report: dict[str, Any]) -> list[str]:
    """CPU µs per record of each party, where the load ran in processes of its own."""
    runs = [(s["scenario"], s["records_per_s"], s["parties"], s["note"])
            for s in report["scenarios"] if s.get("parties")]
    for name, key in (("*baseline*: NATS JetStream, nats-py", "jetstream"),
                      ("*baseline*: JetStream + equal work", "jetstream_equal_work")):
        if report[key].get("parties"):
            runs.append((name, report[key]["records_per_s"], report[key]["parties"], ""))
    if not runs:
        return []
    out = ["", "| scenario | records/s | broker µs/rec | nats-server µs/rec | publishers µs/rec "
               "(procs) | subscribers µs/rec, sum (each) | note |",
           "|---|---:|---:|---:|---:|---:|---|"]
    for name, rate, p, note in runs:
        b = p.get("broker", {})
        broker = b.get("us_per_record")
        split = (f" (main {b['main_us_per_record']:.1f} + workers "
                 f"{b['workers_us_per_record']:.1f})" if "main_us_per_record" in b else "")
        nats = (p.get("nats") or {}).get("us_per_record")
        pubs, subs = p["publishers"], p["subscribers"]
        each = ", ".join(_fmt(x, ".0f") for x in subs["each_us_per_record"])
        out.append(f"| {name} | {_fmt(rate)} | {_fmt(broker, '.1f')}{split} | "
                   f"{_fmt(nats, '.1f')} | "
                   f"{_fmt(pubs['us_per_record'], '.1f')} ({pubs['procs']}) | "
                   f"{_fmt(subs['us_per_record'], '.1f')} ({each or '-'}) | {note} |")
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    """Throughput and latency percentiles versus offered load (open loop + the closed max)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("exchange bench: --plot needs matplotlib: "
                         "pip install 'vn-data-exchange[bench]'") from None
    points = [s for s in report["scenarios"]
              if s["subscribers"] == 1 and s["signatures"] == "batch" and s["latency"]]
    points.sort(key=lambda s: s["offered_per_s"] or float("inf"))
    closed = report["e2e_records_per_s"]
    xs = [s["offered_per_s"] or closed for s in points]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=80)
    ax1.plot(xs, [s["records_per_s"] for s in points], "o-", label="delivered")
    ax1.plot(xs, xs, ":", color="grey", label="offered")
    ax1.axhline(report["jetstream_baseline_records_per_s"], color="tab:red", ls="--",
                label="JetStream (nats-py)")
    ax1.set_xlabel("offered load, records/s (last point: closed loop)")
    ax1.set_ylabel("records/s delivered and verified")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=.3)
    for key, style in (("p50_ms", "o-"), ("p95_ms", "s-"), ("p99_ms", "^-"), ("max_ms", "x:")):
        ax2.plot(xs, [s["latency"][key] for s in points], style, label=key.split("_")[0])
    ax2.set_yscale("log")
    ax2.set_xlabel("offered load, records/s (last point: closed loop)")
    ax2.set_ylabel("publish→deliver latency, ms")
    ax2.axhline(50, color="grey", ls="--", lw=.8)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=.3, which="both")
    m = report["machine"]
    fig.suptitle(f"exchange e2e, batch signatures, sqlite, 1 subscriber — {m['cores']} cores, "
                 f"Python {m['python']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def main(args: argparse.Namespace) -> int:
    opts = options_from(args)
    why = refusal(opts)
    if why is not None:
        print(f"exchange bench: {why}", file=sys.stderr)
        return 2
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("exchange bench: --plot needs matplotlib: pip install "
                  "'vn-data-exchange[bench]'", file=sys.stderr)
            return 2
    report = asyncio.run(run(opts))
    if args.plot is not None:
        plot(report, args.plot)
    if args.json:
        print(json.dumps(report))
    else:
        print(table(report))
        m = report["machine"]
        print(f"\n{m['cores']} cores ({m['affinity']} usable, {m['cpu_model'] or '?'}), "
              f"Python {m['python']}, load: "
              f"{opts.load_procs or 'in the bench'} process{'es' if opts.load_procs else ''}, "
              f"{report['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
