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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec

from exchange import tlog
from exchange.envelope import Envelope
from exchange.errors import ConflictError
from exchange.gate import Candidate, Current
from exchange.signing import Batch, Statement

__all__ = ["Append", "DeadLetter", "StaleRead", "Store", "StoredBody", "StoredRecord",
           "SubscriptionRow"]


class StaleRead(ConflictError):
    """Another broker changed a key between ``current`` and ``append``: nothing was stored."""

    code = "stale_read"


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


@dataclass(frozen=True, slots=True)
class StoredRecord:
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


@dataclass(frozen=True, slots=True)
class BatchRow:
    id: int
    statement: Statement
    signature: bytes


class Store(Protocol):
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
