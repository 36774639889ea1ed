"""The broker's gate for one published batch (pure): authenticity, schema, rules, versions.

Two steps, because the version decision needs the store:

1. ``check(...)`` verifies the batch signature once, then checks every record on its own
   (source, type, key, limits, schema, domain rules). A bad signature refuses the whole batch —
   the publisher's one signature vouches for all of its records or none; a record that is
   signed but invalid is refused alone.
2. ``decide(...)`` takes the current version of each key from the store and sorts the valid
   records into accepted, duplicates (same version, same content: a safe retry) and conflicts
   (``version_conflict``: same version, other content; ``stale_version``: lower version).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from exchange.core.access import Limits
from exchange.core.datasets import DatasetSpec, RuleContext
from exchange.core.envelope import parse_type
from exchange.core.errors import Code, ExchangeError, IntegrityError, LimitExceeded, Violation
from exchange.core.signing import Batch, PublishedRecord, Verifier
from exchange.core.wire import Duplicate

__all__ = ["Candidate", "Checked", "Current", "Decided", "check", "decide"]

_canon = msgspec.json.Encoder(order="sorted")


@dataclass(slots=True)
class Candidate:
    """A record that passed every check but the version decision."""

    index: int
    record: PublishedRecord
    key: str
    version: int
    commitments: dict[str, bytes]
    digest: bytes
    path: list[bytes]
    #: SHA-256 of the canonical data alone: "same content" whatever the salts, id or time
    content: bytes
    #: completeness score in [0, 1] over the recommended fields ("sufficient")
    completeness: float = 1.0
    #: False when the publisher sent text that is not normalised (counted for "clean")
    normalised: bool = True


@dataclass
class Checked:
    candidates: list[Candidate]
    rejected: list[Violation]
    #: normalisation findings (reported, never applied to signed content)
    notes: list[Violation] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Current:
    version: int
    content: bytes
    seq: int


@dataclass
class Decided:
    accepted: list[Candidate]
    duplicates: list[Duplicate]
    rejected: list[Violation]
    #: per accepted record, the seq of the stored version it replaces as the decision saw it
    #: (None: a new key; negative: a record accepted earlier in the same commit). A store
    #: shared by several brokers makes the append conditional on exactly that.
    replaces: list[int | None] = field(default_factory=list)


_CONTAINERS = (dict, list)


def _too_deep(data: dict[str, Any], limit: int) -> bool:
    """Whether a record's data nests deeper than ``limit`` levels: ``data`` is level 1, its
    values level 2, an address's values level 3.

    Iterative and touching only containers: records are flat but for an address or a list of
    owners, so this costs well under a microsecond on the hot path.
    """
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if type(value) is dict else value
        if depth >= limit and len(children):
            return True
        stack.extend((v, depth + 1) for v in children if type(v) in _CONTAINERS)
    return False


def check(
    batch: Batch,
    *,
    node: str,
    spec: DatasetSpec,
    verifier: Verifier,
    limits: Limits,
    ctx: RuleContext,
    scorer: Callable[[DatasetSpec, Mapping[str, Any]], float] | None = None,
) -> Checked:
    """Check a decoded batch from ``node`` for dataset ``spec``. Raises for batch-wide faults."""
    st = batch.statement
    if st.node != node:
        raise IntegrityError(f"batch is signed as {st.node}, but the connection is {node}",
                             code=Code.SIGNER_MISMATCH)
    if st.dataset != spec.name:
        raise IntegrityError(f"batch is signed for {st.dataset}, published to {spec.name}",
                             code=Code.DATASET_MISMATCH)
    if len(batch.records) > limits.max_batch_records:
        raise LimitExceeded(f"batch has {len(batch.records)} records; the limit is "
                            f"{limits.max_batch_records}", code=Code.BATCH_TOO_LARGE)
    commitments, digests, paths = verifier.verify_batch(batch, spec.groups)

    candidates: list[Candidate] = []
    rejected: list[Violation] = []
    for i, rec in enumerate(batch.records):
        ev = rec.event
        problems: list[Violation] = []
        if ev.source != node:
            problems.append(Violation(Code.SOURCE_MISMATCH,
                                      f"source {ev.source} is not the publisher {node}",
                                      "$.source"))
        try:
            dataset, version = parse_type(ev.type)
        except ExchangeError as err:
            problems.append(Violation(err.code, err.message, "$.type"))
        else:
            if dataset != spec.name or version != spec.version:
                problems.append(Violation(Code.UNKNOWN_SCHEMA_VERSION,
                                          f"type {ev.type} is not {spec.type}", "$.type"))
        data = ev.data
        if len(data) > limits.max_fields:
            problems.append(Violation(Code.TOO_MANY_FIELDS,
                                      f"{len(data)} fields; the limit is {limits.max_fields}"))
        elif _too_deep(data, limits.max_depth):
            problems.append(Violation(Code.TOO_DEEP,
                                      f"nesting deeper than {limits.max_depth} levels"))
        if problems:
            rejected.extend(p.at(i) for p in problems)
            continue
        result = spec.validate(data, ctx)
        if not result.ok:
            rejected.extend(v.at(i) for v in result.violations)
            continue
        key = spec.key(result.record)
        if key != ev.subject:
            rejected.append(Violation(Code.KEY_MISMATCH, f"subject {ev.subject!r} is not the "
                                      f"record's key {key!r}", "$.subject", i))
            continue
        candidates.append(Candidate(
            index=i, record=rec, key=key, version=ev.version, commitments=commitments[i],
            digest=digests[i], path=paths[i],
            content=hashlib.sha256(_canon.encode(data)).digest(),
            completeness=scorer(spec, data) if scorer else 1.0,
            normalised=not result.notes))
    return Checked(candidates, rejected)


def decide(checked: Checked, current: Mapping[str, Current], *,
           first_placeholder: int = 0) -> Decided:
    """Sort valid records by version against the store's current versions (in batch order)."""
    latest = dict(current)
    accepted: list[Candidate] = []
    replaces: list[int | None] = []
    duplicates: list[Duplicate] = []
    rejected = list(checked.rejected)
    for c in checked.candidates:
        cur = latest.get(c.key)
        if cur is not None:
            if c.version < cur.version:
                rejected.append(Violation(
                    Code.STALE_VERSION, f"version {c.version} of {c.key} is older than the "
                    f"stored version {cur.version}", "$.version", c.index))
                continue
            if c.version == cur.version:
                if c.content == cur.content:
                    seq = cur.seq
                    duplicates.append(Duplicate(c.index, seq))
                else:
                    rejected.append(Violation(
                        Code.VERSION_CONFLICT, f"version {c.version} of {c.key} is already "
                        "stored with different content", "$.version", c.index))
                continue
        # a negative seq -1-k marks "the k-th record accepted in this batch": the store assigns
        # the real seq, and the broker resolves such duplicates to it
        latest[c.key] = Current(c.version, c.content, -1 - (first_placeholder + len(accepted)))
        accepted.append(c)
        replaces.append(None if cur is None else cur.seq)
    rejected.sort(key=lambda v: v.index or 0)
    return Decided(accepted, duplicates, rejected, replaces)
