"""One live subscription, as a protocol object: client frames and stored records in, frames out.

Sans-IO, like h11's ``Connection``: a ``Feed`` never touches a socket, a store or a clock. The
broker's WebSocket pump feeds it what the client sent (``receive``), what the store read
(``frame``) and the time (``tick``), and sends what it returns; everything that decides what a
subscription may send, and in what form, lives here:

- **credits**: the client grants credits; each record sent spends one. The broker never sends
  without credit, so a client that grants nothing costs the broker nothing but the connection;
- **acks**: cumulative, ``ack(s)`` means every record up to ``s`` is processed; the pump stores
  the position a moving ack returns;
- **redelivery**: records sent but unacked for ``ack_timeout`` are sent again (go-back-N from the
  last ack), flagged ``redelivered``; they spend credit again, which the client grants as it
  reads every frame;
- **frames**: at most the credit, at most ``max_frame_records``, cut at a batch boundary where a
  read was full, so a batch the frame holds whole travels without audit paths;
- **projection**: each record as the agreement may see it (``disclosure.project``), encoded
  once per (seq, grant, encoding, paths) for every subscriber with the same agreement.
"""

from __future__ import annotations

import collections
import datetime as dt
import re
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from exchange.core import datasets, disclosure
from exchange.core.envelope import parse_type
from exchange.core.errors import Code, InputError
from exchange.core.ledger import BatchRow, StoredBody, StoredRecord
from exchange.core.wire import (
    Ack as AckFrame,
)
from exchange.core.wire import (
    BatchRef,
    ClientFrame,
    Credit,
    DeliveredRecord,
    Hello,
)

__all__ = ["ConsumerState", "Feed", "FrameCache", "Request", "encode_record", "parse_request",
           "parse_start"]

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_client_json = msgspec.json.Decoder(ClientFrame)
_client_msgpack = msgspec.msgpack.Decoder(ClientFrame)
_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()

#: how many encoded records a broker keeps for subscribers reading the same records
ENCODED_CACHE = 20_000
#: how many batch statements a broker keeps for frames
BATCH_CACHE = 10_000


# -- the request ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What a subscriber asked for in its query string."""

    name: str
    binary: bool
    #: every record with its audit path, even when its whole batch is in the frame (for a
    #: subscriber that keeps single records as evidence)
    always_paths: bool
    start: tuple[str, Any]


def parse_request(query: Mapping[str, str]) -> Request:
    """``name``, ``encoding`` (json | msgpack), ``paths`` (auto | always), ``start``."""
    name = query.get("name", "default")
    if not _NAME.match(name):
        raise InputError("subscription name must be 1-64 of A-Z a-z 0-9 _ . -",
                         code=Code.BAD_SUBSCRIPTION_NAME)
    encoding = query.get("encoding", "json")
    if encoding not in ("json", "msgpack"):
        raise InputError("encoding must be json or msgpack", code=Code.BAD_ENCODING)
    paths = query.get("paths", "auto")
    if paths not in ("auto", "always"):
        raise InputError("paths must be auto or always", code=Code.BAD_PATHS)
    return Request(name, encoding == "msgpack", paths == "always",
                   parse_start(query.get("start", "earliest")))


def parse_start(start: str) -> tuple[str, Any]:
    """``earliest`` | ``latest`` | ``seq:N`` (first seq to deliver) | ``time:RFC3339``."""
    if start in ("earliest", "latest"):
        return start, None
    kind, _, value = start.partition(":")
    try:
        if kind == "seq":
            n = int(value)
            if not 0 <= n < 2**63:  # a seq a store can hold: beyond is no start, not a 500
                raise ValueError(n)
            return kind, n
        if kind == "time":
            t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            if t.tzinfo is None:
                raise ValueError("naive time")
            return kind, t.timestamp()
    except ValueError:
        pass
    raise InputError(f"start {start!r} is not earliest, latest, seq:N or time:RFC3339",
                     code=Code.BAD_START)


# -- credits, acks, redelivery ---------------------------------------------------------------------


