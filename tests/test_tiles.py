"""The log kept as C2SP tlog-tiles: every node read back from tiles is the node the tree has,
whatever the commits' sizes; a store made with a row per node is migrated and still proves."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange import audit
from exchange.core import merkle, tiles
from exchange.store.base import Store
from exchange.store.sqlite import SqliteStore
from tests.conftest import Env, people

POP = "vn.gov.mps.population"


def leaf(i: int) -> bytes:
    return merkle.leaf_hash(hashlib.sha256(i.to_bytes(8, "big")).digest())


def all_nodes(size: int) -> dict[tuple[int, int], bytes]:
    nodes: dict[tuple[int, int], bytes] = {}
    merkle.CompactRange(on_node=lambda lvl, i, h: nodes.__setitem__((lvl, i), h)).extend(
        leaf(i) for i in range(size))
    return nodes


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=8))
def test_tiles_grown_commit_by_commit_give_back_every_node(commits: list[int]) -> None:
    tree = merkle.CompactRange()
    edge: tiles.Edge = {}
    stored: dict[tuple[int, int], bytes] = {}
    size = 0
    for n in commits:
        edge, rows = tiles.grow(edge, tree.extend(leaf(i) for i in range(size, size + n)))
        size += n
        for t, idx, hashes in rows:
            assert len(hashes) % tiles.HASH == 0 and 0 < len(hashes) <= tiles.WIDTH * 32
            stored[(t, idx)] = hashes  # a tile is written whole: the last write wins
        # the right edge is each level's last tile as stored
        for t, (idx, hashes) in edge.items():
            assert stored[(t, idx)] == hashes
    expected = all_nodes(size)
    for (level, idx), h in expected.items():
        assert tiles.node(level, idx, stored) == h, (level, idx)
    # past the log: nothing
    assert tiles.node(0, size, stored) is None
    assert tiles.needed(expected) <= set(stored)


def test_nodes_that_skip_ahead_are_refused() -> None:
    with pytest.raises(ValueError):
        tiles.grow({}, [(0, 1, leaf(1))])
    edge, _ = tiles.grow({}, [(0, 0, leaf(0))])
    with pytest.raises(ValueError):
        tiles.grow(edge, [(0, 2, leaf(2))])


@pytest.mark.parametrize("chunk", [65_536, 100])
async def test_a_store_with_a_row_per_node_is_migrated_and_still_proves(
        env: Env, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiles a store wrote are turned back into a ``tree`` table of every node (the layout
    before tiles); opening it migrates them, and its root, proofs and audit are unchanged."""
    from exchange.node import Node, Record

    async with Node(env.node_config(POP)) as p:
        for i in range(3):
            await p.publish("population", [Record(r) for r in people(150, seed=40 + i)])
    store = env.broker.store
    size, root = store.log_state()
    assert size == 450
    proof = merkle.inclusion_proof(await _reader(store, size), 123, size)
    await env.runner.cleanup()

    path = env.data_dir / "exchange.sqlite"
    db = sqlite3.connect(path)
    leaves = [h for (idx, hashes) in db.execute(
        "SELECT idx, hashes FROM tiles WHERE level=0 ORDER BY idx") for h in tiles.hashes(hashes)]
    nodes: list[tuple[int, int, bytes]] = []
    merkle.CompactRange(on_node=lambda lvl, i, h: nodes.append((lvl, i, h))).extend(leaves)
    # an empty ``tiles`` beside the ``tree``: what a migration interrupted before its one
    # transaction leaves (the schema makes the table first)
    db.executescript("DELETE FROM tiles; CREATE TABLE tree (level INTEGER NOT NULL, idx INTEGER "
                     "NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (level, idx)) WITHOUT ROWID;")
    db.executemany("INSERT INTO tree VALUES (?, ?, ?)", nodes)
    db.commit()
    db.close()
    assert audit.audit_data(env.data_dir).ok  # the old layout audits as it did

    # streamed in chunks smaller than a tile too: the same tiles
    monkeypatch.setattr("exchange.store.sqlite.MIGRATE_CHUNK", chunk)
    reopened = SqliteStore(path)
    await reopened.open()
    try:
        assert reopened.log_state() == (size, root)
        assert merkle.inclusion_proof(await _reader(reopened, size), 123, size) == proof
    finally:
        await reopened.close()
    db = sqlite3.connect(path)
    names = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    assert "tiles" in names and "tree" not in names
    result = audit.audit_data(env.data_dir)
    assert result.ok and result.entries == size


async def _reader(store: Store, size: int) -> merkle.NodeReader:
    """Every node a proof over ``size`` may ask for, read from the store once."""
    coords = [(lvl, i) for lvl in range(size.bit_length()) for i in range(size >> lvl)]
    nodes = await store.log_nodes(coords)
    return lambda level, idx: nodes[(level, idx)]
