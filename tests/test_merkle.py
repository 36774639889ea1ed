"""RFC 6962 hashing and proofs: known answers, agreement with the recursive definition, and
mutated proofs that must fail."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.core import merkle
from exchange.core.errors import IntegrityError
from tests import rfc6962

# The 8-leaf test vector of Certificate Transparency (RFC 6962 reference implementation tests).
CT_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f")]
CT_ROOT = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


def _store(entries: list[bytes]) -> merkle.NodeReader:
    nodes: dict[tuple[int, int], bytes] = {}
    cr = merkle.CompactRange(on_node=lambda lvl, idx, h: nodes.__setitem__((lvl, idx), h))
    for e in entries:
        cr.append(merkle.leaf_hash(e))
    return lambda lvl, idx: nodes[(lvl, idx)]


def test_ct_vector_root() -> None:
    leaves = [merkle.leaf_hash(e) for e in CT_LEAVES]
    assert merkle.root(leaves).hex() == CT_ROOT
    cr = merkle.CompactRange()
    for h in leaves:
        cr.append(h)
    assert cr.root().hex() == CT_ROOT
    assert rfc6962.mth(CT_LEAVES).hex() == CT_ROOT


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert merkle.root([]).hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert merkle.CompactRange().root() == merkle.EMPTY_ROOT == rfc6962.mth([])


entries_st = st.lists(st.binary(max_size=8), min_size=1, max_size=40)


@given(entries_st, st.data())
def test_proofs_agree_with_recursive_definition(entries: list[bytes], data: st.DataObject
                                                ) -> None:
    n = len(entries)
    size = data.draw(st.integers(1, n))
    old = data.draw(st.integers(0, size))
    index = data.draw(st.integers(0, size - 1))
    node = _store(entries)
    leaves = [merkle.leaf_hash(e) for e in entries]
    assert merkle.root(leaves[:size]) == rfc6962.mth(entries[:size])
    inc = merkle.inclusion_proof(node, index, size)
    assert inc == rfc6962.path(index, entries[:size])
    merkle.verify_inclusion(leaves[index], index, size, inc, rfc6962.mth(entries[:size]))
    cons = merkle.consistency_proof(node, old, size)
    assert cons == rfc6962.proof(old, entries[:size])
    merkle.verify_consistency(old, size, rfc6962.mth(entries[:old]), rfc6962.mth(entries[:size]),
                              cons)
    root, paths = merkle.inclusion_paths(leaves[:size])
    assert root == rfc6962.mth(entries[:size])
    assert paths[index] == inc


def _mutations(proof: list[bytes]) -> list[list[bytes]]:
    out: list[list[bytes]] = [[*proof, b"\x00" * 32]]  # extended
    if proof:
        out.append(proof[:-1])  # truncated
        for i in range(len(proof)):
            flipped = bytearray(proof[i])
            flipped[i % 32] ^= 1
            out.append([*proof[:i], bytes(flipped), *proof[i + 1:]])
        if len(proof) > 1:
            out.append([proof[1], proof[0], *proof[2:]])  # reordered
    return out


@given(st.lists(st.binary(max_size=4), min_size=2, max_size=33, unique=True), st.data())
def test_mutated_proofs_fail(entries: list[bytes], data: st.DataObject) -> None:
    n = len(entries)
    old = data.draw(st.integers(1, n - 1))
    index = data.draw(st.integers(0, n - 1))
    node = _store(entries)
    leaves = [merkle.leaf_hash(e) for e in entries]
    r_old, r_new = merkle.root(leaves[:old]), merkle.root(leaves)
    inc = merkle.inclusion_proof(node, index, n)
    for bad in _mutations(inc):
        with pytest.raises(IntegrityError):
            merkle.verify_inclusion(leaves[index], index, n, bad, r_new)
    # wrong index, wrong leaf. (A wrong *size* can verify when the path's shape is unchanged,
    # e.g. leaf 0 of 3 or of 4; the size is bound by the signed checkpoint, not by the path.)
    with pytest.raises(IntegrityError):
        merkle.verify_inclusion(leaves[index], (index + 1) % n, n, inc, r_new)
    with pytest.raises(IntegrityError):
        merkle.verify_inclusion(leaves[(index + 1) % n], index, n, inc, r_new)
    cons = merkle.consistency_proof(node, old, n)
    for bad in _mutations(cons):
        with pytest.raises(IntegrityError):
            merkle.verify_consistency(old, n, r_old, r_new, bad)
    with pytest.raises(IntegrityError):  # swapped roots
        merkle.verify_consistency(old, n, r_new, r_old, cons)
    if old > 1:
        with pytest.raises(IntegrityError):  # wrong old size
            merkle.verify_consistency(old - 1, n, r_old, r_new, cons)


def test_compact_range_resumes_from_frontier() -> None:
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(37)]
    a = merkle.CompactRange()
    for h in leaves[:20]:
        a.append(h)
    b = merkle.CompactRange(a.size, a.frontier)
    for h in leaves[20:]:
        b.append(h)
    assert b.root() == merkle.root(leaves)
