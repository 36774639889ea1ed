"""Running ``exchange demo``: the whole exchange on one machine.

Creates a PKI, starts the broker as a real process (``exchange.sim.process``), runs the four
reference agencies in this process, waits until every subscription has caught up, stops the
broker and gathers the summary (``exchange.sim.report``). Argument parsing and printing are the
command's (``exchange.cli.demo``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import structlog
from cryptography.hazmat.primitives.serialization import Encoding

from exchange.core.errors import ExchangeError
from exchange.sim.process import DemoError, connect_host, running_broker
from exchange.sim.report import Progress, _say, _summary, lag

if TYPE_CHECKING:
    from exchange.node import Delivery, Node
    from exchange.sim.roles import Agency

__all__ = ["SHARES", "DemoError", "demo", "split_records"]

#: share of ``--records`` each agency publishes: people first, what refers to them after
SHARES = {"population": 0.4, "tax": 0.2, "land": 0.2, "vehicle": 0.2}


def _configure_logging(path: Path) -> IO[str]:
    """The nodes' logs (and any library's) go to a file: the terminal shows progress only."""
    from exchange import logger

    fh = path.open("a", encoding="utf-8")
    logger.configure("info", json=True)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=fh))
    handler = logging.StreamHandler(fh)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    return fh


def split_records(records: int) -> dict[str, int]:
    """``records`` shared between the agencies by ``SHARES`` (0 stays 0: no limit)."""
    out = {role: int(records * share) for role, share in SHARES.items()}
    out["population"] += records - sum(out.values())
    return out


async def demo(data: Path, *, records: int, duration: float, faults: float | None = None,
               rate: float | None = None, seed: int | None = None, catch_up_s: float = 60.0,
               live: bool = False, store: str = "sqlite", listen: str = "127.0.0.1:0"
               ) -> dict[str, Any]:
    """Run the demo in ``data`` and return its summary; the broker serves on ``listen``."""
    if store == "nats":
        from exchange.store.nats.server import NatsCluster

        nats_server = NatsCluster(data / "nats", 1)
        try:
            nats_server.start()
            await nats_server.wait_healthy()
        except ExchangeError as err:
            nats_server.stop()
            raise DemoError(f"cannot start nats-server: {err.message}") from None
        _say(f"nats-server on {nats_server.url} (JetStream in {data / 'nats'})")
        try:
            return await _demo(data, records=records, duration=duration, faults=faults,
                               rate=rate, seed=seed, catch_up_s=catch_up_s, live=live,
                               store=nats_server.url + "?sync=always", listen=listen)
        finally:
            nats_server.stop()
    return await _demo(data, records=records, duration=duration, faults=faults, rate=rate,
                       seed=seed, catch_up_s=catch_up_s, live=live, store=store,
                       listen=listen)


DEMO_OPERATOR = "vn.gov.ndc.ops.demo"


def join_offline(pki_dir: Path, party_dir: Path, party_id: str, *, role: str = "node") -> None:
    """The offline join, on one machine: the party makes its keys and requests in its own
    directory (``exchange node init``), the CA signs the requests (``exchange pki sign``), the
    party installs the certificates (``exchange node install``). Only requests and
    certificates cross between the two directories."""
    from exchange import pki
    from exchange.pki import party

    party.create(party_dir, party_id, role="node" if role == "node" else "operator")
    certs = [pki.sign(pki_dir, csr) for csr in party.requests(party_dir)]
    party.install(party_dir, [c.public_bytes(Encoding.PEM) for c in certs],
                  ca=(pki_dir / "ca.crt").read_bytes())


async def _demo(data: Path, *, records: int, duration: float, faults: float | None,
                rate: float | None, seed: int | None, catch_up_s: float, live: bool,
                store: str, listen: str = "127.0.0.1:0") -> dict[str, Any]:
    from exchange import pki
    from exchange.node import Node, NodeConfig
    from exchange.sim import agencies

    t_start = time.monotonic()
    _say(f"data directory {data}")
    pki_dir = data / "pki"
    node_dirs = {role: data / "nodes" / role for role in agencies.ROLES}
    try:
        # the broker's certificate names the host its nodes connect to
        pki.init(pki_dir, broker_hosts=[connect_host(listen).strip("[]")])
        for role, node_dir in node_dirs.items():
            join_offline(pki_dir, node_dir, agencies.OWNERS[role])
        # the exchange-wide quality report is an operator's view, not a node's
        join_offline(pki_dir, data / "operator", DEMO_OPERATOR, role="operator")
    except ExchangeError as err:
        raise DemoError(f"cannot create the PKI in {pki_dir}: {err.message}") from None
    _say(f"each agency made its own keys in {data / 'nodes'}/<role>; the CA signed their "
         "requests")
    config_path = data / "exchange.toml"
    toml = agencies.broker_toml("pki", "data", listen)
    if store != "sqlite":
        toml = toml.replace('store = "sqlite"', f"store = {json.dumps(store)}", 1)
    config_path.write_text(toml, encoding="utf-8")

    async with running_broker(config_path, data / "broker.log", listen) as broker:
        pid = broker.proc.pid if broker.proc else "?"
        _say(f"broker listening on {broker.url} (pid {pid}, log {broker.log})")
        shares = split_records(records)
        configs = {role: agencies.default_config(role) for role in agencies.ROLES}
        scale = None if rate is None else rate / sum(c.rate for c in configs.values())
        async with contextlib.AsyncExitStack() as stack:
            agents: list[agencies.Agency] = []
            for i, role in enumerate(agencies.ROLES):
                node = await stack.enter_async_context(Node(NodeConfig(
                    node_id=agencies.OWNERS[role], node_dir=str(node_dirs[role]),
                    brokers=[broker.url], linger_s=0.005)))
                changes: dict[str, Any] = {"records": shares[role]}
                if scale is not None:
                    changes["rate"] = configs[role].rate * scale
                if faults is not None:
                    changes["faults"] = faults
                if seed is not None:
                    changes["seed"] = seed + i
                agents.append(agencies.make_agency(
                    node, agencies.default_config(role, **changes)))
            _say(f"streaming {records or 'unlimited'} records for at most {duration:g}s "
                 "from the population, tax, land and vehicle registries")

            # Ctrl-C or SIGTERM: stop publishing, then stop as cleanly as a finished run
            interrupted = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, interrupted.set)
            progress = Progress(agents, live)
            ticker = asyncio.create_task(progress.run())
            t0 = time.monotonic()
            runs = [asyncio.create_task(a.run(), name=f"agency:{a.role}") for a in agents]
            finished = asyncio.gather(*runs, return_exceptions=True)
            interrupt = asyncio.ensure_future(interrupted.wait())
            either: list[asyncio.Future[Any]] = [finished, interrupt]
            await asyncio.wait(either, timeout=duration,
                               return_when=asyncio.FIRST_COMPLETED)
            for a in agents:
                await a.stop()
            await finished
            publish_s = time.monotonic() - t0
            if interrupted.is_set():
                _say("interrupted: stopping")
                catch_up_s = min(catch_up_s, 5.0)
            failures: dict[str, str] = {a.role: repr(r.exception())
                                        for a, r in zip(agents, runs, strict=True)
                                        if r.exception() is not None}
            for who, problem in failures.items():
                structlog.get_logger("exchange.demo").error("agency_failed", role=who,
                                                            error=problem)

            accepted = {a.dataset: set(a.stats.accepted_seqs) for a in agents}
            caught_up = True
            progress.phase = "catching up"
            try:
                async with asyncio.timeout(catch_up_s):
                    await asyncio.gather(*(a.wait_until(functools.partial(a.caught_up, accepted))
                                           for a in agents))
            except TimeoutError:
                caught_up = False
            lags = await _broker_lag(agents, min(catch_up_s, 10.0))
            async with Node(NodeConfig(node_id=DEMO_OPERATOR, node_dir=str(data / "operator"),
                                       brokers=[broker.url])) as operator:
                quality = await _quality(operator)
                progress.phase = "exchange floor"
                floor = await exchange_floor({a.role: a for a in agents}, operator,
                                             accepted)
            ticker.cancel()
            interrupt.cancel()
            for task in (ticker, interrupt):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            progress.finish()
            summaries = [a.summary() for a in agents]
            lost = {f"{a.node_id}/{s.dataset}/{s.name}": len(accepted.get(s.dataset, set())
                                                              - s.seqs)
                    for a in agents for s in a.sub_stats.values()}
        _say("stopping the broker")
    broker_exit = broker.proc.returncode if broker.proc else None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    summary = _summary(summaries, accepted, lost, lags, publish_s=publish_s,
                       elapsed_s=time.monotonic() - t_start, data=data, caught_up=caught_up,
                       broker_exit=broker_exit, failures=failures)
    summary["interrupted"] = interrupted.is_set()
    summary["quality"] = {name: {k: entry["scores"][k] for k in
                                 ("correct", "sufficient", "clean", "live")}
                          for name, entry in sorted(quality.items())}
    summary["latency_ms"] = {name: entry.get("latency_ms", {})
                             for name, entry in sorted(quality.items())}
    summary["agreements"] = floor["agreements"]
    summary["access"] = floor["access"]
    summary["store_dir"] = str(data / "data")
    return summary


async def exchange_floor(agencies_: dict[str, Agency], operator: Node,
                         accepted: dict[str, set[int]]) -> dict[str, Any]:
    """The exchange floor, shown once: the tax authority asks the land registry for an
    agreement, the owner approves and an operator countersigns (land is core data), records
    flow, the owner revokes and delivery stops; then a lookup, and who received one
    citizen's record."""
    tax, land, pop = (agencies_[r].node for r in ("tax", "land", "population"))
    steps: list[dict[str, Any]] = []
    report: dict[str, Any] = {"steps": steps}
    try:
        asked = await tax.request_agreement(
            "land", purpose="property tax assessment",
            legal_basis="Law on Tax Administration 38/2019/QH14 Art. 98", days=30)
        steps.append({"step": "requested", "by": tax.config.node_id, "state": asked["state"],
                      "seq": asked["seq"]})
        approved = await land.decide(asked["id"], "approve")
        steps.append({"step": "approved", "by": land.config.node_id,
                      "state": approved["state"], "seq": approved["seq"]})
        if approved["state"] == "approved":
            active = await operator.decide(asked["id"], "countersign")
            steps.append({"step": "countersigned", "by": operator.config.node_id,
                          "state": active["state"], "seq": active["seq"]})
        want = len(accepted.get("land", ()))
        got: list[Delivery] = []
        flowed = asyncio.Event()

        async def handler(d: Delivery) -> None:
            got.append(d)
            if len(got) >= want:
                flowed.set()

        sub = tax.subscribe("land", "property-tax", handler)
        if want:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(flowed.wait(), 30)
        revoked = await land.decide(asked["id"], "revoke", reason="assessment done")
        t0 = time.monotonic()
        steps.append({"step": "revoked", "by": land.config.node_id,
                      "state": revoked["state"], "seq": revoked["seq"]})
        closed = "open"
        if sub.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(sub.task), 5)
            except ExchangeError as err:
                closed = err.code
            except TimeoutError:
                closed = "still open after 5 s"
        report.update(id=asked["id"], delivered_before_revocation=len(got),
                      subscription_closed=closed,
                      closed_within_s=round(time.monotonic() - t0, 3))
        await sub.stop()
    except ExchangeError as err:
        report["error"] = f"{err.code}: {err.message}"
    access: dict[str, Any] = {}
    try:
        # a citizen the land registry knows (it was delivered to land, tax and vehicle)
        known = sorted(getattr(agencies_["land"], "people", {}))
        if known:
            looked = await land.lookup("population", known[0])
            access = await pop.access("population", known[0])
            access["lookup"] = {"by": land.config.node_id, "version": looked.version,
                                "fields": sorted(looked.data), "withheld": sorted(looked.withheld),
                                "verified": True, "included_in_log": True}
    except ExchangeError as err:
        access = {"error": f"{err.code}: {err.message}"}
    return {"agreements": report, "access": access}



async def _quality(node: Node) -> dict[str, Any]:
    """The broker's quality report: per dataset the four scores (definitions: README) and the
    publish→deliver latency per subscriber (ms, upper bounds of histogram buckets)."""
    try:
        report: dict[str, Any] = (await node.get_json("/v1/quality"))["datasets"]
    except (ExchangeError, OSError) as err:
        structlog.get_logger("exchange.demo").error("quality_unavailable", error=str(err))
        return {}
    return report


async def _broker_lag(agents: Sequence[Agency], within_s: float) -> dict[str, int]:
    """Each subscription's lag as the broker counts it (from acks), once acks have landed."""
    out: dict[str, int] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            while True:
                out = {}
                for a in agents:
                    if a.sub_stats:
                        out.update(await lag(a.node))
                if all(v == 0 for v in out.values()):
                    break
                await asyncio.sleep(0.05)  # acks are in flight; the broker does not push lag
    return out


