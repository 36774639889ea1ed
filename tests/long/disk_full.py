"""A real full disk (``make faults``, where mounts are allowed): the broker's data directory on
a small tmpfs, filled until a commit fails. Then: every receipted record is still there and
is delivered; the checkpoint is served; a publish, and a lookup (an access that must be on
record), are refused with a retryable 503, never a 500; once space is freed, both go on; the
audit passes.

    sudo python -m tests.long.disk_full     (root: it mounts a tmpfs)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from exchange import audit
from exchange.core.errors import ExchangeError
from exchange.node import Delivery, Node, Record
from exchange.sim.generate import Generator
from tests.conftest import OWNERS, TODAY, broker_config, make_pki, start_broker

POP, LAND = OWNERS["population"], OWNERS["land"]


def mount(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.call(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                            str(path)], stderr=subprocess.DEVNULL) == 0


async def run(root: Path) -> dict[str, Any]:
    data = root / "data"
    pki_dir = make_pki(root)
    broker, runner, url = await start_broker(broker_config(pki_dir, data))
    receipted: list[int] = []
    refused: list[str] = []
    gen = Generator(9, today=TODAY)
    try:
        async with Node(Node_config(pki_dir, POP, url)) as pop:
            await pop.publish("population", [Record(p) for p in gen.population(50)])
            # leave little room, then publish until a commit cannot be stored
            filler = data / "filler"
            free = _free_bytes(data)
            filler.write_bytes(b"\0" * max(0, free - 400_000))
            for _ in range(200):
                try:
                    result = await pop.publish("population",
                                               [Record(p) for p in gen.population(200)])
                except ExchangeError as err:
                    refused.append(f"{err.status} {err.code}")
                    break
                receipted.extend(s for s in result.seqs if s is not None)
                if result.failed:
                    refused.append(f"failed {result.failed[0].code}")
                    break
            checkpoint = (await pop.get_bytes("/v1/log/checkpoint")).decode()
            head = await broker.store.head("population")
            got: list[Delivery] = []
            done = asyncio.Event()

            async def handler(d: Delivery) -> None:
                got.append(d)
                if len(got) == head + 1:
                    done.set()

            async with Node(Node_config(pki_dir, LAND, url)) as land:
                sub = land.subscribe("population", "while-full", handler)
                await asyncio.wait_for(done.wait(), 60)
                # a lookup is an access that must be on record: with no room to record it,
                # it is refused (503, retryable), never answered unrecorded
                try:
                    await land.lookup("population", got[0].key)
                    lookup_while_full = "answered"
                except ExchangeError as err:
                    lookup_while_full = f"{err.status} {err.code}"
                await sub.stop()
                filler.unlink()  # space again
                looked = await land.lookup("population", got[0].key)
            after = await pop.publish("population", [Record(p) for p in gen.population(50)])
    finally:
        await runner.cleanup()
    audited = audit.audit_data(data)
    return {"receipted_before_full": len(receipted) + 50, "refusal": refused,
            "checkpoint_served": checkpoint.splitlines()[1] if checkpoint else None,
            "delivered_while_full": len(got), "lookup_while_full": lookup_while_full,
            "lookup_after_space_freed": looked.key == got[0].key,
            "accepted_after_space_freed": after.accepted, "audit_ok": audited.ok,
            "audited_entries": audited.entries}


def Node_config(pki_dir: Path, node: str, url: str) -> Any:
    from exchange.node import NodeConfig

    return NodeConfig(node_id=node, pki_dir=str(pki_dir), brokers=[url], retries=0,
                      timeout_s=15)


def _free_bytes(path: Path) -> int:
    import os

    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="disk-full-"))
    if not mount(root / "data", "24m"):
        print(json.dumps({"disk_full": "not run: mounting a tmpfs is not allowed here"}))
        return 0
    from exchange import logger

    logger.configure("error", json=True)
    try:
        figures = asyncio.run(run(root))
    finally:
        subprocess.call(["umount", str(root / "data")])
    print(json.dumps({"disk_full": figures}))
    ok = (figures["audit_ok"]
          and figures["delivered_while_full"] >= figures["receipted_before_full"]
          and figures["accepted_after_space_freed"] == 50
          and figures["lookup_after_space_freed"]
          and figures["lookup_while_full"].startswith("503")
          and not any(r.startswith("5") and not r.startswith("503") for r in figures["refusal"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
