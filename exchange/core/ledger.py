"""The append plan every store executes, and what the broker answers for it (pure).

A group commit is a few publishers' batches, decided together by ``gate.decide_group``. This
module turns that decision into the one plan both stores carry out, so neither builds rows of its
own (sqlite turns the plan into SQL rows, NATS into one atomic batch of stream messages):

- ``Entry``: each accepted record as every store keeps it, in group order (its body, content hash,
  digest, the batch it came in, its references to records the exchange does not hold);
- the transparency log's leaves (``Plan.leaves``), once the store knows the group's first seq;
- dead letters and the quality counters saved in the same step;
- after the append, the receipts (``receipts``) with every duplicate resolved to its seq, and the
  reply for a batch some of whose records were refused (``outcome``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from exchange.core import tlog
from exchange.core.errors import Code, ConflictError, ExchangeError, InvalidRecord, Violation
from exchange.core.gate import Decided, StoredBody
from exchange.core.signing import Batch, Statement
from exchange.core.wire import Duplicate, Receipt, SignedReceipt

__all__ = [
    "Append",
    "BatchRow",
    "DeadLetter",
    "Entry",
    "Outcome",
    "Plan",
    "QualityRow",
    "Reference",
    "StoredBody",
    "StoredRecord",
    "dead_letters",
    "outcome",
    "plan",
    "receipts",
    "refused",
]

#: (target dataset, target key, referring dataset, referring key)
Reference = tuple[str, str, str, str]
#: (dataset, publisher, MessagePack of exchange.core.quality.Counters): totals, last one wins
QualityRow = tuple[str, str, bytes]

_enc = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()


class StoredRecord(msgspec.Struct, frozen=True):
    """One stored record's columns. Only atomic values: msgspec leaves such a Struct out of the
    cycle collector, so the broker's in-memory tail and caches add nothing to its pauses."""

    seq: int
    dataset: str
    key: str
    version: int
    batch_id: int
    index: int
    accepted_at: float
    digest: bytes
    body: bytes  # StoredBody, MessagePack


class BatchRow(msgspec.Struct, frozen=True):
    """A stored batch: its id and the publisher's statement and signature."""

    id: int
    statement: Statement
    signature: bytes


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A refused record (or a refused batch, index None), kept for its publisher."""

    id: int = 0
    publisher: str
    dataset: str
    received_at: float
    index: int | None
    code: str
    path: str
    message: str
    #: the refused record as received (JSON), or a prefix of an undecodable body
    record: bytes = b""


class Entry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One accepted record as every store keeps it (on NATS, the stream message itself).

    Out of the cycle collector's sight (``gc=False``: it holds no reference back to anything
    that could hold it): a group commit's thousands of entries live across the commit's await,
    and the collector would otherwise scan them on every pass meanwhile."""

    dataset: str
    key: str
    version: int
    #: position among its batch's accepted records: the batch's first record is ``n == 0``
    n: int
    index: int
    accepted_at: float
    digest: bytes
    #: SHA-256 of the canonical data alone: what "same content" compares
    content: bytes
    publisher: str
    batch_root: bytes
    body: bytes  # StoredBody, MessagePack
    #: on the batch's first record (``n == 0``): the statement (MessagePack) and its signature
    statement: bytes = b""
    signature: bytes = b""
    #: (dataset, key) of records this one refers to that the exchange did not hold when it was
    #: accepted; unresolved while the target stays missing
    refs: tuple[tuple[str, str], ...] = ()

    def stored(self, seq: int, batch_id: int) -> StoredRecord:
        return StoredRecord(seq, self.dataset, self.key, self.version, batch_id, self.index,
                            self.accepted_at, self.digest, self.body)


@dataclass(frozen=True, slots=True)
class Append:
    """One batch's part of a group commit: what the gate decided, and what goes with it."""

    publisher: str
    dataset: str
    batch: Batch
    decided: Decided
    dead: Sequence[DeadLetter] = ()
    #: references of the accepted records to records the exchange does not hold
    unresolved: Sequence[Reference] = ()


