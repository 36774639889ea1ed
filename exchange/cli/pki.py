"""``exchange pki``: the operator's commands for the exchange CA (see certs/README.md)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from exchange import pki
from exchange.core.errors import Code, ExchangeError, PkiError

#: CLI spelling → RFC 5280 §5.3.1 reason; only the ones an operator of this exchange needs.
REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
}


def _ca_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca-dir", metavar="DIR",
                   help="the CA's own directory (ca.key, tokens, ca.log); default: DIR-ca "
                   "beside the PKI directory")


def _duration(text: str) -> dt.timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value, unit = float(text[:-1]), units[text[-1]]
    except (KeyError, ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected e.g. 30m, 24h or 7d") from None
    return dt.timedelta(seconds=value * unit)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "pki",
        help="the exchange CA: create it, sign requests, invite, revoke",
        description="The exchange CA. PKI_DIR is what the broker reads (certificates, CRL, "
        "signing-key registry, the broker's own keys); the CA key lives in the CA's own "
        "directory (--ca-dir, default PKI_DIR-ca), which the broker never reads.",
    )
    sub = parser.add_subparsers(dest="pki_command", required=True, metavar="ACTION")

    p = sub.add_parser("init", help="create the CA, the broker's keys and an empty CRL")
    p.add_argument("dir", help="PKI directory (created, mode 0700)")
    _ca_dir(p)
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

    p = sub.add_parser("sign", help="issue certificates for requests (the offline path)",
                       description="Issue the certificate each PKCS#10 request asks for. A "
                       "node's or operator's requests come from `exchange node init` / "
                       "`exchange operator init`; a signing request from an enrolled node is "
                       "a key rotation. Writes NAME.crt beside each NAME.csr (or into --out) "
                       "and ca.crt.")
    p.add_argument("dir", help="PKI directory")
    p.add_argument("requests", nargs="+", metavar="REQUEST", help="PEM request file(s)")
    _ca_dir(p)
    p.add_argument("--out", metavar="DIR", help="write the certificates here")
    p.add_argument("--force", action="store_true",
                   help="re-issue an enrolled party's TLS certificate; the old one is revoked")
    p.add_argument("--days", type=int, default=pki.LEAF_VALIDITY_DAYS, help="validity in days")
    p.set_defaults(func=_run, action=_sign)

    p = sub.add_parser("invite", help="a single-use enrolment token (the online path)")
    p.add_argument("dir", help="PKI directory")
    p.add_argument("id", metavar="NODE_ID", help="the node (or, with --operator, operator)")
    _ca_dir(p)
    p.add_argument("--expires", type=_duration, default=dt.timedelta(hours=24),
                   metavar="DURATION", help="e.g. 30m, 24h (default), 7d")
    p.add_argument("--operator", action="store_true", help="invite an operator, not a node")
    p.add_argument("--replace", action="store_true",
                   help="the party is enrolled already (lost keys): its certificates are "
                   "re-issued and the old ones revoked")
    p.set_defaults(func=_run, action=_invite)

    p = sub.add_parser("serve", help="the CA's enrolment service for invited nodes",
                       description="Serve enrolment over TLS (server-authenticated): invited "
                       "nodes send their requests with their token (`exchange node enroll`), "
                       "enrolled ones rotate their signing key (`exchange node rotate --url`). "
                       "Runs where the CA key is; never in the broker.")
    p.add_argument("dir", help="PKI directory")
    _ca_dir(p)
    p.add_argument("--listen", default="127.0.0.1:8444", help="HOST:PORT (default %(default)s)")
    p.add_argument("--host", action="append", default=[], metavar="H",
                   help="DNS name or IP nodes use to reach the service (repeatable)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=_serve)

    p = sub.add_parser("enroll", help="INSECURE: make a node's keys centrally (demos, tests)",
                       description="Generate a node's TLS and signing keys inside the PKI "
                       "directory and certify them. The CA's operator then holds the node's "
                       "private signing key, so its signatures prove nothing about the "
                       "agency: for demos and tests only. Real nodes run `exchange node init`.")
    p.add_argument("dir", help="PKI directory")
    p.add_argument("node_id", help="e.g. vn.gov.mps.population")
    _ca_dir(p)
    p.add_argument("--insecure-central-keys", action="store_true", required=True,
                   help="required: acknowledge that the CA will hold the node's keys")
    p.add_argument(
        "--force", action="store_true", help="re-issue; the old certificates are revoked"
    )
    p.add_argument("--days", type=int, default=pki.LEAF_VALIDITY_DAYS, help="validity in days")
    p.set_defaults(func=_run, action=_enroll)

    p = sub.add_parser("revoke", help="put a node's (or operator's) certificates on the CRL")
    p.add_argument("dir", help="PKI directory")
    p.add_argument("node_id", metavar="ID", help="the node (or, with --operator, operator) "
                   "whose certificates to revoke")
    _ca_dir(p)
    p.add_argument("--operator", action="store_true", help="ID is an operator")
    p.add_argument("--reason", choices=sorted(REASONS), default="unspecified")
    p.set_defaults(func=_run, action=_revoke)

    p = sub.add_parser("crl", help="re-sign the CRL with a fresh nextUpdate")
    p.add_argument("dir", help="PKI directory")
    _ca_dir(p)
    p.add_argument("--days", type=int, default=pki.CRL_VALIDITY_DAYS, help="CRL validity in days")
    p.set_defaults(func=_run, action=_crl)

    p = sub.add_parser("list", help="enrolled nodes and operators, revocation state and expiry")
    p.add_argument("dir", help="PKI directory")
    p.set_defaults(func=_run, action=_list)


def _run(args: argparse.Namespace) -> int:
    try:
        args.action(args)
    except ExchangeError as err:
        print(f"exchange pki {args.pki_command}: {err.message}", file=sys.stderr)
        return 1
    return 0


def _init(args: argparse.Namespace) -> None:
    broker = pki.init(args.dir, ca_dir=args.ca_dir, broker_hosts=args.host,
                      broker_id=args.broker_id, validity_days=args.days)
    ca_dir = Path(args.ca_dir) if args.ca_dir else pki.default_ca_dir(args.dir)
    print(f"created exchange CA: the broker reads {args.dir}")
    print(f"broker {broker.node_id}: {broker.tls_cert}")
    print(f"the CA key is in {ca_dir / 'ca.key'}: move that directory to the CA's own machine "
          "(or keep it offline) and pass --ca-dir to sign, invite, revoke and crl")


def _sign(args: argparse.Namespace) -> None:
    ca_pem = (Path(args.dir) / "ca.crt").read_bytes()
    for request in args.requests:
        path = Path(request)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise PkiError(f"cannot read {path}: {err.strerror}", code=Code.PKI_IO) from None
        cert = pki.sign(args.dir, data, ca_dir=args.ca_dir, force=args.force,
                        validity_days=args.days)
        out = Path(args.out) if args.out else path.parent
        out.mkdir(parents=True, exist_ok=True)
        target = out / (path.stem + ".crt")
        target.write_bytes(cert.public_bytes(Encoding.PEM))
        (out / "ca.crt").write_bytes(ca_pem)
        who = pki.principal_from_cert(cert)
        print(f"issued {target} for {who.role} {who.id} (serial {cert.serial_number:x})")


def _invite(args: argparse.Namespace) -> None:
    role = "operator" if args.operator else "node"
    token = pki.invite(args.dir, args.id, expires=args.expires, role=role,
                       replace=args.replace, ca_dir=args.ca_dir)
    print(token)
    hours = args.expires.total_seconds() / 3600
    print(f"single-use token for {role} {args.id}, valid {hours:g} h; hand it to the "
          f"{role}'s operator, who runs `exchange {role} enroll DIR --url URL --token TOKEN`",
          file=sys.stderr)


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from exchange import logger
    from exchange.broker.server import split_listen
    from exchange.pki.service import EnrolService, create_app, service_ssl_context

    logger.configure(args.log_level)
    try:
        service = EnrolService(args.dir, args.ca_dir)
        ctx = service_ssl_context(service, args.host)
        host, port = split_listen(args.listen)
    except ExchangeError as err:
        print(f"exchange pki serve: {err.message} ({err.code})", file=sys.stderr)
        return 1

    async def main() -> None:
        from aiohttp import web

        # an idle or slow connection is closed after 30 s (partial data does not extend it)
        runner = web.AppRunner(create_app(service), access_log=None, keepalive_timeout=30.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ctx)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        print(f'{{"event": "listening", "host": "{host}", "port": {bound}}}', flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except OSError as err:
        print(f"exchange pki serve: cannot listen on {args.listen}: {err.strerror}",
              file=sys.stderr)
        return 1
    return 0


def _enroll(args: argparse.Namespace) -> None:
    ident = pki.enroll(args.dir, args.node_id, ca_dir=args.ca_dir, force=args.force,
                       validity_days=args.days)
    print(f"enrolled {ident.node_id} WITH CENTRAL KEYS (demos and tests only)")
    print(f"  node directory   {ident.tls_cert.parent}")
    print(f"  signing key      {pki.encode_public_key(ident.signing_public_key)}")


def _revoke(args: argparse.Namespace) -> None:
    number = pki.revoke(args.dir, args.node_id, reason=REASONS[args.reason],
                        role="operator" if args.operator else "node", ca_dir=args.ca_dir)
    print(f"revoked {args.node_id}; CRL number {number}")
    print("reload the broker's TLS context (or restart it) for the CRL to take effect")


def _crl(args: argparse.Namespace) -> None:
    number = pki.refresh_crl(args.dir, days=args.days, ca_dir=args.ca_dir)
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
    for name, _serial, revoked_op in pki.list_operators(args.dir):
        print(f"{name:<{width}}  {'revoked' if revoked_op else 'active':<7}  {'':<16}  "
              "(operator)")
    print(
        f"{len(nodes)} node(s); CRL number {revoked.crl_number}, "
        f"next update {revoked.next_update:%Y-%m-%d %H:%M} UTC",
        file=sys.stderr,
    )
