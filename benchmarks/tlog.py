"""Transparency-log costs at scale: append per record, and inclusion and consistency proofs
from stored nodes at 1k, 100k and 1M entries. ``python -m benchmarks.tlog [ENTRIES]``.

The log lives in a sqlite table shaped like the store's (``tiles(level, idx, hashes)``, C2SP
tlog-tiles), grown in transactions of 1,000 leaves as the broker grows it; proofs read only the
O(log n) nodes they need, each from its tile (one indexed lookup, then up to 127 hashes for a
node between tile levels), without the store's cache of such nodes.
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import tempfile
import time

import msgspec

from exchange.core import merkle, tiles, tlog

CHECKPOINTS = (1_000, 100_000, 1_000_000)


def main(entries: int = 1_000_000) -> None:
    path = os.path.join(tempfile.mkdtemp(), "tree.sqlite")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE tiles (level INTEGER, idx INTEGER, hashes BLOB, "
               "PRIMARY KEY (level, idx)) WITHOUT ROWID")
    tree = merkle.CompactRange()
    edge: tiles.Edge = {}
    digest, root = os.urandom(32), os.urandom(32)
    rng = random.Random(1)
    reads = 0

    def node(level: int, index: int) -> bytes:
        nonlocal reads
        reads += 1
        ((t, n),) = tiles.needed([(level, index)])
        row = db.execute("SELECT hashes FROM tiles WHERE level=? AND idx=?", (t, n)).fetchone()
        h = tiles.node(level, index, {(t, n): bytes(row[0])})
        assert h is not None
        return h

    results: dict[str, float] = {}
    t_append = 0.0
    for start in range(0, entries, 1000):
        t = time.perf_counter()
        edge, rows = tiles.grow(edge, tree.extend(
            tlog.entry_leaf(seq, "population", "vn.gov.mps.population", digest, root,
                            1_700_000_000_000_000 + seq)
            for seq in range(start, min(start + 1000, entries))))
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO tiles VALUES (?, ?, ?)", rows)
        db.execute("COMMIT")
        t_append += time.perf_counter() - t
        size = tree.size
        if size in CHECKPOINTS:
            r = tree.root()
            samples = 200
            reads = 0
            t = time.perf_counter()
            for _ in range(samples):
                i = rng.randrange(size)
                proof = merkle.inclusion_proof(node, i, size)
            inc_ms = (time.perf_counter() - t) / samples * 1e3
            inc_reads = reads / samples
            leaf = tlog.entry_leaf(i, "population", "vn.gov.mps.population", digest, root,
                                   1_700_000_000_000_000 + i)
            merkle.verify_inclusion(leaf, i, size, proof, r)  # the proofs are real
            reads = 0
            t = time.perf_counter()
            for _ in range(samples):
                merkle.consistency_proof(node, rng.randrange(1, size), size)
            cons_ms = (time.perf_counter() - t) / samples * 1e3
            results[f"inclusion_ms_at_{size}"] = round(inc_ms, 3)
            results[f"inclusion_reads_at_{size}"] = round(inc_reads, 1)
            results[f"consistency_ms_at_{size}"] = round(cons_ms, 3)
            results[f"consistency_reads_at_{size}"] = round(reads / samples, 1)
            print(f"{size:>9,} entries: inclusion {inc_ms:.3f} ms ({inc_reads:.0f} reads), "
                  f"consistency {cons_ms:.3f} ms ({reads / samples:.0f} reads)", flush=True)
    results["append_us_per_record"] = round(t_append / entries * 1e6, 2)
    results["entries"] = entries
    print(f"append: {results['append_us_per_record']} µs/record (entry, leaf, tree nodes "
          "and their tiles) over the whole run")
    print(msgspec.json.encode(results).decode())


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
