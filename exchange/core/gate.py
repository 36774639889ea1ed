"""The broker's gate for one published batch (pure): authenticity, schema, rules, versions.

Two steps, because the version decision needs the store:

1. ``check(...)`` verifies the batch signature once, then checks every record on its own
   (source, type, key, limits, schema, domain rules). A bad signature refuses the whole batch —
   the publisher's one signature vouches for all of its records or none; a record that is
   signed but invalid is refused alone.
2. ``decide_group(...)`` takes the current version of each key from the store and sorts the
   valid records of a group of batches, in arrival order, into accepted, duplicates (same
   version, same content: a safe retry) and conflicts (``version_conflict``: same version,
   other content; ``stale_version``: lower version). The one place versions are decided: the
   broker decides every group commit here, and ``ledger`` turns the decision into the append.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgspec

from exchange.core import canonical, datasets
from exchange.core.access import Limits
from exchange.core.datasets import DatasetSpec, RuleContext
from exchange.core.envelope import Envelope, parse_type
from exchange.core.errors import (
    Code,
    ExchangeError,
    InputError,
    IntegrityError,
    LimitExceeded,
    Violation,
)
from exchange.core.signing import Batch, Verifier
from exchange.core.wire import Duplicate

__all__ = ["IN_GROUP", "Candidate", "Checked", "Current", "Decided", "StoredBody", "check",
           "decide", "decide_group", "spec_of"]


class StoredBody(msgspec.Struct, frozen=True, array_like=True):
    """What a store keeps per record besides its indexed columns (MessagePack)."""

    event: Envelope
    salts: dict[str, bytes]
    commitments: dict[str, bytes]
    path: list[bytes]
    completeness: float = 1.0


class Candidate(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A record that passed every check but the version decision: what the decision and the
    append need of it, and nothing that must be decoded again. Plain values only, so a gate
    worker process sends it to the writer as MessagePack (``exchange.broker.workers``)."""

    index: int
    key: str
    version: int
    digest: bytes
    #: SHA-256 of the canonical data alone: "same content" whatever the salts, id or time
    content: bytes
    #: the record as the store keeps it (``StoredBody``, MessagePack): envelope, salts,
    #: commitments, audit path, completeness
    body: bytes
    #: completeness score in [0, 1] over the recommended fields ("sufficient")
    completeness: float = 1.0
    #: False when the publisher sent text that is not normalised (counted for "clean")
    normalised: bool = True
    #: (dataset, key) of the records in other datasets this one refers to (when asked for)
    refs: tuple[tuple[str, str], ...] = ()
    #: the record's ``as_of`` date, when it has one ("live": its age at publish)
    as_of: str | None = None


class Checked(msgspec.Struct):
    candidates: list[Candidate]
    rejected: list[Violation]
    #: normalisation findings (reported, never applied to signed content)
    notes: list[Violation] = msgspec.field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Current:
    version: int
    content: bytes
    seq: int


@dataclass
class Decided:
    """One batch's part of a group decision."""

    accepted: list[Candidate]
    #: same version, same content as a record stored before the group (a safe retry)
    duplicates: list[Duplicate]
    rejected: list[Violation]
    #: per accepted record, the seq of the stored version it replaces as the decision saw it
    #: (None: a new key; ``IN_GROUP``: a record accepted earlier in the same group). A store
    #: shared by several brokers makes the append conditional on exactly that.
    replaces: list[int | None] = field(default_factory=list)
    #: duplicates of records accepted earlier in the same group: (index, the record's offset
    #: in the group); ``ledger.receipts`` resolves them once the group's first seq is known
    echoes: list[tuple[int, int]] = field(default_factory=list)
    #: offset of this batch's first accepted record in its group
    offset: int = 0


#: ``Decided.replaces`` of a record whose key was accepted earlier in the same group
IN_GROUP = -1


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


