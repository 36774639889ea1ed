"""``exchange broker serve|reload|check-config``: run the central broker."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import msgspec

from exchange.core.errors import ExchangeError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("broker", help="run the central broker")
    bsub = p.add_subparsers(dest="broker_command", required=True, metavar="ACTION")

    serve = bsub.add_parser("serve", help="serve the exchange over TLS 1.3 with client certs")
    serve.add_argument("--config", "-c", type=Path, required=True,
                       help="broker config (TOML or JSON): datasets, owners, agreements, limits")
    serve.add_argument("--listen", help="HOST:PORT, overrides the config (port 0: any free)")
    serve.add_argument("--data", help="data directory, overrides the config")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=_serve)

    reload = bsub.add_parser("reload", help="re-read config, keys and CRL without a restart")
    reload.add_argument("--config", "-c", type=Path, required=True)
    reload.add_argument("--data", help="data directory, overrides the config")
    reload.set_defaults(func=_reload)

    check = bsub.add_parser("check-config", help="decode the config strictly and report")
    check.add_argument("--config", "-c", type=Path, required=True)
    check.set_defaults(func=_check)


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from exchange.broker.app import load_config

    config = load_config(args.config)
    changes = {}
    if getattr(args, "listen", None):
        changes["listen"] = args.listen
    if getattr(args, "data", None):
        changes["data_dir"] = str(Path(args.data).resolve())
    return msgspec.structs.replace(config, **changes) if changes else config


def _serve(args: argparse.Namespace) -> int:
    from exchange import logger
    from exchange.broker.server import main_serve

    logger.configure(args.log_level)
    try:
        config = _load(args)
    except (ExchangeError, OSError) as err:
        print(f"exchange broker: {err}", file=sys.stderr)
        return 1
    return main_serve(config, args.config)


def _reload(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
        pid = int((Path(config.data_dir) / "broker.pid").read_text())
        os.kill(pid, signal.SIGHUP)
    except (ExchangeError, OSError, ValueError) as err:
        print(f"exchange broker reload: {err}", file=sys.stderr)
        return 1
    print(f"sent SIGHUP to broker pid {pid}")
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
    except (ExchangeError, OSError) as err:
        print(f"exchange broker: {err}", file=sys.stderr)
        return 1
    print(f"ok: {len(config.datasets)} datasets, {len(config.agreements)} agreements")
    return 0
