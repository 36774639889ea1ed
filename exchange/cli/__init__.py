# PYTHON_ARGCOMPLETE_OK
"""The ``exchange`` command. Each subcommand lives in its own module with ``register``.

Shell completion: ``eval "$(register-python-argcomplete exchange)"`` (argcomplete finds the
marker above in the first bytes of this module, which the ``exchange`` script imports)."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Sequence

#: the distribution ``exchange`` is installed as (pyproject.toml's ``name``)
DISTRIBUTION = "vn-data-exchange"

#: subcommand modules under exchange.cli; each defines register(subparsers)
COMMANDS = ("schema", "pki", "broker", "node", "operator", "agreement", "dead_letters", "audit",
            "quality", "console", "demo", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exchange",
        description="National data exchange: validate records, run the broker, join as a node.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
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


def version() -> str:
    """The installed distribution's version (``unknown`` when run from an uninstalled tree)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    from exchange import logger

    parser = build_parser()
    _complete(parser)
    args = parser.parse_args(argv)
    # logs go to stderr, quiet by default; long-running commands raise the level themselves
    logger.configure(os.environ.get("EXCHANGE_LOG_LEVEL", "warning"))
    rc: int = args.func(args)
    return rc


def _complete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request and exit, when there is one (argcomplete sets
    ``_ARGCOMPLETE`` in the environment); otherwise nothing."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:  # installed without it: no completion, the command still runs
        return
    argcomplete.autocomplete(parser)


if __name__ == "__main__":
    sys.exit(main())
