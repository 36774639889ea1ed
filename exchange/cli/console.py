"""``exchange console``: the operator console, a local web page over the operator's connection.

Prints a one-time URL (``http://127.0.0.1:PORT/?token=…``) and serves until interrupted; see
``exchange.console`` for what it shows and its security model.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from exchange.core.errors import ExchangeError

if TYPE_CHECKING:
    from exchange.node import NodeConfig


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "console", help="the operator console: a local web page over the broker",
        description="Serve the operator console to a browser on this machine. The server "
        "talks to the broker with the operator's certificate and signs decisions with the "
        "operator's key; the browser holds no key. Open the URL it prints: the token in it "
        "works once and leaves a session cookie, and the page keeps a session secret of its "
        "own (the cookie alone is refused: browsers send cookies for 127.0.0.1 to every "
        "port). A consistency check's baseline is kept in DIR/console-checkpoint.txt.")
    p.add_argument("--as", dest="party_dir", metavar="DIR", type=Path, required=True,
                   help="the operator's own directory (from `exchange operator init`)")
    p.add_argument("--broker", required=True, help="broker base URL, e.g. https://127.0.0.1:8443")
    p.add_argument("--listen", default="127.0.0.1:0",
                   help="HOST:PORT to serve on (default %(default)s: loopback, a free port)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a --listen address other than loopback. Whoever reaches the "
                   "console with a session acts with the operator's key, and the console is "
                   "plain HTTP: put it behind TLS of your own (see --public-origin) if you do")
    p.add_argument("--public-origin", metavar="URL", default=None,
                   help="the origin the browser sees when a TLS proxy fronts the console, e.g. "
                   "https://console.example: the only Origin a state change may carry, the "
                   "base of the printed URL and, for https, the session cookie gets Secure")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between polls of the broker (default %(default)s)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from exchange.console import parse_listen, parse_origin
    from exchange.pki import party

    if not (math.isfinite(args.interval) and args.interval > 0):
        print(f"exchange console: --interval must be a positive number of seconds, not "
              f"{args.interval}", file=sys.stderr)
        return 2
    try:
        host, port = parse_listen(args.listen, allow_remote=args.allow_remote)
        public_origin = parse_origin(args.public_origin) if args.public_origin else None
        me = party.load(args.party_dir)
    except ExchangeError as err:
        print(f"exchange console: {err.message}", file=sys.stderr)
        return 2
    if me.role != "operator":
        print(f"exchange console: {args.party_dir} holds the keys of {me.role} {me.id}; the "
              "console is an operator's (`exchange operator init`)", file=sys.stderr)
        return 2
    from exchange.node import NodeConfig

    config = NodeConfig(node_id=me.id, node_dir=str(args.party_dir), brokers=[args.broker])
    try:
        asyncio.run(run_console(config, host, port, interval_s=args.interval,
                                public_origin=public_origin))
    except (ExchangeError, OSError) as err:
        print(f"exchange console: {err}", file=sys.stderr)
        return 1
    return 0


def announce(url: str) -> None:
    print(f"exchange console: open {url}\n(the link works once; the session lives in that "
          "browser tab)", flush=True)


async def run_console(config: NodeConfig, host: str, port: int, *, interval_s: float = 1.0,
                      public_origin: str | None = None,
                      say: Callable[[str], None] = announce,
                      stop: asyncio.Event | None = None) -> None:
    """Serve the console until SIGINT or SIGTERM (or ``stop``), then close cleanly."""
    from exchange.console import Console, serve

    console = Console(config, interval_s=interval_s, public_origin=public_origin)
    runner, url = await serve(console, host, port)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        say(url)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
