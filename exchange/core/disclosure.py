"""Selective disclosure of field groups with salted commitments, SD-JWT style (pure).

Each dataset partitions its fields into a few named groups. For every record and group the
publisher commits ``c_g = SHA-256(salt_g ‖ group ‖ 0x00 ‖ canonical(group fields))`` with a
128-bit salt (SD-JWT, RFC 9901 §4.2.1, also salts each disclosure with ≥128 bits). The record
digest covers the commitments, not the plaintext, so a subscriber granted only some groups receives
the others as bare commitments and still verifies the publisher's signature; a withheld group's
commitment reveals nothing because its salt is random and never sent.

Salts come from one random seed per batch: ``signing.seal`` stretches it with SHAKE-256 (FIPS 202,
an extendable-output function, used as the KDF) into every record's id and salts: one system
random call per batch, not per field.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping
from typing import Any

from exchange.core import canonical
from exchange.core.errors import Code, IntegrityError

__all__ = [
    "SALT_BYTES",
    "commit",
    "commitments",
    "opened_commitments",
    "project",
]

SALT_BYTES = 16
COMMITMENT_BYTES = 32


def commit(salt: bytes, group: str, data: Mapping[str, Any], fields: tuple[str, ...],
           encode: Callable[[Any], bytes] = canonical.encode) -> bytes:
    """The commitment to the fields of one group, as present in ``data``."""
    body = encode({f: data[f] for f in fields if f in data})
    return hashlib.sha256(salt + group.encode() + b"\x00" + body).digest()


def commitments(data: Mapping[str, Any], groups: Mapping[str, tuple[str, ...]],
                salts: Mapping[str, bytes],
                encode: Callable[[Any], bytes] | None = None) -> dict[str, bytes]:
    """Commitments of every group of a full record (the same bytes as ``commit`` per group).

    The hot path of sealing and of the gate: one pass over the record's fields, not one per
    group. Fields outside every group are not committed (the schema refuses them).
    ``encode``: the canonical encoder of the caller's choice for the groups (the gate passes
    ``canonical.encode_checked`` when the dataset's schema vouches for the values, and checks
    them afterwards); by default ``data`` is checked once, as ``canonical.encoder`` does.
    """
    owner, prefixes = _layout(groups)
    parts: dict[str, dict[str, Any]] = {g: {} for g in groups}
    for f, v in data.items():
        g = owner.get(f)
        if g is not None:
            parts[g][f] = v
    sha = hashlib.sha256
    enc = encode or canonical.encoder(data)  # checked once: its groups are parts of it
    return {g: sha(salts[g] + prefixes[g] + enc(part)).digest() for g, part in parts.items()}


def _opened_in_full(data: Mapping[str, Any], groups: Mapping[str, tuple[str, ...]],
                    salts: Mapping[str, bytes],
                    encode: Callable[[Any], bytes] | None = None) -> dict[str, bytes]:
    """``opened_commitments`` of a record with every group disclosed: one pass, as sealing."""
    owner, _ = _layout(groups)
    stray = [f for f in data if f not in owner]
    if stray:
        raise IntegrityError(f"fields {stray} are outside every disclosed group",
                             code=Code.DISCLOSURE_INVALID)
    for g, salt in salts.items():
        if len(salt) != SALT_BYTES:
            raise IntegrityError(f"salt of group {g!r} is not 16 bytes",
                                 code=Code.DISCLOSURE_INVALID)
    return commitments(data, groups, salts, encode)


_layouts: dict[int, tuple[Mapping[str, tuple[str, ...]], dict[str, str], dict[str, bytes]]] = {}


def _layout(groups: Mapping[str, tuple[str, ...]]) -> tuple[dict[str, str], dict[str, bytes]]:
    """Field -> group, and group -> hash prefix, for a dataset's groups (computed once)."""
    hit = _layouts.get(id(groups))
    if hit is None or hit[0] is not groups:
        hit = (groups, {f: g for g, fields in groups.items() for f in fields},
               {g: g.encode() + b"\x00" for g in groups})
        if len(_layouts) > 64:
            _layouts.clear()
        _layouts[id(groups)] = hit
    return hit[1], hit[2]


def project(data: Mapping[str, Any], groups: Mapping[str, tuple[str, ...]],
            salts: Mapping[str, bytes], commitments: Mapping[str, bytes],
            granted: Collection[str]
            ) -> tuple[dict[str, Any], dict[str, bytes], dict[str, bytes]]:
    """A record as an agreement may see it: the granted groups' fields and salts, and every
    other group as the commitment the publisher signed (``commitments``, as the gate computed
    them). The one projection: the broker's subscribe feed runs exactly this.

    Returns ``(data, salts, withheld)``. A fully granted record is returned whole.
    """
    if not set(groups) - set(granted):
        return dict(data), {g: s for g, s in salts.items() if g in commitments}, {}
    keep_fields = {f for g in granted if g in groups for f in groups[g]}
    out_data = {f: v for f, v in data.items() if f in keep_fields}
    out_salts = {g: s for g, s in salts.items() if g in granted}
    withheld = {g: c for g, c in commitments.items() if g not in granted}
    return out_data, out_salts, withheld


def opened_commitments(data: Mapping[str, Any], groups: Mapping[str, tuple[str, ...]],
                       salts: Mapping[str, bytes], withheld: Mapping[str, bytes],
                       encode: Callable[[Any], bytes] | None = None) -> dict[str, bytes]:
    """Recompute every group commitment of a (possibly projected) record, for verification.

    Every group must be either disclosed (with its salt) or withheld (with its commitment), never
    both; every field in ``data`` must belong to a disclosed group, so nothing unsigned rides along.
    ``encode``: the canonical encoder for the groups (``canonical.received`` on a subscriber);
    by default every group is checked as ``canonical.encode`` does.
    """
    if not withheld and salts.keys() == groups.keys():
        return _opened_in_full(data, groups, salts, encode)
    disclosed = salts.keys()
    if disclosed & withheld.keys():
        raise IntegrityError("a group is both disclosed and withheld", code=Code.DISCLOSURE_INVALID)
    if disclosed | withheld.keys() != groups.keys():
        raise IntegrityError(
            f"groups {sorted(disclosed | withheld.keys())} do not match the schema's "
            f"{sorted(groups)}", code=Code.DISCLOSURE_INVALID)
    allowed = {f for g in disclosed for f in groups[g]}
    stray = [f for f in data if f not in allowed]
    if stray:
        raise IntegrityError(f"fields {stray} are outside every disclosed group",
                             code=Code.DISCLOSURE_INVALID)
    out: dict[str, bytes] = {}
    for g, fields in groups.items():
        if g in withheld:
            c = withheld[g]
            if len(c) != COMMITMENT_BYTES:
                raise IntegrityError(f"commitment of group {g!r} is not 32 bytes",
                                     code=Code.DISCLOSURE_INVALID)
            out[g] = c
        else:
            s = salts[g]
            if len(s) != SALT_BYTES:
                raise IntegrityError(f"salt of group {g!r} is not 16 bytes",
                                     code=Code.DISCLOSURE_INVALID)
            out[g] = commit(s, g, data, fields, encode or canonical.encode)
    return out
