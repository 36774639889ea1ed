"""``exchange quality``: the four data-quality scores per dataset and publisher, as a table."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import aiohttp
import msgspec

from exchange.cli import identity
from exchange.core.errors import ExchangeError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("quality", help="correct, sufficient, clean, live per dataset",
                       description="The broker's quality report. The whole exchange's is an "
                       "operator's (--as OPERATOR_DIR); a node sees the datasets it owns "
                       "(--dataset).")
    p.add_argument("--broker", required=True, help="broker base URL, e.g. https://127.0.0.1:8443")
    identity.add_arguments(p)
    p.add_argument("--dataset", help="one dataset only")
    p.add_argument("--json", action="store_true", help="print the broker's JSON report")
    p.set_defaults(func=_run)


async def _fetch(args: argparse.Namespace) -> dict[str, Any]:
    from exchange.node import Node

    async with Node(identity.node_config(args, args.broker)) as node:
        path = "/v1/quality" + (f"/{args.dataset}" if args.dataset else "")
        report: dict[str, Any] = await node.get_json(path)
        return report


def _run(args: argparse.Namespace) -> int:
    try:
        report = asyncio.run(_fetch(args))
    except (ExchangeError, aiohttp.ClientError, OSError) as err:
        print(f"exchange quality: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(msgspec.json.encode(report).decode())
        return 0
    print(table(report["datasets"]))
    return 0


def table(datasets: dict[str, Any]) -> str:
    lines = [f"{'dataset':<12}{'publisher':<26}{'correct':>8}{'suffic.':>9}{'clean':>7}"
             f"{'live':>7}  {'stale':<6}{'unresolved':>11}{'last update':>13}"]
    for name, entry in datasets.items():
        rows = [("(all)", entry["scores"])] + [(p, e["scores"]) for p, e in
                                               entry["publishers"].items()]
        for who, s in rows:
            since = s["seconds_since_update"]
            lines.append(f"{name:<12}{who:<26}{_f(s['correct']):>8}{_f(s['sufficient']):>9}"
                         f"{_f(s['clean']):>7}{_f(s['live']):>7}  "
                         f"{'yes' if s['stale'] else 'no':<6}"
                         f"{s['unresolved_references']:>11}"
                         f"{'never' if since is None else f'{since:.0f}s ago':>13}")
        for sub in entry.get("subscriptions", []):
            lat = entry.get("latency_ms", {}).get(sub["node"], {})
            lines.append(f"{'':<12}  ↳ {sub['node']}/{sub['name']}: lag {sub['lag']} records, "
                         f"{sub['lag_s']}s; p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms")
    return "\n".join(lines)


def _f(score: float | None) -> str:
    """A score, or a dash where there is no data to score."""
    return "—" if score is None else f"{score:.3f}"
