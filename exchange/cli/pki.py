"""``exchange pki``: the operator's commands for the exchange CA (see certs/README.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cryptography import x509

from exchange import pki
from exchange.core.errors import ExchangeError

#: CLI spelling → RFC 5280 §5.3.1 reason; only the ones an operator of this exchange needs.
REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "pki",
        help="create the exchange CA, enrol and revoke nodes",
        description="Manage the exchange PKI directory (CA, broker and node certificates, CRL).",
    )
    sub = parser.add_subparsers(dest="pki_command", required=True, metavar="ACTION")

    p = sub.add_parser("init", help="create the CA, the broker's keys and an empty CRL")
    p.add_argument("dir", help="PKI directory (created, mode 0700)")
    p.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="H",
        help="extra DNS name or IP address of the broker (repeatable; localhost and 127.0.0.1 "
        "are always included)",
    )
    p.add_argument("--broker-id", default=pki.BROKER_ID, help="default: %(default)s")
    p.add_argument("--days", type=int, default=pki.LEAF_VALIDITY_DAYS, help="broker cert validity")
    p.set_defaults(func=_run, action=_init)

    p = sub.add_parser("enroll", help="issue a node's TLS certificate and signing key")
    p.add_argument("dir")
    p.add_argument("node_id", help="e.g. vn.gov.mps.population")
    p.add_argument(
        "--force", action="store_true", help="re-issue; the old certificates are revoked"
    )
    p.add_argument("--days", type=int, default=pki.LEAF_VALIDITY_DAYS, help="validity in days")
    p.set_defaults(func=_run, action=_enroll)

    p = sub.add_parser("revoke", help="put a node's certificates on the CRL")
    p.add_argument("dir")
    p.add_argument("node_id")
    p.add_argument("--reason", choices=sorted(REASONS), default="unspecified")
    p.set_defaults(func=_run, action=_revoke)

    p = sub.add_parser("crl", help="re-sign the CRL with a fresh nextUpdate")
    p.add_argument("dir")
    p.add_argument("--days", type=int, default=pki.CRL_VALIDITY_DAYS, help="CRL validity in days")
    p.set_defaults(func=_run, action=_crl)

    p = sub.add_parser("list", help="enrolled nodes, revocation state and expiry")
    p.add_argument("dir")
    p.set_defaults(func=_run, action=_list)


def _run(args: argparse.Namespace) -> int:
    try:
        args.action(args)
    except ExchangeError as err:
        print(f"exchange pki {args.pki_command}: {err.message}", file=sys.stderr)
        return 1
    return 0


def _init(args: argparse.Namespace) -> None:
    broker = pki.init(
        args.dir, broker_hosts=args.host, broker_id=args.broker_id, validity_days=args.days
    )
    print(f"created exchange CA in {args.dir}")
    print(f"broker {broker.node_id}: {broker.tls_cert}")
    print("keep ca.key offline or at least unreadable to the broker's user")


def _enroll(args: argparse.Namespace) -> None:
    ident = pki.enroll(args.dir, args.node_id, force=args.force, validity_days=args.days)
    print(f"enrolled {ident.node_id}")
    print(f"  TLS certificate  {ident.tls_cert}")
    print(f"  signing key      {pki.encode_public_key(ident.signing_public_key)}")
    print(f"hand {ident.tls_cert.parent}/ and ca.crt to the node's operator")


def _revoke(args: argparse.Namespace) -> None:
    number = pki.revoke(args.dir, args.node_id, reason=REASONS[args.reason])
    print(f"revoked {args.node_id}; CRL number {number}")
    print("reload the broker's TLS context (or restart it) for the CRL to take effect")


def _crl(args: argparse.Namespace) -> None:
    number = pki.refresh_crl(args.dir, days=args.days)
    revoked = pki.load_revoked(args.dir)
    print(f"CRL number {number}, next update {revoked.next_update:%Y-%m-%d %H:%M} UTC")


def _list(args: argparse.Namespace) -> None:
    nodes = pki.list_nodes(args.dir)
    revoked = pki.load_revoked(args.dir)
    width = max([len("NODE"), *(len(n.node_id) for n in nodes)])
    print(f"{'NODE':<{width}}  {'STATE':<7}  {'EXPIRES (UTC)':<16}  SIGNING KEY")
    for n in nodes:
        state = "revoked" if n.revoked else "active"
        expires = f"{n.not_after:%Y-%m-%d %H:%M}"
        print(f"{n.node_id:<{width}}  {state:<7}  {expires:<16}  {n.signing_public_key}")
    print(
        f"{len(nodes)} node(s); CRL number {revoked.crl_number}, "
        f"next update {revoked.next_update:%Y-%m-%d %H:%M} UTC",
        file=sys.stderr,
    )
