"""``exchange audit``: check the transparency log and every record, independently."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import msgspec

from exchange.core.errors import ExchangeError, IntegrityError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help="audit the transparency log (offline or against a broker)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", type=Path, help="a broker's data directory (offline audit)")
    where.add_argument("--broker", metavar="URL",
                       help="a running broker's base URL, e.g. https://127.0.0.1:8443 (online "
                            "audit)")
    # the old name, as `quality` and `dead-letters` never had it: still accepted, not shown
    where.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--pki", type=Path,
                   help="exchange PKI directory to take keys from (default for --data: the "
                        "trust.json the broker left in the data directory)")
    p.add_argument("--as", dest="party_dir", metavar="DIR", type=Path,
                   help="connect as this node or operator (its own directory; --broker)")
    p.add_argument("--node", help="node id to connect as, with central keys in --pki "
                   "(--broker)")
    p.add_argument("--from-checkpoint", type=Path,
                   help="a checkpoint trusted earlier: the log must be consistent with it")
    p.add_argument("--save-checkpoint", type=Path,
                   help="write the latest verified checkpoint here (for the next audit)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run)


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(msgspec.json.encode(result).decode())
        return
    if result["ok"]:
        print(f"ok: {result['entries']} entries, {result['checkpoints']} checkpoints verified"
              + (f", {result['batches']} publisher batches" if result.get("batches") else ""))
    else:
        print(f"FAILED at seq {result['first_bad_seq']}: {result['problem']}: "
              f"{result['detail']}")


def _run(args: argparse.Namespace) -> int:
    from exchange import audit

    if args.url is not None:
        print("exchange audit: --url is deprecated, say --broker", file=sys.stderr)
        args.broker = args.url
    try:
        if args.data is not None:
            trust = None
            if args.pki:
                # the keys from the PKI; the datasets' owners (who approves agreements) from
                # the broker's trust file, if there is one
                left = args.data / audit.TRUST_FILE
                owners = audit.Trust.from_file(left).owners if left.is_file() else {}
                trust = audit.Trust.from_pki(args.pki, owners=owners)
            result = audit.audit_data(args.data, trust).as_dict()
        else:
            if args.party_dir is None and not (args.pki and args.node):
                print("exchange audit --broker needs --as DIR (or --node with --pki)",
                      file=sys.stderr)
                return 2
            result = asyncio.run(_online(args))
    except (ExchangeError, OSError) as err:
        print(f"exchange audit: {err}", file=sys.stderr)
        return 2
    _print(result, args.json)
    return 0 if result["ok"] else 1


async def _online(args: argparse.Namespace) -> dict[str, Any]:
    from exchange import audit
    from exchange.cli import identity
    from exchange.core import tlog
    from exchange.node import Node

    config = identity.node_config(args, args.broker)
    async with Node(config) as node:
        if args.from_checkpoint:
            note = args.from_checkpoint.read_text(encoding="utf-8")
            key = await node.tlog.note_key()
            node.tlog.trusted = tlog.open_checkpoint(key, note, node.tlog.origin)
        try:
            latest = await node.tlog.refresh()  # consistency with --from-checkpoint, if given
        except IntegrityError as err:  # a verdict; an unreachable broker is not one (exit 2)
            bad = node.tlog.trusted.size if node.tlog.trusted else None
            return audit.AuditResult().fail(bad, "inconsistent_checkpoints",
                                            err.message).as_dict()
        entries: list[dict[str, Any]] = []
        while len(entries) < latest.size:
            page = await node.get_json(
                f"/v1/log/entries?start={len(entries)}&end={latest.size}")
            if not page:
                break
            entries.extend(page)
        cps = [latest]
        if args.from_checkpoint:
            cps.insert(0, tlog.Checkpoint.parse(
                args.from_checkpoint.read_text(encoding="utf-8").split("\n\n")[0] + "\n"))
        result = audit.audit_entries(entries, cps)
        if result.ok and args.save_checkpoint:
            args.save_checkpoint.write_text(latest.note, encoding="utf-8")
        return result.as_dict()