def spec_of(batch: Batch, dataset: str) -> DatasetSpec:
    """The schema version a batch is checked against: its first record's (a batch holds one
    version; a record of another is refused alone). Raises NotFound for a version this
    exchange does not know, so the whole batch is refused with ``unknown_schema_version``."""
    for rec in batch.records[:1]:
        try:
            name, version = parse_type(rec.event.type)
        except ExchangeError:
            break  # refused per record, against the latest version
        if name == dataset:
            return datasets.get(dataset, version)
    return datasets.get(dataset)


def _schema_problem(uri: str, spec: DatasetSpec, base: str | None) -> Violation | None:
    """``dataschema`` is an absolute URI (CloudEvents 1.0 §3.1.1) naming this version's
    schema; at the exchange's public ``base`` URL when the broker has one configured."""
    if base is not None:
        want = spec.dataschema_uri(base)
        if uri != want:
            return Violation(Code.BAD_DATASCHEMA, f"dataschema {uri!r} is not {want!r}",
                             "$.dataschema")
        return None
    parts = urlsplit(uri)
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:  # a port that is not a number
        port_ok = False
    if (parts.scheme != "https" or not parts.hostname or " " in parts.netloc or not port_ok
            or parts.username is not None or parts.query or parts.fragment
            or parts.path != spec.dataschema):
        return Violation(Code.BAD_DATASCHEMA, f"dataschema {uri!r} is not an absolute https URI "
                         f"of this version's schema (https://<exchange>{spec.dataschema}, no "
                         "credentials, query or fragment)", "$.dataschema")
    return None


def check(
    batch: Batch,
    *,
    node: str,
    spec: DatasetSpec,
    verifier: Verifier,
    limits: Limits,
    ctx: RuleContext,
    scorer: Callable[[DatasetSpec, Mapping[str, Any]], float] | None = None,
    references: References | None = None,
    schema_base: str | None = None,
) -> Checked:
    """Check a decoded batch from ``node`` for dataset ``spec``. Raises for batch-wide faults.

    ``schema_base`` is the exchange's public URL, which every ``dataschema`` must start with;
    None accepts any https origin (a broker with no public URL configured). ``scorer`` and
    ``references`` (quality scoring on) give each candidate its completeness and the records
    it refers to in other datasets."""
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
    try:
        return _check(batch, node, spec, verifier, limits, ctx, Hooks(scorer, references),
                      schema_base)
    except (TypeError, ValueError, OverflowError) as err:
        # a value the canonical encoding cannot take: the publisher's fault, not ours
        raise InputError(f"a record holds a value with no canonical form: {err}",
                         code=Code.MALFORMED) from None


#: (target dataset, key) of every record in another dataset a record refers to
References = Callable[[DatasetSpec, Mapping[str, Any]], list[tuple[str, str]]]

_body = msgspec.msgpack.Encoder().encode


@dataclass(frozen=True, slots=True)
class Hooks:
    """What quality scoring adds to each candidate (None: not asked for)."""

    scorer: Callable[[DatasetSpec, Mapping[str, Any]], float] | None
    references: References | None


def _check(batch: Batch, node: str, spec: DatasetSpec, verifier: Verifier, limits: Limits,
           ctx: RuleContext, hooks: Hooks, schema_base: str | None) -> Checked:
    """The records of a batch checked once, by the schema's word where it can be taken.

    RFC 8785 bytes are msgspec's own for values in its canonical domain (``canonical``), and
    a value the dataset's record type accepts is in that domain but for the numbers of a few
    known fields (``canonical.shape``). So the first pass encodes every record's data
    unchecked, and afterwards holds each record to it: one the schema accepted is in the
    domain; one it refused is scanned (``canonical._plain``), as every record used to be.
    Should any fall outside, or anything be refused batch-wide, the careful pass runs from
    the start, and its answer (or error) is the gate's: exactly what it was before."""
    shape = canonical.shape(spec.record_type)
    if shape is not None:
        try:
            checked = _check_records(batch, node, spec, verifier, limits, ctx, hooks,
                                     schema_base, shape)
        except (ExchangeError, TypeError, ValueError, OverflowError):
            checked = None
        if checked is not None:
            return checked
    careful = _check_records(batch, node, spec, verifier, limits, ctx, hooks, schema_base,
                             None)
    assert careful is not None
    return careful


