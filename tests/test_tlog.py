"""Signed notes and checkpoints against the Go reference vectors; log entries."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.core import merkle, tlog
from exchange.core.errors import InputError, IntegrityError

# golang.org/x/mod/sumdb/note, note_test.go and package docs: the PeterNeumann key and note.
SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
TEXT = ("If you think cryptography is the answer to your problem,\n"
        "then you don't know what your problem is.\n")
NOTE = (TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2p"
        "ZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n")


def _peter() -> tlog.NoteKey:
    seed = base64.b64decode(SKEY.split("+", 4)[-1])[1:]
    return tlog.NoteKey.from_private("PeterNeumann", Ed25519PrivateKey.from_private_bytes(seed))


def test_signed_note_matches_go_reference() -> None:
    key = _peter()
    assert key.vkey == VKEY
    assert key.sign_note(TEXT) == NOTE
    assert tlog.NoteKey.from_vkey(VKEY).open_note(NOTE) == TEXT


@pytest.mark.parametrize("bad", [
    VKEY.replace("c74f20a3", "c74f20a4"),  # id mismatch
    "PeterNeumann+c74f20a3",
    "PeterNeumann+c74f20a3+!!!!",
])
def test_bad_vkeys_refused(bad: str) -> None:
    with pytest.raises(InputError):
        tlog.NoteKey.from_vkey(bad)


def test_forged_and_foreign_notes_refused() -> None:
    verifier = tlog.NoteKey.from_vkey(VKEY)
    with pytest.raises(IntegrityError) as e:
        verifier.open_note(NOTE.replace("problem,", "problem;"))
    assert e.value.code == "checkpoint_forged"
    other = tlog.NoteKey.from_private("PeterNeumann", Ed25519PrivateKey.generate())
    with pytest.raises(IntegrityError):
        verifier.open_note(other.sign_note(TEXT))


def test_checkpoint_round_trip_and_split_view() -> None:
    key = tlog.NoteKey.from_private("vn.gov.ndc.broker", Ed25519PrivateKey.generate())
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(10)]
    old = tlog.sign_checkpoint(key, "exchange.test/log", 6, merkle.root(leaves[:6]))
    new = tlog.sign_checkpoint(key, "exchange.test/log", 10, merkle.root(leaves))
    assert old.note.startswith("exchange.test/log\n6\n")
    opened = tlog.open_checkpoint(tlog.NoteKey(key.name, key.public), new.note,
                                  "exchange.test/log")
    assert opened.size == 10 and opened.root == merkle.root(leaves)
    nodes: dict[tuple[int, int], bytes] = {}
    cr = merkle.CompactRange(on_node=lambda lvl, i, h: nodes.__setitem__((lvl, i), h))
    for h in leaves:
        cr.append(h)
    proof = merkle.consistency_proof(lambda lvl, i: nodes[(lvl, i)], 6, 10)
    tlog.check_consistent(old, new, proof)
    forked = tlog.sign_checkpoint(key, "exchange.test/log", 10,
                                  merkle.root([*leaves[:9], merkle.leaf_hash(b"x")]))
    with pytest.raises(IntegrityError) as e:
        tlog.check_consistent(old, forked, proof)
    assert e.value.code == "split_view"
    with pytest.raises(IntegrityError):
        tlog.open_checkpoint(tlog.NoteKey(key.name, key.public), new.note, "other/log")


def test_entry_binds_every_field() -> None:
    base = (7, "population", "vn.gov.mps.population", b"d" * 32, b"r" * 32, 1_700_000_000_000_000)
    leaf = tlog.entry_leaf(*base)
    for i, changed in enumerate([8, "tax", "vn.gov.mof.tax", b"e" * 32, b"s" * 32,
                                 1_700_000_000_000_001]):
        args = list(base)
        args[i] = changed
        assert tlog.entry_leaf(*args) != leaf  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(first=st.integers(min_value=0, max_value=2**40),
       us=st.integers(min_value=0, max_value=2**63),
       entries=st.lists(st.tuples(st.sampled_from(["population", "tax", "đất"]),
                                  st.sampled_from(["vn.gov.mps.population", "vn.gov.mof.tax"]),
                                  st.binary(min_size=32, max_size=32),
                                  st.binary(min_size=32, max_size=32)), max_size=20))
def test_entry_leaves_of_a_group_are_each_entry_leaf(
        first: int, us: int, entries: list[tuple[str, str, bytes, bytes]]) -> None:
    assert list(tlog.entry_leaves(first, entries, us)) == [
        tlog.entry_leaf(first + i, d, p, dig, root, us)
        for i, (d, p, dig, root) in enumerate(entries)]