@dataclass
class ConsumerState:
    """Credits, the cumulative ack and what is in flight: the state machine of one connection."""

    acked: int
    """Highest seq acked (cumulative); the durable position."""
    ack_timeout: float
    credits: int = 0
    sent_upto: int = -1
    """Highest seq sent on this connection; reads continue after it."""
    inflight: deque[tuple[int, float]] = field(default_factory=deque)
    """(seq, sent_at) of records sent and not yet acked, in seq order."""
    redeliveries: int = 0
    max_sent: int = -1
    """Highest seq ever sent on this connection (acks up to it are legitimate after a rewind)."""
    progress_at: float | None = None
    """When an ack last moved the position (monotonic seconds): a subscriber that keeps acking
    is working through its window, however long the window takes it."""

    def __post_init__(self) -> None:
        self.sent_upto = max(self.sent_upto, self.acked)
        self.max_sent = max(self.max_sent, self.sent_upto)

    def grant(self, n: int) -> None:
        self.credits += n

    def wants(self, limit: int) -> int:
        """How many records may be sent now (at most ``limit``)."""
        return max(0, min(self.credits, limit))

    def sent(self, seqs: list[int], now: float) -> None:
        """Record that these seqs (ascending) went out.

        Seqs at or below ``acked`` were acked while the frame was being read and sent (a late
        ack for records sent before a rewind): they are done already, and spend nothing.
        """
        seqs = [s for s in seqs if s > self.acked]
        if not seqs:
            return
        if seqs[0] <= self.sent_upto or len(seqs) > self.credits:
            raise AssertionError("sent out of order or without credit")
        self.credits -= len(seqs)
        self.inflight.extend((s, now) for s in seqs)
        self.sent_upto = seqs[-1]
        self.max_sent = max(self.max_sent, self.sent_upto)

    def skip_to(self, seq: int) -> None:
        """Records up to ``seq`` were read and passed over (not for this subscriber): continue
        after them without spending credit."""
        self.sent_upto = max(self.sent_upto, seq)

    def ack(self, seq: int, now: float | None = None) -> bool:
        """Apply a cumulative ack received at ``now``. Returns True when the durable position
        moved (and then the ack timeout counts again from ``now``)."""
        if seq > self.max_sent:
            raise InputError(f"ack {seq} is beyond the last record sent ({self.max_sent})",
                             code=Code.BAD_ACK)
        if seq <= self.acked:
            return False
        self.acked = seq
        if now is not None:
            self.progress_at = now
        # an ack for records sent before a rewind: do not send them a second time
        self.sent_upto = max(self.sent_upto, seq)
        while self.inflight and self.inflight[0][0] <= seq:
            self.inflight.popleft()
        return True

    def overdue(self, now: float) -> bool:
        """Whether the subscriber has stopped: records are in flight and neither the oldest
        was sent nor an ack moved the position within the ack timeout.

        Not "the oldest record is older than the timeout": a subscriber granted a wide window
        (5,000 credits) that verifies more slowly than the broker sends holds records for
        longer than the timeout while acking all along; sending them again would only add
        duplicates to its backlog, and the next timeout more (a redelivery storm: latencies of
        one or two ack timeouts, issue 16)."""
        deadline = self.next_deadline()
        return deadline is not None and now >= deadline

    def rewind(self) -> int:
        """Go back to the last ack so the unacked records are sent again; returns how many.

        No credit comes back: the client did receive those frames (one TCP stream) and grants
        credit again for every frame it reads, redelivered ones included.
        """
        n = len(self.inflight)
        self.inflight.clear()
        self.sent_upto = self.acked
        self.redeliveries += n
        return n

    def next_deadline(self) -> float | None:
        """When the records in flight become overdue, if any: the ack timeout after the later
        of the oldest one's sending and the last ack that moved the position."""
        if not self.inflight:
            return None
        since = self.inflight[0][1]
        if self.progress_at is not None and self.progress_at > since:
            since = self.progress_at
        return since + self.ack_timeout


# -- the one projection and its encodings ------------------------------------------------------


class _BodyParts(msgspec.Struct, frozen=True, array_like=True):
    """``StoredBody`` with its parts left as MessagePack: decoding it builds no record."""

    event: msgspec.Raw
    salts: msgspec.Raw
    commitments: dict[str, msgspec.Raw]
    path: msgspec.Raw
    completeness: float = 1.0


class _Spliced(msgspec.Struct, frozen=True, kw_only=True):
    """``wire.DeliveredRecord`` of a fully granted record, its parts spliced from the store
    (the gate stores one salt per committed group, so the stored salts are all disclosed)."""

    seq: int
    event: msgspec.Raw
    salts: msgspec.Raw
    withheld: dict[str, bytes] = {}
    batch: int
    index: int
    path: msgspec.Raw
    accepted_at: float
    redelivered: bool = False


class _Frame(msgspec.Struct, frozen=True, tag="records"):
    """``wire.Records`` as the broker sends it: records already encoded (``msgspec.Raw``)."""

    batches: list[BatchRef]
    records: list[msgspec.Raw]
    head: int = 0


_body_parts = msgspec.msgpack.Decoder(_BodyParts)
_body = msgspec.msgpack.Decoder(StoredBody)
_NO_PATH = msgspec.Raw(_msgpack.encode([]))


