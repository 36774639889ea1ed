"""Load for the bench: records, pre-sealed batches, a pipelined WebSocket publisher, subscribers.

Records come from a pool of generated people published again and again with rising versions
(a new version of a key replaces the old one, as in a live registry), so a run of any length
needs only a pool of a few thousand generated records.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from benchmarks.hdr import Histogram
from exchange import pki
from exchange.core import datasets
from exchange.core.envelope import rfc3339
from exchange.core.seal import seal
from exchange.core.wire import PublishReply
from exchange.node import Delivery, Node, NodeConfig, Record
from exchange.sim.generate import Generator

__all__ = ["Pool", "Sink", "WsPublisher", "seal_batches"]

TODAY = dt.date(2026, 11, 22)
_msgpack = msgspec.msgpack.Encoder()
_reply = msgspec.msgpack.Decoder(PublishReply)


class Pool:
    """Records to publish: ``size`` generated people, each next round one version higher."""

    def __init__(self, size: int = 5000, seed: int = 2026) -> None:
        self.people = Generator(seed, today=TODAY).population(size)
        self.size = size
        self.cursor = 0

    def take(self, n: int) -> list[tuple[str, int, dict[str, Any]]]:
        out = []
        for _ in range(n):
            i = self.cursor
            p = self.people[i % self.size]
            out.append((p["id"], 1 + i // self.size, p))
            self.cursor += 1
        return out

    def records(self, n: int) -> list[Record]:
        return [Record(p, version=v) for _, v, p in self.take(n)]


def seal_batches(pki_dir: Path, node: str, pool: Pool, total: int, batch: int
                 ) -> Iterator[tuple[int, bytes]]:
    """Signed batches as MessagePack bodies, sealed ahead so the broker alone is measured."""
    key = pki.load_node_identity(pki_dir, node).signing_key
    spec = datasets.get("population")
    left = total
    while left > 0:
        n = min(batch, left)
        yield n, _msgpack.encode(seal(key, node, spec, pool.take(n), os.urandom(32),
                                      time=rfc3339(time.time())))
        left -= n


@dataclass
class Sink:
    """What the subscribers saw: counts, bytes, publish→deliver latency."""

    expected: int = 0
    delivered: int = 0
    hist: Histogram = field(default_factory=Histogram)
    #: when each (key, version) was handed to the publisher (or scheduled, for open loop)
    sent_at: dict[tuple[str, int], float] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    first_at: float = 0.0
    last_at: float = 0.0
    measure_from: float = 0.0
    subscribers: int = 1

    def handler(self) -> Callable[[Delivery], Any]:
        sent_at = self.sent_at
        hist = self.hist
        now = time.time

        async def on_record(d: Delivery) -> None:
            t = now()
            self.delivered += 1
            if not self.first_at:
                self.first_at = t
            self.last_at = t
            t0 = sent_at.get((d.key, d.version))
            if t0 is not None and t0 >= self.measure_from:
                hist.record(t - t0)
            if self.expected and self.delivered >= self.expected:
                self.done.set()

        return on_record


class WsPublisher:
    """Pre-sealed batches over the publish WebSocket, ``window`` batches in flight."""

    def __init__(self, url: str, ssl: Any, window: int = 8) -> None:
        self.url = url
        self.ssl = ssl
        self.window = window
        self.accepted = 0
        self.refused = 0
        self.bytes = 0

    async def run(self, batches: Iterator[tuple[int, bytes]],
                  progress: Callable[[int], None] | None = None) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl)) as s, \
                s.ws_connect(f"{self.url}/v1/datasets/population/publish",
                             max_msg_size=0) as ws:
            slots = asyncio.Semaphore(self.window)
            sizes: asyncio.Queue[int | None] = asyncio.Queue()

            async def reader() -> None:
                while True:
                    n = await sizes.get()
                    if n is None:
                        return
                    msg = await ws.receive()
                    if msg.type != aiohttp.WSMsgType.BINARY:
                        raise RuntimeError(f"publish socket closed: {msg!r}")
                    reply = _reply.decode(msg.data)
                    if reply.receipt is None or reply.problem is not None:
                        self.refused += n
                        if reply.receipt is None:
                            raise RuntimeError(f"batch refused: {reply.problem}")
                    self.accepted += reply.receipt.receipt.accepted
                    if progress:
                        progress(self.accepted)
                    slots.release()

            task = asyncio.create_task(reader())
            for n, body in batches:
                await slots.acquire()
                if task.done():
                    break
                self.bytes += len(body)
                await ws.send_bytes(body)
                sizes.put_nowait(n)
            sizes.put_nowait(None)
            await task


def node_config(pki_dir: Path, node: str, url: str, **kw: Any) -> NodeConfig:
    base: dict[str, Any] = {"node_id": node, "pki_dir": str(pki_dir), "brokers": [url],
                            "batch_size": 1000, "max_in_flight": 4}
    base.update(kw)
    return NodeConfig(**base)


async def wait_connected(node: Node, subs: list[Any], within: float = 20.0) -> None:
    await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in subs)), within)
