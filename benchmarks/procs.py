"""The bench's load in processes of its own (``exchange bench --load-procs N``).

``N`` publisher processes (each its own node, its own keys, ``1/N`` of the load) and one
process per subscriber, each a ``python -m benchmarks.load_proc`` (its protocol is described
there). The bench process only starts them, opens the window for all at once (``go``, once
every party said ``ready``) and adds up what they report: records, latency histograms and each
party's own CPU seconds. The JetStream baselines run in the same layout, so their ratios compare
like with like.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import BrokerGroup
from benchmarks.hdr import Histogram
from benchmarks.load_proc import SLOTS, hist_from_json
from benchmarks.scenarios import Context, Result

__all__ = ["Party", "e2e", "jetstream", "parties", "publish_only", "replay"]

ROOT = Path(__file__).resolve().parent.parent
#: records each publisher sends (and every subscriber verifies) before the window opens
WARM = 100


class Party:
    """One load process: a config in, JSON lines out, words on its stdin."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    @classmethod
    async def start(cls, name: str, cfg: dict[str, Any], log_dir: Path) -> Party:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"{name}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH"))
                                            if p)
        with open(log, "ab") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "benchmarks.load_proc", json.dumps(cfg),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
                cwd=ROOT, env=env)
        return cls(name, proc, log)

    async def until(self, event: str, within: float) -> dict[str, Any]:
        """The next line saying ``event``; its process's log if it exits first."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), max(left, 0.001))
            except TimeoutError:
                raise RuntimeError(f"{self.name}: no {event!r} in {within:.0f} s"
                                   f"{self._tail()}") from None
            if not line:
                await self.proc.wait()
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) before "
                                   f"{event!r}{self._tail()}")
            msg: dict[str, Any] = json.loads(line)
            if msg.get("event") == event:
                return msg

    def tell(self, *words: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((" ".join(map(str, words)) + "\n").encode())

    async def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    def _tail(self) -> str:
        try:
            return ":\n" + self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


async def _start_all(specs: list[tuple[str, dict[str, Any]]], log_dir: Path) -> list[Party]:
    return list(await asyncio.gather(*(Party.start(n, c, log_dir) for n, c in specs)))


async def _all(parties: list[Party], event: str, within: float) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(p.until(event, within) for p in parties)))


async def _close(parties: list[Party]) -> None:
    await asyncio.gather(*(p.close() for p in parties), return_exceptions=True)


def parties(records: int, broker_cpu_s: float, nats_cpu_s: float | None,
            publishers: list[float], subscribers: list[tuple[float, int]],
            broker_label: str = "broker") -> dict[str, Any]:
    """CPU seconds and µs per record of each party. Publishers and subscribers summed over
    their processes per record delivered (to every subscriber); each subscriber also per
    record it verified itself."""
    def us(cpu: float, n: int = records) -> float | None:
        return round(cpu / n * 1e6, 1) if n else None

    out: dict[str, Any] = {broker_label: {"cpu_s": round(broker_cpu_s, 3),
                                          "us_per_record": us(broker_cpu_s)}}
    if nats_cpu_s is not None:
        out["nats"] = {"cpu_s": round(nats_cpu_s, 3), "us_per_record": us(nats_cpu_s)}
    out["publishers"] = {"procs": len(publishers), "cpu_s": round(sum(publishers), 3),
                         "us_per_record": us(sum(publishers))}
    out["subscribers"] = {"procs": len(subscribers),
                          "cpu_s": round(sum(c for c, _ in subscribers), 3),
                          "us_per_record": us(sum(c for c, _ in subscribers)),
                          "each_us_per_record": [us(c, n) for c, n in subscribers]}
    return out


@dataclass(frozen=True)
class BrokerCpu:
    """CPU seconds of a broker group's parts: all of it (gate workers included), its own
    processes, their event-loop threads, and its nats-servers (None: it has none)."""

    total: float
    main: float
    loop: float
    nats: float | None

    @classmethod
    def read(cls, broker: BrokerGroup) -> BrokerCpu:
        stats = broker.stats
        return cls(stats.cpu_s(), stats.main_cpu_s(), stats.loop_cpu_s(),
                   stats.nats_cpu_s() if stats.nats else None)

    def __sub__(self, before: BrokerCpu) -> BrokerCpu:
        return BrokerCpu(self.total - before.total, self.main - before.main,
                         self.loop - before.loop,
                         None if self.nats is None or before.nats is None
                         else self.nats - before.nats)

    def parties(self, records: int, publishers: list[float],
                subscribers: list[tuple[float, int]]) -> dict[str, Any]:
        """``parties`` with the broker's event-loop thread apart (the rest of its process is
        the sqlite writer thread) and, with gate workers, its own process apart from them:
        the part that does not grow with them (ordering, commits, TLS and HTTP, fan-out)."""
        out = parties(records, self.total, self.nats, publishers, subscribers)
        if records:
            out["broker"]["loop_us_per_record"] = round(self.loop / records * 1e6, 1)
        if records and self.total - self.main > 1e-3:
            out["broker"]["main_cpu_s"] = round(self.main, 3)
            out["broker"]["main_us_per_record"] = round(self.main / records * 1e6, 1)
            out["broker"]["workers_us_per_record"] = round(
                (self.total - self.main) / records * 1e6, 1)
        return out


# -- the exchange -------------------------------------------------------------------------------

async def e2e(ctx: Context, broker: BrokerGroup, subscribers: int, duration: float,
              rate: float | None, per_record: bool, label: str) -> Result:
    """``scenarios.e2e`` with every publisher and subscriber in a process of its own."""
    procs = ctx.load_procs
    chunk = 200 if per_record else 1000
    loops = math.ceil((2 if per_record else 6) / procs)
    # a key is never in flight at two versions at once
    size = max(5000, (loops + 1) * chunk)
    run_dir = broker.root / "load"
    run_dir.mkdir(parents=True, exist_ok=True)
    sent_files = []
    for p in range(procs):
        f = run_dir / f"sent{p}.f64"
        with open(f, "wb") as fh:
            fh.truncate(SLOTS * 8)  # sparse: only the pages written take room
        sent_files.append(str(f))
    urls = broker.urls
    deadline = max(60.0, duration * 4)
    common = {"pki_dir": str(ctx.pki_dir), "slice": size, "procs": procs}
    subs = await _start_all([(f"sub{i}", {
        **common, "role": "subscriber", "mode": "e2e", "url": urls[i % len(urls)],
        "name": f"bench{i}", "credits": 5000, "warm": WARM * procs, "sent_files": sent_files,
        "deadline": deadline}) for i in range(subscribers)], run_dir)
    pubs: list[Party] = []
    try:
        await _all(subs, "connected", 120)
        pubs = await _start_all([(f"pub{p}", {
            **common, "role": "publisher", "mode": "e2e", "index": p,
            "url": urls[p % len(urls)], "per_record": per_record, "warm": WARM,
            "sent_file": sent_files[p], "duration": duration,
            "rate": None if rate is None else rate / procs, "chunk": chunk, "loops": loops})
            for p in range(procs)], run_dir)
        await _all(pubs, "ready", 120)
        await _all(subs, "ready", 120)
        stats = broker.stats
        cpu0 = BrokerCpu.read(broker)
        stats.reset_peak()
        t0 = time.time()
        for party in (*pubs, *subs):
            party.tell("go")
        ctx.progress.update(0.5, f"{procs} publisher and {subscribers} subscriber processes")
        pub_done = await _all(pubs, "done", duration * 4 + 120)
        accepted = sum(d["accepted"] for d in pub_done)
        sent = sum(d["sent"] for d in pub_done)
        for s in subs:
            s.tell("expect", accepted)
        sub_done = await _all(subs, "done", deadline + 60)
        cpu = BrokerCpu.read(broker) - cpu0
        peak = stats.peak_rss_mb()
    finally:
        await _close([*pubs, *subs])
    if any(d["evidence"] for d in sub_done):
        raise RuntimeError(f"records failed verification: {[d['evidence'] for d in sub_done]}")
    hist = Histogram()
    for d in sub_done:
        hist.merge(hist_from_json(d["hist"]))
    delivered = min(d["delivered"] for d in sub_done)
    seconds = max(d["last_at"] for d in sub_done) - t0
    name = label or (f"e2e {'per-record' if per_record else 'batch'} sigs, {subscribers} sub"
                     + ("s" if subscribers > 1 else "")
                     + ("" if rate is None else f", open loop {rate:,.0f}/s"))
    notes = [] if delivered >= sent else [f"only {delivered} of {sent} delivered in time"]
    refused: dict[str, int] = {}
    for d in pub_done:
        for code, n in d["refused"].items():
            refused[code] = refused.get(code, 0) + n
    if refused:
        notes.append("not accepted: " + ", ".join(f"{n} {c}" for c, n in sorted(refused.items())))
    r = Result(name, delivered, seconds, int(delivered * ctx.record_bytes), cpu.total, peak,
               latency=hist.summary(), offered_per_s=rate, subscribers=subscribers,
               signatures="per-record" if per_record else "batch", note="; ".join(notes))
    r.load = f"{procs} publisher procs, {subscribers} subscriber procs"
    r.parties = cpu.parties(delivered, [d["cpu_s"] for d in pub_done],
                            [(d["cpu_s"], d["delivered"]) for d in sub_done])
    r.parties["subscribers"]["delivered_each"] = [d["delivered"] for d in sub_done]
    r.parties["publishers"]["accepted"] = accepted
    return r


async def publish_only(ctx: Context, broker: BrokerGroup, total: int, batch: int, window: int,
                       label: str) -> Result:
    """``scenarios.publish_only`` from ``N`` processes, each sealing its share beforehand."""
    procs = ctx.load_procs
    urls = broker.urls
    share = [total // procs + (1 if p < total % procs else 0) for p in range(procs)]
    run_dir = broker.root / "load"
    pubs = await _start_all([(f"publish{p}", {
        "role": "publisher", "mode": "presealed", "pki_dir": str(ctx.pki_dir), "index": p,
        "slice": 5000, "procs": procs, "cursor": broker.cursors.get(p, 0),
        "url": urls[p % len(urls)], "total": share[p], "batch": batch,
        "window": max(1, window // procs) if batch == 1 else window})
        for p in range(procs) if share[p]], run_dir)
    try:
        ctx.progress.update(0, "sealing batches")
        await _all(pubs, "ready", 600)
        stats = broker.stats
        cpu0 = BrokerCpu.read(broker)
        stats.reset_peak()
        t0 = time.time()
        for p in pubs:
            p.tell("go")
        done = await _all(pubs, "done", 600)
        cpu = BrokerCpu.read(broker) - cpu0
        peak = stats.peak_rss_mb()
    finally:
        await _close(pubs)
    for i, d in enumerate(done):
        broker.cursors[i] = d["cursor"]
    accepted = sum(d["accepted"] for d in done)
    nbytes = sum(d["nbytes"] for d in done)
    if batch > 1 and accepted:
        ctx.record_bytes = nbytes / accepted
    seconds = max(d["end"] for d in done) - t0
    r = Result(label, accepted, seconds, nbytes, cpu.total, peak,
               signatures="batch" if batch > 1 else "per-record",
               note=f"batches of {batch}, pre-sealed, {window} in flight over {len(pubs)} "
                    "processes")
    r.load = f"{len(pubs)} publisher procs"
    r.parties = cpu.parties(accepted, [d["cpu_s"] for d in done], [])
    return r


async def replay(ctx: Context, broker: BrokerGroup, total: int, label: str) -> Result:
    """``scenarios.replay`` with the subscriber in a process of its own."""
    run_dir = broker.root / "load"
    sub = (await _start_all([("replay", {
        "role": "subscriber", "mode": "replay", "pki_dir": str(ctx.pki_dir), "slice": 5000,
        "procs": 1, "url": broker.url, "name": f"replay{int(time.time())}",
        "credits": 10_000, "expected": total, "deadline": 600})], run_dir))[0]
    try:
        await sub.until("ready", 120)
        stats = broker.stats
        cpu0 = stats.cpu_s()
        stats.reset_peak()
        t0 = time.time()
        sub.tell("go")
        d = await sub.until("done", 660)
        broker_cpu = stats.cpu_s() - cpu0
        peak = stats.peak_rss_mb()
    finally:
        await _close([sub])
    if d["evidence"]:
        raise RuntimeError(f"{d['evidence']} records failed verification")
    r = Result(label, d["delivered"], d["last_at"] - t0, int(d["delivered"] * ctx.record_bytes),
               broker_cpu, peak, subscribers=1,
               note="subscribe start=earliest, every record verified"
                    + ("" if d["delivered"] >= total
                       else f"; only {d['delivered']} of {total} in time"))
    r.load = "1 subscriber proc"
    r.parties = parties(d["delivered"], broker_cpu, None, [], [(d["cpu_s"], d["delivered"])])
    return r


# -- JetStream, same layout ---------------------------------------------------------------------

async def jetstream(total: int, *, work: str, procs: int, pki_dir: Path, log_dir: Path,
                    window: int = 256, fetch: int = 500) -> dict[str, Any]:
    """The JetStream baseline (``baselines.jetstream``) with ``procs`` publisher processes and
    a consumer process: bare, or with the exchange's work around it (``work="equal"``)."""
    from benchmarks.baselines import NatsServer

    server = NatsServer()
    share = [total // procs + (1 if p < total % procs else 0) for p in range(procs)]
    parts: list[Party] = []
    try:
        cons = (await _start_all([(f"js-{work}-consumer", {
            "role": "js-consumer", "nats": server.url, "work": work, "pki_dir": str(pki_dir),
            "name": "bench", "total": total, "fetch": fetch, "deadline": 600})], log_dir))[0]
        parts.append(cons)
        await cons.until("ready", 120)  # the stream and its consumer exist
        pubs = await _start_all([(f"js-{work}-pub{p}", {
            "role": "js-publisher", "nats": server.url, "work": work, "pki_dir": str(pki_dir),
            "index": p, "slice": 5000, "procs": procs, "total": share[p],
            "window": max(1, window // procs)}) for p in range(procs)], log_dir)
        parts += pubs
        await _all(pubs, "ready", 120)
        cpu0 = server.cpu_s()
        t0 = time.time()
        for p in parts:
            p.tell("go")
        pub_done = await _all(pubs, "done", 600)
        d = await cons.until("done", 660)
        nats_cpu = server.cpu_s() - cpu0
    finally:
        await _close(parts)
        server.stop()
    seconds = d["last_at"] - t0
    nbytes = sum(x["nbytes"] for x in pub_done)
    return {"records_per_s": d["delivered"] / seconds if seconds > 0 else 0.0,
            "publish_per_s": total / (max(x["end"] for x in pub_done) - t0),
            "mb_per_s": nbytes / seconds / 1e6 if seconds > 0 else 0.0,
            "records": d["delivered"], "seconds": seconds, "server_cpu_s": nats_cpu,
            "work": work, "load": f"{procs} publisher procs, 1 consumer proc",
            "parties": parties(d["delivered"], nats_cpu, None,
                               [x["cpu_s"] for x in pub_done], [(d["cpu_s"], d["delivered"])],
                               broker_label="nats")}
