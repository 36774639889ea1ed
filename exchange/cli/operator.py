"""``exchange operator init|enroll|install|rotate``: an operator's own keys and certificate.

An operator is a role of its own (a SAN URI ``urn:vn-exchange:operator:<name>``): it opens the
exchange-wide views (every publisher's quality, every subscription's lag, ``/metrics``, any
node's dead letters) and nothing a node does. Its keys are made on its own machine, as a
node's are.
"""

from __future__ import annotations

import argparse

from exchange.cli.node import register_party


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("operator", help="an operator's own keys and certificate")
    osub = p.add_subparsers(dest="node_command", required=True, metavar="ACTION")
    register_party(osub, "operator")
