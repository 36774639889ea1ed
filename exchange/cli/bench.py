"""``exchange bench``: throughput, latency and scale beside NATS JetStream and the machine's limits.

The harness lives in the ``benchmarks`` package of the source checkout (installed alongside
``exchange`` in editable mode); this module only registers the command.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="benchmark the exchange against JetStream and the machine",
                       description="Run the exchange's benchmarks: publish only, end to end "
                       "with 1/4/16 subscribers, per-record vs batch signatures, replay, open "
                       "loop at 50%/90% of max, with the baselines measured in the same run.")
    try:
        from benchmarks.bench import add_arguments
    except ImportError:
        p.set_defaults(func=_missing)
        return
    add_arguments(p)
    p.set_defaults(func=_run)


def _missing(args: argparse.Namespace) -> int:
    print("exchange bench: the benchmarks package is not installed; run it from a source "
          "checkout installed with `pip install -e '.[dev]'`", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    from benchmarks.bench import main

    return main(args)
