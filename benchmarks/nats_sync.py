"""What fsync-before-acknowledge (``sync_interval: always``) costs on the NATS store.

``python -m benchmarks.nats_sync [--records N] [--nodes 1|3]``: the real ``Publisher`` over a
``NatsStore``, pre-sealed batches of 1,000 population records, against nats-server started
with and without ``sync_interval: always``, alternating, best of three; the same run, the same
machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import tempfile
import time
from pathlib import Path

import msgspec

from exchange import pki
from exchange.broker.app import Broker
from exchange.core import datasets
from exchange.core.access import BrokerConfig, DatasetConfig
from exchange.core.envelope import rfc3339
from exchange.core.seal import seal
from exchange.sim.generate import Generator
from exchange.store.nats.server import NatsCluster
from exchange.store.nats.store import NatsStore

NODE = "vn.gov.mps.population"


async def _run(pki_dir: Path, bodies: list[bytes], records: int, *, sync: bool, nodes: int
               ) -> float:
    root = Path(tempfile.mkdtemp(prefix="nats-sync-"))
    cluster = NatsCluster(root, nodes, sync_always=sync)
    cluster.start()
    try:
        await cluster.wait_healthy()
        url = cluster.url + f"?prefix=b{os.getpid()}" + ("&sync=always" if sync else "")
        store = NatsStore(url)
        config = BrokerConfig(data_dir=str(root / "data"), pki_dir=str(pki_dir), quality=False,
                              store=url, datasets=[DatasetConfig("population", NODE)])
        broker = Broker(config, store)
        await store.open()
        t = time.perf_counter()
        for body in bodies:
            await broker.publisher.publish(NODE, "population", body, "application/msgpack")
        elapsed = time.perf_counter() - t
        await store.close()
        return records / elapsed
    finally:
        cluster.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.nats_sync")
    p.add_argument("--records", type=int, default=20_000)
    p.add_argument("--nodes", type=int, default=1, choices=[1, 3])
    a = p.parse_args()
    root = Path(tempfile.mkdtemp())
    pki_dir = root / "pki"
    pki.init(pki_dir)
    pki.enroll(pki_dir, NODE)
    key = pki.load_node_identity(pki_dir, NODE).signing_key
    spec = datasets.get("population")
    people = Generator(1, today=dt.date(2026, 11, 22)).population(a.records)
    bodies = [msgspec.msgpack.encode(seal(key, NODE, spec, [(q["id"], 1, q) for q in
                                                            people[i:i + 1000]],
                                          os.urandom(32), time=rfc3339(time.time())))
              for i in range(0, a.records, 1000)]
    on: list[float] = []
    off: list[float] = []
    for _ in range(3):
        on.append(asyncio.run(_run(pki_dir, bodies, a.records, sync=True, nodes=a.nodes)))
        off.append(asyncio.run(_run(pki_dir, bodies, a.records, sync=False, nodes=a.nodes)))
    result = {"records": a.records, "nats_servers": a.nodes,
              "sync_always_records_per_s": round(max(on)),
              "default_sync_records_per_s": round(max(off)),
              "sync_cost_share": round(1 - max(on) / max(off), 4)}
    print(msgspec.json.encode(result).decode())


if __name__ == "__main__":
    main()
