"""The node SDK: join the exchange, publish signed batches, subscribe with end-to-end verification.

```python
async with Node(NodeConfig(node_id="vn.gov.mps.population", pki_dir="pki",
                           brokers=["https://127.0.0.1:8443"])) as node:
    result = await node.publish("population", [Record(person, version=1)])
    sub = node.subscribe("tax", "addresses", handler, start="earliest")
```

Publishing batches by size and time: records queue per dataset and leave as one signed batch when
``batch_size`` are waiting or ``linger_s`` has passed. Subscribing verifies every record's
publisher signature — against the exchange CA, not the broker's word — before the handler sees
it, acks after the handler returns, drops seqs it has already handled after a reconnect, and
reconnects with backoff, resuming from the last ack (failing over between brokers).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import os
import random
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import msgspec
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from exchange import pki
from exchange.clock import SYSTEM, Clock
from exchange.core import datasets, merkle, tlog
from exchange.core.envelope import parse_type, rfc3339
from exchange.core.errors import (
    AuthError,
    Code,
    ExchangeError,
    IntegrityError,
    UnavailableError,
    Violation,
)
from exchange.core.receipts import ReceiptChecker
from exchange.core.seal import prepare, seal
from exchange.core.signing import Batch, BatchProof, Verifier, check_signer, record_digest
from exchange.core.wire import (
    PROBLEM_CODE_HEADER,
    Ack,
    Credit,
    DeliveredRecord,
    Hello,
    PublishReply,
    Records,
    RecordsIn,
    SignedReceipt,
)

__all__ = ["Delivery", "Node", "NodeConfig", "PublishResult", "Record", "Subscription"]

logger = structlog.get_logger("exchange.node")
_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()
_receipt_json = msgspec.json.Decoder(SignedReceipt)
_reply_msgpack = msgspec.msgpack.Decoder(PublishReply)
_reply_json = msgspec.json.Decoder(PublishReply)
# subscriber-side types: the attribute formats are the gate's to check (see DeliveredEvent)
_server_msgpack = msgspec.msgpack.Decoder(RecordsIn | Hello)
_server_json = msgspec.json.Decoder(RecordsIn | Hello)


class NodeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a node reaches the exchange. Decoded strictly from the node's TOML/JSON file."""

    node_id: str
    #: the exchange PKI directory holding ``ca.crt`` and ``nodes/<node_id>/``
    pki_dir: str
    #: broker base URLs; the node fails over between them in order
    brokers: list[str]
    batch_size: int = 500
    linger_s: float = 0.01
    #: most batches of one dataset awaiting their receipt at once
    max_in_flight: int = 4
    encoding: Literal["json", "msgpack"] = "msgpack"
    #: "http": one POST per batch; "websocket": a publish stream per dataset, many batches in
    #: flight on one connection, replies in order (best for many small batches)
    transport: Literal["http", "websocket"] = "http"
    #: apply NFC / whitespace / tone-mark normalisation before signing, and count it
    normalise: bool = True
    timeout_s: float = 30.0
    retries: int = 5
    #: share of delivered records whose inclusion in the transparency log is checked (0..1)
    verify_inclusion: float = 0.0
    #: where the last trusted checkpoint is kept across restarts (and split-view evidence)
    checkpoint_file: str | None = None


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


@dataclass(frozen=True)
class Delivery:
    """A verified record handed to a subscription handler."""

    seq: int
    dataset: str
    key: str
    version: int
    data: dict[str, Any]
    source: str
    time: str
    accepted_at: float
    #: disclosure groups the agreement withheld (their values never reached this node)
    withheld: frozenset[str]
    redelivered: bool


Handler = Callable[[Delivery], Awaitable[None]]


@dataclass
class _Pending:
    record: Record
    future: asyncio.Future[tuple[str, Any, SignedReceipt]]


