"""Broker receipts, signed one group commit at a time (pure).

The broker stores concurrent batches in one transaction (group commit) and answers each with its
own receipt. Signing each receipt would cost the broker one Ed25519 signature and the publisher
one verification per batch: with one record per batch that is most of the work. Instead the
receipts of a group are the leaves of an RFC 6962 tree (leaf ``RECEIPT_CONTEXT ‖
canonical(receipt)``) and the broker signs the root once (``ReceiptGroup``), as publishers sign
their batches. Each receipt travels with its index and audit path, so it still verifies alone, and
stays evidence a third party can check with nothing but the broker's certified key. A group of
one is signed directly, as before.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from exchange.core import canonical, merkle
from exchange.core.errors import Code, IntegrityError
from exchange.core.signing import Bytes32
from exchange.core.wire import RECEIPT_CONTEXT, Receipt, SignedReceipt

__all__ = ["RECEIPT_GROUP_CONTEXT", "ReceiptChecker", "ReceiptGroup", "sign", "signed_message"]

RECEIPT_GROUP_CONTEXT = b"vn-exchange/receipt-group/v1\n"


class ReceiptGroup(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the broker signs for a group commit of several batches."""

    root: Bytes32
    size: int


def receipt_bytes(receipt: Receipt) -> bytes:
    return RECEIPT_CONTEXT + canonical.encode(receipt)


def sign(key: Ed25519PrivateKey, receipts: Sequence[Receipt]) -> list[SignedReceipt]:
    """Sign a group commit's receipts, in order: one signature for all of them."""
    if len(receipts) == 1:
        return [SignedReceipt(receipts[0], key.sign(receipt_bytes(receipts[0])))]
    root, paths = merkle.inclusion_paths([merkle.leaf_hash(receipt_bytes(r)) for r in receipts])
    signature = key.sign(RECEIPT_GROUP_CONTEXT + canonical.encode(
        ReceiptGroup(root=root, size=len(receipts))))
    return [SignedReceipt(r, signature, len(receipts), i, paths[i])
            for i, r in enumerate(receipts)]


def signed_message(signed: SignedReceipt) -> bytes:
    """The bytes the broker's signature covers for this receipt."""
    if signed.group_size == 1:
        if signed.index or signed.path:
            raise IntegrityError("a receipt signed alone has no group path",
                                 code=Code.RECEIPT_INVALID)
        return receipt_bytes(signed.receipt)
    try:
        root = merkle.root_from_inclusion(merkle.leaf_hash(receipt_bytes(signed.receipt)),
                                          signed.index, signed.group_size, signed.path)
    except IntegrityError:
        raise IntegrityError("the receipt's group path does not fit its group",
                             code=Code.RECEIPT_INVALID) from None
    return RECEIPT_GROUP_CONTEXT + canonical.encode(ReceiptGroup(root=root,
                                                              size=signed.group_size))


class ReceiptChecker:
    """Verifies broker receipts; a group's signature is checked once for all its receipts."""

    def __init__(self, cache_size: int = 1024) -> None:
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size
        self.verifications = 0  # signatures actually checked (cache misses)

    def check(self, public: Ed25519PublicKey, signed: SignedReceipt) -> None:
        message = signed_message(signed)
        seen = public.public_bytes_raw() + signed.signature + message
        if seen in self._verified:
            self._verified.move_to_end(seen)
            return
        try:
            public.verify(signed.signature, message)
        except InvalidSignature:
            raise IntegrityError("the broker's receipt signature does not verify",
                                 code=Code.RECEIPT_INVALID) from None
        self.verifications += 1
        self._verified[seen] = None
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
