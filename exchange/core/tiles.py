"""The transparency log's stored hashes as C2SP tlog-tiles (https://c2sp.org/tlog-tiles), pure.

A tile at tile level ``L`` and index ``N`` holds the hashes of tree level ``8·L``, nodes
``256·N`` to ``256·N + w − 1``, concatenated: ``w`` ≤ 256 is its width, and only the tile at the
log's right edge of each level is partial (it grows as the log does). Every other node of the
RFC 6962 tree is a perfect subtree inside one tile, hashed again from it when read. A store
keeps a few rows per 256 records instead of a row per node.

``grow`` turns the nodes a group commit completed (``merkle.CompactRange.extend``, in order) into
the tiles to write; ``needed`` and ``node`` read nodes back from tiles.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from exchange.core.merkle import node_hash

__all__ = ["HASH", "HEIGHT", "WIDTH", "Edge", "grow", "hashes", "needed", "node"]

HEIGHT = 8
WIDTH = 1 << HEIGHT
HASH = 32

#: per tile level, the rightmost tile: its index and its hashes (full or partial)
Edge = dict[int, tuple[int, bytes]]
#: (tile level, tile index, hashes)
Tile = tuple[int, int, bytes]


def grow(edge: Mapping[int, tuple[int, bytes]], nodes: Iterable[tuple[int, int, bytes]]
         ) -> tuple[Edge, list[Tile]]:
    """The tiles that ``nodes`` (each ``(level, index, hash)``, every level in index order,
    continuing the log whose right edge is ``edge``) change, whole, and the new right edge.
    Raises ``ValueError`` for nodes that do not continue the log."""
    open_: dict[tuple[int, int], bytearray] = {}
    right: dict[int, int] = {}
    for level, idx, h in nodes:
        if level % HEIGHT:
            continue  # inside a tile: hashed again from it when read
        t = level // HEIGHT
        n, pos = divmod(idx, WIDTH)
        buf = open_.get((t, n))
        if buf is None:
            was = edge.get(t)
            buf = open_[(t, n)] = bytearray(was[1] if was is not None and was[0] == n else b"")
        if len(buf) != pos * HASH or len(h) != HASH:
            raise ValueError(f"log node ({level}, {idx}) does not continue tile ({t}, {n}) "
                             f"of width {len(buf) // HASH}")
        buf += h
        right[t] = n
    new: Edge = dict(edge)
    for t, n in right.items():
        new[t] = (n, bytes(open_[(t, n)]))
    return new, [(t, n, bytes(buf)) for (t, n), buf in open_.items()]


def needed(coords: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
    """The tiles ``(tile level, tile index)`` that hold the nodes ``(level, index)``."""
    out = set()
    for level, idx in coords:
        t, r = divmod(level, HEIGHT)
        out.add((t, (idx << r) // WIDTH))
    return out


def node(level: int, idx: int, tiles: Mapping[tuple[int, int], bytes]) -> bytes | None:
    """Node ``(level, index)`` from its tile, or None when the tile does not reach it yet."""
    t, r = divmod(level, HEIGHT)
    base = idx << r
    n, pos = divmod(base, WIDTH)
    tile = tiles.get((t, n))
    count = 1 << r
    if tile is None or len(tile) < (pos + count) * HASH:
        return None
    level_hashes = [tile[i * HASH:(i + 1) * HASH] for i in range(pos, pos + count)]
    while len(level_hashes) > 1:
        level_hashes = [node_hash(level_hashes[i], level_hashes[i + 1])
                        for i in range(0, len(level_hashes), 2)]
    return level_hashes[0]


def hashes(tile: bytes) -> Sequence[bytes]:
    """A tile's hashes, in index order."""
    return [tile[i:i + HASH] for i in range(0, len(tile), HASH)]