class Node:
    """A connected exchange node. Use as ``async with Node(config) as node``."""

    def __init__(self, config: NodeConfig, *, clock: Clock = SYSTEM) -> None:
        self.config = config
        self.clock = clock
        self.identity = pki.load_node_identity(config.pki_dir, config.node_id)
        self._ca = x509.load_pem_x509_certificate(self.identity.ca_cert.read_bytes())
        self._ssl: ssl.SSLContext = pki.client_ssl_context(self.identity)
        self._session: aiohttp.ClientSession | None = None
        self._broker = 0
        self._queues: dict[str, asyncio.Queue[_Pending]] = {}
        self._flushers: dict[str, asyncio.Task[None]] = {}
        self._subs: list[Subscription] = []
        self._keys: dict[str, Ed25519PublicKey] = {}
        self.verifier = Verifier(self._key)
        self.receipts = ReceiptChecker()
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._stream_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.normalised = 0
        self.log = LogMonitor(self)

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=32),
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_s))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for sub in list(self._subs):
            await sub.stop()
        await self.log.stop()
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
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise UnavailableError("node is not open: use `async with Node(...)`",
                                   code=Code.NODE_CLOSED)
        return self._session

    @property
    def url(self) -> str:
        return self.config.brokers[self._broker % len(self.config.brokers)].rstrip("/")

    def _fail_over(self, failed: str) -> None:
        """Move to the next broker, unless another task has already moved away from
        ``failed``: several batches in flight fail together, and each stepping on would
        cycle the node straight back to the broker that failed."""
        if self.url == failed:
            self._broker = (self._broker + 1) % len(self.config.brokers)

    # -- keys: trusted through the exchange CA, fetched through the broker -------------------

    def _key(self, node: str) -> Ed25519PublicKey | None:
        return self._keys.get(node)

    async def trust(self, node: str) -> Ed25519PublicKey:
        """The signing key of ``node``, from its certificate checked against the exchange CA."""
        key = self._keys.get(node)
        if key is None:
            pem = await self._get_bytes(f"/v1/nodes/{node}/certificate")
            cert_node, key = pki.signing_identity_from_cert(pem, self._ca)
            if cert_node != node:
                raise AuthError(f"certificate served for {node} names {cert_node}",
                                code=Code.BAD_CERTIFICATE)
            self._keys[node] = key
        return key

    async def _get_bytes(self, path: str) -> bytes:
        url = self.url
        try:
            async with self.session.get(url + path) as resp:
                body = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            self._fail_over(url)  # the next request goes to the next broker
            raise UnavailableError(f"broker {url} unreachable: {err!r}",
                                   code=Code.BROKER_UNREACHABLE) from None
        if resp.status >= 400:
            raise _problem(resp.status, body)
        return body

    async def get_json(self, path: str) -> Any:
        return msgspec.json.decode(await self._get_bytes(path))

    # -- publish ----------------------------------------------------------------------------

    async def publish(self, dataset: str, records: Iterable[Record | Mapping[str, Any]]
                      ) -> PublishResult:
        """Queue records for ``dataset`` and wait for their receipts.

        Batch-level refusals (not owner, bad signature, too large) raise ``ExchangeError``;
        record-level rejections are returned in ``PublishResult.rejected`` (and kept by the
        broker in this node's dead letters).
        """
        datasets.get(dataset)
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

    async def _flusher(self, dataset: str, q: asyncio.Queue[_Pending]) -> None:
        spec = datasets.get(dataset)
        in_flight = asyncio.Semaphore(self.config.max_in_flight)
        tasks: set[asyncio.Task[None]] = set()
        while True:
            first = await q.get()
            batch = [first]
            deadline = asyncio.get_running_loop().time() + self.config.linger_s
            while len(batch) < self.config.batch_size:
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0 and q.empty():
                    break
                try:
                    batch.append(q.get_nowait() if not q.empty() else
                                 await asyncio.wait_for(q.get(), timeout))
                except TimeoutError:
                    break
            await in_flight.acquire()
            t = asyncio.create_task(self._send(spec, batch, q, in_flight))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    async def _send(self, spec: datasets.DatasetSpec, pending: list[_Pending],
                    q: asyncio.Queue[_Pending], in_flight: asyncio.Semaphore) -> None:
        try:
            prepared = prepare(spec, [(p.record.data, p.record.version) for p in pending],
                               normalise=self.config.normalise)
            self.normalised += prepared.normalised
            batch = seal(self.identity.signing_key, self.config.node_id, spec, prepared.items,
                         os.urandom(32), time=rfc3339(self.clock.time()))
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

    async def _post(self, dataset: str, batch: Batch) -> PublishReply:
        binary = self.config.encoding == "msgpack"
        body = _msgpack.encode(batch) if binary else _json.encode(batch)
        ctype = "application/msgpack" if binary else "application/json"
        delay = 0.05
        for attempt in range(self.config.retries + 1):
            url = self.url
            try:
                if self.config.transport == "websocket":
                    reply = await self._stream(url, dataset, body, binary)
                    if reply.receipt is not None:
                        return PublishReply(receipt=await self._check_receipt(reply.receipt,
                                                                              batch),
                                            problem=reply.problem)
                    problem = reply.problem or {}
                    status = int(problem.get("status", 500))
                    if status >= 500 and attempt < self.config.retries:
                        raise _StreamLost(f"broker answered {status}")
                    raise _problem(status, _json.encode(problem))
                async with self.session.post(f"{url}/v1/datasets/{dataset}/records",
                                             data=body, headers={"Content-Type": ctype}) as resp:
                    raw = await resp.read()
                    if resp.status == 200:
                        return PublishReply(receipt=await self._check_receipt(
                            _receipt_json.decode(raw), batch))
                    try:
                        problem = msgspec.json.decode(raw) if raw else {}
                    except msgspec.DecodeError:
                        problem = {}
                    # some records refused: the rest are receipted
                    if isinstance(problem, dict) and "receipt" in problem:
                        receipt = await self._check_receipt(
                            msgspec.convert(problem["receipt"], SignedReceipt), batch)
                        return PublishReply(receipt=receipt, problem=problem)
                    if resp.status >= 500 and attempt < self.config.retries:
                        raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
                    raise _problem(resp.status, raw)
            except (aiohttp.ClientConnectionError, aiohttp.ClientResponseError, TimeoutError,
                    ssl.SSLError, _StreamLost) as err:
                # Retrying is safe: a batch stored before the connection broke comes back as
                # duplicates with the seqs it was given.
                if attempt == self.config.retries:
                    raise UnavailableError(f"no broker reachable: {err!r}",
                                           code=Code.BROKER_UNREACHABLE) from None
                logger.warning("publish_retry", error=repr(err), broker=url, attempt=attempt)
                self._fail_over(url)
                await asyncio.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    async def _stream(self, url: str, dataset: str, body: bytes, binary: bool) -> PublishReply:
        """Send one batch on the dataset's publish WebSocket; its reply, in order."""
        key = (url, dataset)
        lock = self._stream_locks.setdefault(key, asyncio.Lock())
        async with lock:  # one connection per broker and dataset; sends keep their order
            conn = self._streams.get(key)
            if conn is None or conn.ws.closed:
                try:
                    ws = await self.session.ws_connect(
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
        self.receipts.check(await self.trust(r.broker), signed)
        return signed

    def _resolve(self, pending: list[_Pending], reply: PublishReply) -> None:
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

    # -- subscribe --------------------------------------------------------------------------

    def subscribe(self, dataset: str, name: str, handler: Handler, *, start: str = "earliest",
                  credits: int = 1000) -> Subscription:
        """Start a durable subscription; it runs until ``stop()`` or the node closes."""
        sub = Subscription(self, dataset, name, handler, start=start, credits=credits)
        self._subs.append(sub)
        sub.start()
        return sub

    async def dead_letters(self, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = await self.get_json(
            f"/v1/dead-letters?after={after}&limit={limit}")
        return out


class _StreamLost(Exception):
    """The publish WebSocket closed (or the broker failed) with batches awaiting replies."""


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


def _problem(status: int, body: bytes) -> ExchangeError:
    """The broker's problem+json reply as the error class it raised (``RemoteError`` too)."""
    try:
        p = msgspec.json.decode(body)
    except msgspec.DecodeError:
        p = {}
    return ExchangeError.from_problem(p if isinstance(p, dict) else {}, status)


def handshake_refused(err: aiohttp.WSServerHandshakeError, what: str) -> ExchangeError:
    """A refused WebSocket handshake as the error the broker raised: aiohttp keeps the status
    and headers but not the body, so the broker repeats the problem's code in a header."""
    code = err.headers.get(PROBLEM_CODE_HEADER, "") if err.headers else ""
    return ExchangeError.from_code(code, f"{what} refused: {err.status} {err.message}",
                                   err.status)


class Subscription:
    """A running subscription: verified records to ``handler``, acks after it returns."""

    def __init__(self, node: Node, dataset: str, name: str, handler: Handler, *, start: str,
                 credits: int) -> None:
        self.node = node
        self.dataset = dataset
        self.name = name
        self.handler = handler
        self.start_at = start
        self.credits = credits
        self.last_seq = -1  # highest seq handed to the handler (in memory)
        self.delivered = 0
        self.verified = 0
        self.dropped_duplicates = 0
        self.redelivered = 0
        self.reconnects = 0
        self.handler_errors = 0
        #: records that failed verification: kept as evidence, never handed to the handler
        self.evidence: list[tuple[int, str]] = []
        self.hello: Hello | None = None
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: the broker this subscription last tried
        self._url = node.url

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"subscribe:{self.dataset}:{self.name}")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            # a refusal has ended the task already, and was logged then; stopping is quiet
            with contextlib.suppress(asyncio.CancelledError, ExchangeError):
                await self._task
        if self in self.node._subs:
            self.node._subs.remove(self)

    async def _run(self) -> None:
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
                    logger.error("subscription_refused", dataset=self.dataset, status=err.status,
                              code=refused.code, detail=refused.message)
                    raise refused from None
                logger.info("subscription_reconnect", dataset=self.dataset, error=repr(err))
            except (aiohttp.ClientError, OSError, TimeoutError) as err:
                logger.info("subscription_reconnect", dataset=self.dataset, error=repr(err))
            except Exception:
                # the handler failed: its record is not acked, so it comes again after the
                # reconnect; records handled before it are dropped as already seen
                self.handler_errors += 1
                logger.exception("handler_failed", dataset=self.dataset, subscription=self.name)
            self.connected.clear()
            self.reconnects += 1
            self.node._fail_over(self._url)
            # backoff between reconnects, with jitter so many nodes do not reconnect in step
            await asyncio.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)

    async def _session(self) -> None:
        node = self.node
        binary = node.config.encoding == "msgpack"
        self._url = node.url
        url = (f"{self._url}/v1/datasets/{self.dataset}/subscribe?name={self.name}"
               f"&start={self.start_at}&encoding={'msgpack' if binary else 'json'}")
        dec = _server_msgpack if binary else _server_json
        async with node.session.ws_connect(url, heartbeat=30, max_msg_size=0,
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
                handled = await self._frame(frame)
                if handled is not None:
                    await self._send(ws, binary, Ack(handled))
                await self._send(ws, binary, Credit(len(frame.records)))

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, binary: bool, frame: Any) -> None:
        if binary:
            await ws.send_bytes(_msgpack.encode(frame))
        else:
            await ws.send_str(_json.encode(frame).decode())

    async def _frame(self, frame: Records) -> int | None:
        """Verify and hand over a frame's records; return the seq to ack (or None)."""
        node = self.node
        batches = {b.id: b for b in frame.batches}
        for b in frame.batches:
            try:
                await node.trust(b.statement.node)
            except UnavailableError:
                raise  # reconnect and try again: nothing was handled or acked
            except ExchangeError as err:
                # no certified key for this signer: its records fail verification below and
                # are kept as evidence; the rest of the frame goes on
                logger.error("signer_untrusted", signer=b.statement.node, code=err.code)
        known: dict[int, dict[bytes, tuple[int, int]]] = {}
        types: dict[str, tuple[str, datasets.DatasetSpec]] = {}
        whole = self._verify_whole(frame.records, batches, types)
        last: int | None = None
        for rec in frame.records:
            if rec.seq <= self.last_seq:
                self.dropped_duplicates += 1
                last = rec.seq
                continue
            if rec.redelivered:
                self.redelivered += 1
            try:
                # by identity: a record with a path, whatever its seq, is verified on its own
                done = whole.get(id(rec)) if not rec.path else None
                if isinstance(done, ExchangeError):
                    raise done
                dataset, digest = done or self._verify(rec, batches, known, types)
            except ExchangeError as err:
                # loudly: a record that does not verify means someone altered it in transit
                logger.error("record_verification_failed", seq=rec.seq, code=err.code,
                          detail=err.message)
                self.evidence.append((rec.seq, err.code))
                last = rec.seq
                continue
            self.verified += 1
            ev = rec.event
            if node.config.verify_inclusion and random.random() < node.config.verify_inclusion:
                st = batches[rec.batch].statement
                node.log.check_later(rec.seq, tlog.entry_leaf(
                    rec.seq, dataset, st.node, digest, st.root, tlog.micros(rec.accepted_at)))
            await self.handler(Delivery(
                seq=rec.seq, dataset=dataset, key=ev.subject, version=ev.version,
                data=ev.data, source=ev.source, time=ev.time, accepted_at=rec.accepted_at,
                withheld=frozenset(rec.withheld), redelivered=rec.redelivered))
            self.delivered += 1
            self.last_seq = rec.seq
            last = rec.seq
        return last

    def _verify_whole(self, records: Sequence[DeliveredRecord], batches: Mapping[int, Any],
                      types: dict[str, tuple[str, datasets.DatasetSpec]]
                      ) -> dict[int, tuple[str, bytes] | ExchangeError]:
        """Records that came without audit paths: the broker sends a batch so only when the
        frame holds all of it, and its root is rebuilt from them. Per record (``id()`` of the
        decoded record, alive as long as the frame), (dataset, digest) or why the batch failed
        (all of its records fail together: which one was altered cannot be told)."""
        pathless: dict[int, list[DeliveredRecord]] = {}
        for rec in records:
            if not rec.path:
                pathless.setdefault(rec.batch, []).append(rec)
        out: dict[int, tuple[str, bytes] | ExchangeError] = {}
        for bid, recs in pathless.items():
            try:
                ref = batches.get(bid)
                if ref is None:
                    raise IntegrityError(f"batch {bid} arrived without its statement",
                                         code=Code.SIGNATURE_INVALID)
                st = ref.statement
                if sorted(r.index for r in recs) != list(range(st.size)):
                    raise IntegrityError(f"batch {bid} came without audit paths but not whole",
                                         code=Code.SIGNATURE_INVALID)
                recs.sort(key=lambda r: r.index)
                found = []
                for rec in recs:
                    dataset, spec = _parsed_type(rec.event.type, types)
                    check_signer(rec.event, st, dataset)
                    found.append((dataset, record_digest(rec.event, spec.groups, rec.salts,
                                                         rec.withheld)))
                self.node.verifier.verify_whole(st, ref.signature, [d for _, d in found])
            except ExchangeError as err:
                out.update((id(r), err) for r in recs)
                continue
            out.update((id(r), f) for r, f in zip(recs, found, strict=True))
        return out

    def _verify(self, rec: DeliveredRecord, batches: Mapping[int, Any],
                known: dict[int, dict[bytes, tuple[int, int]]],
                types: dict[str, tuple[str, datasets.DatasetSpec]]) -> tuple[str, bytes]:
        """Verify one record; per frame, ``known`` shares Merkle work between the records of a
        batch and ``types`` parses each CloudEvents type once. Returns (dataset, digest)."""
        ref = batches.get(rec.batch)
        if ref is None:
            raise IntegrityError(f"record {rec.seq} arrived without its batch statement",
                                 code=Code.SIGNATURE_INVALID)
        ev = rec.event
        dataset, spec = _parsed_type(ev.type, types)
        digest = self.node.verifier.verify_record(
            ev, spec.groups, rec.salts, rec.withheld,
            BatchProof(ref.statement, ref.signature, rec.index, rec.path), dataset=dataset,
            known=known.setdefault(rec.batch, {}))
        return dataset, digest


