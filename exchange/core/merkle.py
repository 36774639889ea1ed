"""RFC 6962 Merkle tree hashing, inclusion and consistency proofs (pure).

Hashing per RFC 6962 §2.1: leaf hash ``SHA-256(0x00 ‖ entry)``, interior node
``SHA-256(0x01 ‖ left ‖ right)``; the split point of n leaves is the largest power of two < n.
Verification follows RFC 9162 §2.1.3.2 and §2.1.4.2 (the iterative forms of RFC 6962's proofs).

The empty tree's root is ``SHA-256()`` of nothing (RFC 6962 §2.1: MTH({}) = SHA-256()).

No I/O: the transparency log keeps nodes in a store and calls the functions here with a
``node(level, index)`` reader, so a proof costs O(log n) reads at any size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence

from exchange.core.errors import Code, IntegrityError

__all__ = [
    "EMPTY_ROOT",
    "CompactRange",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "root_from_inclusion",
    "verify_consistency",
    "verify_inclusion",
    "verify_inclusion_shared",
]

_sha256 = hashlib.sha256
EMPTY_ROOT = _sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def root(leaves: Sequence[bytes]) -> bytes:
    """Root over already-hashed leaves, iteratively (no recursion, no per-level list copies)."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    level = list(leaves)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            # RFC 6962's unbalanced right edge: an odd last node is promoted unchanged.
            nxt.append(level[-1])
        level = nxt
    return level[0]


def _levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        cur = levels[-1]
        nxt = [node_hash(cur[i], cur[i + 1]) for i in range(0, len(cur) - 1, 2)]
        if len(cur) % 2:
            nxt.append(cur[-1])
        levels.append(nxt)
    return levels


