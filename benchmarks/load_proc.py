"""One load process of the bench: a publisher, a subscriber or a JetStream party of its own.

    python -m benchmarks.load_proc '{"role": "publisher", ...}'

``benchmarks.procs`` starts these (``--load-procs N``) so the load is not one client process
doing all the signing, verifying and bookkeeping: the figure measured is the exchange's, and
each party's CPU is its own. The protocol is one JSON object a line, on a pipe of its own
(the process's stdout before anything else can print on it; logs go to stderr):

- the process sets up (keys, a node, its subscription, a warm-up), then says ``ready``;
- the parent writes ``go`` on its stdin once every party is ready (a barrier, no sleeps): CPU
  (``getrusage(RUSAGE_SELF)``) and the window start there;
- a publisher runs its load and says ``done`` with what was accepted; a subscriber is told
  ``expect N`` and says ``done`` once it has verified N records (or its deadline passed), with
  its latency histogram (``benchmarks.hdr`` buckets, which merge).

Records: publisher ``p`` of ``P`` publishes people ``p*S .. p*S+S-1`` of one generated
population, record ``j`` being person ``j mod S`` at version ``1 + j // S``, so no two
processes share a key. Each publisher writes the time it handed record ``j`` to its node (or,
open loop, the time ``j`` was scheduled) into slot ``j`` of a file of doubles that every
subscriber maps: a subscriber takes each record's latency from it without any record's times
crossing a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import mmap
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.hdr import Histogram
from benchmarks.load import TODAY, Pool, WsPublisher, node_config, seal_batches, wait_connected

__all__ = ["SLOTS", "SlicePool", "main"]

#: send-time slots per publisher (8 bytes each, a sparse file: only the pages written count)
SLOTS = 1 << 23
_PEOPLE_SEED = 2026


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class SlicePool(Pool):
    """Publisher ``index``'s people of one generated population: record ``j`` of ``take`` is
    person ``j mod size`` at version ``1 + j // size``, as in ``Pool``."""

    def __init__(self, index: int, size: int, procs: int, cursor: int = 0) -> None:
        from exchange.sim.generate import Generator

        everyone = Generator(_PEOPLE_SEED, today=TODAY).population(size * procs)
        self.people = everyone[index * size:(index + 1) * size]
        self.size = size
        self.cursor = cursor


class Channel:
    """JSON lines to the parent (a dup of the original stdout); commands from stdin."""

    def __init__(self) -> None:
        fd = os.dup(1)
        os.dup2(2, 1)  # anything else printed goes to the log, never into the protocol
        self._out = os.fdopen(fd, "w", buffering=1, encoding="utf-8")
        self._in: asyncio.StreamReader | None = None

    def say(self, event: str, **fields: Any) -> None:
        self._out.write(json.dumps({"event": event, **fields}) + "\n")
        self._out.flush()

    async def hear(self) -> list[str]:
        if self._in is None:
            loop = asyncio.get_running_loop()
            reader = self._in = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        line = await self._in.readline()
        if not line:
            raise SystemExit("the bench went away")
        return line.decode().split()