def _parsed_type(type_: str, types: dict[str, tuple[str, datasets.DatasetSpec]]
                 ) -> tuple[str, datasets.DatasetSpec]:
    """A CloudEvents type's dataset and spec, parsed once per frame (``types``)."""
    parsed = types.get(type_)
    if parsed is None:
        name, version = parse_type(type_)
        parsed = types[type_] = (name, datasets.get(name, version))
    return parsed


class LogMonitor:
    """What a node knows of the broker's transparency log.

    Keeps the last checkpoint it trusted, checks that every newer one is consistent with it, and
    checks sampled records' inclusion. Two checkpoints that cannot both be true (a split view)
    are reported loudly and kept as evidence; the node never trusts the newer one.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.trusted: tlog.Checkpoint | None = None
        self.key: tlog.NoteKey | None = None
        self.origin: str | None = None
        #: (trusted note, conflicting note) pairs: proof of a split view, signed by the broker
        self.evidence: list[tuple[str, str]] = []
        self.included = 0
        self.failures: list[tuple[int, str]] = []
        self._pending: list[tuple[int, bytes]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        path = node.config.checkpoint_file
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                note = f.read()
            text = note.split("\n\n")[0] + "\n"
            self.trusted = tlog.Checkpoint.parse(text, note)  # re-verified on first refresh

    async def _note_key(self) -> tlog.NoteKey:
        if self.key is None:
            info = await self.node.get_json("/v1/log/key")
            public = await self.node.trust(info["broker"])  # via the exchange CA
            key = tlog.NoteKey(info["origin"], public)
            if key.vkey != info["vkey"]:
                raise IntegrityError("the broker's log key is not its certified signing key",
                                     code=Code.CHECKPOINT_FORGED)
            self.key, self.origin = key, info["origin"]
        return self.key

    async def refresh(self) -> tlog.Checkpoint:
        """Fetch the latest checkpoint, verify it and its consistency with the trusted one."""
        key = await self._note_key()
        note = (await self.node._get_bytes("/v1/log/checkpoint")).decode()
        cp = tlog.open_checkpoint(key, note, self.origin)
        return await self.observe(cp)

    async def observe(self, cp: tlog.Checkpoint) -> tlog.Checkpoint:
        """Check a (signature-verified) checkpoint against the trusted one; trust it if newer."""
        old = self.trusted
        if old is not None:
            if old.note:
                tlog.open_checkpoint(await self._note_key(), old.note, self.origin)
            lo, hi = (old, cp) if old.size <= cp.size else (cp, old)
            try:
                if lo.size == hi.size:
                    if lo.root != hi.root:
                        raise IntegrityError(f"two checkpoints of size {lo.size} differ",
                                             code=Code.SPLIT_VIEW)
                else:
                    proof = await self.node.get_json(
                        f"/v1/log/proof/consistency?from={lo.size}&to={hi.size}")
                    tlog.check_consistent(lo, hi, [_b64(p) for p in proof["proof"]])
            except IntegrityError as err:
                if err.code == "split_view":
                    self.evidence.append((old.note, cp.note))
                    logger.error("split_view", trusted_size=old.size, seen_size=cp.size,
                              detail=err.message)
                    self._save_evidence(old, cp)
                raise
            if cp.size <= old.size:
                return old
        self.trusted = cp
        if self.node.config.checkpoint_file:
            with open(self.node.config.checkpoint_file, "w", encoding="utf-8") as f:
                f.write(cp.note)
        return cp

    def _save_evidence(self, old: tlog.Checkpoint, new: tlog.Checkpoint) -> None:
        path = self.node.config.checkpoint_file
        if path:
            with open(path + ".split-view", "a", encoding="utf-8") as f:
                f.write(old.note + "\n" + new.note + "\n")

    async def verify_inclusion(self, seq: int, leaf: bytes) -> None:
        cp = self.trusted
        if cp is None or cp.size <= seq:
            cp = await self.refresh()
        proof = await self.node.get_json(f"/v1/log/proof/inclusion?seq={seq}&size={cp.size}")
        merkle.verify_inclusion(leaf, seq, cp.size, [_b64(p) for p in proof["proof"]], cp.root)
        self.included += 1

    def check_later(self, seq: int, leaf: bytes) -> None:
        self._pending.append((seq, leaf))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        self._wake.set()

    async def _drain(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, []
            for seq, leaf in pending:
                try:
                    await self.verify_inclusion(seq, leaf)
                except IntegrityError as err:
                    self.failures.append((seq, err.code))
                    logger.error("inclusion_failed", seq=seq, code=err.code, detail=err.message)
                except (aiohttp.ClientError, OSError, TimeoutError, UnavailableError):
                    self._pending.append((seq, leaf))  # try again with the next batch
                except ExchangeError as err:
                    # e.g. a broker behind the one that delivered the record (beyond_log)
                    logger.warning("inclusion_unchecked", seq=seq, code=err.code,
                                detail=err.message)
                    self._pending.append((seq, leaf))

    async def settle(self) -> None:
        """Check every queued inclusion now (for tests, audits and shutdown)."""
        pending, self._pending = self._pending, []
        for seq, leaf in pending:
            await self.verify_inclusion(seq, leaf)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)
