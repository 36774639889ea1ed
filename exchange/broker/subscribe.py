"""Subscribe: one WebSocket per live subscription, pumped through the core's ``Feed``.

The pump moves bytes and nothing else: client frames into ``Feed.receive`` (storing the position
an ack moves), stored records into ``Feed.frame``, the frame it returns onto the socket, and the
clock into ``Feed.tick``. It reads the store only as far as the client's credit allows, so a
client that grants nothing makes the broker hold nothing for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from aiohttp import WSMsgType, web

from exchange.broker.hub import Hub
from exchange.broker.metrics import QualityTracker
from exchange.clock import SYSTEM, Clock
from exchange.core.access import Agreement, Limits, Policy
from exchange.core.errors import (
    Code,
    ConflictError,
    ExchangeError,
    Forbidden,
    InputError,
    NotFound,
)
from exchange.core.feed import Feed, FrameCache, Request, parse_request
from exchange.core.wire import CLOSE_AGREEMENT_CHANGED, CLOSE_BAD_FRAME, CLOSE_FORBIDDEN
from exchange.store.base import AccessRow, Store

__all__ = ["Subscriptions"]

logger = structlog.get_logger("exchange.subscribe")


@dataclass(kw_only=True)
class Subscriptions:
    store: Store
    hub: Hub
    policy: Callable[[], Policy]
    limits: Callable[[], Limits]
    quality: QualityTracker | None = None
    clock: Clock = SYSTEM
    #: what the feeds of this broker share: batch statements, encoded records
    cache: FrameCache = field(default_factory=FrameCache)
    #: the feeds of the connected subscriptions, by (node, dataset, name)
    live: dict[tuple[str, str, str], Feed] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _policy: asyncio.Event = field(default_factory=asyncio.Event)
    #: subscriptions being connected (claimed before the first await)
    _claimed: set[tuple[str, str, str]] = field(default_factory=set)

    def policy_changed(self) -> None:
        """The access policy changed (a reload, an agreement approved, revoked): every live
        subscription re-checks its grant now, not at its next record."""
        changed, self._policy = self._policy, asyncio.Event()
        changed.set()

    def next_policy_change(self) -> asyncio.Event:
        """An event set at the next change of the access policy (the agreement book's
        included): take it before looking, then wait."""
        return self._policy

    def next_change(self) -> asyncio.Event:
        """An event set at the next credit, stored ack or connection change of any live
        subscription (take it before looking, then wait: no change is missed in between)."""
        return self._changed

    def _pulse(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def handle(self, request: web.Request, node: str) -> web.StreamResponse:
        dataset = request.match_info["dataset"]
        req = parse_request(request.query)
        agreement, granted = self.policy().check_subscribe(node, dataset, self.clock.utcnow())
        key = (node, dataset, req.name)
        if key in self.live or key in self._claimed:
            # a conflict with the live connection (409), not a broker fault (500)
            raise ConflictError(f"subscription {req.name!r} on {dataset} is already connected",
                                code=Code.SUBSCRIPTION_BUSY)
        self._claimed.add(key)  # before the first await: two connections never both get in
        try:
            return await self._serve(request, node, dataset, req, key, agreement, granted)
        finally:
            self._claimed.discard(key)

    async def _serve(self, request: web.Request, node: str, dataset: str, req: Request,
                     key: tuple[str, str, str], agreement: Agreement, granted: list[str]
                     ) -> web.StreamResponse:
        limits = self.limits()
        ws = web.WebSocketResponse(heartbeat=limits.idle_timeout_s / 2,
                                   max_msg_size=64 * 1024)
        if not ws.can_prepare(request).ok:
            # refused before anything is stored: a plain GET made no durable subscription
            raise InputError("a subscription is a WebSocket: send the Upgrade request",
                             code=Code.BAD_REQUEST)
        acked = await self._position(node, dataset, req)
        await ws.prepare(request)
        feed = Feed(dataset=dataset, acked=acked, ack_timeout=limits.ack_timeout_s,
                    granted=granted, min_completeness=agreement.min_completeness,
                    binary=req.binary, always_paths=req.always_paths,
                    max_frame_records=limits.max_frame_records, cache=self.cache,
                    live_from=self.hub.heads.get(dataset, -1))
        self.live[key] = feed
        self._pulse()
        logger.info("subscribed", dataset=dataset, subscription=req.name, acked=acked,
                    groups=granted, purpose=agreement.purpose)
        saved = {"seq": acked}  # what the store holds, moved by the ack reader
        try:
            await self._send(ws, feed.binary, feed.hello(req.name, agreement.purpose,
                                                          agreement.version))
            await self._pump(ws, feed, node, req.name, agreement, granted, saved)
        finally:
            if not ws.closed:
                await ws.close()
            # records sent but never acked were received all the same: on record too
            if _third_party(agreement, node) and feed.state.max_sent > saved["seq"]:
                with contextlib.suppress(Exception):
                    await self.store.add_access([AccessRow(
                        dataset=dataset, node=node, name=req.name, kind="sent",
                        agreement=agreement.id, purpose=agreement.purpose,
                        groups=tuple(granted), first_seq=saved["seq"] + 1,
                        last_seq=feed.state.max_sent, at=self.clock.time(),
                        min_completeness=agreement.min_completeness)])
            del self.live[key]
            self._pulse()  # after the row: whoever waits on the change sees it
        return ws

    async def _position(self, node: str, dataset: str, req: Request) -> int:
        """The durable position: the stored one, or where ``start`` puts a new subscription."""
        row = await self.store.subscription(node, dataset, req.name)
        if row is None:
            kind, value = req.start
            if kind == "earliest":
                acked = -1
            elif kind == "latest":
                acked = await self.store.head(dataset)
            elif kind == "seq":
                acked = value - 1
            else:
                acked = await self.store.seq_before_time(dataset, value)
            row = await self.store.create_subscription(node, dataset, req.name, acked,
                                                       self.clock.time())
        return row.acked

    @staticmethod
    async def _send(ws: web.WebSocketResponse, binary: bool, data: bytes) -> None:
        if binary:
            await ws.send_bytes(data)
        else:
            await ws.send_str(data.decode())

    def _still_granted(self, node: str, dataset: str, agreement: Agreement,
                       granted: list[str]) -> tuple[int, str] | None:
        """None while the agreement still grants what the feed projects, else the close code
        and reason (a catalogue code, which the SDK rebuilds as the error it names)."""
        try:
            now, now_granted = self.policy().check_subscribe(node, dataset,
                                                              self.clock.utcnow())
        except (Forbidden, NotFound) as err:
            return CLOSE_FORBIDDEN, err.code
        if (set(now_granted) != set(granted)
                or now.min_completeness != agreement.min_completeness):
            # the agreement changed under a live socket: never keep projecting with the old
            # grant; the node reconnects and gets the new one
            return CLOSE_AGREEMENT_CHANGED, Code.AGREEMENT_CHANGED
        return None

    async def _pump(self, ws: web.WebSocketResponse, feed: Feed, node: str, name: str,
                    agreement: Agreement, granted: list[str], saved: dict[str, int]) -> None:
        dataset = feed.dataset
        wake = asyncio.Event()
        reader = asyncio.create_task(self._read(ws, feed, node, name, wake, agreement,
                                                granted, saved))
        try:
            while not ws.closed and not reader.done():
                policy = self._policy  # taken before the check: no change is missed
                closing = self._still_granted(node, dataset, agreement, granted)
                if closing is not None:
                    await ws.close(code=closing[0], message=closing[1].encode())
                    return
                if n := feed.tick(self.clock.monotonic()):
                    logger.info("redeliver", dataset=dataset, subscription=name, records=n,
                                after=feed.state.acked)
                grown = self.hub.event(dataset)
                want = feed.wants()
                if want and await self._next_frame(ws, feed, node, want):
                    continue
                wake.clear()
                waits = [asyncio.ensure_future(wake.wait()), reader,
                         asyncio.ensure_future(policy.wait())]
                if agreement.expires is not None:
                    # the grant ends at its expiry: wake then and close, with no record needed
                    left = (agreement.expires - self.clock.utcnow()).total_seconds()
                    waits.append(asyncio.ensure_future(
                        self.clock.sleep_until(self.clock.monotonic() + max(0.0, left))))
                if want:
                    waits.append(asyncio.ensure_future(grown.wait()))
                deadline = feed.deadline()
                if deadline is not None:
                    waits.append(asyncio.ensure_future(self.clock.sleep_until(deadline)))
                _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for f in pending:
                    if f is not reader:
                        f.cancel()
        finally:
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ExchangeError):
                await reader

    async def _next_frame(self, ws: web.WebSocketResponse, feed: Feed, node: str,
                          want: int) -> bool:
        """Read on as far as the credit allows and send the frame the feed makes of it;
        whether anything was read. (Its own call, so the frame's bytes are freed once sent,
        not held while the pump waits for credit: 16 subscribers held ~12 MB so.)"""
        dataset = feed.dataset
        rows = await self.store.read(dataset, feed.position, want)
        if not rows:
            return False
        missing = feed.missing_batches(rows)
        fetched = await self.store.batches(missing) if missing else {}
        frame = feed.frame(rows, fetched, now=self.clock.monotonic(),
                           head=self.hub.heads.get(dataset, rows[-1].seq))
        if frame is not None:
            await self._send(ws, frame.binary, frame.data)
            if self.quality is not None:
                self.quality.delivered(dataset, node, frame.accepted_at, self.clock.time(),
                                       total=frame.count)
        return True

    async def _read(self, ws: web.WebSocketResponse, feed: Feed, node: str, name: str,
                    wake: asyncio.Event, agreement: Agreement, granted: list[str],
                    progress: dict[str, int]) -> None:
        third_party = _third_party(agreement, node)
        saved = progress["seq"]  # the position the store holds
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            try:
                moved = feed.receive(msg.data, self.clock.monotonic())
            except InputError as err:
                logger.info("refused", code=err.code, status=CLOSE_BAD_FRAME,
                            detail=err.message, dataset=feed.dataset, subscription=name)
                await ws.close(code=CLOSE_BAD_FRAME, message=err.message[:120].encode())
                return
            if moved is not None and moved > saved:
                # who received these records, under which agreement: one row per ack, stored
                # with the ack itself
                access = AccessRow(
                    dataset=feed.dataset, node=node, name=name, kind="delivery",
                    agreement=agreement.id, purpose=agreement.purpose, groups=tuple(granted),
                    first_seq=saved + 1, last_seq=moved, at=self.clock.time(),
                    min_completeness=agreement.min_completeness) if third_party else None
                try:
                    await self.store.ack(node, feed.dataset, name, moved, access=access)
                    saved = progress["seq"] = moved
                except Exception as err:  # the store's fault (a full disk), not the peer's
                    # keep delivering: the ack is cumulative, so the next one saves this one
                    # too (and its access row covers the whole range); dropping the
                    # subscriber would only make it fetch the same records again
                    logger.warning("ack_not_saved", dataset=feed.dataset, subscription=name,
                                   seq=moved, error=repr(err))
            wake.set()
            self._pulse()


def _third_party(agreement: Agreement, node: str) -> bool:
    """Whether ``node`` reads under an agreement (an owner reading its own dataset receives
    nothing from anyone: no access to record)."""
    return agreement.purpose != "owner" or agreement.subscriber != node or agreement.id != ""
