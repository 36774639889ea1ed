"""What a broker's subscribers read: each dataset's records, filtered by subject at the server.

A broker reads only the datasets its own subscribers read, and only as far as the log holds
(``LogView.heads``: no record reaches a subscriber before it is a leaf of the log). For each
dataset some subscriber of this broker reads near the head, one ``Feed`` holds the newest
records in memory (a ``Tail``) and reads on from the stream, on demand and once for all of
those subscribers: a direct get filtered to the dataset's subjects (``P.rec.<dataset>.>``)
from the last seq it holds. A reader behind what the feed holds reads the stream itself, the
same filtered way.

Completeness is exact, not hoped for: the feed knows the dataset's last seq in the log, which
is one of its records, so it holds everything up to there only once it has read that record. A
replica behind the stream's leader serves a prefix of what the leader holds (replicas apply the
stream in order), so a short answer is read on from, never taken for the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from exchange.core import ledger
from exchange.core.signing import Statement
from exchange.store.base import Tail
from exchange.store.nats.direct import PAGE, DirectGets
from exchange.store.nats.sequencer import LogView
from nats.aio.msg import Msg

__all__ = ["Feeds", "read_logged", "record_of", "seq_of"]

_entry = msgspec.msgpack.Decoder(ledger.Entry)
_stmt = msgspec.msgpack.Decoder(Statement)

#: a replica behind the leader: ask again this many times, waiting twice as long each time
#: from ``RETRY_DELAY`` (I/O timing, not the exchange's clock)
RETRIES = 8
RETRY_DELAY = 0.005


def seq_of(m: Msg) -> int:
    """A records-stream message's seq (its stream sequence - 1), read before its body."""
    assert m.headers is not None
    return int(m.headers["Nats-Sequence"]) - 1


def record_of(m: Msg) -> tuple[ledger.StoredRecord, ledger.BatchRow | None]:
    """A records-stream message as the record it holds, and its batch's statement when it is
    the batch's first record."""
    stream_seq = seq_of(m) + 1
    e = _entry.decode(m.data)
    batch = (ledger.BatchRow(stream_seq, _stmt.decode(e.statement), e.signature)
             if e.n == 0 and e.statement else None)
    return e.stored(stream_seq - 1, stream_seq - e.n), batch


async def read_logged(direct: DirectGets, stream: str, after: int, limit: int, up_to: int,
                      subject: str | None = None
                      ) -> tuple[list[ledger.StoredRecord], list[ledger.BatchRow]]:
    """Records with ``after`` < seq <= ``up_to`` (on ``subject``, a wildcard, if given), at
    most ``limit``, and the batch statements among them; for a caller that knows the log holds
    at least one: a replica behind the leader serves a prefix, or nothing, so an empty answer
    is asked again (``RETRIES`` times, waiting twice as long each time) before it is taken."""
    req: dict[str, object] = {"seq": after + 2, "batch": limit}
    if subject is not None:
        req["next_by_subj"] = subject
    delay = RETRY_DELAY
    for _ in range(RETRIES):
        rows: list[ledger.StoredRecord] = []
        batches: list[ledger.BatchRow] = []
        for m in await direct.get(stream, req, batch=True):
            if seq_of(m) > up_to:
                break  # stored, not yet in the log: not read
            r, b = record_of(m)
            rows.append(r)
            if b is not None:
                batches.append(b)
        if rows:
            return rows, batches
        await asyncio.sleep(delay)
        delay *= 2
    return [], []


@dataclass
class Feed:
    """One dataset's newest records: every record of it with seq in [``tail.since``, ``done``]
    is in ``tail``."""

    tail: Tail
    done: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Feeds:
    def __init__(self, direct: DirectGets, stream: str, prefix: str, view: LogView, *,
                 capacity: int = 10_000) -> None:
        self.direct = direct
        self.stream = stream
        self.prefix = prefix
        self.view = view
        self.capacity = capacity
        self.feeds: dict[str, Feed] = {}
        #: records read from the stream for subscribers, per dataset (what the tests and the
        #: bench check: a broker reads only the datasets its subscribers read)
        self.records_read: dict[str, int] = {}

    async def read(self, dataset: str, after: int, limit: int) -> list[ledger.StoredRecord]:
        """Records of ``dataset`` with seq > ``after``, at most ``limit``, none beyond the
        log."""
        logged = self.view.heads.get(dataset, -1)
        if limit <= 0 or after >= logged:
            return []
        feed = self.feeds.get(dataset)
        if feed is None:
            # it starts where its first reader is: a subscriber's first read is at its position
            feed = self.feeds[dataset] = Feed(Tail(after, self.capacity), after)
        if after > feed.done:
            # ahead of what the feed holds (it serves a slower reader): read for it directly
            return await self._read_behind(dataset, after, limit, logged)
        held = feed.tail.read(dataset, after, limit)
        if held is None:
            return await self._read_behind(dataset, after, limit, logged)
        if len(held) < limit and feed.done < logged:
            await self._fill(dataset, feed)
            held = feed.tail.read(dataset, after, limit)
            if held is None:  # trimmed meanwhile by readers further on
                return await self._read_behind(dataset, after, limit, logged)
        return held

    async def _fill(self, dataset: str, feed: Feed) -> None:
        """Read on from what the feed holds, one page, up to the dataset's head in the log
        (one reader at a time: the others then find the records held)."""
        async with feed.lock:
            logged = self.view.heads.get(dataset, -1)
            if feed.done >= logged:
                return
            rows, batches = await self._get(dataset, feed.done, PAGE, logged)
            if rows:
                feed.tail.add(rows, batches)
                feed.done = rows[-1].seq

    async def _read_behind(self, dataset: str, after: int, limit: int, logged: int
                           ) -> list[ledger.StoredRecord]:
        return (await self._get(dataset, after, min(limit, PAGE), logged))[0]

    async def _get(self, dataset: str, after: int, limit: int, logged: int
                   ) -> tuple[list[ledger.StoredRecord], list[ledger.BatchRow]]:
        """Records of ``dataset`` after seq ``after`` up to seq ``logged``, filtered by
        subject at the server."""
        rows, batches = await read_logged(self.direct, self.stream, after, limit, logged,
                                          f"{self.prefix}.rec.{dataset}.>")
        self.records_read[dataset] = self.records_read.get(dataset, 0) + len(rows)
        return rows, batches

    def batches(self, ids: Sequence[int]) -> dict[int, ledger.BatchRow]:
        out: dict[int, ledger.BatchRow] = {}
        for feed in self.feeds.values():
            out.update(feed.tail.batches(ids))
        return out
