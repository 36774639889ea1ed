"""Publishing: records queue per dataset and leave as one signed batch when ``batch_size`` are
waiting or ``linger_s`` has passed (on the node's clock); each batch's receipt is checked against
the broker's certified key before its records count as stored."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import structlog

from exchange.core import datasets
from exchange.core.envelope import rfc3339
from exchange.core.errors import (
    Code,
    ExchangeError,
    IntegrityError,
    NotFound,
    UnavailableError,
    Violation,
)
from exchange.core.receipts import ReceiptChecker
from exchange.core.seal import prepare, seal
from exchange.core.signing import Batch
from exchange.core.wire import PublishReply, SignedReceipt
from exchange.node.client import Client, handshake_refused, problem

__all__ = ["PublishResult", "Publisher", "Record"]

logger = structlog.get_logger("exchange.node")
_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()
_receipt_json = msgspec.json.Decoder(SignedReceipt)
_reply_msgpack = msgspec.msgpack.Decoder(PublishReply)
_reply_json = msgspec.json.Decoder(PublishReply)


@dataclass(frozen=True)
class Record:
    """One record to publish: its data and its version for its key."""

    data: Mapping[str, Any]
    version: int = 1


@dataclass
class PublishResult:
    accepted: int = 0
    duplicates: int = 0
    #: rejections with ``index`` into the records given to ``publish``
    rejected: list[Violation] = field(default_factory=list)
    #: seq of each accepted or duplicate record, by index; None for rejected ones
    seqs: list[int | None] = field(default_factory=list)
    receipts: list[SignedReceipt] = field(default_factory=list)
    #: records whose batch got no receipt (broker unreachable, batch refused): not stored;
    #: ``index`` into the records given, ``code`` the batch's error. Safe to publish again.
    failed: list[Violation] = field(default_factory=list)


@dataclass
class _Pending:
    record: Record
    future: asyncio.Future[tuple[str, Any, SignedReceipt]]


class _StreamLost(Exception):
    """The publish WebSocket closed (or the broker failed) with batches awaiting replies."""


class Publisher:
    """A node's publishing side: one queue and one flusher per dataset."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.config = client.config
        self.receipts = ReceiptChecker()
        #: records normalisation changed before signing (the "clean" score counts them)
        self.normalised = 0
        self._queues: dict[str, asyncio.Queue[_Pending]] = {}
        self._flushers: dict[str, asyncio.Task[None]] = {}
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._stream_locks: dict[tuple[str, str], asyncio.Lock] = {}
        #: the exchange's public URL, per dataset, as the broker advertised it
        self._bases: dict[str, str] = {}

    @property
    def streams(self) -> int:
        """Publish WebSockets open now (``transport="websocket"``)."""
        return sum(1 for s in self._streams.values() if not s.ws.closed)

    async def close(self) -> None:
        for q in self._queues.values():
            await q.join()
        for t in self._flushers.values():
            t.cancel()
        for t in self._flushers.values():
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._flushers.clear()
        for conn in list(self._streams.values()):
            await conn.close()
        self._streams.clear()

    async def publish(self, dataset: str, records: Iterable[Record | Mapping[str, Any]]
                      ) -> PublishResult:
        """Queue records for ``dataset`` and wait for their receipts (see ``Node.publish``)."""
        datasets.get(dataset, self.config.schema_versions.get(dataset))
        q = self._queues.get(dataset)
        if q is None:
            q = self._queues[dataset] = asyncio.Queue()
            self._flushers[dataset] = asyncio.create_task(self._flusher(dataset, q))
        loop = asyncio.get_running_loop()
        pendings = []
        for r in records:
            rec = r if isinstance(r, Record) else Record(r)
            p = _Pending(rec, loop.create_future())
            pendings.append(p)
            q.put_nowait(p)
        result = PublishResult()
        first_error: ExchangeError | None = None
        for i, p in enumerate(pendings):
            try:
                kind, value, receipt = await p.future
            except ExchangeError as err:
                first_error = first_error or err
                result.failed.append(Violation(err.code, err.message, "$", i))
                result.seqs.append(None)
                continue
            if not any(r is receipt for r in result.receipts):
                result.receipts.append(receipt)
            if kind == "accepted":
                result.accepted += 1
                result.seqs.append(value)
            elif kind == "duplicate":
                result.duplicates += 1
                result.seqs.append(value)
            else:
                result.rejected.extend(msgspec.structs.replace(v, index=i) for v in value)
                result.seqs.append(None)
        if first_error is not None and not result.accepted and not result.duplicates:
            raise first_error
        return result

    async def _next(self, q: asyncio.Queue[_Pending], deadline: float) -> _Pending | None:
        """The next queued record, or None once the clock reaches ``deadline`` first."""
        if not q.empty():
            return q.get_nowait()
        clock = self.client.clock
        if clock.monotonic() >= deadline:
            return None
        getter = asyncio.ensure_future(q.get())
        timer = asyncio.ensure_future(clock.sleep_until(deadline))
        done, _ = await asyncio.wait({getter, timer}, return_when=asyncio.FIRST_COMPLETED)
        timer.cancel()
        if getter in done:
            return getter.result()
        # not done, so it took nothing: a cancelled Queue.get leaves its record queued
        getter.cancel()
        return None

    async def _flusher(self, dataset: str, q: asyncio.Queue[_Pending]) -> None:
        spec = datasets.get(dataset, self.config.schema_versions.get(dataset))
        in_flight = asyncio.Semaphore(self.config.max_in_flight)
        tasks: set[asyncio.Task[None]] = set()
        while True:
            batch = [await q.get()]
            deadline = self.client.clock.monotonic() + self.config.linger_s
            while len(batch) < self.config.batch_size:
                nxt = await self._next(q, deadline)
                if nxt is None:
                    break
                batch.append(nxt)
            await in_flight.acquire()
            t = asyncio.create_task(self._send(spec, batch, q, in_flight))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    async def _send(self, spec: datasets.DatasetSpec, pending: list[_Pending],
                    q: asyncio.Queue[_Pending], in_flight: asyncio.Semaphore) -> None:
        client = self.client
        try:
            prepared = prepare(spec, [(p.record.data, p.record.version) for p in pending],
                               normalise=self.config.normalise)
            self.normalised += prepared.normalised
            base = await self._schema_base(spec)
            batch = seal(client.identity.signing_key, self.config.node_id, spec, prepared.items,
                         os.urandom(32), time=rfc3339(client.clock.time()), schema_base=base)
            reply = await self._post(spec.name, batch)
            self._resolve(pending, reply)
        except ExchangeError as err:
            for p in pending:
                if not p.future.done():
                    p.future.set_exception(err)
        except Exception as err:  # never leave a publisher waiting forever
            wrapped = UnavailableError(f"publish failed: {err!r}", code=Code.PUBLISH_FAILED)
            for p in pending:
                if not p.future.done():
                    p.future.set_exception(wrapped)
        finally:
            for _ in pending:
                q.task_done()
            in_flight.release()

    async def _schema_base(self, spec: datasets.DatasetSpec) -> str:
        """The exchange's public URL, as the broker advertises it with the dataset's schema
        versions (asked once per dataset); refuses a version the broker does not serve."""
        base = self._bases.get(spec.name)
        if base is None:
            listed = await self._get_retrying(f"/v1/schemas/{spec.name}/versions")
            uri = next((v["dataschema"] for v in listed.get("versions", [])
                        if v.get("version") == spec.version), None)
            if not isinstance(uri, str) or not uri.endswith(spec.dataschema):
                raise NotFound(f"the broker does not serve {spec.name} v{spec.version} "
                               f"(it serves {[v.get('version') for v in listed['versions']]}); "
                               "pin an older version in the node config's schema_versions",
                               code=Code.UNKNOWN_SCHEMA_VERSION)
            base = self._bases[spec.name] = uri.removesuffix(spec.dataschema)
        return base

    async def _back_off(self, delay: float) -> float:
        """Wait ``delay`` (with jitter) on the node's clock before a retry; the next delay."""
        clock = self.client.clock
        await clock.sleep_until(clock.monotonic() + delay * (1 + random.random()))
        return min(delay * 2, 2.0)

    async def _get_retrying(self, path: str) -> Any:
        """GET with the publisher's retries and backoff, failing over between brokers."""
        client = self.client
        delay = 0.05
        for attempt in range(self.config.retries + 1):
            try:
                return await client.get_json(path)
            except ExchangeError as err:
                if err.status < 500:
                    raise
                if attempt == self.config.retries:
                    raise UnavailableError(f"no broker reachable: {err.message}",
                                           code=Code.BROKER_UNREACHABLE) from None
                logger.warning("publish_retry", error=err.message, attempt=attempt)
                delay = await self._back_off(delay)
        raise AssertionError("unreachable")

    async def _post(self, dataset: str, batch: Batch) -> PublishReply:
        binary = self.config.encoding == "msgpack"
        body = _msgpack.encode(batch) if binary else _json.encode(batch)
        ctype = "application/msgpack" if binary else "application/json"
        client = self.client
        delay = 0.05
        for attempt in range(self.config.retries + 1):
            url = client.url
            try:
                if self.config.transport == "websocket":
                    reply = await self._stream(url, dataset, body, binary)
                    if reply.receipt is not None:
                        return PublishReply(receipt=await self._check_receipt(reply.receipt,
                                                                              batch),
                                            problem=reply.problem)
                    refused = ExchangeError.from_problem(reply.problem or {})
                    if refused.status >= 500 and attempt < self.config.retries:
                        raise _StreamLost(f"broker answered {refused.status}")
                    raise refused
                async with client.session.post(f"{url}/v1/datasets/{dataset}/records",
                                               data=body, headers={"Content-Type": ctype}
                                               ) as resp:
                    raw = await resp.read()
                    if resp.status == 200:
                        return PublishReply(receipt=await self._check_receipt(
                            _receipt_json.decode(raw), batch))
                    try:
                        body_problem = msgspec.json.decode(raw) if raw else {}
                    except msgspec.DecodeError:
                        body_problem = {}
                    # some records refused: the rest are receipted
                    if isinstance(body_problem, dict) and "receipt" in body_problem:
                        receipt = await self._check_receipt(
                            msgspec.convert(body_problem["receipt"], SignedReceipt), batch)
                        return PublishReply(receipt=receipt, problem=body_problem)
                    if resp.status >= 500 and attempt < self.config.retries:
                        raise aiohttp.ClientResponseError(resp.request_info, (),
                                                          status=resp.status)
                    raise problem(resp.status, raw)
            except (aiohttp.ClientConnectionError, aiohttp.ClientResponseError, TimeoutError,
                    ssl.SSLError, _StreamLost) as err:
                failed = await client.connection_failed(url, err)
                if failed.code == Code.CERTIFICATE_REFUSED:
                    # every broker checks against the same CA and CRL: no retry will do
                    raise failed from None
                # Retrying is safe: a batch stored before the connection broke comes back as
                # duplicates with the seqs it was given.
                if attempt == self.config.retries:
                    raise UnavailableError(f"no broker reachable: {err!r}",
                                           code=Code.BROKER_UNREACHABLE) from None
                logger.warning("publish_retry", error=repr(err), broker=url, attempt=attempt)
                client.fail_over(url)
                delay = await self._back_off(delay)
        raise AssertionError("unreachable")

    async def _stream(self, url: str, dataset: str, body: bytes, binary: bool) -> PublishReply:
        """Send one batch on the dataset's publish WebSocket; its reply, in order."""
        key = (url, dataset)
        lock = self._stream_locks.setdefault(key, asyncio.Lock())
        async with lock:  # one connection per broker and dataset; sends keep their order
            conn = self._streams.get(key)
            if conn is None or conn.ws.closed:
                try:
                    ws = await self.client.session.ws_connect(
                        f"{url}/v1/datasets/{dataset}/publish", max_msg_size=0, heartbeat=30)
                except aiohttp.WSServerHandshakeError as err:
                    if err.status >= 500:
                        raise
                    raise handshake_refused(err, f"publishing to {dataset}") from None
                conn = self._streams[key] = _Stream(ws)
            fut: asyncio.Future[PublishReply] = asyncio.get_running_loop().create_future()
            conn.waiting.append(fut)
            if binary:
                await conn.ws.send_bytes(body)
            else:
                await conn.ws.send_str(body.decode())
        return await fut

    async def _check_receipt(self, signed: SignedReceipt, batch: Batch) -> SignedReceipt:
        """The broker's signature, and that the receipt is for this batch from this node."""
        r = signed.receipt
        if r.batch_root != batch.statement.root or r.publisher != self.config.node_id:
            raise IntegrityError("the receipt is for another batch or publisher",
                                 code=Code.RECEIPT_INVALID)
        # one verification per group commit: its receipts share the broker's signature
        self.receipts.check(await self.client.trust(r.broker), signed)
        return signed

    @staticmethod
    def _resolve(pending: list[_Pending], reply: PublishReply) -> None:
        assert reply.receipt is not None
        r = reply.receipt.receipt
        rejected: dict[int | None, list[Violation]] = {}
        for v in r.rejected:
            rejected.setdefault(v.index, []).append(v)
        dups = {d.index: d.seq for d in r.duplicates}
        seq = r.first_seq
        signed = reply.receipt
        for i, p in enumerate(pending):
            if i in rejected:
                p.future.set_result(("rejected", rejected[i], signed))
            elif i in dups:
                p.future.set_result(("duplicate", dups[i], signed))
            else:
                p.future.set_result(("accepted", seq, signed))
                seq += 1


class _Stream:
    """One publish WebSocket: replies come back in the order the batches went out."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.waiting: collections.deque[asyncio.Future[PublishReply]] = collections.deque()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    reply = _reply_msgpack.decode(msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    reply = _reply_json.decode(msg.data)
                else:
                    continue
                if self.waiting:
                    fut = self.waiting.popleft()
                    if not fut.done():
                        fut.set_result(reply)
        finally:
            # whatever was in flight has an unknown outcome: the caller retries, and a batch
            # that was stored comes back as duplicates with its seqs
            while self.waiting:
                fut = self.waiting.popleft()
                if not fut.done():
                    fut.set_exception(_StreamLost("publish socket closed"))

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.reader
