"""Who a CLI command connects as: a node or an operator, from its own directory (``--as``), or
a node with central keys in a PKI directory (``--node`` with ``--pki``: demos and tests)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from exchange.core.errors import Code, InputError


def add_arguments(p: argparse.ArgumentParser, *, node_help: str = "node id to connect as "
                  "(with --pki)") -> None:
    p.add_argument("--as", dest="party_dir", metavar="DIR", type=Path,
                   help="your own directory (from `exchange node init` or `exchange operator "
                   "init`): connect as that node or operator")
    p.add_argument("--pki", help="a PKI directory holding central keys (demos, tests); with "
                   "--node")
    p.add_argument("--node", help=node_help)


def node_config(args: argparse.Namespace, broker: str, **kw: Any) -> Any:
    """The ``NodeConfig`` to connect with."""
    from exchange.node import NodeConfig
    from exchange.pki import party

    if args.party_dir is not None:
        me = party.load(args.party_dir)
        return NodeConfig(node_id=me.id, node_dir=str(args.party_dir), brokers=[broker], **kw)
    if args.pki and args.node:
        return NodeConfig(node_id=args.node, pki_dir=str(Path(args.pki)), brokers=[broker], **kw)
    raise InputError("say who connects: --as DIR (your node's or operator's directory), or "
                     "--node ID with --pki DIR", code=Code.BAD_QUERY)