@dataclass(frozen=True, slots=True)
class PlannedBatch:
    """A batch with accepted records: where its entries are in the plan."""

    publisher: str
    dataset: str
    statement: Statement
    signature: bytes
    #: offset of its first entry in the group, and how many it has
    offset: int
    count: int


@dataclass
class Plan:
    """One group commit, as every store executes it: all of it stored, or none."""

    now: float
    #: the accepted records in group order: the group's first seq + i is entry i's seq
    entries: list[Entry] = field(default_factory=list)
    #: per entry, the seq of the stored version it replaces as the decision saw it (None: a new
    #: key; ``gate.IN_GROUP``: an entry earlier in the group). A store shared by several brokers
    #: makes the append conditional on exactly these, at each key's first entry (``first``).
    replaces: list[int | None] = field(default_factory=list)
    #: per input batch (in group order): its place in ``entries``, or None when nothing of it was
    #: accepted
    batches: list[PlannedBatch | None] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    quality: list[QualityRow] = field(default_factory=list)

    def first(self) -> list[bool]:
        """Per entry, whether it is its key's first in the group (later ones ride on it)."""
        seen: set[tuple[str, str]] = set()
        out = []
        for e in self.entries:
            pair = (e.dataset, e.key)
            out.append(pair not in seen)
            seen.add(pair)
        return out

    def leaves(self, first_seq: int) -> Iterator[bytes]:
        """The transparency log's leaves of the entries, the group's first seq given: the log
        grows in the same step as the records, so a record is stored iff it is logged."""
        return tlog.entry_leaves(first_seq, ((e.dataset, e.publisher, e.digest, e.batch_root)
                                             for e in self.entries), tlog.micros(self.now))

    def references(self) -> dict[tuple[str, str], list[Reference]]:
        """Per accepted (dataset, key), its references to missing records: they replace what the
        key's older versions referred to (the last entry of a key wins)."""
        out: dict[tuple[str, str], list[Reference]] = {}
        for e in self.entries:
            out[(e.dataset, e.key)] = [(t, tk, e.dataset, e.key) for t, tk in e.refs]
        return out

    def batch_rows(self, batch_ids: Sequence[int]) -> list[BatchRow]:
        """The stored batches, given the id each planned batch got (``batches`` order)."""
        return [BatchRow(bid, b.statement, b.signature)
                for b, bid in zip(self.batches, batch_ids, strict=True) if b is not None]


def plan(group: Sequence[Append], now: float, quality: Sequence[QualityRow] = ()) -> Plan:
    """The plan for a group of decided batches (in arrival order)."""
    out = Plan(now, quality=_last_per_pair(quality))
    entries = out.entries
    for a in group:
        out.dead.extend(a.dead)
        accepted = a.decided.accepted
        if not accepted:
            out.batches.append(None)
            continue
        st = a.batch.statement
        out.batches.append(PlannedBatch(a.publisher, a.dataset, st, a.batch.signature,
                                        len(entries), len(accepted)))
        out.replaces.extend(a.decided.replaces)
        refs: dict[str, list[tuple[str, str]]] = {}
        for target, target_key, _, key in a.unresolved:
            refs.setdefault(key, []).append((target, target_key))
        dataset, publisher, root = a.dataset, a.publisher, st.root
        for n, c in enumerate(accepted):
            found = refs.get(c.key)
            entries.append(Entry(
                dataset, c.key, c.version, n, c.index, now, c.digest, c.content, publisher,
                root, c.body, _enc.encode(st) if n == 0 else b"",
                a.batch.signature if n == 0 else b"", tuple(found) if found else ()))
    return out


def _last_per_pair(rows: Sequence[QualityRow]) -> list[QualityRow]:
    """Counters are totals: of several rows for one (dataset, publisher), the last wins."""
    return list({(r[0], r[1]): r for r in rows}.values())


# -- what the broker answers ---------------------------------------------------------------------