def _limit_problem(data: dict[str, Any], limits: Limits) -> Violation | None:
    """Too many fields or too deep, in that order (the record's size is checked first)."""
    if len(data) > limits.max_fields:
        return Violation(Code.TOO_MANY_FIELDS, f"{len(data)} fields; the limit is "
                         f"{limits.max_fields}")
    if _too_deep(data, limits.max_depth):
        return Violation(Code.TOO_DEEP, f"nesting deeper than {limits.max_depth} levels")
    return None


def _check_records(batch: Batch, node: str, spec: DatasetSpec, verifier: Verifier,
                   limits: Limits, ctx: RuleContext, hooks: Hooks,
                   schema_base: str | None, shape: canonical.Shape | None) -> Checked | None:
    """Check every record; with a ``shape``, encode unchecked what it vouches for and return
    None when a record turns out to be outside msgspec's canonical domain."""
    records = batch.records
    fast = canonical.encode_checked
    encoders: list[Callable[[Any], bytes]] | None = None
    if shape is not None:
        if shape.numbers:  # a land parcel's area: the one value to look at (100.0 is "100")
            encoders = [fast if shape.plain(r.event.data) else canonical.encode
                        for r in records]
        else:
            encoders = [fast] * len(records)
    commitments, digests, paths = verifier.verify_batch(batch, spec.groups, encoders)
    # a record the schema accepts has at most ``shape.fields`` fields and ``shape.depth``
    # levels: within the limits, they are checked only for records it refuses
    bounded = (shape is not None and shape.depth < limits.max_depth
               and shape.fields <= limits.max_fields)

    candidates: list[Candidate] = []
    rejected: list[Violation] = []
    instants: dict[str, bool] = {}
    schemas: dict[str, Violation | None] = {}
    types: dict[str, Violation | None] = {}
    for i, rec in enumerate(records):
        ev = rec.event
        problems: list[Violation] = []
        if ev.source != node:
            problems.append(Violation(Code.SOURCE_MISMATCH,
                                      f"source {ev.source} is not the publisher {node}",
                                      "$.source"))
        if ev.type in types:  # a batch's records share one: parsed once
            wrong = types[ev.type]
        else:
            wrong = types[ev.type] = _type_problem(ev.type, spec)
        if wrong is not None:
            problems.append(wrong)
        if ev.dataschema in schemas:  # a batch's records share one: checked once
            wrong = schemas[ev.dataschema]
        else:
            wrong = schemas[ev.dataschema] = _schema_problem(ev.dataschema, spec, schema_base)
        if wrong is not None:
            problems.append(wrong)
        real = instants.get(ev.time)
        if real is None:  # a batch's records share one time: parsed once
            real = instants[ev.time] = _real_instant(ev.time)
        if not real:
            # the pattern admits 2025-13-45T25:61:61Z; a real instant is what the time means
            problems.append(Violation(Code.BAD_TIME, f"time {ev.time!r} is not a real "
                                      "instant (RFC 3339 with an offset)", "$.time"))
        data = ev.data
        encode = encoders[i] if encoders is not None else canonical.encode
        # unchecked: held to the schema's word below
        unchecked = encode is fast
        # the whole envelope counts against the record limit: attributes and data alike
        data_bytes = encode(data)
        size = len(data_bytes) + _attributes_size(ev)
        if size > limits.max_record_bytes:
            problems.append(Violation(Code.TOO_LARGE, f"the record is {size} bytes encoded; "
                                      f"the limit is {limits.max_record_bytes}", "$"))
        elif problems or not bounded:
            limit = _limit_problem(data, limits)
            if limit is not None:
                problems.append(limit)
        if problems:
            rejected.extend(p.at(i) for p in problems)
            if unchecked and not canonical._plain(data):
                return None
            continue
        result = spec.validate(data, ctx)
        if not result.ok:
            limit = _limit_problem(data, limits) if bounded else None
            if limit is not None:
                rejected.append(limit.at(i))
            else:
                rejected.extend(v.at(i) for v in result.violations)
            if unchecked and not canonical._plain(data):
                return None
            continue
        key = spec.key(result.record)
        if key != ev.subject:
            rejected.append(Violation(Code.KEY_MISMATCH, f"subject {ev.subject!r} is not the "
                                      f"record's key {key!r}", "$.subject", i))
            continue
        completeness = hooks.scorer(spec, data) if hooks.scorer else 1.0
        as_of = data.get("as_of")
        candidates.append(Candidate(
            i, key, ev.version, digests[i], hashlib.sha256(data_bytes).digest(),
            _body(StoredBody(ev, rec.salts, commitments[i], paths[i], completeness)),
            completeness, not result.notes,
            tuple(hooks.references(spec, data)) if hooks.references else (),
            as_of if type(as_of) is str else None))
    return Checked(candidates, rejected)


