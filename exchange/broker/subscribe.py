"""Subscribe: one WebSocket per live subscription; the state machine is ``exchange.consumer``.

The handler pumps bytes: client frames (credits, acks) in, ``Records`` frames out. It reads the
store only as far as the client's credit allows, so a client that grants nothing makes the
broker hold nothing for it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import re
import time
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from aiohttp import WSMsgType, web

from exchange.broker.hub import Hub
from exchange.broker.metrics import QualityTracker
from exchange.core import datasets
from exchange.core.access import Limits, Policy
from exchange.core.consumer import ConsumerState
from exchange.core.errors import Code, ConflictError, ExchangeError, Forbidden, InputError
from exchange.core.ledger import BatchRow, StoredBody, StoredRecord
from exchange.core.wire import Ack, BatchRef, ClientFrame, Credit, DeliveredRecord, Hello
from exchange.store.base import Store

__all__ = ["Subscriptions", "encode_record", "parse_start"]

log = structlog.get_logger("exchange.subscribe")

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_client_json = msgspec.json.Decoder(ClientFrame)
_client_msgpack = msgspec.msgpack.Decoder(ClientFrame)
_body = msgspec.msgpack.Decoder(StoredBody)
_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()

#: WebSocket close codes in the private range (RFC 6455 §7.4.2)
CLOSE_FORBIDDEN = 4403
CLOSE_BAD_FRAME = 4400
CLOSE_AGREEMENT_CHANGED = 4409


def parse_start(start: str) -> tuple[str, Any]:
    """``earliest`` | ``latest`` | ``seq:N`` (first seq to deliver) | ``time:RFC3339``."""
    if start in ("earliest", "latest"):
        return start, None
    kind, _, value = start.partition(":")
    try:
        if kind == "seq":
            n = int(value)
            if n < 0:
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


class Subscriptions:
    def __init__(self, *, store: Store, hub: Hub, policy: Callable[[], Policy],
                 limits: Callable[[], Limits], quality: QualityTracker | None = None) -> None:
        self.store = store
        self.quality = quality
        self.hub = hub
        self._policy = policy
        self._limits = limits
        self._batch_cache: dict[int, BatchRow] = {}
        self._encoded: dict[tuple[int, str, bool, bool], msgspec.Raw] = {}
        self.live: dict[tuple[str, str, str], ConsumerState] = {}

    async def handle(self, request: web.Request, node: str) -> web.StreamResponse:
        dataset = request.match_info["dataset"]
        name = request.query.get("name", "default")
        if not _NAME.match(name):
            raise InputError("subscription name must be 1-64 of A-Z a-z 0-9 _ . -",
                             code=Code.BAD_SUBSCRIPTION_NAME)
        encoding = request.query.get("encoding", "json")
        if encoding not in ("json", "msgpack"):
            raise InputError("encoding must be json or msgpack", code=Code.BAD_ENCODING)
        # "always": every record with its audit path, even when its whole batch is in the frame
        # (for a subscriber that keeps single records as evidence)
        paths = request.query.get("paths", "auto")
        if paths not in ("auto", "always"):
            raise InputError("paths must be auto or always", code=Code.BAD_PATHS)
        agreement, granted = self._policy().check_subscribe(node, dataset, _utcnow())
        row = await self.store.subscription(node, dataset, name)
        if row is None:
            kind, value = parse_start(request.query.get("start", "earliest"))
            if kind == "earliest":
                acked = -1
            elif kind == "latest":
                acked = await self.store.head(dataset)
            elif kind == "seq":
                acked = value - 1
            else:
                acked = await self.store.seq_before_time(dataset, value)
            row = await self.store.create_subscription(node, dataset, name, acked, time.time())
        key = (node, dataset, name)
        if key in self.live:
            # a conflict with the live connection (409), not a broker fault (500)
            raise ConflictError(f"subscription {name!r} on {dataset} is already connected",
                                code=Code.SUBSCRIPTION_BUSY)
        limits = self._limits()
        ws = web.WebSocketResponse(heartbeat=limits.idle_timeout_s / 2,
                                   max_msg_size=64 * 1024)
        await ws.prepare(request)
        state = ConsumerState(acked=row.acked, ack_timeout=limits.ack_timeout_s)
        self.live[key] = state
        binary = encoding == "msgpack"
        log.info("subscribed", dataset=dataset, subscription=name, acked=row.acked,
                 groups=granted, purpose=agreement.purpose)
        try:
            await self._send(ws, binary, Hello(subscription=name, dataset=dataset,
                                               acked=row.acked, start_after=row.acked,
                                               granted=granted, purpose=agreement.purpose))
            await self._pump(ws, state, node, dataset, name, granted, binary, limits,
                             agreement.min_completeness, always_paths=paths == "always")
        finally:
            del self.live[key]
            if not ws.closed:
                await ws.close()
        return ws

    async def _send(self, ws: web.WebSocketResponse, binary: bool, frame: Any) -> None:
        if binary:
            await ws.send_bytes(_msgpack.encode(frame))
        else:
            await ws.send_str(_json.encode(frame).decode())

    async def _pump(self, ws: web.WebSocketResponse, state: ConsumerState, node: str,
                    dataset: str, name: str, granted: list[str], binary: bool,
                    limits: Limits, min_completeness: float, *,
                    always_paths: bool = False) -> None:
        wake = asyncio.Event()
        reader = asyncio.create_task(self._read(ws, state, node, dataset, name, binary, wake))
        try:
            while not ws.closed and not reader.done():
                try:
                    agreement, now_granted = self._policy().check_subscribe(node, dataset,
                                                                           _utcnow())
                except Forbidden as err:
                    await ws.close(code=CLOSE_FORBIDDEN, message=err.code.encode())
                    return
                if (set(now_granted) != set(granted)
                        or agreement.min_completeness != min_completeness):
                    # the agreement changed under a live socket: never keep projecting with
                    # the old grant; the node reconnects and gets the new one
                    await ws.close(code=CLOSE_AGREEMENT_CHANGED, message=b"agreement_changed")
                    return
                now = time.monotonic()
                if state.overdue(now):
                    n = state.rewind()
                    log.info("redeliver", dataset=dataset, subscription=name, records=n,
                             after=state.acked)
                grown = self.hub.event(dataset)
                want = state.wants(limits.max_frame_records)
                if want:
                    rows = await self.store.read(dataset, state.sent_upto, want)
                    if rows:
                        frame, sent, upto = await self._frame(
                            rows, granted, state.max_sent, min_completeness, binary,
                            full=len(rows) == want, always_paths=always_paths)
                        if sent:
                            await self._send(ws, binary, frame)
                            state.sent([r.seq for r in sent], time.monotonic())
                            if self.quality is not None:
                                self.quality.delivered(dataset, node,
                                                       [r.accepted_at for r in sent], time.time())
                        # records below the agreement's completeness are passed over
                        state.skip_to(upto)
                        continue
                wake.clear()
                deadline = state.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                waits = [asyncio.ensure_future(wake.wait()), reader]
                if want:
                    waits.append(asyncio.ensure_future(grown.wait()))
                _, pending = await asyncio.wait(waits, timeout=timeout,
                                                   return_when=asyncio.FIRST_COMPLETED)
                for f in pending:
                    if f is not reader:
                        f.cancel()
        finally:
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ExchangeError):
                await reader

    async def _read(self, ws: web.WebSocketResponse, state: ConsumerState, node: str,
                    dataset: str, name: str, binary: bool, wake: asyncio.Event) -> None:
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            try:
                raw = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                frame = (_client_msgpack if msg.type == WSMsgType.BINARY else
                         _client_json).decode(raw)
                match frame:
                    case Credit(n=n):
                        state.grant(n)
                    case Ack(seq=seq):
                        if state.ack(seq):
                            await self.store.ack(node, dataset, name, state.acked)
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError,
                    InputError) as err:
                await ws.close(code=CLOSE_BAD_FRAME, message=str(err)[:120].encode())
                return
            wake.set()

    async def _frame(self, rows: list[StoredRecord], granted: list[str], max_sent: int,
                     min_completeness: float, binary: bool, *, full: bool = False,
                     always_paths: bool = False
                     ) -> tuple[_OutRecords, list[StoredRecord], int]:
        """One frame for these rows: the frame, the rows it carries (some may be passed over)
        and the last seq it accounts for.

        A batch whose every stored record is in the frame travels without audit paths: the
        subscriber rebuilds its root from the records themselves. When the read was ``full``
        (more may follow) and cut the last batch, that batch waits for the next frame, so
        frames keep to batch boundaries where they can.

        Each projected, encoded record is cached by (seq, granted groups, encoding, paths or
        not): sixteen subscribers with the same agreement cost one projection and one encoding,
        not sixteen.
        """
        # a local map: another pump may clear the shared cache while this one awaits the store
        have = {r.batch_id: self._batch_cache[r.batch_id] for r in rows
                if r.batch_id in self._batch_cache}
        need = [r.batch_id for r in rows if r.batch_id not in have]
        if need:
            fetched = await self.store.batches(need)
            have.update(fetched)
            if len(self._batch_cache) > 10_000:
                self._batch_cache.clear()
            self._batch_cache.update(fetched)
        counts = collections.Counter(r.batch_id for r in rows)
        pathless = not (min_completeness or always_paths)
        whole = {b for b, n in counts.items() if n == have[b].statement.size} if pathless else set()
        last = rows[-1].batch_id
        if pathless and full and last not in whole and len(counts) > 1:
            rows = rows[:len(rows) - counts[last]]
        grant = frozenset(granted)
        # a key of atomic values: the cache's tuples leave the cycle collector's sight
        grant_key = ",".join(sorted(grant))
        cache = self._encoded
        records: list[msgspec.Raw] = []
        sent: list[StoredRecord] = []
        batch_ids: dict[int, None] = {}
        for r in rows:
            redelivered = r.seq <= max_sent
            with_path = r.batch_id not in whole
            key = (r.seq, grant_key, binary, with_path)
            raw = None if redelivered else cache.get(key)
            if raw is None:
                raw = encode_record(r, grant, redelivered, binary, min_completeness,
                                    with_path=with_path)
                if raw is None:
                    continue
                if not redelivered:
                    cache[key] = raw
                    if len(cache) > ENCODED_CACHE:
                        del cache[next(iter(cache))]  # oldest first: dicts keep order
            elif (min_completeness
                  and _body_parts.decode(r.body).completeness < min_completeness):
                continue
            batch_ids[r.batch_id] = None
            records.append(raw)
            sent.append(r)
        batches = [BatchRef(b, have[b].statement, have[b].signature) for b in batch_ids]
        return _OutRecords(batches=batches, records=records, head=self.hub.heads.get(
            rows[-1].dataset, rows[-1].seq)), sent, rows[-1].seq


#: how many encoded records the broker keeps for subscribers reading the same records
ENCODED_CACHE = 20_000


class _OutRecords(msgspec.Struct, frozen=True, tag="records"):
    """``wire.Records`` as the broker sends it: records already encoded (``msgspec.Raw``)."""

    batches: list[BatchRef]
    records: list[msgspec.Raw]
    head: int = 0


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


_body_parts = msgspec.msgpack.Decoder(_BodyParts)


def encode_record(r: StoredRecord, grant: frozenset[str], redelivered: bool, binary: bool,
                  min_completeness: float = 0.0, *, with_path: bool = True
                  ) -> msgspec.Raw | None:
    """One stored record as its agreement may see it, encoded for the wire (None: it is below
    the agreement's completeness). Without its audit path when its whole batch travels along."""
    parts = _body_parts.decode(r.body)
    if parts.completeness < min_completeness:
        return None
    if binary and grant >= parts.commitments.keys():
        # every group granted: splice the stored MessagePack, decode nothing
        return msgspec.Raw(_msgpack.encode(_Spliced(
            seq=r.seq, event=parts.event, salts=parts.salts, batch=r.batch_id, index=r.index,
            path=parts.path if with_path else _NO_PATH, accepted_at=r.accepted_at,
            redelivered=redelivered)))
    projected = _project(r, _body.decode(r.body), grant, redelivered, with_path)
    return msgspec.Raw((_msgpack if binary else _json).encode(projected))


_NO_PATH = msgspec.Raw(_msgpack.encode([]))


def _project(r: StoredRecord, body: StoredBody, grant: frozenset[str],
             redelivered: bool, with_path: bool = True) -> DeliveredRecord:
    """The record as this agreement may see it: granted groups with their salts, the others as
    bare commitments."""
    event = body.event
    if grant >= body.commitments.keys():
        salts = {g: s for g, s in body.salts.items() if g in body.commitments}
        withheld = {}
    else:
        spec = datasets.get(event.dataset, event.schema_version)
        keep = {f for g in grant for f in spec.groups.get(g, ())}
        event = msgspec.structs.replace(event, data={
            f: v for f, v in event.data.items() if f in keep})
        salts = {g: s for g, s in body.salts.items() if g in grant}
        withheld = {g: c for g, c in body.commitments.items() if g not in grant}
    return DeliveredRecord(seq=r.seq, event=event, salts=salts, withheld=withheld,
                           batch=r.batch_id, index=r.index,
                           path=body.path if with_path else [],
                           accepted_at=r.accepted_at, redelivered=redelivered)

def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