def receipts(broker: str, group: Sequence[Append], first_seq: int, log_size: int,
             log_root: bytes, time: str) -> list[Receipt]:
    """Each batch's receipt once the group is stored from ``first_seq`` on: its seq range, and
    every duplicate resolved to its seq (a duplicate of a record accepted earlier in the same
    group points at that record)."""
    out = []
    for a in group:
        d = a.decided
        first = first_seq + d.offset
        duplicates = sorted([*d.duplicates, *(Duplicate(i, first_seq + off)
                                              for i, off in d.echoes)],
                            key=lambda x: x.index)
        out.append(Receipt(
            broker=broker, publisher=a.publisher, dataset=a.dataset,
            batch_root=a.batch.statement.root,
            first_seq=first if d.accepted else 0,
            last_seq=first + len(d.accepted) - 1 if d.accepted else -1,
            accepted=len(d.accepted), duplicates=duplicates, rejected=d.rejected, time=time,
            log_size=log_size, log_root=log_root))
    return out


@dataclass(frozen=True)
class Outcome:
    """What a publish produced: the signed receipt, and the problem when something was refused."""

    receipt: SignedReceipt
    status: int
    problem: dict[str, Any] | None

    @property
    def last_seq(self) -> int:
        return self.receipt.receipt.last_seq


def outcome(signed: SignedReceipt) -> Outcome:
    """The reply for one batch: 200 with its receipt when nothing was refused; otherwise a
    problem whose ``receipt`` covers the rest, a 409 when every refusal is a version conflict
    (a retry or a race: the catalogue's ``ConflictError`` codes), else a 422."""
    r = signed.receipt
    if not r.rejected:
        return Outcome(signed, 200, None)
    codes = {v.code for v in r.rejected}
    refused_n = len({v.index for v in r.rejected})
    total = r.accepted + len(r.duplicates) + refused_n
    klass = ConflictError if all(v.conflict for v in r.rejected) else InvalidRecord
    body = klass(f"{refused_n} of {total} records refused ({', '.join(sorted(codes))}); "
                 "the receipt covers the rest", violations=list(r.rejected)).problem()
    code = codes.pop() if len(codes) == 1 else Code.RECORDS_REJECTED.value
    body["code"] = code
    body["type"] = f"https://exchange.gov.vn/problems/{code}"
    body["receipt"] = msgspec.to_builtins(signed)
    return Outcome(signed, klass.status, body)


def dead_letters(publisher: str, dataset: str, batch: Batch, rejected: Sequence[Violation],
                 now: float) -> list[DeadLetter]:
    """A dead letter for every refused record of a stored batch, with the record as received."""
    return [DeadLetter(publisher=publisher, dataset=dataset, received_at=now, index=v.index,
                       code=v.code, path=v.path, message=v.message,
                       record=_json.encode(batch.records[v.index or 0]))
            for v in rejected]


def bounded(dead: Sequence[DeadLetter], room: int, max_record_bytes: int
            ) -> tuple[list[DeadLetter], int]:
    """The dead letters a publisher's quota has ``room`` for, each record cut to
    ``max_record_bytes``; and how many were not kept (still counted by the quality counters,
    and said in the reply)."""
    kept = []
    for d in dead[:max(0, room)]:
        if len(d.record) > max_record_bytes:
            d = msgspec.structs.replace(
                d, record=d.record[:max_record_bytes],
                message=f"{d.message} (record cut to its first {max_record_bytes} bytes)")
        kept.append(d)
    return kept, len(dead) - len(kept)


def refused(publisher: str, dataset: str, err: ExchangeError, batch: Batch | None, body: bytes,
            now: float) -> list[DeadLetter]:
    """The dead letters of a batch refused whole: each of its records, or the body's first
    4 KiB when it did not decode."""
    if batch is None:
        return [DeadLetter(publisher=publisher, dataset=dataset, received_at=now, index=None,
                           code=err.code, path="$", message=err.message, record=body[:4096])]
    return [DeadLetter(publisher=publisher, dataset=dataset, received_at=now, index=i,
                       code=err.code, path="$", message=err.message, record=_json.encode(r))
            for i, r in enumerate(batch.records)]