def _type_problem(type_: str, spec: DatasetSpec) -> Violation | None:
    try:
        dataset, version = parse_type(type_)
    except ExchangeError as err:
        return Violation(err.code, err.message, "$.type")
    if dataset != spec.name or version != spec.version:
        return Violation(Code.UNKNOWN_SCHEMA_VERSION, f"type {type_} is not {spec.type}",
                         "$.type")
    return None


def _real_instant(text: str) -> bool:
    try:
        return dt.datetime.fromisoformat(text).tzinfo is not None
    except ValueError:
        return False


def _attributes_size(ev: Any) -> int:
    """What a record's attributes add to its encoded envelope (their text, and room for the
    names and punctuation)."""
    return (len(ev.specversion) + len(ev.id) + len(ev.source) + len(ev.type) + len(ev.subject)
            + len(ev.time) + len(ev.datacontenttype) + len(ev.dataschema) + 160)


def decide(checked: Checked, current: Mapping[str, Current]) -> Decided:
    """Decide one batch alone (a group of one)."""
    return decide_group([("", checked)], {"": current})[0]


def decide_group(batches: Sequence[tuple[str, Checked]],
                 current: Mapping[str, Mapping[str, Current]]) -> list[Decided]:
    """Sort the valid records of a group of batches, in arrival order, against the store's
    current versions (``current[dataset][key]``) and against each other: accepted, duplicates
    (same version, same content: a safe retry), ``version_conflict`` (same version, other
    content) and ``stale_version`` (a lower version). Accepted records take consecutive
    offsets in the group; what they replace is recorded for a store shared with other brokers.
    """
    # per dataset, the keys accepted so far in the group: (version, content, offset)
    seen: dict[str, dict[str, tuple[int, bytes, int]]] = {}
    out: list[Decided] = []
    offset = 0
    for dataset, checked in batches:
        stored = current.get(dataset, {})
        mine = seen.setdefault(dataset, {})
        decided = Decided([], [], list(checked.rejected), offset=offset)
        accepted, replaces = decided.accepted, decided.replaces
        for c in checked.candidates:
            key = c.key
            cur: Current | None = None
            earlier = mine.get(key)
            if earlier is not None:
                version, content, in_group = earlier
            else:
                cur = stored.get(key)
                if cur is None:  # a key the exchange does not hold yet: the common case
                    replaces.append(None)
                    mine[key] = (c.version, c.content, offset)
                    accepted.append(c)
                    offset += 1
                    continue
                version, content, in_group = cur.version, cur.content, -1
            if c.version < version:
                decided.rejected.append(Violation(
                    Code.STALE_VERSION, f"version {c.version} of {key} is older than the "
                    f"stored version {version}", "$.version", c.index))
                continue
            if c.version == version:
                if c.content != content:
                    decided.rejected.append(Violation(
                        Code.VERSION_CONFLICT, f"version {c.version} of {key} is already "
                        "stored with different content", "$.version", c.index))
                elif cur is None:
                    decided.echoes.append((c.index, in_group))
                else:
                    decided.duplicates.append(Duplicate(c.index, cur.seq))
                continue
            replaces.append(IN_GROUP if cur is None else cur.seq)
            mine[key] = (c.version, c.content, offset)
            accepted.append(c)
            offset += 1
        decided.rejected.sort(key=lambda v: v.index or 0)
        out.append(decided)
    return out
