"""The soak (``make soak``, not in CI): many nodes connecting, publishing, subscribing and
leaving, at a steady rate, against a real broker process on sqlite. Every interval it samples
the broker's RSS, open file descriptors and the subscriptions' lag; at the end it reports the
drift between the first and the last quarter, and checks nothing was lost.

    python -m tests.long.soak [--minutes 30] [--nodes 100] [--rate 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from exchange import pki
from exchange.core.access import Agreement, BrokerConfig, DatasetConfig
from exchange.node import Delivery, Node, NodeConfig, Record
from exchange.sim.generate import Generator
from exchange.sim.process import running_broker

POP = "vn.gov.mps.population"


def _proc(pid: int) -> tuple[float, int]:
    """The broker's resident memory (MB) and open file descriptors."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def soak(minutes: float, nodes: int, rate: float, sample_s: float) -> dict[str, Any]:
    import datetime as dt

    root = Path(tempfile.mkdtemp(prefix="soak-"))
    pki_dir = root / "pki"
    pki.init(pki_dir)
    readers = [f"vn.gov.soak.n{i:03d}" for i in range(nodes - 1)]
    for node in [POP, *readers]:
        pki.enroll(pki_dir, node)
    from exchange.sim.orchestration import join_offline

    join_offline(pki_dir, root / "operator", "vn.gov.ndc.ops.soak", role="operator")
    config = BrokerConfig(
        listen="127.0.0.1:0", pki_dir=str(pki_dir), data_dir=str(root / "data"),
        datasets=[DatasetConfig("population", POP)],
        agreements=[Agreement(subscriber=r, dataset="population", purpose="soak",
                              groups=["residence"]) for r in readers])
    config_file = root / "broker.json"
    config_file.write_bytes(msgspec.json.encode(config))
    samples: list[dict[str, float]] = []
    published = 0
    received: dict[str, set[int]] = {r: set() for r in readers}
    rnd = random.Random(1)
    gen = Generator(3, today=dt.date(2026, 11, 22))
    async with running_broker(config_file, root / "broker.log") as broker:
        assert broker.proc is not None
        pid = broker.proc.pid

        def cfg(node: str) -> NodeConfig:
            return NodeConfig(node_id=node, pki_dir=str(pki_dir), brokers=[broker.url],
                              linger_s=0.05, timeout_s=30, retries=20)

        async def reader(node: str, stop: asyncio.Event) -> None:
            async def handler(d: Delivery) -> None:
                received[node].add(d.seq)

            while not stop.is_set():  # connect, read a while, leave, come back
                async with Node(cfg(node)) as n:
                    sub = n.subscribe("population", "soak", handler)
                    stay = rnd.uniform(20, 120)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), stay)
                    await sub.stop()

        stop = asyncio.Event()
        tasks = [asyncio.create_task(reader(r, stop)) for r in readers]
        t0 = time.monotonic()
        end = t0 + minutes * 60
        next_sample = t0
        ops = NodeConfig(node_id="vn.gov.ndc.ops.soak", node_dir=str(root / "operator"),
                         brokers=[broker.url])

        async def lag_now(o: Node) -> int:
            return sum(r["lag"] for r in await o.get_json("/v1/subscriptions"))

        async with Node(cfg(POP)) as pop, Node(ops) as operator:
            while time.monotonic() < end:
                batch = gen.population(max(1, int(rate)))
                result = await pop.publish("population", [Record(p) for p in batch])
                published += result.accepted
                if time.monotonic() >= next_sample:
                    rss, fds = _proc(pid)
                    samples.append({"t": round(time.monotonic() - t0, 1), "rss_mb": rss,
                                    "fds": fds, "lag_records": await lag_now(operator)})
                    print(json.dumps(samples[-1]), flush=True)
                    next_sample += sample_s
                await asyncio.sleep(1.0)  # the steady rate: one batch a second
            stop.set()
            await asyncio.gather(*tasks)
            # every reader comes back once more and catches up: then nothing may be missing
            final_stop = asyncio.Event()
            tasks = [asyncio.create_task(reader(r, final_stop)) for r in readers]
            deadline = time.monotonic() + 120
            left = await lag_now(operator)
            while left and time.monotonic() < deadline:
                await asyncio.sleep(1.0)  # the broker does not push lag
                left = await lag_now(operator)
            final_stop.set()
            await asyncio.gather(*tasks)
            lag = {"all": left}
    quarter = max(1, len(samples) // 4)
    first, final = samples[:quarter], samples[-quarter:]

    def drift(key: str) -> float:
        return round(statistics.mean(s[key] for s in final)
                     - statistics.mean(s[key] for s in first), 1)

    return {"minutes": minutes, "nodes": nodes, "published": published,
            "samples": len(samples), "rss_mb_first": first[0]["rss_mb"],
            "rss_mb_last": final[-1]["rss_mb"], "rss_drift_mb": drift("rss_mb"),
            "fds_first": first[0]["fds"], "fds_last": final[-1]["fds"],
            "fds_drift": drift("fds"), "readers_with_every_record": sum(
                1 for r in readers if len(received[r]) == published),
            "own_lag_after": sum(lag.values())}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tests.long.soak")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--rate", type=float, default=50.0, help="records per second")
    p.add_argument("--sample-s", type=float, default=30.0)
    a = p.parse_args()
    from exchange import logger

    logger.configure("error", json=True)
    result = asyncio.run(soak(a.minutes, a.nodes, a.rate, a.sample_s))
    print(json.dumps(result))
    return 0 if result["readers_with_every_record"] == a.nodes - 1 else 1


if __name__ == "__main__":
    sys.exit(main())
