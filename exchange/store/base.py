"""The store interface every backend implements: sqlite, and NATS JetStream behind the same.

A store keeps accepted records in one global order (``seq``, from 0), the current version of every
key, publishers' batch statements, dead letters, and durable subscription positions. It executes
the core's append plan (``exchange.core.ledger.Plan``): every record, log leaf, dead letter and
quality row of a group commit, atomically, or none of them. The plan is the only place rows are
built; a store only turns them into its own statements or messages.

``append`` is conditional on what the plan's decision saw (``Plan.replaces``). A store that several
broker processes append to at once (NATS) checks that in the append itself and raises
``StaleRead`` when another process changed one of those keys in between; the broker then reads
``current`` again and decides again. The sqlite store has one writer and never raises it.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec

from exchange.core import tlog
from exchange.core.gate import Current
from exchange.core.ledger import (
    BatchRow,
    DeadLetter,
    Plan,
    QualityRow,
    Reference,
    StoredRecord,
)

__all__ = ["AccessRow", "Appended", "StaleRead", "Store", "SubscriptionRow", "Tail"]


class AccessRow(msgspec.Struct, frozen=True, kw_only=True):
    """Who received a dataset's records ``first_seq..last_seq`` (those of them at least
    ``min_completeness`` complete): a subscription's ack, or one lookup. One row per ack, not
    per record; with the records' keys it answers "who received my record"."""

    dataset: str
    node: str
    #: the subscription's name; "" for a lookup
    name: str
    kind: str  # "delivery" or "lookup"
    agreement: str
    purpose: str
    groups: tuple[str, ...]
    first_seq: int
    last_seq: int
    at: float
    min_completeness: float = 0.0


class StaleRead(Exception):
    """Another broker changed a key between ``current`` and ``append``: nothing was stored.

    Internal to the broker, never an ``ExchangeError``: the publisher reads and decides again,
    and only gives up as ``contended`` (503, retry)."""


@dataclass(frozen=True, slots=True)
class Appended:
    """Where a plan landed: the id of each planned batch (0 for one with nothing accepted) and
    the seq of the group's first record."""

    batch_ids: list[int]
    first_seq: int


@dataclass(frozen=True, slots=True)
class SubscriptionRow:
    node: str
    dataset: str
    name: str
    acked: int
    created_at: float


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

    def held(self, dataset: str) -> int:
        """How many records of ``dataset`` are held (at most ``capacity``)."""
        return len(self._records.get(dataset, ()))

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


class Store(Protocol):
    atomic_batch_bounded: bool

    @property
    def sequencing(self) -> bool:
        """Whether this broker process grows the log and signs checkpoints on its timer:
        sqlite's one broker always; on NATS, the one holding the sequencer lease."""
        ...

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def head(self, dataset: str | None = None) -> int:
        """Highest seq stored (of ``dataset``, or overall); -1 when none."""
        ...

    async def current(self, dataset: str, keys: Sequence[str]) -> dict[str, Current]: ...

    async def sync(self) -> None:
        """Until reads cover everything stored when called, other broker processes' appends
        included (NATS: until the log holds the stream's last record); sqlite: at once."""
        ...

    async def append(self, plan: Plan) -> Appended:
        """Store a group commit atomically: its records in plan order from the next seq on, their
        log leaves, current versions, batch statements, references, dead letters and quality
        rows. A key's older references are replaced by the plan's; references waiting for the
        accepted keys are resolved."""
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

    async def versions(self, dataset: str, key: str) -> list[StoredRecord]:
        """Every stored version of one key, in seq order."""
        ...

    async def add_access(self, rows: Sequence[AccessRow]) -> None:
        """Record deliveries (acks) and lookups, durably."""
        ...

    async def access(self, dataset: str, seqs: Sequence[int]) -> list[AccessRow]:
        """The access rows of ``dataset`` whose range holds any of ``seqs``."""
        ...

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

    async def ack(self, node: str, dataset: str, name: str, seq: int, *,
                  access: AccessRow | None = None) -> None:
        """Move a subscription's durable position; with ``access``, record who received the
        records acked (in the same transaction where the store has them)."""
        ...

    async def subscriptions(self) -> list[SubscriptionRow]: ...

    async def count_after(self, dataset: str, seq: int) -> int: ...

    async def dead_letters(self, publisher: str, after: int, limit: int) -> list[DeadLetter]: ...

    async def dead_letter_count(self, publisher: str) -> int:
        """How many dead letters ``publisher`` has stored (its quota's use)."""
        ...

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
