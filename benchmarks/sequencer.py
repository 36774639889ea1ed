"""What the NATS sequencer pays a record: a new sequencer reading the log up, and its parts.

    python -m benchmarks.sequencer [--records N] [--json]

Stores N population records (1,000-record batches) through one NATS store on a local
nats-server, closes it (handing the sequencer lease over), then opens a second store and times
its start: it takes the lease and reads the whole records stream back, growing the log. That
is what a fail-over costs, and per record it is what the sequencer spends on every record any
broker appends. Then the parts, each on the same records: nats-py's header parsing as the
store's client does it, decoding an entry, and applying it to the tree and the index.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from benchmarks.harness import PUBLISHER, make_pki
from benchmarks.load import Pool, seal_batches
from exchange.broker.app import Broker
from exchange.core import ledger, tlog
from exchange.core.access import BrokerConfig, DatasetConfig
from exchange.store.nats.direct import Client
from exchange.store.nats.server import NatsCluster
from exchange.store.nats.store import NatsStore
from exchange.store.nats.tailer import Tailer

__all__ = ["main", "run"]

POP = PUBLISHER
BATCH = 1000


async def _store(store: NatsStore, root: Path, pki_dir: Path, n: int) -> None:
    """``n`` records through the broker's own publisher, as sealed batches of ``BATCH``."""
    config = BrokerConfig(data_dir=str(root / "data"), pki_dir=str(pki_dir), quality=False,
                          datasets=[DatasetConfig("population", POP)])
    broker = Broker(config, store)
    for _, body in seal_batches(pki_dir, POP, Pool(n), n, BATCH):
        await broker.publisher.publish(POP, "population", body, "application/msgpack")


async def run(records: int = 50_000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="exchange-sequencer-") as tmp:
        root = Path(tmp)
        pki_dir = make_pki(root)
        cluster = NatsCluster(root / "nats", 1)
        cluster.start()
        try:
            await cluster.wait_healthy()
            url = f"{cluster.url}?prefix=seqbench&sync=always"
            first = NatsStore(url)
            await first.open()
            try:
                await _store(first, root, pki_dir, records)
            finally:
                await first.close()  # hands the lease over: the next store reads the log up
            second = NatsStore(url)
            t0, c0 = time.perf_counter(), time.process_time()
            await second.open()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            try:
                assert second.sequencing and second.log_state()[0] == records
                msgs = await second.direct.get(second.records_stream,
                                               {"seq": 1, "batch": BATCH}, batch=True)
            finally:
                await second.close()
        finally:
            cluster.stop()
    parts = _parts(msgs)
    return {"benchmark": "sequencer", "cores": os.cpu_count(),
            "python": sys.version.split()[0], "records": records,
            "catch_up_s": round(wall, 3), "catch_up_per_s": round(records / wall),
            "cpu_us_per_record": round(cpu / records * 1e6, 1),
            "parts_us": {k: round(v, 2) for k, v in parts.items()}}


def _parts(msgs: list[Any]) -> dict[str, float]:
    """µs a record for each part of reading one back, on real records-stream messages."""
    header_blocks = [_header_block(m.headers or {}) for m in msgs]
    datas = [m.data for m in msgs]
    decoder = msgspec.msgpack.Decoder(ledger.Entry)
    t = time.perf_counter()
    for h in header_blocks:
        Client._parse_header_lines(h)
    headers = (time.perf_counter() - t) / len(msgs) * 1e6
    t = time.perf_counter()
    entries = [decoder.decode(d) for d in datas]
    decode = (time.perf_counter() - t) / len(msgs) * 1e6
    tailer = Tailer(None, "", timeout=5.0, idle_poll=1.0)  # type: ignore[arg-type]
    t = time.perf_counter()
    leaves = [tlog.entry_leaf(i, e.dataset, e.publisher, e.digest, e.batch_root,
                              tlog.micros(e.accepted_at)) for i, e in enumerate(entries)]
    tailer._apply(0, entries, leaves)
    apply = (time.perf_counter() - t) / len(msgs) * 1e6
    return {"headers": headers, "decode": decode, "tree_and_index": apply}


def _header_block(headers: dict[str, str]) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sequencer")
    p.add_argument("--records", type=int, default=50_000)
    p.add_argument("--json", action="store_true", help="only the JSON line")
    args = p.parse_args(argv)
    report = asyncio.run(run(args.records))
    if not args.json:
        parts = report["parts_us"]
        rest = report["cpu_us_per_record"] - sum(parts.values())
        print(f"a new sequencer read {report['records']:,} records up in "
              f"{report['catch_up_s']:.2f} s ({report['catch_up_per_s']:,}/s), "
              f"{report['cpu_us_per_record']:.1f} µs CPU a record: headers "
              f"{parts['headers']:.1f}, decode {parts['decode']:.1f}, tree and index "
              f"{parts['tree_and_index']:.1f}, the rest (nats-py's delivery of each message, "
              f"the event loop) {rest:.1f}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