def _sent_times(path: Path, writable: bool) -> tuple[mmap.mmap, memoryview[float]]:
    with open(path, "r+b" if writable else "rb") as f:
        mm = mmap.mmap(f.fileno(), SLOTS * 8,
                       access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
    return mm, memoryview(mm).cast("d")


# -- the exchange's parties ---------------------------------------------------------------------

async def publisher(cfg: dict[str, Any], ch: Channel) -> None:
    from exchange.node import Node, Record

    pki_dir = Path(cfg["pki_dir"])
    pool = SlicePool(cfg["index"], cfg["slice"], cfg["procs"], cfg.get("cursor", 0))
    if cfg["mode"] == "presealed":
        from benchmarks.harness import PUBLISHER
        from exchange import pki

        batches = list(seal_batches(pki_dir, PUBLISHER, pool, cfg["total"], cfg["batch"]))
        pub = WsPublisher(cfg["url"], pki.client_ssl_context(pki_dir, PUBLISHER),
                          window=cfg["window"])
        gc.collect()
        gc.freeze()
        ch.say("ready")
        await ch.hear()
        c0, t0 = cpu_s(), time.time()
        await pub.run(iter(batches))
        ch.say("done", accepted=pub.accepted, cpu_s=cpu_s() - c0, start=t0, end=time.time(),
               cursor=pool.cursor, nbytes=sum(len(b) for _, b in batches))
        return
    mm, sent = _sent_times(Path(cfg["sent_file"]), writable=True)
    from benchmarks.harness import PUBLISHER

    kw: dict[str, Any] = ({"batch_size": 1, "linger_s": 0.0, "max_in_flight": 64,
                           "transport": "websocket"} if cfg["per_record"] else {})
    async with Node(node_config(pki_dir, PUBLISHER, cfg["url"], **kw)) as node:
        # warm up: TLS session, the schema base, the broker's caches; not measured
        warm = [Record(p, version=v) for _, v, p in pool.take(cfg["warm"])]
        if warm:
            await node.publish("population", warm)
        gc.collect()
        gc.freeze()
        ch.say("ready")
        await ch.hear()
        c0, t0 = cpu_s(), time.time()
        duration, rate, chunk = cfg["duration"], cfg["rate"], cfg["chunk"]
        accepted = sent_n = 0
        refused: dict[str, int] = {}

        async def send(recs: list[Record]) -> None:
            nonlocal accepted
            res = await node.publish("population", recs)
            accepted += res.accepted
            if res.duplicates:
                refused["duplicate"] = refused.get("duplicate", 0) + res.duplicates
            for v in (*res.rejected, *res.failed):
                refused[v.code] = refused.get(v.code, 0) + 1

        def take(n: int, at: float | None) -> list[Record]:
            first = pool.cursor
            recs = [Record(p, version=v) for _, v, p in pool.take(n)]
            now = time.time()
            for i in range(n):
                if first + i < SLOTS:
                    sent[first + i] = now if at is None else at + i / rate
            return recs

        if rate is None:
            async def closed() -> None:
                nonlocal sent_n
                while time.time() - t0 < duration:
                    recs = take(chunk, None)
                    sent_n += len(recs)
                    await send(recs)

            await asyncio.gather(*(closed() for _ in range(cfg["loops"])))
        else:
            tasks: set[asyncio.Task[Any]] = set()
            while (now := time.time()) < t0 + duration:
                due = int((now - t0) * rate) - sent_n
                if due > 0:
                    recs = take(due, t0 + sent_n / rate)
                    sent_n += due
                    t = asyncio.create_task(send(recs))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                await asyncio.sleep(0.005)
            await asyncio.gather(*tasks)
        ch.say("done", accepted=accepted, sent=sent_n, refused=refused, cpu_s=cpu_s() - c0,
               start=t0, end=time.time(), cursor=pool.cursor)
    sent.release()
    mm.close()


async def subscriber(cfg: dict[str, Any], ch: Channel) -> None:
    from benchmarks.harness import SUBSCRIBER
    from exchange.node import Delivery, Node

    size, procs = cfg["slice"], cfg["procs"]
    # which publisher, and which of its slots, each key is (see the module docstring)
    from exchange.sim.generate import Generator

    where = {p["id"]: (i // size, i % size) for i, p in
             enumerate(Generator(_PEOPLE_SEED, today=TODAY).population(size * procs))}
    maps = [_sent_times(Path(f), writable=False) for f in cfg.get("sent_files", [])]
    sent = [v for _, v in maps]
    hist = Histogram()
    state = {"delivered": 0, "expected": cfg.get("expected", 0), "last_at": 0.0,
             "measure": False}
    done = asyncio.Event()
    warm_done = asyncio.Event()
    warm = cfg.get("warm", 0)
    now = time.time

    async def on_record(d: Delivery) -> None:
        t = now()
        state["delivered"] += 1
        state["last_at"] = t
        if state["measure"]:
            if sent:
                p, pos = where.get(d.key, (-1, 0))
                j = (d.version - 1) * size + pos
                if p >= 0 and j < SLOTS:
                    t0 = sent[p][j]
                    if t0 > 0:
                        hist.record(t - t0)
            if state["expected"] and state["delivered"] >= state["expected"]:
                done.set()
        elif state["delivered"] >= warm:
            warm_done.set()

    async with Node(node_config(Path(cfg["pki_dir"]), SUBSCRIBER, cfg["url"])) as node:
        if cfg["mode"] == "replay":
            gc.collect()
            gc.freeze()
            ch.say("ready")
            await ch.hear()
            state["measure"] = True
            c0, t0 = cpu_s(), now()
            sub = node.subscribe("population", cfg["name"], on_record, start="earliest",
                                 credits=cfg["credits"])
        else:
            sub = node.subscribe("population", cfg["name"], on_record,
                                 credits=cfg["credits"])
            await wait_connected(node, [sub])
            ch.say("connected")
            if warm:
                await asyncio.wait_for(warm_done.wait(), 120)
            gc.collect()
            gc.freeze()
            ch.say("ready")
            await ch.hear()
            state["delivered"] = 0
            state["measure"] = True
            c0, t0 = cpu_s(), now()
            words = await ch.hear()  # "expect N": what the publishers had accepted
            state["expected"] = int(words[1])
            if state["delivered"] >= state["expected"]:
                done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), cfg["deadline"])
        c1 = cpu_s()
        ch.say("done", delivered=state["delivered"], cpu_s=c1 - c0, start=t0,
               last_at=state["last_at"], evidence=len(sub.evidence), hist=_hist_json(hist))
    for mm, v in maps:
        v.release()
        mm.close()


