"""``exchange broker serve|reload|check-config|openapi``: run the central broker.

``serve`` and ``check-config`` run the same checks (``exchange.broker.checks``) and report each
problem as one line ``PATH: MESSAGE (code)`` on stderr, exit 1; ``reload`` asks the running
broker over its control socket and exits 1 with the broker's reasons when it refused.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tomllib
from pathlib import Path

import msgspec

from exchange.core.errors import ExchangeError

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _workers(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= 256:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers from 0 to 256")
    return n


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("broker", help="run the central broker")
    bsub = p.add_subparsers(dest="broker_command", required=True, metavar="ACTION")

    serve = bsub.add_parser("serve", help="serve the exchange over TLS 1.3 with client certs")
    serve.add_argument("--config", "-c", type=Path, required=True,
                       help="broker config (TOML or JSON): datasets, owners, agreements, limits")
    serve.add_argument("--listen", help="HOST:PORT, overrides the config (port 0: any free)")
    serve.add_argument("--data", help="data directory, overrides the config")
    serve.add_argument("--workers", type=_workers, metavar="N",
                       help="gate worker processes checking batches beside the one that orders "
                       "and commits them (overrides gate_workers; 0: none)")
    serve.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    serve.set_defaults(func=_serve)

    reload = bsub.add_parser(
        "reload", help="re-read config, keys and CRL without a restart; wait for the answer")
    reload.add_argument("--config", "-c", type=Path, required=True,
                        help="the broker's config (where its data directory is)")
    reload.add_argument("--data", help="data directory, overrides the config")
    reload.add_argument("--timeout", type=_seconds, default=30.0,
                        help="seconds to wait for the broker's answer (default: %(default)s)")
    reload.set_defaults(func=_reload)

    check = bsub.add_parser(
        "check-config", help="run the checks `serve` runs (config, PKI, data dir) and report")
    check.add_argument("--config", "-c", type=Path, required=True)
    check.add_argument("--listen", help="HOST:PORT, as serve's --listen")
    check.add_argument("--data", help="data directory, as serve's --data")
    check.add_argument("--workers", type=_workers, metavar="N", help="as serve's --workers")
    check.add_argument("--json", action="store_true",
                       help="print the problems as a JSON list (empty when all is well)")
    check.set_defaults(func=_check)

    spec = bsub.add_parser(
        "openapi", help="write the OpenAPI 3.1 description of the HTTP API (or, with "
        "--asyncapi, the AsyncAPI 3.0 description of its WebSockets)")
    spec.add_argument("--output", "-o", type=Path,
                      help="file to write (docs/openapi.json, docs/asyncapi.json); "
                      "default: stdout")
    spec.add_argument("--asyncapi", action="store_true",
                      help="the WebSocket protocols (AsyncAPI 3.0) instead")
    spec.set_defaults(func=_openapi)


def _serve(args: argparse.Namespace) -> int:
    from exchange import logger
    from exchange.broker import checks
    from exchange.broker.server import main_serve
    from exchange.core.access import problems_of

    logger.configure(args.log_level)
    try:
        config = checks.decode(args.config, listen=args.listen, data_dir=args.data,
                               workers=args.workers)
    except ExchangeError as err:
        problems = problems_of(err)
        checks.report(problems, args.config)
        print(f"exchange broker serve: not started: {checks.summary(problems)}",
              file=sys.stderr)
        return 1
    # absolute: the broker re-reads it on every reload and names it in its answers
    return main_serve(config, args.config.resolve())


def _check(args: argparse.Namespace) -> int:
    from exchange.broker import checks

    checked = checks.load(args.config, listen=args.listen, data_dir=args.data,
                          workers=args.workers)
    if args.json:
        print(msgspec.json.encode(checked.problems).decode())
    else:
        checks.report(checked.problems, args.config)
    if not checked.ok or checked.config is None:
        return 1
    if not args.json:
        config = checked.config
        print(f"ok: {len(config.datasets)} datasets, {len(config.agreements)} agreements, "
              f"{len(checked.enrolled)} enrolled nodes")
    return 0


def _openapi(args: argparse.Namespace) -> int:
    from exchange.broker import openapi

    text = openapi.document_text(openapi.asyncapi() if args.asyncapi else openapi.openapi())
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


def _reload(args: argparse.Namespace) -> int:
    from exchange.broker import checks, control

    data_dir = args.data or _data_dir(args.config)
    if data_dir is None:
        # not even the data directory can be read from the file: that is the reason
        checked = checks.load(args.config)
        checks.report(checked.problems, args.config)
        print("exchange broker reload: not sent (the config names no readable data_dir); "
              "the broker keeps its config", file=sys.stderr)
        return 1
    try:
        answer = asyncio.run(control.request(control.socket_path(data_dir),
                                             within=args.timeout))
    except ExchangeError as err:
        print(f"exchange broker reload: {err.message} ({err.code})", file=sys.stderr)
        return 1
    file = Path(answer.config) if answer.config else args.config
    if file.resolve() != args.config.resolve():
        print(f"exchange broker reload: note: the broker reads {file}, not {args.config}",
              file=sys.stderr)
    if answer.ok:
        print(f"reloaded: {answer.datasets} datasets, {answer.agreements} agreements "
              f"({file})")
        return 0
    checks.report(answer.problems, file)
    if answer.error is not None:
        print(f"exchange broker reload: {answer.error} ({answer.code})", file=sys.stderr)
    print("exchange broker reload: refused; the broker keeps serving its previous config",
          file=sys.stderr)
    return 1


def _data_dir(path: Path) -> str | None:
    """The data directory the file names (relative to the file, as the broker reads it); found
    even in a file the broker would refuse, so the broker can say why. None if unreadable."""
    from exchange.broker import checks
    from exchange.core.access import BrokerConfig

    try:
        return checks.decode(path).data_dir
    except ExchangeError:
        pass
    try:
        text = path.read_text(encoding="utf-8")
        raw = msgspec.json.decode(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError, msgspec.DecodeError):
        return None
    value = raw.get("data_dir", BrokerConfig().data_dir) if isinstance(raw, dict) else None
    return str((path.parent / value).resolve()) if isinstance(value, str) else None