def encode_record(r: StoredRecord, grant: frozenset[str], redelivered: bool, binary: bool,
                  min_completeness: float = 0.0, *, with_path: bool = True
                  ) -> msgspec.Raw | None:
    """One stored record as its agreement may see it, encoded for the wire (None: it is below
    the agreement's completeness). Without its audit path when its whole batch travels along.

    A fully granted record over MessagePack splices the stored bytes (nothing decoded); any
    other goes through ``disclosure.project``, the one projection."""
    parts = _body_parts.decode(r.body)
    if parts.completeness < min_completeness:
        return None
    if binary and grant >= parts.commitments.keys():
        return msgspec.Raw(_msgpack.encode(_Spliced(
            seq=r.seq, event=parts.event, salts=parts.salts, batch=r.batch_id, index=r.index,
            path=parts.path if with_path else _NO_PATH, accepted_at=r.accepted_at,
            redelivered=redelivered)))
    return msgspec.Raw((_msgpack if binary else _json).encode(
        projected(r, grant, redelivered, with_path)))


def projected(r: StoredRecord, grant: Collection[str], redelivered: bool = False,
              with_path: bool = True) -> DeliveredRecord:
    """The record as this agreement may see it: granted groups with their salts, the others as
    the bare commitments the publisher signed (the groups of the record's own schema)."""
    body = _body.decode(r.body)
    spec = datasets.get(*parse_type(body.event.type))
    data, salts, withheld = disclosure.project(body.event.data, spec.groups, body.salts,
                                               body.commitments, grant)
    event = (body.event if len(data) == len(body.event.data)
             else msgspec.structs.replace(body.event, data=data))
    return DeliveredRecord(seq=r.seq, event=event, salts=salts, withheld=withheld,
                           batch=r.batch_id, index=r.index,
                           path=body.path if with_path else [],
                           accepted_at=r.accepted_at, redelivered=redelivered)


class FrameCache:
    """What every feed of one broker shares: batch statements, and each record as encoded for a
    grant, so sixteen subscribers with the same agreement cost one projection and one encoding,
    not sixteen. Keys hold atomic values only: the cycle collector never scans them."""

    def __init__(self, encoded: int = ENCODED_CACHE, batches: int = BATCH_CACHE) -> None:
        self.encoded: dict[tuple[int, str, bool, bool], msgspec.Raw] = {}
        self.batches: dict[int, BatchRow] = {}
        self._max_encoded = encoded
        self._max_batches = batches

    def add_batches(self, rows: Mapping[int, BatchRow]) -> None:
        if len(self.batches) > self._max_batches:
            self.batches.clear()
        self.batches.update(rows)

    def keep(self, key: tuple[int, str, bool, bool], raw: msgspec.Raw) -> None:
        self.encoded[key] = raw
        if len(self.encoded) > self._max_encoded:
            del self.encoded[next(iter(self.encoded))]  # oldest first: dicts keep order


# -- the feed ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """A frame to send, and what it carries."""

    data: bytes
    binary: bool
    #: acceptance times of the records it delivers live: first sent, and accepted while the
    #: subscription was connected (publish → deliver latency; replays and redeliveries are
    #: not the publisher's doing)
    accepted_at: list[float]
    #: how many records it carries, live or not
    count: int = 0


