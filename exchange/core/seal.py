"""What a publisher does to a batch before it leaves (pure): normalise, key, commit, sign.

``prepare`` applies the exchange's text normalisation (NFC, one tone-mark style, whitespace) and
finds each record's key; ``seal`` wraps the records in CloudEvents envelopes, commits to every
disclosure group with salts drawn from one seed, builds the RFC 6962 tree over the record digests
and signs the batch statement. The node SDK calls both; a publisher in another language does the
same steps (README, "Over plain HTTPS").
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exchange.core import disclosure, merkle
from exchange.core.datasets import DatasetSpec
from exchange.core.datasets.normalise import normalise_record
from exchange.core.envelope import Envelope, digest
from exchange.core.signing import Batch, PublishedRecord, Statement, key_id, statement_bytes

__all__ = ["LOCAL_BASE", "Prepared", "guess_key", "prepare", "seal"]

SEAL_CONTEXT = b"vn-exchange/seal/v1\x00"
#: the exchange's base URL when none is given: the exchange on this machine (RFC 6761
#: ``localhost``), for tests and local tools; the node SDK passes the one its broker advertises
LOCAL_BASE = "https://localhost"
SALT_BYTES = disclosure.SALT_BYTES


@dataclass(frozen=True)
class Prepared:
    """Records ready to seal: ``(key, version, data)`` each, and how many normalisation
    changed (a publisher's "clean" score counts records it sent not normalised)."""

    items: list[tuple[str, int, dict[str, Any]]]
    normalised: int


def prepare(spec: DatasetSpec, records: Sequence[tuple[Mapping[str, Any], int]], *,
            normalise: bool = True) -> Prepared:
    """Normalise ``(data, version)`` records (a copy; the caller's data is untouched) and find
    each one's key. Only the key: the broker's gate is the authority on schema and rules and
    names every fault in its reply (``exchange schema validate`` checks locally)."""
    items: list[tuple[str, int, dict[str, Any]]] = []
    changed = 0
    for data, version in records:
        if normalise:
            data, paths = normalise_record(data)
            changed += bool(paths)
        else:
            data = dict(data)
        try:
            key = spec.key(msgspec.convert(data, spec.record_type))
        except msgspec.ValidationError:
            key = guess_key(data)
        items.append((key, version, data))
    return Prepared(items, changed)


def guess_key(data: Mapping[str, Any]) -> str:
    """Best-effort key of an invalid record, so the broker can name it in the dead letter."""
    for f in ("id", "tax_id", "plate"):
        if isinstance(data.get(f), str) and data[f]:
            return str(data[f])
    return "?"


def seal(
    key: Ed25519PrivateKey,
    node: str,
    spec: DatasetSpec,
    items: Sequence[tuple[str, int, dict[str, Any]]],
    seed: bytes,
    *,
    time: str,
    schema_base: str = LOCAL_BASE,
) -> Batch:
    """Envelope, commit to and sign a batch of ``(key, version, data)`` records.

    ``seed`` is the batch's one random value (``os.urandom(32)``); record ids and salts derive
    from it, so sealing makes no system call per record. One SHAKE-256 call (FIPS 202, an
    extendable-output function) stretches the seed into every record's id and salts: per
    record HMACs cost more than the rest of sealing together. ``schema_base`` is the
    exchange's public URL: ``dataschema`` is the absolute URI of the version's schema under it.
    """
    if not items:
        raise ValueError("a batch has at least one record")
    now = time
    names = tuple(spec.groups)
    dataschema = spec.dataschema_uri(schema_base)
    width = SALT_BYTES * (len(names) + 1)
    stream = hashlib.shake_256(SEAL_CONTEXT + seed).digest(width * len(items))
    records: list[PublishedRecord] = []
    leaves: list[bytes] = []
    for i, (subject, version, data) in enumerate(items):
        at = i * width
        salts = {g: stream[at + SALT_BYTES * (j + 1):at + SALT_BYTES * (j + 2)]
                 for j, g in enumerate(names)}
        event = Envelope(id=_uuid4(stream[at:at + SALT_BYTES]), source=node, type=spec.type,
                         subject=subject, time=now, dataschema=dataschema,
                         version=version, data=data)
        commitments = disclosure.commitments(data, spec.groups, salts)
        leaves.append(merkle.leaf_hash(digest(event.attributes(), commitments)))
        records.append(PublishedRecord(event, salts))
    statement = Statement(node=node, dataset=spec.name, root=merkle.root(leaves),
                          size=len(items), time=now, kid=key_id(key.public_key()))
    return Batch(statement, key.sign(statement_bytes(statement)), records)


def _uuid4(raw: bytes) -> str:
    """A random (version 4, RFC 9562 §5.4) UUID string from 16 random bytes."""
    h = bytes([raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], 0x40 | raw[6] & 0x0F, raw[7],
               0x80 | raw[8] & 0x3F, *raw[9:16]]).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


