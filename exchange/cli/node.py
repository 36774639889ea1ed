"""``exchange node run CONFIG``: run one reference agency node against a running broker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from exchange.core.errors import Code, ExchangeError, PkiError
from exchange.sim.report import lag

if TYPE_CHECKING:
    from exchange.node import Node, NodeConfig
    from exchange.sim.agencies import Agency, AgencyConfig


def register_party(nsub: Any, role: str) -> None:
    """``init``, ``enroll`` and ``install``: the same for a node and for an operator."""
    what = "node id, e.g. vn.gov.mps.population" if role == "node" else \
        "operator name, e.g. vn.gov.ndc.ops.lan"
    p = nsub.add_parser(
        "init", help=f"make the {role}'s keys and certificate requests here",
        description=f"Create the {role}'s TLS key (ECDSA P-256) and Ed25519 signing key in DIR "
                    "(0600, never sent anywhere) and a PKCS#10 request for each (tls.csr, "
                    "signing.csr). Then either hand the requests to the CA (`exchange pki "
                    f"sign`) or enroll online with a token (`exchange {role} enroll`).")
    p.add_argument("dir", type=Path, help=f"the {role}'s own directory (created, mode 0700)")
    p.add_argument("id", metavar="ID", help=what)
    p.set_defaults(func=lambda args: _party_action(args, _init, role))

    p = nsub.add_parser(
        "enroll", help="send the requests with an invitation token; install the certificates",
        description="Online enrolment: fetch the CA certificate, check it against the pin in "
                    "the token, then send the requests over TLS verified against it and "
                    "install the certificates that come back.")
    p.add_argument("dir", type=Path, help=f"the {role}'s own directory (from `exchange {role} "
                   "init`)")
    p.add_argument("--url", required=True,
                   help="the CA's enrolment service, e.g. https://pki.exchange.gov.vn:8444")
    p.add_argument("--token", required=True, help="from `exchange pki invite`")
    p.set_defaults(func=lambda args: _party_action(args, _enroll, role))

    p = nsub.add_parser(
        "install", help="install certificates the CA issued offline",
        description="Check certificates from `exchange pki sign` (issued by the CA, naming "
                    "this party, certifying one of its keys) and file them; a certificate for "
                    "a rotation's new key completes the rotation.")
    p.add_argument("dir", type=Path, help=f"the {role}'s own directory")
    p.add_argument("certificates", nargs="*", type=Path, metavar="CERT",
                   help="default: the .crt files in DIR")
    p.add_argument("--ca", type=Path, help="the CA certificate to pin (default: DIR/ca.crt)")
    p.set_defaults(func=lambda args: _party_action(args, _install, role))

    p = nsub.add_parser(
        "rotate", help="a new signing key, certified; the old one is destroyed",
        description="Make a new Ed25519 signing key. With --url it is certified at once by "
                    "the CA's enrolment service (authenticated by the current TLS "
                    "certificate); without, signing.next.csr is left for `exchange pki sign`, "
                    f"then `exchange {role} install`. Records signed with the old key still "
                    "verify: the broker serves every certificate a node was issued.")
    p.add_argument("dir", type=Path, help=f"the {role}'s own directory")
    p.add_argument("--url", help="the CA's enrolment service")
    p.set_defaults(func=lambda args: _party_action(args, _rotate, role))


def _party_action(args: argparse.Namespace, action: Any, role: str) -> int:
    try:
        action(args, role)
    except ExchangeError as err:
        print(f"exchange {role} {args.node_command}: {err.message} ({err.code})",
              file=sys.stderr)
        return 1
    except OSError as err:
        print(f"exchange {role} {args.node_command}: {err}", file=sys.stderr)
        return 1
    return 0


def _init(args: argparse.Namespace, role: str) -> None:
    from exchange.pki import party

    party.create(args.dir, args.id, role="node" if role == "node" else "operator")
    print(f"made the keys of {role} {args.id} in {args.dir} (tls.key, signing.key: 0600)")
    print(f"requests: {args.dir / 'tls.csr'} {args.dir / 'signing.csr'}")
    print(f"next: `exchange {role} enroll {args.dir} --url URL --token TOKEN`, or have the CA "
          f"run `exchange pki sign PKI_DIR tls.csr signing.csr` and `exchange {role} install "
          f"{args.dir}`")


def _enroll(args: argparse.Namespace, role: str) -> None:
    from exchange.node import enrol

    done = asyncio.run(enrol.enroll(args.dir, args.url, args.token))
    print(f"enrolled: {'TLS ' if done.tls else ''}{'signing ' if done.signing else ''}"
          f"certificates installed in {args.dir}")


def _install(args: argparse.Namespace, role: str) -> None:
    from exchange.pki import party

    paths = args.certificates or sorted(p for p in args.dir.glob("*.crt") if p.name != "ca.crt")
    ca = args.ca.read_bytes() if args.ca else None
    if ca is None and not (args.dir / "ca.crt").is_file():
        raise PkiError("no ca.crt in the directory: pass --ca (from the CA)",
                            code=Code.NOT_ENROLLED)
    done = party.install(args.dir, [p.read_bytes() for p in paths], ca=ca)
    party.load_identity(args.dir)  # everything there and matching: ready to connect
    print(f"installed in {args.dir}" + (f"; rotated out key {done.rotated_from}"
                                         if done.rotated_from else ""))


def _rotate(args: argparse.Namespace, role: str) -> None:
    from exchange.pki import party

    if args.url:
        from exchange.node import enrol

        done = asyncio.run(enrol.rotate(args.dir, args.url))
        print(f"rotated: key {done.rotated_from} retired and destroyed; the new one is in "
              f"{args.dir / 'signing.key'}")
        return
    party.prepare_rotation(args.dir)
    print(f"new key in {args.dir / 'signing.next.key'}; have the CA run `exchange pki sign "
          f"PKI_DIR {args.dir / 'signing.next.csr'}`, then `exchange {role} install {args.dir}`")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("node", help="join as a node (keys, enrolment, rotation) or run a "
                       "reference agency (population, tax, land, vehicle)")
    nsub = p.add_subparsers(dest="node_command", required=True, metavar="ACTION")
    register_party(nsub, "node")
    run = nsub.add_parser(
        "run", help="publish and subscribe as one agency until done or stopped",
        description="Run the agency in a node file (see nodes/README.md) against a running "
                    "broker. Stops after --records published records (then once its "
                    "subscriptions have caught up with what they were sent), after --duration "
                    "seconds, or on SIGINT/SIGTERM; prints a summary.")
    run.add_argument("config", type=Path, help="node file, e.g. nodes/population.toml")
    run.add_argument("--records", type=int, help="records to publish (0: no limit); "
                     "default: the file's [agency] records")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument("--broker", action="append", metavar="URL",
                     help="broker URL, overrides the file's brokers (repeatable)")
    run.add_argument("--dir", help="the node's own directory, overrides the file's node_dir")
    run.add_argument("--pki", help="a PKI directory with central keys (demos, tests), instead "
                     "of the node's own directory")
    run.add_argument("--faults", type=float, help="share of faulty records, overrides the file")
    run.add_argument("--seed", type=int, help="generator seed, overrides the file")
    run.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    run.add_argument("--log-level", default="warning")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from exchange import logger
    from exchange.sim import agencies

    logger.configure(args.log_level)
    try:
        node_config, config = agencies.load_node_file(args.config)
    except ExchangeError as err:
        print(f"exchange node run: {err.message}", file=sys.stderr)
        return 1
    changes: dict[str, Any] = {}
    if args.broker:
        changes["brokers"] = args.broker
    if args.dir:
        changes.update(node_dir=str(Path(args.dir).resolve()), pki_dir="")
    if args.pki:
        changes.update(pki_dir=str(Path(args.pki).resolve()), node_dir="")
    if changes:
        node_config = msgspec.structs.replace(node_config, **changes)
    agency_changes: dict[str, Any] = {}
    if args.faults is not None:
        agency_changes["faults"] = args.faults
    if args.seed is not None:
        agency_changes["seed"] = args.seed
    if agency_changes:
        config = msgspec.structs.replace(config, **agency_changes)
    try:
        summary = asyncio.run(_main(node_config, config, args.records, args.duration))
    except KeyboardInterrupt:
        return 130
    except ExchangeError as err:
        print(f"exchange node run: {err.message} ({err.code})", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        _print_summary(summary)
    if failed_entirely(summary["published"], summary["failed"]):
        codes = ", ".join(f"{code} ×{n}" for code, n in summary["errors"].items())
        print(f"exchange node run: publishing failed: none of the {summary['published']} "
              f"records published reached the broker ({codes}); last error: "
              f"{summary['last_error']}", file=sys.stderr)
        return 1
    return 0


def failed_entirely(published: int, failed: int) -> bool:
    """Every record published got no receipt (not even a refusal): the node did not publish."""
    return published > 0 and failed >= published


async def _main(node_config: NodeConfig, config: AgencyConfig, records: int | None,
                duration: float | None) -> dict[str, Any]:
    from exchange.node import Node
    from exchange.sim.agencies import make_agency

    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    t0 = time.monotonic()
    async with Node(node_config) as node:
        agency = make_agency(node, config)
        agency.track_seqs = False  # a node may run for days; the demo counts seqs instead
        runner = asyncio.create_task(agency.run(records))
        stop_waiter = asyncio.create_task(stopped.wait())
        waits: set[asyncio.Future[Any]] = {runner, stop_waiter}
        done, _ = await asyncio.wait(waits, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
        if runner in done and not stopped.is_set() and not failed_entirely(
                agency.stats.published, agency.stats.failed):
            # publishing is done: let the subscriptions drain what the broker holds for them
            remaining = None if duration is None else max(0.0, duration - (time.monotonic() - t0))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await _settle(node, agency, stopped)
        await agency.stop()
        stop_waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stop_waiter
        with contextlib.suppress(asyncio.CancelledError):
            await runner  # raises what the agency raised
        summary = agency.summary()
        summary["elapsed_s"] = round(time.monotonic() - t0, 3)
        summary["lag"] = await lag(node)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    return summary


async def _settle(node: Node, agency: Agency, stopped: asyncio.Event) -> None:
    """Until every subscription's acked position reaches its dataset's head (or stop)."""
    if not agency.subscriptions:
        return
    while not stopped.is_set():
        behind = await lag(node)
        if behind and all(v == 0 for v in behind.values()):
            return
        # the broker does not push lag; ask again shortly
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), 0.2)


def _print_summary(s: dict[str, Any]) -> None:
    rejected = sum(s["rejected"].values())
    print(f"{s['node']} ({s['role']}) in {s['elapsed_s']:.1f}s: published {s['published']}, "
          f"accepted {s['accepted']}, duplicates {s['duplicates']}, rejected {rejected}, "
          f"failed {s['failed']}")
    for code, n in s["rejected"].items():
        print(f"  rejected {code:<28} {n}")
    for name, sub in s["subscriptions"].items():
        print(f"  delivered {name}: {sub['delivered']} (verified {sub['verified']}, "
              f"lag {s['lag'].get(name, '?')})")
    if s["unexpected"]:
        print(f"  {s['unexpected']} outcome(s) differed from the plan: "
              f"{s['unexpected_examples'][:3]}")
