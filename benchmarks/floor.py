"""The exchange floor's read side at scale: lookups and "who received my record".

``python -m benchmarks.floor [--records N] [--acks M] [--lookups K]`` (defaults 1,000,000 /
100,000 / 2,000). On one sqlite store:

1. ingest N population records through the real ``Publisher`` (batches of 1,000);
2. serve the broker over TLS on 127.0.0.1 and look up K random keys as the land registry (its
   agreement grants ``residence``), 16 in flight: raw HTTPS (the broker's side), then through the
   SDK (which also verifies the publisher's signature and the record's inclusion in the log);
3. the cost of recording an access per ack: ``ack`` alone against ``ack`` with its access row
   (one transaction);
4. M access rows (acks of four subscriptions, 10 records each, over the whole log), then the
   time to answer ``GET /v1/access`` for random keys.

Figures from one run on one machine; compare ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from exchange import pki
from exchange.broker.app import Broker, create_app
from exchange.core import datasets
from exchange.core.access import Agreement, BrokerConfig, DatasetConfig
from exchange.core.envelope import rfc3339
from exchange.core.seal import seal
from exchange.node import Node, NodeConfig
from exchange.sim.generate import Generator
from exchange.store.base import AccessRow
from exchange.store.sqlite import SqliteStore

POP, LAND = "vn.gov.mps.population", "vn.gov.mae.land"
TODAY = dt.date(2026, 11, 22)


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


async def _ingest(broker: Broker, key: Any, records: int) -> tuple[list[str], float]:
    spec = datasets.get("population")
    gen = Generator(7, today=TODAY)
    keys: list[str] = []
    t = time.perf_counter()
    done = 0
    while done < records:
        people = gen.population(min(1000, records - done))
        batch = seal(key, POP, spec, [(p["id"], 1, p) for p in people], os.urandom(32),
                     time=rfc3339(time.time()))
        out = await broker.publisher.publish(POP, "population", msgspec.msgpack.encode(batch),
                                             "application/msgpack")
        keys.extend(p["id"] for p in people)
        done += len(people)
        if done % 100_000 == 0:
            print(f"  ingested {done:,} (head {out.last_seq:,})", flush=True)
    return keys, time.perf_counter() - t


async def _lookups_raw(url: str, ctx: Any, keys: list[str], n: int) -> tuple[float, list[float]]:
    lat: list[float] = []
    sample = random.sample(keys, n)
    sem = asyncio.Semaphore(16)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=16)) as s:
        async def one(k: str) -> None:
            async with sem:
                t = time.perf_counter()
                async with s.get(f"{url}/v1/datasets/population/records/{k}") as r:
                    await r.read()
                    assert r.status == 200, r.status
                lat.append(time.perf_counter() - t)
        t0 = time.perf_counter()
        await asyncio.gather(*(one(k) for k in sample))
        return n / (time.perf_counter() - t0), lat


async def _lookups_sdk(config: NodeConfig, keys: list[str], n: int
                       ) -> tuple[float, list[float]]:
    lat: list[float] = []
    sample = random.sample(keys, n)
    sem = asyncio.Semaphore(16)
    async with Node(config) as node:
        async def one(k: str) -> None:
            async with sem:
                t = time.perf_counter()
                d = await node.lookup("population", k)
                assert d.key == k
                lat.append(time.perf_counter() - t)
        t0 = time.perf_counter()
        await asyncio.gather(*(one(k) for k in sample))
        return n / (time.perf_counter() - t0), lat


async def main(records: int, acks: int, lookups: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="floor-bench-"))
    pki_dir = root / "pki"
    pki.init(pki_dir)
    for node in (POP, LAND):
        pki.enroll(pki_dir, node)
    config = BrokerConfig(data_dir=str(root / "data"), pki_dir=str(pki_dir), quality=False,
                          datasets=[DatasetConfig("population", POP)],
                          agreements=[Agreement(subscriber=LAND, dataset="population",
                                                purpose="identify land users",
                                                groups=["residence"])])
    store = SqliteStore(root / "data" / "exchange.sqlite")
    tls = pki.ServerTLS(pki_dir)
    broker = Broker(config, store, tls=tls)
    await store.open()
    key = pki.load_node_identity(pki_dir, POP).signing_key
    print(f"ingesting {records:,} population records…", flush=True)
    keys, ingest_s = await _ingest(broker, key, records)
    await store.close()

    from aiohttp import web
    runner = web.AppRunner(create_app(broker), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context)
    await site.start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    result: dict[str, Any] = {"records": records, "ingest_records_per_s": round(records / ingest_s)}
    try:
        land = NodeConfig(node_id=LAND, pki_dir=str(pki_dir), brokers=[url])
        ctx = pki.client_ssl_context(pki_dir, LAND)
        await _lookups_raw(url, ctx, keys, min(200, lookups))  # warm up
        rate, lat = await _lookups_raw(url, ctx, keys, lookups)
        result.update(lookups=lookups, lookup_raw_per_s=round(rate),
                      lookup_raw_p50_ms=round(statistics.median(lat) * 1e3, 2),
                      lookup_raw_p99_ms=round(_pct(lat, 0.99) * 1e3, 2))
        rate, lat = await _lookups_sdk(land, keys, lookups)
        result.update(lookup_sdk_verified_per_s=round(rate),
                      lookup_sdk_p50_ms=round(statistics.median(lat) * 1e3, 2),
                      lookup_sdk_p99_ms=round(_pct(lat, 0.99) * 1e3, 2))

        # the cost of an access row per ack, on the broker's own store
        await store.create_subscription(LAND, "population", "bench", -1, time.time())
        n = 2000
        t = time.perf_counter()
        for i in range(n):
            await store.ack(LAND, "population", "bench", i)
        ack_us = (time.perf_counter() - t) / n * 1e6
        t = time.perf_counter()
        for i in range(n, 2 * n):
            await store.ack(LAND, "population", "bench", i, access=AccessRow(
                dataset="population", node=LAND, name="bench", kind="delivery",
                agreement="config:0", purpose="identify land users", groups=("residence",),
                first_seq=i, last_seq=i, at=time.time()))
        both_us = (time.perf_counter() - t) / n * 1e6
        result.update(ack_us=round(ack_us, 1), ack_with_access_us=round(both_us, 1),
                      access_row_us_per_ack=round(both_us - ack_us, 1))

        # M access rows: four subscriptions acking 10 records at a time over the whole log
        per = max(1, records // max(1, acks // 4))
        rows = [AccessRow(dataset="population", node=f"vn.gov.bench.s{s}", name="all",
                          kind="delivery", agreement="config:0", purpose="bench",
                          groups=("residence",), first_seq=lo, last_seq=min(records, lo + per) - 1,
                          at=time.time())
                for s in range(4) for lo in range(0, records, per)][:acks]
        for i in range(0, len(rows), 5000):
            await store.add_access(rows[i:i + 5000])
        result["access_rows"] = len(rows) + n
        ops = NodeConfig(node_id=POP, pki_dir=str(pki_dir), brokers=[url])
        lat = []
        async with Node(ops) as owner:
            for k in random.sample(keys, 200):
                t = time.perf_counter()
                answer = await owner.access("population", k)
                lat.append(time.perf_counter() - t)
                assert len(answer["versions"][0]["received_by"]) >= 4
        result.update(access_query_p50_ms=round(statistics.median(lat) * 1e3, 2),
                      access_query_p99_ms=round(_pct(lat, 0.99) * 1e3, 2))
    finally:
        await runner.cleanup()
    return result


def run() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.floor")
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--acks", type=int, default=100_000)
    p.add_argument("--lookups", type=int, default=2_000)
    a = p.parse_args()
    result = asyncio.run(main(a.records, a.acks, a.lookups))
    for k, v in result.items():
        print(f"  {k:<28} {v}")
    print(msgspec.json.encode(result).decode())


if __name__ == "__main__":
    run()
