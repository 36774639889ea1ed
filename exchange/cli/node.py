"""``exchange node run CONFIG``: run one reference agency node against a running broker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from exchange.core.errors import ExchangeError
from exchange.sim.report import lag

if TYPE_CHECKING:
    from exchange.node import Node, NodeConfig
    from exchange.sim.agencies import Agency, AgencyConfig


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("node", help="run a reference agency node (population, tax, land, vehicle)")
    nsub = p.add_subparsers(dest="node_command", required=True, metavar="ACTION")
    run = nsub.add_parser(
        "run", help="publish and subscribe as one agency until done or stopped",
        description="Run the agency in a node file (see nodes/README.md) against a running "
                    "broker. Stops after --records published records (then once its "
                    "subscriptions have caught up with what they were sent), after --duration "
                    "seconds, or on SIGINT/SIGTERM; prints a summary.")
    run.add_argument("config", type=Path, help="node file, e.g. nodes/population.toml")
    run.add_argument("--records", type=int, help="records to publish (0: no limit); "
                     "default: the file's [agency] records")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument("--broker", action="append", metavar="URL",
                     help="broker URL, overrides the file's brokers (repeatable)")
    run.add_argument("--pki", help="PKI directory, overrides the file's pki_dir")
    run.add_argument("--faults", type=float, help="share of faulty records, overrides the file")
    run.add_argument("--seed", type=int, help="generator seed, overrides the file")
    run.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    run.add_argument("--log-level", default="warning")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from exchange import logger
    from exchange.sim import agencies

    logger.configure(args.log_level)
    try:
        node_config, config = agencies.load_node_file(args.config)
    except ExchangeError as err:
        print(f"exchange node run: {err.message}", file=sys.stderr)
        return 1
    changes: dict[str, Any] = {}
    if args.broker:
        changes["brokers"] = args.broker
    if args.pki:
        changes["pki_dir"] = str(Path(args.pki).resolve())
    if changes:
        node_config = msgspec.structs.replace(node_config, **changes)
    agency_changes: dict[str, Any] = {}
    if args.faults is not None:
        agency_changes["faults"] = args.faults
    if args.seed is not None:
        agency_changes["seed"] = args.seed
    if agency_changes:
        config = msgspec.structs.replace(config, **agency_changes)
    try:
        summary = asyncio.run(_main(node_config, config, args.records, args.duration))
    except KeyboardInterrupt:
        return 130
    except ExchangeError as err:
        print(f"exchange node run: {err.message} ({err.code})", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        _print_summary(summary)
    return 0


async def _main(node_config: NodeConfig, config: AgencyConfig, records: int | None,
                duration: float | None) -> dict[str, Any]:
    from exchange.node import Node
    from exchange.sim.agencies import make_agency

    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    t0 = time.monotonic()
    async with Node(node_config) as node:
        agency = make_agency(node, config)
        agency.track_seqs = False  # a node may run for days; the demo counts seqs instead
        runner = asyncio.create_task(agency.run(records))
        stop_waiter = asyncio.create_task(stopped.wait())
        waits: set[asyncio.Future[Any]] = {runner, stop_waiter}
        done, _ = await asyncio.wait(waits, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
        if runner in done and not stopped.is_set():
            # publishing is done: let the subscriptions drain what the broker holds for them
            remaining = None if duration is None else max(0.0, duration - (time.monotonic() - t0))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await _settle(node, agency, stopped)
        await agency.stop()
        stop_waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stop_waiter
        with contextlib.suppress(asyncio.CancelledError):
            await runner  # raises what the agency raised
        summary = agency.summary()
        summary["elapsed_s"] = round(time.monotonic() - t0, 3)
        summary["lag"] = await lag(node)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    return summary


async def _settle(node: Node, agency: Agency, stopped: asyncio.Event) -> None:
    """Until every subscription's acked position reaches its dataset's head (or stop)."""
    if not agency.subscriptions:
        return
    while not stopped.is_set():
        behind = await lag(node)
        if behind and all(v == 0 for v in behind.values()):
            return
        # the broker does not push lag; ask again shortly
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), 0.2)


def _print_summary(s: dict[str, Any]) -> None:
    rejected = sum(s["rejected"].values())
    print(f"{s['node']} ({s['role']}) in {s['elapsed_s']:.1f}s: published {s['published']}, "
          f"accepted {s['accepted']}, duplicates {s['duplicates']}, rejected {rejected}, "
          f"failed {s['failed']}")
    for code, n in s["rejected"].items():
        print(f"  rejected {code:<28} {n}")
    for name, sub in s["subscriptions"].items():
        print(f"  delivered {name}: {sub['delivered']} (verified {sub['verified']}, "
              f"lag {s['lag'].get(name, '?')})")
    if s["unexpected"]:
        print(f"  {s['unexpected']} outcome(s) differed from the plan: "
              f"{s['unexpected_examples'][:3]}")
