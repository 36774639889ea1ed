"""``exchange dead-letters``: a node's refused records, with the reason for each."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import sys
from typing import TYPE_CHECKING, Any

import aiohttp

from exchange.cli import identity
from exchange.core.errors import ExchangeError

if TYPE_CHECKING:
    from exchange.node import NodeConfig

#: most entries the broker returns per request
PAGE = 1000


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dead-letters", help="list a node's refused records (code, path, message)",
        description="List the records the broker refused from a node, oldest first, with the "
                    "stable reason code, the JSONPath of the offending field and a message. "
                    "A node sees its own (--as NODE_DIR); an operator names the node (--as "
                    "OPERATOR_DIR --node ID). Page with --after (the last id seen).")
    identity.add_arguments(p, node_help="the node whose dead letters to list (an operator), "
                           "or to connect as (with --pki)")
    p.add_argument("--broker", required=True, metavar="URL", help="e.g. https://127.0.0.1:8443")
    p.add_argument("--after", type=int, default=0, help="list entries after this id")
    p.add_argument("--limit", type=int, default=100, help="most entries to list (default 100)")
    p.add_argument("--json", action="store_true",
                   help="one JSON array of entries, each with the refused record")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.limit < 0 or args.after < 0:
        print("exchange dead-letters: --after and --limit must not be negative", file=sys.stderr)
        return 2
    try:
        config = identity.node_config(args, args.broker, retries=0, timeout_s=15.0)
        of = args.node if args.party_dir is not None else None
        # one entry more than asked for says whether there is a next page
        rows = asyncio.run(fetch(config, args.after, args.limit + 1, of=of))
    except ExchangeError as err:
        print(f"exchange dead-letters: {err.message} ({err.code})", file=sys.stderr)
        return 1
    except (aiohttp.ClientError, OSError, TimeoutError) as err:
        print(f"exchange dead-letters: cannot reach {args.broker}: {err or type(err).__name__}",
              file=sys.stderr)
        return 1
    more = len(rows) > args.limit
    rows = rows[:args.limit]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        print_table(rows, more=more)
    return 0


async def fetch(config: NodeConfig, after: int, limit: int, *, of: str | None = None
                ) -> list[dict[str, Any]]:
    """Up to ``limit`` dead letters after id ``after``, page by page: the connecting node's
    own, or (an operator) those of node ``of``."""
    from exchange.node import Node

    out: list[dict[str, Any]] = []
    async with Node(config) as node:
        while len(out) < limit:
            want = min(PAGE, limit - len(out))
            page = await node.dead_letters(after, want, node=of)
            out.extend(page)
            if len(page) < want:
                break
            after = int(page[-1]["id"])
    return out


def print_table(rows: list[dict[str, Any]], *, more: bool = False) -> None:
    """A readable table: one line per refused record, the message cut to the terminal; where
    the next page starts when there are ``more``."""
    if not rows:
        print("no dead letters")
        return
    head = ("ID", "RECEIVED (UTC)", "DATASET", "#", "CODE", "PATH", "MESSAGE")
    table = [(str(r["id"]),
              dt.datetime.fromtimestamp(float(r["received_at"]), dt.UTC).strftime(
                  "%Y-%m-%d %H:%M:%S"),
              str(r["dataset"]), "-" if r.get("index") is None else str(r["index"]),
              str(r["code"]), str(r["path"]), str(r["message"])) for r in rows]
    widths = [max(len(head[i]), *(len(t[i]) for t in table)) for i in range(len(head) - 1)]
    width = shutil.get_terminal_size((160, 24)).columns
    room = max(20, width - sum(widths) - 2 * len(widths))
    for line in [head, *table]:
        cells = [c.ljust(w) for c, w in zip(line, widths, strict=False)]
        message = line[-1] if len(line[-1]) <= room or not sys.stdout.isatty() \
            else line[-1][:room - 1] + "…"
        print("  ".join([*cells, message]))
    print(f"{len(rows)} dead letter(s)"
          + (f"; next page: --after {rows[-1]['id']}" if more else "; no more"),
          file=sys.stderr)
