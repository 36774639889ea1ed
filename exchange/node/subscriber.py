"""Subscribing: a WebSocket pumped through the core's ``Inbox``.

The pump moves bytes: it fetches the signing keys a frame needs (checked against the exchange CA,
before verification, never in the middle of it), hands the frame to the ``Inbox``, calls the
handler for each record that verified, acks the frame once every record is dealt with, and grants
credit for what it read. It reconnects with backoff, resuming from the last ack and failing over
between brokers; a refusal (401, 403, 404) stops it for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
import structlog

from exchange.core.errors import Code, ExchangeError, UnavailableError
from exchange.core.verify import Deliver, Delivery, Evidence, Inbox
from exchange.core.wire import Ack, Credit, Hello, Records, RecordsIn
from exchange.node.client import Client, handshake_refused

if TYPE_CHECKING:
    from exchange.node.monitor import TlogMonitor

__all__ = ["Handler", "Subscription"]

logger = structlog.get_logger("exchange.node")
_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()
# subscriber-side types: the attribute formats are the gate's to check (see DeliveredEvent)
_server_msgpack = msgspec.msgpack.Decoder(RecordsIn | Hello)
_server_json = msgspec.json.Decoder(RecordsIn | Hello)

Handler = Callable[[Delivery], Awaitable[None]]


class Subscription(Inbox):
    """A running subscription: verified records to ``handler``, acks after it returns.

    It is the subscriber's ``Inbox`` (what it verified, delivered, dropped and kept as evidence)
    with a WebSocket pump around it."""

    def __init__(self, client: Client, dataset: str, name: str, handler: Handler, *,
                 start: str, credits: int, monitor: TlogMonitor | None = None,
                 on_stop: Callable[[Subscription], None] | None = None) -> None:
        super().__init__(client.verifier)
        self.client = client
        self.dataset = dataset
        self.name = name
        self.handler = handler
        self.start_at = start
        self.credits = credits
        self.reconnects = 0
        self.handler_errors = 0
        self.hello: Hello | None = None
        self.connected = asyncio.Event()
        self._monitor = monitor
        self._on_stop = on_stop
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: the broker this subscription last tried
        self._url = client.url

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The running pump; it ends with the error that refused the subscription for good."""
        return self._task

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"subscribe:{self.dataset}:{self.name}")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            # a refusal has ended the task already, and was logged then; stopping is quiet
            with contextlib.suppress(asyncio.CancelledError, ExchangeError):
                await self._task
        if self._on_stop is not None:
            self._on_stop(self)

    async def _run(self) -> None:
        clock = self.client.clock
        delay = 0.05
        while not self._stopping:
            try:
                await self._session()
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except ExchangeError as err:
                if err.status in (401, 403, 404):
                    logger.error("subscription_refused", dataset=self.dataset, code=err.code,
                                 detail=err.message)
                    raise
                logger.warning("subscription_error", dataset=self.dataset, code=err.code,
                               detail=err.message)
            except aiohttp.WSServerHandshakeError as err:
                if err.status in (401, 403, 404):
                    # refused for good (no agreement, revoked, unknown dataset): say so and stop
                    refused = handshake_refused(err, f"subscribing to {self.dataset}")
                    logger.error("subscription_refused", dataset=self.dataset,
                                 status=err.status, code=refused.code, detail=refused.message)
                    raise refused from None
                logger.info("subscription_reconnect", dataset=self.dataset, error=repr(err))
            except (aiohttp.ClientError, OSError, TimeoutError) as err:
                failed = await self.client.connection_failed(self._url, err)
                if failed.code == Code.CERTIFICATE_REFUSED:
                    # every broker checks against the same CA and CRL: reconnecting cannot help
                    logger.error("subscription_refused", dataset=self.dataset, code=failed.code,
                                 detail=failed.message)
                    raise failed from None
                logger.info("subscription_reconnect", dataset=self.dataset, error=repr(err))
            except Exception:
                # the handler failed: its record is not acked, so it comes again after the
                # reconnect; records handled before it are dropped as already seen
                self.handler_errors += 1
                logger.exception("handler_failed", dataset=self.dataset, subscription=self.name)
            self.connected.clear()
            self.reconnects += 1
            self.client.fail_over(self._url)
            # backoff between reconnects, with jitter so many nodes do not reconnect in step
            await clock.sleep_until(clock.monotonic() + delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)

    async def _session(self) -> None:
        client = self.client
        binary = client.config.encoding == "msgpack"
        self._url = client.url
        url = (f"{self._url}/v1/datasets/{self.dataset}/subscribe?name={self.name}"
               f"&start={self.start_at}&encoding={'msgpack' if binary else 'json'}")
        dec = _server_msgpack if binary else _server_json
        async with client.session.ws_connect(url, heartbeat=30, max_msg_size=0,
                                             timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
            await self._send(ws, binary, Credit(self.credits))
            while True:
                msg = await ws.receive()
                if msg.type == aiohttp.WSMsgType.CLOSE:
                    # the broker's close reason is the catalogue code of why (4403 no_agreement,
                    # 4409 agreement_changed): rebuilt as the error the broker meant
                    if ws.close_code and ws.close_code >= 4000:
                        reason = msg.extra if isinstance(msg.extra, str) else ""
                        code = reason if Code.of(reason) else Code.SUBSCRIPTION_CLOSED
                        raise ExchangeError.from_code(
                            code, f"broker closed the subscription ({ws.close_code} {reason})")
                    break
                if msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    break
                if msg.type == aiohttp.WSMsgType.ERROR:
                    raise UnavailableError(f"websocket error: {ws.exception()!r}",
                                           code=Code.CONNECTION_LOST)
                if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    continue
                frame = dec.decode(msg.data)
                if isinstance(frame, Hello):
                    self.hello = frame
                    self.connected.set()
                    continue
                ack = await self.process(frame)
                if ack is not None:
                    await self._send(ws, binary, Ack(ack))
                await self._send(ws, binary, Credit(len(frame.records)))

    @staticmethod
    async def _send(ws: aiohttp.ClientWebSocketResponse, binary: bool, frame: Any) -> None:
        if binary:
            await ws.send_bytes(_msgpack.encode(frame))
        else:
            await ws.send_str(_json.encode(frame).decode())

    async def process(self, frame: Records) -> int | None:
        """Verify a frame and hand its records to the handler; the seq to ack, once every
        record is dealt with (None: nothing to ack)."""
        for signer, kid in self.signers(frame):
            try:
                await self.client.trust(signer, kid)
            except UnavailableError:
                raise  # reconnect and try again: nothing was handled or acked
            except ExchangeError as err:
                # no certified key for this signer: its records fail verification and are kept
                # as evidence; the rest of the frame goes on
                logger.error("signer_untrusted", signer=signer, code=err.code)
        monitor = self._monitor
        sample = self.client.config.verify_inclusion
        handler = self.handler
        for item in self.receive(frame):
            if type(item) is Deliver:
                if sample and monitor is not None and random.random() < sample:
                    monitor.check_later(item.delivery.seq, item.leaf())
                await handler(item.delivery)
                self.handled(item)
            elif type(item) is Evidence:
                # loudly: a record that does not verify means someone altered it in transit
                logger.error("record_verification_failed", seq=item.seq, code=item.code,
                             detail=item.message)
        return self.ack