def _hist_json(h: Histogram) -> dict[str, Any]:
    return {"counts": {str(k): v for k, v in h.counts.items()}, "total": h.total,
            "max_us": h.max_us, "min_us": None if h.min_us == float("inf") else h.min_us}


def hist_from_json(data: dict[str, Any]) -> Histogram:
    h = Histogram()
    h.counts = {int(k): v for k, v in data["counts"].items()}
    h.total = data["total"]
    h.max_us = data["max_us"]
    h.min_us = float("inf") if data["min_us"] is None else data["min_us"]
    return h


# -- JetStream's parties (baselines) ------------------------------------------------------------

async def js_publisher(cfg: dict[str, Any], ch: Channel) -> None:
    from benchmarks import baselines

    nc = await baselines.js_connect(cfg["nats"])
    js = nc.jetstream()
    total = cfg["total"]
    if cfg["work"] == "equal":
        sealer = baselines.EqualWorkSealer(Path(cfg["pki_dir"]))
        bodies: Any = baselines.equal_bodies(
            sealer, SlicePool(cfg["index"], cfg["slice"], cfg["procs"]), total)
    else:
        payloads = baselines.bare_bodies(total)
        bodies = (payloads[i % len(payloads)] for i in range(total))
    gc.collect()
    gc.freeze()
    ch.say("ready")
    await ch.hear()
    c0, t0 = cpu_s(), time.time()
    nbytes = await baselines.js_publish(js, bodies, cfg["window"])
    ch.say("done", accepted=total, cpu_s=cpu_s() - c0, start=t0, end=time.time(),
           nbytes=nbytes)
    await nc.close()


async def js_consumer(cfg: dict[str, Any], ch: Channel) -> None:
    from benchmarks import baselines

    nc = await baselines.js_connect(cfg["nats"])
    js = nc.jetstream()
    await js.add_stream(name=baselines.JS_STREAM, subjects=["bench.>"])
    sub = await js.pull_subscribe(baselines.JS_SUBJECT, durable=cfg["name"])
    verify = (baselines.EqualWorkVerifier(Path(cfg["pki_dir"])).verify
              if cfg["work"] == "equal" else None)
    gc.collect()
    gc.freeze()
    ch.say("ready")
    await ch.hear()
    c0, t0 = cpu_s(), time.time()
    t_perf0 = time.perf_counter()
    got, t_last = await asyncio.wait_for(
        baselines.js_consume(sub, cfg["total"], verify, cfg["fetch"]), cfg["deadline"])
    ch.say("done", delivered=got, cpu_s=cpu_s() - c0, start=t0,
           last_at=t0 + (t_last - t_perf0), evidence=0, hist=None)
    await nc.close()


ROLES = {"publisher": publisher, "subscriber": subscriber, "js-publisher": js_publisher,
         "js-consumer": js_consumer}


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[0])
    ch = Channel()
    asyncio.run(ROLES[cfg["role"]](cfg, ch))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
