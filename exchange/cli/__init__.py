"""The ``exchange`` command. Each subcommand lives in its own module with ``register``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

#: subcommand modules under exchange.cli; each defines register(subparsers)
COMMANDS = ("schema", "pki", "broker", "node", "operator", "agreement", "dead_letters", "audit",
            "quality", "demo", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exchange",
        description="National data exchange: validate records, run the broker, join as a node.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"exchange.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"exchange.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from exchange import logger

    parser = build_parser()
    args = parser.parse_args(argv)
    # logs go to stderr, quiet by default; long-running commands raise the level themselves
    logger.configure(os.environ.get("EXCHANGE_LOG_LEVEL", "warning"))
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
