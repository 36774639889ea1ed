"""The crash and fault harness (``make faults``): the broker SIGKILLed at random points on
sqlite and over a 3-node NATS cluster; the NATS fault scenarios (nats-server killed under
load, a broker killed while nodes fail over) again and again; and the disk-full faults. Each
run checks receipted against stored, exactly-once storage and delivery, no partial batch, no
subscriber gap, and audits the log (sqlite). ``make test`` runs a short slice of each.

    python -m tests.long.faults [--kills 100] [--nats-kills 100] [--nats-rounds 10] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tests.long.faults")
    p.add_argument("--kills", type=int, default=100, help="broker SIGKILLs on sqlite")
    p.add_argument("--nats-kills", type=int, default=100,
                   help="broker SIGKILLs over a 3-node NATS cluster")
    p.add_argument("--nats-rounds", type=int, default=10,
                   help="runs of the NATS fault scenarios (server and broker kills)")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    from exchange import logger
    from tests.test_broker_crash import crash_rounds

    logger.configure("error", json=True)
    figures: dict[str, object] = {}
    t = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="faults-"))
    (root / "on-nats").mkdir()
    figures["sqlite"] = asyncio.run(crash_rounds(root, kills=a.kills, seed=a.seed,
                                                 rnd=random.Random(a.seed)))
    figures["sqlite_s"] = round(time.monotonic() - t, 1)
    print(f"sqlite: {json.dumps(figures['sqlite'])} in {figures['sqlite_s']} s", flush=True)
    if a.nats_kills:
        from exchange.store.nats.server import NatsCluster
        from tests.nats_fixtures import store_url

        cluster = NatsCluster(root / "nats", 3)
        cluster.start()
        try:
            cluster.wait_healthy_sync()
            t = time.monotonic()
            figures["nats"] = asyncio.run(crash_rounds(
                root / "on-nats", kills=a.nats_kills, seed=a.seed + 1,
                rnd=random.Random(a.seed + 1), store=store_url(cluster)))
            figures["nats_kills_s"] = round(time.monotonic() - t, 1)
        finally:
            cluster.stop()
        print(f"nats (3 nodes, R3): {json.dumps(figures['nats'])} in "
              f"{figures['nats_kills_s']} s", flush=True)
    failed = 0
    t = time.monotonic()
    for i in range(a.nats_rounds):
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
                              "tests/test_nats_faults.py", "tests/test_faults_disk.py"])
        print(f"nats and disk faults, round {i + 1}/{a.nats_rounds}: "
              f"{'ok' if rc == 0 else f'FAILED (exit {rc})'}", flush=True)
        failed += rc != 0
    # a real full disk, where a tmpfs can be mounted (root)
    out = subprocess.run([sys.executable, "-m", "tests.long.disk_full"], capture_output=True,
                         text=True, check=False)
    print(out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-500:],
          flush=True)
    failed += out.returncode != 0
    figures["nats_rounds"] = a.nats_rounds
    figures["nats_failed_rounds"] = failed
    figures["nats_s"] = round(time.monotonic() - t, 1)
    print(json.dumps(figures))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
