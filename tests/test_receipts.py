"""Group-signed receipts (pure): one broker signature per group commit, each receipt still
verifiable alone, and no receipt verifiable with another's place in the group."""

from __future__ import annotations

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from exchange.core import receipts
from exchange.core.errors import IntegrityError
from exchange.core.wire import Receipt, SignedReceipt

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key()


def _receipts(n: int, base: int = 0) -> list[Receipt]:
    return [Receipt(broker="vn.gov.ndc.broker", publisher="vn.gov.mps.population",
                    dataset="population", batch_root=bytes([i % 256]) * 32,
                    first_seq=base + 10 * i, last_seq=base + 10 * i + 9, accepted=10,
                    time="2026-11-23T01:00:00Z", log_size=base + 10 * n,
                    log_root=b"\x01" * 32) for i in range(n)]


@given(st.integers(1, 40))
def test_every_receipt_of_a_group_verifies_with_one_signature(n: int) -> None:
    signed = receipts.sign(KEY, _receipts(n))
    assert len({s.signature for s in signed}) == 1
    checker = receipts.ReceiptChecker()
    for s in signed:
        checker.check(PUBLIC, s)
        for codec in (msgspec.json, msgspec.msgpack):  # and after the wire
            checker.check(PUBLIC, codec.decode(codec.encode(s), type=SignedReceipt))
    assert checker.verifications == 1


def test_a_receipt_signed_alone_is_unchanged_on_the_wire() -> None:
    (one,) = receipts.sign(KEY, _receipts(1))
    assert set(msgspec.to_builtins(one)) == {"receipt", "signature"}
    PUBLIC.verify(one.signature, receipts.receipt_bytes(one.receipt))


def test_tampered_group_receipts_fail() -> None:
    signed = receipts.sign(KEY, _receipts(5))
    other = receipts.sign(KEY, _receipts(5, base=1000))
    s = signed[2]
    replace = msgspec.structs.replace
    cases = {
        "altered receipt": replace(s, receipt=replace(s.receipt, accepted=11)),
        "another receipt's place": replace(s, index=3, path=signed[3].path),
        "wrong index": replace(s, index=1),
        "wrong group size": replace(s, group_size=6),
        "another group's signature": replace(s, signature=other[2].signature),
        "another group's path": replace(s, path=other[2].path),
        "a path on a lone receipt": replace(receipts.sign(KEY, _receipts(1))[0],
                                            path=[b"\0" * 32]),
        "group of one, no path": replace(s, group_size=1, index=0, path=[]),
    }
    for name, bad in cases.items():
        with pytest.raises(IntegrityError):
            receipts.ReceiptChecker().check(PUBLIC, bad)
            pytest.fail(f"{name} verified")
    # a checker that verified the honest group still refuses the forgery (no cache confusion)
    checker = receipts.ReceiptChecker()
    for good in signed:
        checker.check(PUBLIC, good)
    with pytest.raises(IntegrityError):
        checker.check(PUBLIC, cases["altered receipt"])
    with pytest.raises(IntegrityError):
        checker.check(Ed25519PrivateKey.generate().public_key(), s)