def inclusion_paths(leaves: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """Root and every leaf's audit path in one pass: O(n) hashes, O(n log n) path entries.

    This is the publisher's batch case: each record travels with its own path.
    """
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT, []
    levels = _levels(leaves)
    paths: list[list[bytes]] = []
    for index in range(n):
        path: list[bytes] = []
        i = index
        for level in levels[:-1]:
            sibling = i ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            i >>= 1
        paths.append(path)
    return levels[-1][0], paths


# A node at (level, index) covers leaves [index << level, (index + 1) << level).
NodeReader = Callable[[int, int], bytes]


def _subtree_root(node: NodeReader, start: int, end: int) -> bytes:
    """Root of leaves [start, end) from stored perfect subtrees: O(log n) reads.

    Stored nodes exist only for complete (perfect) subtrees; an incomplete right edge is
    rebuilt from its perfect parts, right to left, as RFC 6962 promotes unpaired nodes.
    """
    parts: list[bytes] = []
    while start < end:
        # largest perfect subtree aligned at start that fits in [start, end)
        size = start & -start if start else 1 << (end - start).bit_length()
        while size > end - start:
            size >>= 1
        parts.append(node(size.bit_length() - 1, start // size))
        start += size
    acc = parts[-1]
    for h in reversed(parts[:-1]):
        acc = node_hash(h, acc)
    return acc


def inclusion_proof(node: NodeReader, index: int, size: int) -> list[bytes]:
    """RFC 6962 PATH(index, D[0:size]) from stored nodes."""
    if not 0 <= index < size:
        raise ValueError(f"index {index} outside tree of size {size}")
    proof: list[bytes] = []
    start, end = 0, size
    # Walk down from the root, collecting the sibling subtree at each split (RFC 6962 §2.1.1).
    while end - start > 1:
        k = 1 << ((end - start - 1).bit_length() - 1)
        if index < start + k:
            proof.append(_subtree_root(node, start + k, end))
            end = start + k
        else:
            proof.append(_subtree_root(node, start, start + k))
            start = start + k
    proof.reverse()
    return proof


def consistency_proof(node: NodeReader, old: int, new: int) -> list[bytes]:
    """RFC 6962 PROOF(old, D[0:new]) from stored nodes (§2.1.2, SUBPROOF)."""
    if not 0 <= old <= new:
        raise ValueError(f"bad sizes {old} > {new}")
    if old == 0 or old == new:
        return []
    proof: list[bytes] = []
    start, end, m, complete = 0, new, old, True
    while True:
        n = end - start
        if m - start == n:
            if not complete:
                proof.append(_subtree_root(node, start, end))
            break
        k = 1 << ((n - 1).bit_length() - 1)
        if m - start <= k:
            proof.append(_subtree_root(node, start + k, end))
            end = start + k
        else:
            proof.append(_subtree_root(node, start, start + k))
            start = start + k
            complete = False
    proof.reverse()
    return proof


def _walk(leaf: bytes, index: int, size: int, proof: Sequence[bytes]
          ) -> Iterator[tuple[bytes, int, int]]:
    """RFC 9162 §2.1.3.2's walk up an audit path: each interior node reached, with its position
    (``fn, sn``; ``sn`` fixes the level). Raises if the path is longer than the tree."""
    if not 0 <= index < size:
        raise IntegrityError(f"leaf index {index} outside tree of size {size}",
                             code=Code.PROOF_INVALID)
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise IntegrityError("inclusion proof longer than the tree", code=Code.PROOF_INVALID)
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
        yield r, fn, sn
    if sn != 0:
        raise IntegrityError("inclusion proof shorter than the tree", code=Code.PROOF_INVALID)


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root implied by a leaf hash and its audit path (RFC 9162 §2.1.3.2)."""
    r = leaf
    for node, _, _ in _walk(leaf, index, size, proof):
        r = node
    return r


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                     expected_root: bytes) -> None:
    if root_from_inclusion(leaf, index, size, proof) != expected_root:
        raise IntegrityError(f"inclusion proof for leaf {index} does not match the root",
                             code=Code.PROOF_INVALID)


def verify_inclusion_shared(leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                            expected_root: bytes, known: dict[bytes, tuple[int, int]]) -> None:
    """``verify_inclusion`` for many leaves of one tree, sharing the work between them.

    ``known`` maps interior nodes already proven to lead to ``expected_root`` to their position
    in the walk. A path that reaches a known node at the same position is proven from there on,
    so neighbouring leaves of a batch cost one or two hashes instead of log2(size). Start each
    tree with an empty dict.
    """
    walked: list[tuple[bytes, int, int]] = []
    r = leaf
    for r, fn, sn in _walk(leaf, index, size, proof):
        if known.get(r) == (fn, sn):
            break  # proven from here on: so is every node walked to reach it
        walked.append((r, fn, sn))
    else:
        if r != expected_root:
            raise IntegrityError(f"inclusion proof for leaf {index} does not match the root",
                                 code=Code.PROOF_INVALID)
    for h, f, s in walked:
        known[h] = (f, s)


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> None:
    """RFC 9162 §2.1.4.2: raise unless the tree of size ``new`` extends the one of size ``old``."""
    bad = IntegrityError(f"consistency proof {old} -> {new} does not verify",
                         code=Code.PROOF_INVALID)
    if not 0 <= old <= new:
        raise bad
    if old == new:
        if proof or old_root != new_root:
            raise bad
        return
    if old == 0:
        if proof:
            raise bad
        return
    if not proof:
        raise bad
    path = list(proof)
    if old & (old - 1) == 0:  # old is a power of two: its root is the first node
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise bad
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != old_root or sr != new_root:
        raise bad


class CompactRange:
    """Append-only Merkle frontier: O(log n) state, O(1) amortised hashes per append.

    ``on_node(level, index, hash)`` is called for every perfect subtree completed, so a store can
    keep them for O(log n) proofs later (the log keeps every node; a batch keeps none).
    """

    __slots__ = ("_on_node", "_stack", "size")

    def __init__(self, size: int = 0, frontier: Sequence[bytes] = (),
                 on_node: Callable[[int, int, bytes], None] | None = None) -> None:
        if bin(size).count("1") != len(frontier):
            raise ValueError("frontier does not match size")
        self.size = size
        # perfect subtree roots, largest (leftmost) first: one per set bit of size
        self._stack = list(frontier)
        self._on_node = on_node

    @property
    def frontier(self) -> list[bytes]:
        return list(self._stack)

    def append(self, leaf: bytes) -> None:
        index = self.size
        h = leaf
        level = 0
        if self._on_node:
            self._on_node(0, index, h)
        while index & 1:
            h = node_hash(self._stack.pop(), h)
            index >>= 1
            level += 1
            if self._on_node:
                self._on_node(level, index, h)
        self._stack.append(h)
        self.size += 1

    def extend(self, leaves: Iterable[bytes]) -> list[tuple[int, int, bytes]]:
        """Append every leaf in order; return each perfect subtree completed, as
        ``(level, index, hash)`` in the order ``append`` reports them (a group commit's log
        nodes, in one tight loop instead of a call per node)."""
        out: list[tuple[int, int, bytes]] = []
        add = out.append
        stack = self._stack
        pop, push = stack.pop, stack.append
        size = self.size
        for leaf in leaves:
            index = size
            h = leaf
            level = 0
            add((0, index, h))
            while index & 1:
                h = _sha256(b"\x01" + pop() + h).digest()
                index >>= 1
                level += 1
                add((level, index, h))
            push(h)
            size += 1
        self.size = size
        if self._on_node:
            for node in out:
                self._on_node(*node)
        return out

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        acc = self._stack[-1]
        for h in reversed(self._stack[:-1]):
            acc = node_hash(h, acc)
        return acc