class Feed:
    """One live subscription on one connection (see the module docstring)."""

    def __init__(self, *, dataset: str, acked: int, ack_timeout: float, granted: Sequence[str],
                 min_completeness: float = 0.0, binary: bool = False,
                 always_paths: bool = False, max_frame_records: int = 1000,
                 cache: FrameCache | None = None, live_from: int = -1) -> None:
        self.dataset = dataset
        self.state = ConsumerState(acked=acked, ack_timeout=ack_timeout)
        self._granted = list(granted)
        self.granted = frozenset(granted)
        # a key of atomic values: the cache's tuples leave the cycle collector's sight
        self._grant_key = ",".join(sorted(self.granted))
        self.min_completeness = min_completeness
        self.binary = binary
        self.always_paths = always_paths
        self.max_frame_records = max_frame_records
        self.cache = cache or FrameCache()
        self._asked = 0
        #: the dataset's head when the subscription connected: records after it reach the
        #: subscriber live, those before it are a replay (``frame``'s latency list)
        self.live_from = live_from

    # -- in: the client ----------------------------------------------------------------------

    def hello(self, subscription: str, purpose: str, version: int = 1) -> bytes:
        """The first frame: where the subscription starts and what the agreement grants."""
        return self._encode(Hello(subscription=subscription, dataset=self.dataset,
                                  acked=self.state.acked, start_after=self.state.acked,
                                  granted=list(self._granted), purpose=purpose,
                                  version=version))

    def receive(self, data: bytes | str, now: float | None = None) -> int | None:
        """A client frame (``Credit`` or ``Ack``), received at ``now`` (monotonic seconds).
        Returns the new durable position when an ack moved it (the caller stores it), else
        None; ``InputError`` for a frame that is not one (the caller closes the connection)."""
        try:
            # binary WebSocket frames are MessagePack, text frames JSON, whatever the records'
            # encoding
            frame = (_client_json.decode(data.encode()) if isinstance(data, str)
                     else _client_msgpack.decode(data))
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as err:
            raise InputError(str(err), code=Code.BAD_REQUEST) from None
        match frame:
            case Credit(n=n):
                self.state.grant(n)
            case AckFrame(seq=seq):
                if self.state.ack(seq, now):
                    return self.state.acked
        return None

    # -- time ----------------------------------------------------------------------------------

    def tick(self, now: float) -> int:
        """Redeliver what is overdue at ``now`` (monotonic seconds): how many records go back."""
        return self.state.rewind() if self.state.overdue(now) else 0

    def deadline(self) -> float | None:
        """When ``tick`` next has something to do."""
        return self.state.next_deadline()

    # -- out: frames ---------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """Read on from the records after this seq."""
        return self.state.sent_upto

    def wants(self) -> int:
        """How many records to read now (0: wait for credit)."""
        self._asked = self.state.wants(self.max_frame_records)
        return self._asked

    def missing_batches(self, rows: Sequence[StoredRecord]) -> list[int]:
        """The batch statements a frame of ``rows`` needs that the cache does not hold."""
        have = self.cache.batches
        return list(dict.fromkeys(r.batch_id for r in rows if r.batch_id not in have))

    def frame(self, rows: Sequence[StoredRecord], fetched: Mapping[int, BatchRow], *,
              head: int, now: float) -> Frame | None:
        """The next frame from ``rows`` (read after ``position``, at most ``wants()``) and the
        batch statements fetched for ``missing_batches``. None when every row was passed over
        (below the agreement's completeness); the feed moves past them either way.

        A batch whose every stored record is in the frame travels without audit paths: the
        subscriber rebuilds its root from the records themselves. When the read was full (more
        may follow) and cut the last batch, that batch waits for the next frame, so frames keep
        to batch boundaries where they can."""
        if not rows:
            return None
        # a local map: another feed may clear the shared cache meanwhile
        have = {b: self.cache.batches[b] for b in {r.batch_id for r in rows}
                if b in self.cache.batches}
        have.update(fetched)
        self.cache.add_batches(fetched)
        counts = collections.Counter(r.batch_id for r in rows)
        pathless = not (self.min_completeness or self.always_paths)
        whole = ({b for b, n in counts.items() if n == have[b].statement.size} if pathless
                 else set())
        last = rows[-1].batch_id
        if (pathless and len(rows) == self._asked and last not in whole and len(counts) > 1):
            rows = rows[:len(rows) - counts[last]]
        state = self.state
        max_sent = state.max_sent
        cache = self.cache
        records: list[msgspec.Raw] = []
        sent: list[StoredRecord] = []
        batch_ids: dict[int, None] = {}
        for r in rows:
            redelivered = r.seq <= max_sent
            with_path = r.batch_id not in whole
            key = (r.seq, self._grant_key, self.binary, with_path)
            raw = None if redelivered else cache.encoded.get(key)
            if raw is None:
                raw = encode_record(r, self.granted, redelivered, self.binary,
                                    self.min_completeness, with_path=with_path)
                if raw is None:
                    continue
                if not redelivered:
                    cache.keep(key, raw)
            elif (self.min_completeness
                  and _body_parts.decode(r.body).completeness < self.min_completeness):
                continue
            batch_ids[r.batch_id] = None
            records.append(raw)
            sent.append(r)
        upto = rows[-1].seq
        if not sent:
            state.skip_to(upto)
            return None
        state.sent([r.seq for r in sent], now)
        state.skip_to(upto)  # records below the agreement's completeness are passed over
        batches = [BatchRef(b, have[b].statement, have[b].signature) for b in batch_ids]
        live_from = self.live_from
        return Frame(self._encode(_Frame(batches=batches, records=records, head=head)),
                     self.binary, [r.accepted_at for r in sent
                                   if r.seq > max_sent and r.seq > live_from], len(sent))

    def _encode(self, frame: Any) -> bytes:
        return _msgpack.encode(frame) if self.binary else _json.encode(frame)

