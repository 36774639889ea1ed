"""``exchange agreement request|list|show|approve|reject|revoke`` and ``exchange catalog``:
the exchange floor from the command line. Every decision is signed here, with the key of the
node or operator in ``--as DIR``; the broker only checks and records it."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from exchange.cli import identity
from exchange.core.errors import ExchangeError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", required=True, metavar="URL", help="e.g. https://127.0.0.1:8443")
    identity.add_arguments(p)
    p.add_argument("--json", action="store_true", help="print the broker's JSON")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agreement", help="request, approve, countersign and revoke agreements",
                       description="Agreements are signed data: the subscriber requests, the "
                       "owner approves or rejects, an operator countersigns agreements on "
                       "core and important data, the owner or an operator revokes. Each "
                       "step is signed with the key in --as DIR and is a transparency-log "
                       "entry.")
    asub = p.add_subparsers(dest="agreement_command", required=True, metavar="ACTION")

    r = asub.add_parser("request", help="ask a dataset's owner (signed with your node's key)")
    r.add_argument("dataset", help="the dataset to read, e.g. population")
    r.add_argument("--purpose", required=True)
    r.add_argument("--legal-basis", required=True, help="the law that allows the processing")
    r.add_argument("--groups", default="", help="disclosure groups, comma-separated "
                   "(default: all); see `exchange catalog`")
    r.add_argument("--days", type=float, default=365.0, help="how long (default 365)")
    r.add_argument("--min-completeness", type=float, default=0.0)
    r.add_argument("--schema-version", type=int, default=None, metavar="N",
                   help="the schema version this node reads (default: the latest); records of "
                        "later versions arrive with the groups it lacks withheld")
    _common(r)
    r.set_defaults(func=lambda a: _run(a, _request))

    ls = asub.add_parser("list", help="the agreements you may see")
    ls.add_argument("--state", choices=["requested", "approved", "active", "rejected",
                                        "revoked", "expired"])
    ls.add_argument("--dataset")
    _common(ls)
    ls.set_defaults(func=lambda a: _run(a, _list))

    sh = asub.add_parser("show", help="one agreement with every signature on it")
    sh.add_argument("id", help="the agreement's id (`exchange agreement list`)")
    _common(sh)
    sh.set_defaults(func=lambda a: _run(a, _show))

    for action, text in (("approve", "the owner approves; an operator countersigns"),
                         ("reject", "the owner rejects"),
                         ("revoke", "the owner or an operator revokes")):
        d = asub.add_parser(action, help=text)
        d.add_argument("id", help="the agreement's id (`exchange agreement list`)")
        d.add_argument("--reason", default="")
        _common(d)
        d.set_defaults(func=lambda a, action=action: _run(a, _decide(action)))

    lk = sub.add_parser("lookup", help="one record's current version, under your agreement",
                        description="The current version of one record, projected to the "
                        "groups your agreement grants, verified (the publisher's signature) and "
                        "checked for inclusion in the transparency log. Recorded as an access.")
    lk.add_argument("dataset", help="dataset name, e.g. population")
    lk.add_argument("key", help="the record's key, e.g. a personal id for population")
    _common(lk)
    lk.set_defaults(func=lambda a: _run(a, _lookup))

    ac = sub.add_parser("access", help="who received a record (the owner or an operator)",
                        description="Which agencies received each version of one record, "
                        "when, under which agreement and purpose, and with which groups: "
                        "the answer a person is owed (Decree 13/2023/NĐ-CP Art. 9).")
    ac.add_argument("dataset", help="dataset name, e.g. population")
    ac.add_argument("key", help="the record's key, e.g. a personal id for population")
    _common(ac)
    ac.set_defaults(func=lambda a: _run(a, _access))

    c = sub.add_parser("catalog", help="what each dataset is, its groups, classification, "
                       "quality and agreements (DCAT terms)")
    c.add_argument("dataset", nargs="?", help="one dataset (default: every one)")
    _common(c)
    c.set_defaults(func=lambda a: _run(a, _catalog))


Action = Callable[[Any, argparse.Namespace], Awaitable[Any]]


def _run(args: argparse.Namespace, action: Action) -> int:
    from exchange.node import Node

    async def main() -> Any:
        async with Node(identity.node_config(args, args.broker, retries=0)) as node:
            return await action(node, args)

    try:
        out = asyncio.run(main())
    except ExchangeError as err:
        print(f"exchange: {err.message} ({err.code})", file=sys.stderr)
        return 1
    except (aiohttp.ClientError, OSError) as err:
        print(f"exchange: cannot reach {args.broker}: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=2))
    elif isinstance(out, list):
        for item in out:
            print(_line(item))
    elif isinstance(out, dict) and "request" in out:
        print(_detail(out))
    elif isinstance(out, dict) and "versions" in out:
        print(_access_text(out))
    elif isinstance(out, dict) and "withheld" in out:
        print(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        print(_catalog_text(out))
    return 0


async def _request(node: Any, args: argparse.Namespace) -> Any:
    groups = [g for g in args.groups.split(",") if g]
    return await node.request_agreement(args.dataset, purpose=args.purpose,
                                        legal_basis=args.legal_basis, groups=groups,
                                        days=args.days, version=args.schema_version,
                                        min_completeness=args.min_completeness)


async def _list(node: Any, args: argparse.Namespace) -> Any:
    return await node.agreements(state=args.state, dataset=args.dataset)


async def _show(node: Any, args: argparse.Namespace) -> Any:
    return await node.agreement(args.id)


def _decide(action: str) -> Action:
    async def run(node: Any, args: argparse.Namespace) -> Any:
        verb = action
        if action == "approve" and node.client.identity.role == "operator":
            verb = "countersign"  # an operator's approval is its countersignature
        return await node.decide(args.id, verb, reason=args.reason)
    return run


async def _lookup(node: Any, args: argparse.Namespace) -> Any:
    d = await node.lookup(args.dataset, args.key)
    return {"dataset": d.dataset, "key": d.key, "version": d.version, "seq": d.seq,
            "data": d.data, "withheld": sorted(d.withheld), "verified": True,
            "included_in_log": True}


async def _access(node: Any, args: argparse.Namespace) -> Any:
    return await node.access(args.dataset, args.key)


def _access_text(a: dict[str, Any]) -> str:
    lines = [f"{a['dataset']} {a['key']}:"]
    for v in a["versions"]:
        lines.append(f"  version {v['version']} (seq {v['seq']})")
        if not v["received_by"]:
            lines.append("    received by nobody")
        for r in v["received_by"]:
            how = f"subscription {r['subscription']}" if r["subscription"] else "a lookup"
            at = dt.datetime.fromtimestamp(r["at"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
            lines.append(f"    {r['node']} by {how} at {at} UTC, agreement {r['agreement']} "
                         f"(“{r['purpose']}”), groups {', '.join(r['groups'])}")
    return "\n".join(lines)


async def _catalog(node: Any, args: argparse.Namespace) -> Any:
    return await node.get_json("/v1/catalog" + (f"/{args.dataset}" if args.dataset else ""))


def _line(a: dict[str, Any]) -> str:
    if "request" not in a:
        return _catalog_text(a)
    r = a["request"]
    groups = ",".join(r["groups"]) or "all"
    return (f"{a['id']}  {a['state']:<9}  {r['subscriber']} ← {r['dataset']} "
            f"v{r.get('version', 1)} [{groups}]  "
            f"until {r['expires']}  “{r['purpose']}”")


def _detail(a: dict[str, Any]) -> str:
    r = a["request"]
    lines = [_line(a), f"  legal basis   {r['legal_basis']}",
             f"  owner         {a['owner']}"
             + ("  (an operator countersigns: core or important data)" if a["countersign"]
                else ""),
             f"  requested     by {a['requested']['by']} at {a['requested']['at']}",
             f"  log entry     seq {a['seq']}, version {a['version']}"]
    for d in a["decisions"]:
        s = d["signed"]
        lines.append(f"  {d['action']:<13} by {s['role']} {s['by']} at {s['at']}"
                     + (f": {d['reason']}" if d["reason"] else ""))
    return "\n".join(lines)


def _catalog_text(c: dict[str, Any]) -> str:
    title = c["title"]["en"] if isinstance(c["title"], dict) else c["title"]
    lines = [f"{c['identifier']}: {title} — {c['publisher']}",
             f"  classification  {c['classification']}"
             + (" (agreements need an operator's countersignature)"
                if c["countersignature_required"] else ""),
             f"  legal basis     {c['legal_basis']}",
             f"  updates         every {c['accrualPeriodicity']}",
             f"  schemas         {', '.join(c['conformsTo'])}",
             f"  agreements      {c['agreements']['live']} live "
             f"({c['agreements']['signed']} signed, {c['agreements']['config']} from config)"]
    for group, fields in c["distributions"].items():
        lines.append(f"  group {group:<12} {', '.join(fields)}")
    q = c.get("quality")
    if q:
        lines.append("  quality         " + ", ".join(
            f"{k} {'—' if q[k] is None else format(q[k], '.3f')}"
            for k in ("correct", "sufficient", "clean", "live")))
    return "\n".join(lines)
