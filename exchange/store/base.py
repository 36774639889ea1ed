"""The store interface every backend implements (sqlite now; NATS JetStream behind the same).

A store keeps accepted records in one global order (``seq``, from 0), the current version of every
key, publishers' batch statements, dead letters, and durable subscription positions. The broker
serialises appends; a store makes each append atomic: all of a batch's records and dead letters,
or none.

``append`` is conditional on what the caller's last ``current`` call returned for the same keys.
A store that several broker processes append to at once (NATS) checks that in the append itself
and raises ``StaleRead`` when another process changed one of those keys in between; the caller then
reads ``current`` again and decides again. The sqlite store has one writer and never raises it.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec

from exchange.core import tlog
from exchange.core.envelope import Envelope
from exchange.core.gate import Candidate, Current
from exchange.core.signing import Batch, Statement

__all__ = ["Append", "DeadLetter", "GroupAppends", "StaleRead", "Store", "StoredBody",
           "StoredRecord", "SubscriptionRow", "Tail"]


class StaleRead(Exception):
    """Another broker changed a key between ``current`` and ``append``: nothing was stored.

    Internal to the broker, never an ``ExchangeError``: the publisher reads and decides again,
    and only gives up as ``contended`` (503, retry)."""


#: (target dataset, target key, referring dataset, referring key)
Reference = tuple[str, str, str, str]
#: (dataset, publisher, MessagePack of exchange.quality.Counters)
QualityRow = tuple[str, str, bytes]


class StoredBody(msgspec.Struct, frozen=True, array_like=True):
    """What the store keeps per record, besides its indexed columns (MessagePack)."""

    event: Envelope
    salts: dict[str, bytes]
    commitments: dict[str, bytes]
    path: list[bytes]
    completeness: float = 1.0


@dataclass(frozen=True, slots=True)
class Append:
    """One batch's part of a (group) append: its accepted records and everything stored with
    them in the same transaction."""

    publisher: str
    dataset: str
    batch: Batch
    accepted: Sequence[Candidate]
    dead: Sequence[DeadLetter]
    unresolved: Sequence[Reference] = ()
    quality: Sequence[QualityRow] = ()
    #: per accepted record, the seq of the version it replaces as the decision saw it
    #: (``gate.Decided.replaces``); empty: the store uses what it read last
    replaces: Sequence[int | None] = ()


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


@dataclass(frozen=True, slots=True)
class SubscriptionRow:
    node: str
    dataset: str
    name: str
    acked: int
    created_at: float


class BatchRow(msgspec.Struct, frozen=True):
    id: int
    statement: Statement
    signature: bytes


class Tail:
    """The newest committed records of each dataset and their batches, in memory.

    Live subscribers read just behind the head: serving them from here spares a query that
    would wait behind the next group commit on the store's connection, and the decoding of
    bodies the store has just encoded. Holds at most ``capacity`` records per dataset; every
    record of a dataset with seq >= ``since(dataset)`` is here, so a read from there on is
    complete without the store.
    """

    def __init__(self, head: int, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._start = head + 1  # nothing older than the store's head at open is held
        self._records: dict[str, list[StoredRecord]] = {}
        self._since: dict[str, int] = {}
        self._batches: dict[int, BatchRow] = {}

    def since(self, dataset: str) -> int:
        return self._since.get(dataset, self._start)

    def add(self, records: Sequence[StoredRecord], batches: Sequence[BatchRow]) -> None:
        """Records just committed, in seq order (called after the commit, never before)."""
        for r in records:
            held = self._records.get(r.dataset)
            if held is None:
                held = self._records[r.dataset] = []
            held.append(r)
        for ds, held in self._records.items():
            if len(held) > self.capacity:
                drop = len(held) - self.capacity // 2  # trim in halves: amortised O(1)
                self._since[ds] = held[drop - 1].seq + 1
                del held[:drop]
        for b in batches:
            self._batches[b.id] = b
        if len(self._batches) > self.capacity:
            for bid in list(self._batches)[:len(self._batches) - self.capacity // 2]:
                del self._batches[bid]

    def read(self, dataset: str, after: int, limit: int) -> list[StoredRecord] | None:
        """Records of ``dataset`` with seq > ``after``, or None if the tail cannot tell."""
        if after + 1 < self.since(dataset):
            return None
        held = self._records.get(dataset, [])
        i = bisect.bisect_right(held, after, key=lambda r: r.seq)
        return held[i:i + limit]

    def batches(self, ids: Sequence[int]) -> dict[int, BatchRow]:
        return {i: b for i in ids if (b := self._batches.get(i)) is not None}


class GroupAppends:
    """``append`` for a store that appends in groups: a group of one."""

    #: a group is one atomic batch of bounded size (NATS): at most ``max_batch_records``
    atomic_batch_bounded = False

    async def append_group(self, group: Sequence[Append], now: float
                           ) -> tuple[list[int], int]:
        raise NotImplementedError

    async def append(self, publisher: str, dataset: str, batch: Batch,
                     accepted: Sequence[Candidate], dead: Sequence[DeadLetter],
                     now: float, *, unresolved: Sequence[Reference] = (),
                     quality: Sequence[QualityRow] = ()) -> tuple[int, int]:
        (batch_id,), first = await self.append_group(
            [Append(publisher, dataset, batch, accepted, dead, unresolved, quality)], now)
        return batch_id, first


class Store(Protocol):
    atomic_batch_bounded: bool

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def head(self, dataset: str | None = None) -> int:
        """Highest seq stored (of ``dataset``, or overall); -1 when none."""
        ...

    async def current(self, dataset: str, keys: Sequence[str]) -> dict[str, Current]: ...

    async def append(self, publisher: str, dataset: str, batch: Batch,
                     accepted: Sequence[Candidate], dead: Sequence[DeadLetter],
                     now: float, *, unresolved: Sequence[Reference] = (),
                     quality: Sequence[QualityRow] = ()) -> tuple[int, int]:
        """Store accepted records and dead letters atomically; return (batch id, first seq).

        In the same step: the accepted keys' old references are replaced by ``unresolved``,
        references waiting for the accepted keys are resolved, and ``quality`` rows are saved.
        """
        ...

    async def append_group(self, group: Sequence[Append], now: float
                           ) -> tuple[list[int], int]:
        """Several batches as one ``append`` (group commit), their records in group order:
        each batch's id (0 for one with nothing accepted) and the group's first seq."""
        ...

    async def add_dead_letters(self, dead: Sequence[DeadLetter], *,
                               quality: Sequence[QualityRow] = ()) -> None: ...

    async def save_quality(self, rows: Sequence[QualityRow]) -> None: ...

    async def load_quality(self) -> list[QualityRow]:
        """The counters this broker continues from (its own, from before a restart)."""
        ...

    async def other_quality(self) -> list[QualityRow]:
        """Counters of other broker processes sharing the store; the totals add them."""
        ...

    async def unresolved_counts(self) -> dict[str, int]:
        """Unresolved references per referring dataset."""
        ...

    async def unresolved_sample(self, dataset: str, limit: int = 20) -> list[Reference]: ...

    async def read(self, dataset: str, after: int, limit: int) -> list[StoredRecord]: ...

    async def read_range(self, start: int, end: int) -> list[StoredRecord]:
        """Records with start <= seq < end, every dataset, in seq order."""
        ...

    async def seq_before_time(self, dataset: str, t: float) -> int:
        """Highest seq of ``dataset`` accepted before ``t`` (-1 if none)."""
        ...

    async def batches(self, ids: Sequence[int]) -> dict[int, BatchRow]: ...

    async def subscription(self, node: str, dataset: str, name: str) -> SubscriptionRow | None: ...

    async def create_subscription(self, node: str, dataset: str, name: str, acked: int,
                                  now: float) -> SubscriptionRow: ...

    async def ack(self, node: str, dataset: str, name: str, seq: int) -> None: ...

    async def subscriptions(self) -> list[SubscriptionRow]: ...

    async def count_after(self, dataset: str, seq: int) -> int: ...

    async def dead_letters(self, publisher: str, after: int, limit: int) -> list[DeadLetter]: ...

    # transparency log: the store grows the RFC 6962 tree in the same transaction as the records

    def log_state(self) -> tuple[int, bytes]:
        """Size and root of the committed log."""
        ...

    async def log_nodes(self, coords: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Stored perfect-subtree hashes at (level, index)."""
        ...

    async def add_checkpoint(self, cp: tlog.Checkpoint, now: float) -> None: ...

    async def checkpoints(self, since_size: int = 0) -> list[tlog.Checkpoint]: ...

    async def latest_checkpoint(self) -> tlog.Checkpoint | None: ...
