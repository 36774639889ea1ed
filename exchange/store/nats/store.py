"""The scale-out store: NATS JetStream via nats-py, shared by any number of broker processes.

What lives where (``P`` is the prefix, ``exchange`` by default; stream names upper-case it):

- stream ``P_RECORDS``, subjects ``P.rec.<dataset>.<key>``: every accepted record, one message
  each. The stream's order is the exchange's order: ``seq = stream sequence - 1``, and the
  transparency log's leaf ``seq`` is that message. The last message on a key's subject is the
  key's current version. The first record of a batch also carries the publisher's batch
  statement and signature; a batch's id is the stream sequence of that first record.
- stream ``P_DEAD``, subjects ``P.dead.<publisher>``: dead letters; a dead letter's id is its
  stream sequence.
- stream ``P_CHECKPOINTS``, subject ``P.checkpoint``: signed checkpoints, in size order.
- stream ``P_ACCESS``, subjects ``P.access.<dataset>``: who received which records (one message
  per ack or lookup).
- KV bucket ``P_SUBS``: subscription positions (``acked``), updated by revision.

Correctness under several brokers comes from JetStream alone, no lock of ours:

- A group commit (the concurrent batches the broker decided together, at most
  ``limits.max_batch_records`` records) is one atomic batch (ADR-50: ``Nats-Batch-Id``/
  ``-Sequence``/``-Commit``, stream ``allow_atomic``), so its accepted records are all stored
  or none are.
- Each record carries ``Nats-Expected-Last-Subject-Sequence``: the stream sequence of the key's
  current version when the broker decided (0: none). If another broker wrote the key in between,
  the server refuses the whole batch (10071 "wrong last sequence"); the store raises ``StaleRead``
  and the broker decides again on fresh versions, so exactly one of two racing brokers wins and
  the other reports ``version_conflict``/``stale_version``/a duplicate. (ADR-50 allows the check
  only on a key's first message in a batch; later messages for the same key ride on it.)
- Checkpoints are appended with the expected sequence of the latest checkpoint, after checking
  they extend it (a consistency proof from the sequencer's tree); a broker that loses the race
  reads the winner and checks again. The stream defines the tree, so a checkpoint from any
  broker, or from a sequencer before and after a fail-over, is consistent with every other.
- Subscription positions move by KV revision (``update(last=revision)``), monotonic.

One broker process, the sequencer, holds a lease in the KV bucket ``P_LEASE`` (``lease``;
another takes it over within the lease when it dies). It alone reads the records stream back
(``tailer``): it grows the transparency log from the stream's order, signs the checkpoints, and
announces the log's head to every broker and answers their index queries (``sequencer``). The
others only gate, append and serve:

- a decision reads the keys' current versions from the stream itself: the last message of each
  key's subject, by one batched direct get (``multi_last``); a version another broker wrote
  meanwhile makes the append's expected-sequence check fail, as above;
- a receipt signs the log's size and root once the announced log holds the batch (as on sqlite,
  the log right after the batch, or later), so its promise holds as before;
- subscribers read their dataset's records only, filtered by subject at the server and capped
  at the log's head (``feeds``): a broker reads what its own subscribers need, no more.

Appending brokers tell the sequencer "appended up to seq N" on the core subject
``P.appended.<dataset>``, which wakes its tailer; the announcements on ``P.log.head`` wake every
broker's live subscribers. A lost message costs at most the idle poll interval or one query.

Dead letters are written after the records commit, not in the same atomic batch (they live in
another stream, and the records stream's sequence must stay the log's). If the broker dies in
between, the publisher has no receipt and retries; the retry finds the accepted records as
duplicates and refuses the others again, writing their dead letters then.
"""

from __future__ import annotations

import asyncio
import bisect
import re
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import structlog

import nats
import nats.errors
import nats.js.errors
from exchange.core import ledger, merkle, tlog
from exchange.core.errors import Code, InputError, IntegrityError, UnavailableError
from exchange.core.gate import Current
from exchange.core.signing import Statement
from exchange.store.base import AccessRow, Appended, StaleRead, SubscriptionRow
from exchange.store.nats.direct import PAGE, DirectGets, unavailable
from exchange.store.nats.direct import Client as FastClient
from exchange.store.nats.feeds import Feeds, read_logged, record_of, seq_of
from exchange.store.nats.kv import Buckets
from exchange.store.nats.lease import KEY as LEASE_KEY
from exchange.store.nats.lease import Lease
from exchange.store.nats.sequencer import LogView, Queries, Sequencer, decode_head
from exchange.store.nats.tailer import Tailer
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig, StorageType, StreamConfig

__all__ = ["NatsStore", "parse_url", "token"]

logger = structlog.get_logger("exchange.store.nats")

_enc = msgspec.msgpack.Encoder()
_entry = msgspec.msgpack.Decoder(ledger.Entry)


class _Version(msgspec.Struct, array_like=True, frozen=True):
    """The leading fields of a stored ``ledger.Entry``: what a decision needs of a key's
    current version (msgspec stops there: the body is not decoded)."""

    dataset: str
    key: str
    version: int
    n: int
    index: int
    accepted_at: float
    digest: bytes
    content: bytes


_version = msgspec.msgpack.Decoder(_Version)
_dead = msgspec.msgpack.Decoder(ledger.DeadLetter)
_access = msgspec.msgpack.Decoder(AccessRow)
_stmt = msgspec.msgpack.Decoder(Statement)
_pub_ack = msgspec.json.Decoder(dict[str, Any])

_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
#: JetStream's "wrong last sequence": 10071 with the sequence (single server), 10164 without it
#: (a clustered stream's leader checking before it proposes)
WRONG_LAST_SEQUENCE = frozenset({10071, 10164})
#: the sequencer lease, seconds: a dead sequencer's role is taken over within about this long
DEFAULT_LEASE = 3.0
#: subjects per multi-last direct get (the server answers at most 1024)
MULTI_LAST = 1000


def token(value: str) -> str:
    """A subject token for a key or node id: itself when plain, else ``~`` + hex of its UTF-8
    (subject tokens cannot hold ``.``, ``*``, ``>`` or whitespace; a plain token never starts
    with ``~``, so the mapping is one-to-one)."""
    return value if _SAFE.match(value) else "~" + value.encode().hex()


def parse_url(url: str) -> tuple[list[str], dict[str, str]]:
    """``nats://h1:p1,h2:p2?replicas=3&prefix=exchange&sync=always`` → server URLs and
    parameters."""
    parts = urlsplit(url)
    if parts.scheme not in ("nats", "tls") or not parts.netloc:
        raise InputError(f"store URL {url!r} is not nats://HOST:PORT[,HOST:PORT...]",
                         code=Code.BAD_CONFIG)
    servers = [f"{parts.scheme}://{h}" for h in parts.netloc.split(",") if h]
    params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(params) - {"replicas", "prefix", "sync", "lease", "sequencer"}
    if unknown:
        raise InputError(f"store URL parameters {sorted(unknown)} are unknown; use replicas, "
                         "prefix, sync, lease, sequencer", code=Code.BAD_CONFIG)
    if params.get("sequencer", "yes") not in ("yes", "no"):
        raise InputError("sequencer is yes (this broker may take the sequencer role, the "
                         "default) or no (it never does)", code=Code.BAD_CONFIG)
    try:
        lease = float(params.get("lease", DEFAULT_LEASE))
    except ValueError:
        lease = 0.0
    if not 0.5 <= lease <= 60:
        raise InputError("lease is the sequencer lease in seconds, 0.5 to 60",
                         code=Code.BAD_CONFIG)
    if params.get("sync", "always") != "always":
        raise InputError("sync=always is the only value: it says the servers fsync before "
                         "they acknowledge", code=Code.BAD_CONFIG)
    return servers, params


class NatsStore:
    """``Store`` on a NATS JetStream cluster (see the module docstring): the streams and the
    appends here; reads through ``direct``, derived state in ``tailer``, positions and quality
    counters in ``kv``."""

    #: a group commit is one atomic NATS batch: at most the server's batch limit of messages
    atomic_batch_bounded = True
    #: what ``/healthz`` names the store (the operator console shows it)
    kind = "nats"

    def __init__(self, url: str, *, request_timeout: float = 5.0, idle_poll: float = 1.0,
                 lease_id_file: Path | None = None) -> None:
        self.servers, params = parse_url(url)
        self.prefix = params.get("prefix", "exchange")
        if not re.match(r"^[a-z][a-z0-9_]*$", self.prefix):
            raise InputError("store prefix must be lower-case letters, digits, _",
                             code=Code.BAD_CONFIG)
        self.replicas = int(params["replicas"]) if "replicas" in params else None
        #: the operator says every server fsyncs before acknowledging (sync_interval: always);
        #: the client protocol cannot show it, so without the word the broker warns at start
        self.sync_declared = params.get("sync") == "always"
        upper = self.prefix.upper()
        self.records_stream = f"{upper}_RECORDS"
        self.dead_stream = f"{upper}_DEAD"
        self.access_stream = f"{upper}_ACCESS"
        self.cp_stream = f"{upper}_CHECKPOINTS"
        self.subs_bucket = f"{upper}_SUBS"
        self.quality_bucket = f"{upper}_QUALITY"
        self.lease_bucket = f"{upper}_LEASE"
        self.lease_s = float(params.get("lease", DEFAULT_LEASE))
        #: whether this broker may take the sequencer role (``sequencer=no``: it only gates
        #: and serves, so an operator can keep the role on processes that take no clients)
        self.eligible = params.get("sequencer", "yes") == "yes"
        self.timeout = request_timeout
        self._nc: Client | None = None
        self.instance = uuid.uuid4().hex
        self.direct = DirectGets(lambda: self.nc, request_timeout)
        self.view = LogView()
        self.tailer = Tailer(self.direct, self.records_stream, timeout=request_timeout,
                             idle_poll=idle_poll)
        self.sequencer = Sequencer(self.tailer, lambda: self.nc, self.prefix, self.view,
                                   timeout=request_timeout)
        self.queries = Queries(self.sequencer, lambda: self.nc, self.prefix,
                               timeout=request_timeout)
        self.feeds = Feeds(self.direct, self.records_stream, self.prefix, self.view)
        self.lease = Lease(self._lease_kv, self.instance, self.lease_s,
                           on_gain=self.sequencer.start, on_lose=self.sequencer.stop)
        #: where this broker keeps its lease id across restarts (its data directory): a
        #: broker restarted after a crash takes its own lease back at once
        self.lease_id_file = lease_id_file
        # this process's quality counters are its own key: brokers never overwrite each other
        self.kv = Buckets(lambda: self.nc, self.direct, subs_bucket=self.subs_bucket,
                          quality_bucket=self.quality_bucket, instance=self.instance,
                          timeout=request_timeout)
        self._batch_cache: dict[int, ledger.BatchRow] = {}
        self._background: set[asyncio.Task[None]] = set()
        #: the highest seq ``current`` returned: a receipt may cite it (a duplicate), so it is
        #: signed only with a log that holds it
        self._cited = -1

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def nc(self) -> Client:
        if self._nc is None or self._nc.is_closed:
            raise UnavailableError("store is not open", code=Code.STORE_CLOSED)
        return self._nc

    def health(self) -> dict[str, Any]:
        """What the client already knows of the cluster, without a request: whether it is
        connected, to which server, how many servers it knows (the pool includes those learnt
        from INFO), the replicas the streams were made with, and whether this broker is the
        sequencer."""
        nc = self._nc
        url = nc.connected_url if nc is not None and nc.is_connected else None
        return {"connected": bool(nc is not None and nc.is_connected),
                "server": url.netloc if url is not None else None,
                "servers": len(nc.servers) if nc is not None else 0,
                "replicas": self.replicas, "sequencer": self.sequencing}

    def watch(self, on_append: Callable[[str, int], None]) -> None:
        """Call ``on_append(dataset, last_seq)`` whenever the log grows by records of
        ``dataset`` (any broker's)."""
        self.view.watch(on_append)

    @property
    def sequencing(self) -> bool:
        """Whether this process is the sequencer now (it signs checkpoints on its timer)."""
        return self.sequencer.active

    async def _lease_kv(self) -> Any:
        with unavailable("opening the lease bucket"):
            return await self.kv.bucket(self.lease_bucket)

    async def open(self) -> None:
        if self.lease_id_file is not None:
            self.lease.instance = _lease_id(self.lease_id_file)
        try:
            nc = FastClient()
            await nc.connect(
                servers=self.servers, connect_timeout=2, max_reconnect_attempts=-1,
                # seconds: nats-py types it int, and sleeps for the float given
                reconnect_time_wait=0.1,  # type: ignore[arg-type]
                allow_reconnect=True, name="exchange-broker",
                error_cb=self._on_error, disconnected_cb=self._on_disconnect,
                reconnected_cb=self._on_reconnect)
            self._nc = nc
        except (nats.errors.Error, OSError, TimeoutError) as err:
            raise UnavailableError(f"cannot reach NATS at {', '.join(self.servers)}: {err!r}",
                                   code=Code.STORE_UNAVAILABLE) from None
        try:
            with unavailable("setting up streams"):
                await self._setup()
                await self.direct.start()
                await self.nc.subscribe(f"{self.prefix}.log.head", cb=self._on_head)
                # the lease key's own subject: a holder's clean stop deletes it
                await self.nc.subscribe(f"$KV.{self.lease_bucket}.{LEASE_KEY}",
                                        cb=self._on_lease)
            # the sequencer's role if it is free (then the whole log is read before serving),
            # else the log's state from the sequencer; a new bucket's leader may not be
            # elected yet: the lease's own loop tries again meanwhile
            if self.eligible:
                try:
                    await self.lease.step()
                except UnavailableError as err:
                    logger.info("sequencer_lease_not_yet", error=err.message)
                self.lease.start()
            gaining = self.lease.gaining
            if gaining is not None:
                # this broker took the role: it reads the whole log, however long it is (the
                # lease loop cancels that if the lease is lost meanwhile)
                await asyncio.wait([gaining])
            if not self.sequencing:
                await self.queries.refresh(self.view, time.monotonic() + 2 * self.lease_s
                                           + max(self.timeout, 10.0))
            if not self.sync_declared:
                logger.warning(
                    "nats_fsync_unverified",
                    detail="a receipt is durable only if every JetStream server fsyncs before "
                    "it acknowledges (jetstream { sync_interval: always }); the client "
                    "protocol cannot show it: set it, then add sync=always to the store URL")
        except BaseException:
            await self.close()
            raise

    async def _setup(self) -> None:
        # the JetStream API of a cluster can refuse for a moment (leader elections): try again
        for attempt in range(10):
            try:
                await self._create()
                return
            except (nats.js.errors.APIError, nats.errors.TimeoutError, TimeoutError):
                if attempt == 9:
                    raise
                await asyncio.sleep(0.1 * (attempt + 1))

    async def _create(self) -> None:
        js = self.nc.jetstream(timeout=self.timeout)
        if self.replicas is None:
            # R3 on a cluster of three or more (the pool includes servers learnt from INFO)
            self.replicas = 3 if len(self.nc.servers) >= 3 else 1
        r = self.replicas
        for name, subjects in ((self.records_stream, [f"{self.prefix}.rec.>"]),
                               (self.dead_stream, [f"{self.prefix}.dead.>"]),
                               (self.access_stream, [f"{self.prefix}.access.>"]),
                               (self.cp_stream, [f"{self.prefix}.checkpoint"])):
            config = StreamConfig(name=name, subjects=subjects, storage=StorageType.FILE,
                                  num_replicas=r, allow_direct=True, allow_atomic=True,
                                  deny_delete=True, deny_purge=True)
            try:
                await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                await js.add_stream(config)
        for bucket, ttl in ((self.subs_bucket, None), (self.quality_bucket, None),
                            (self.lease_bucket, self.lease_s)):
            try:
                await js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, replicas=r,
                                                         storage=StorageType.FILE, direct=True,
                                                         ttl=ttl))
        # the lease is the bucket's: renewals follow the expiry the bucket was made with
        made = (await js.stream_info(f"KV_{self.lease_bucket}")).config.max_age
        if made and abs(made - self.lease_s) > 1e-6:
            logger.warning("sequencer_lease_of_bucket", asked=self.lease_s, bucket=made,
                           detail="the lease bucket was made with another lease; using it")
            self.lease_s = self.lease.ttl = float(made)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self.lease.stop()
        await self.sequencer.stop()
        if self._nc is not None:
            # everything this store wrote was acknowledged already: nothing to drain
            try:
                await asyncio.wait_for(self._nc.close(), self.timeout)
            except Exception as err:  # closing must not fail for it: nothing is pending
                logger.info("nats_close_failed", error=repr(err))
            self._nc = None
        self.kv.forget()

    async def _on_error(self, err: Exception) -> None:
        logger.warning("nats_error", error=repr(err))

    async def _on_disconnect(self) -> None:
        logger.warning("nats_disconnected")

    async def _on_reconnect(self) -> None:
        logger.info("nats_reconnected", server=str(self.nc.connected_url))
        self.sequencer.hint()
        if not self.sequencing:
            # announcements sent while disconnected are lost: ask for the whole state
            task = asyncio.create_task(self._refresh_view())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _refresh_view(self) -> None:
        try:
            await self.queries.refresh(self.view, time.monotonic() + 2 * self.lease_s
                                       + max(self.timeout, 10.0))
        except Exception as err:  # the idle announcement brings the heads anyway
            logger.info("log_state_not_refreshed", error=repr(err))

    async def _on_lease(self, msg: Msg) -> None:
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            self.lease.poke()

    def _wait_logged(self) -> float:
        """How long an append waits for the log to hold its records (a monotonic deadline):
        long enough for another broker to take the sequencer role over and read up."""
        return time.monotonic() + 2 * self.timeout + self.lease_s

    async def _on_head(self, msg: Msg) -> None:
        try:
            size, root, touched = decode_head(msg.data)
        except msgspec.DecodeError:
            logger.warning("log_head_malformed")
            return
        self.view.apply(size, root, touched)

    def _check_connected(self) -> None:
        if not self.nc.is_connected:
            # refuse now rather than buffer: a publish must never be accepted and then lost
            raise UnavailableError("NATS is unreachable; retry later", code=Code.STORE_UNAVAILABLE)

    # -- records -----------------------------------------------------------------------------

    async def sync(self) -> None:
        with unavailable("reading the records stream's state"):
            info = await self.nc.jetstream(timeout=self.timeout).stream_info(
                self.records_stream)
        await self.queries.state(self.view, info.state.last_seq, self._wait_logged())

    async def head(self, dataset: str | None = None) -> int:
        """The last seq in the log (of ``dataset``), as last announced."""
        if dataset is None:
            return self.view.size - 1
        return self.view.heads.get(dataset, -1)

    async def current(self, dataset: str, keys: Sequence[str]) -> dict[str, Current]:
        """The last message of each key's subject, by batched direct gets. A replica behind
        the leader may serve an older one: that only costs a retry, because the append is
        conditional on exactly what the decision saw."""
        names = [self._subject(dataset, k) for k in dict.fromkeys(keys)]
        chunks = [names[i:i + MULTI_LAST] for i in range(0, len(names), MULTI_LAST)]
        out: dict[str, Current] = {}
        for msgs in await asyncio.gather(*(self.direct.get(
                self.records_stream, {"multi_last": chunk, "batch": len(chunk)}, batch=True)
                for chunk in chunks)):
            for m in msgs:
                v = _version.decode(m.data)
                seq = seq_of(m)
                out[v.key] = Current(v.version, v.content, seq)
                self._cited = max(self._cited, seq)
        return out

    def _subject(self, dataset: str, key: str) -> str:
        return f"{self.prefix}.rec.{dataset}.{token(key)}"

    async def _atomic(self, msgs: list[tuple[str, bytes, dict[str, str]]]) -> int:
        """Publish ``msgs`` as one atomic batch (ADR-50); the stream sequence of the last."""
        bid = uuid.uuid4().hex
        n = len(msgs)
        nc = self.nc
        with unavailable("publishing"):
            for i, (subject, data, headers) in enumerate(msgs, 1):
                h = {"Nats-Batch-Id": bid, "Nats-Batch-Sequence": str(i), **headers}
                if i == n:
                    h["Nats-Batch-Commit"] = "1"
                if i == 1 or i == n or i % 500 == 0:
                    # the first message and every 500th are requests: an early refusal, and
                    # flow control; the commit's reply is the pub ack of the whole batch
                    reply = await nc.request(subject, data, timeout=self.timeout, headers=h)
                    if reply.data or i == n:
                        ack = _pub_ack.decode(reply.data)
                        err = ack.get("error")
                        if err:
                            if err.get("err_code") in WRONG_LAST_SEQUENCE:
                                raise StaleRead(err.get("description", "wrong last sequence"))
                            raise UnavailableError(f"NATS refused the batch: {err}",
                                                   code=Code.STORE_UNAVAILABLE)
                        if i == n:
                            return int(ack["seq"])
                else:
                    await nc.publish(subject, data, headers=h)
        raise AssertionError("unreachable")

    async def append(self, plan: ledger.Plan) -> Appended:
        """A group commit as one atomic NATS batch: all stored or none.

        Its records take consecutive seqs in plan order; each key's expected last subject
        sequence is checked once, at its first record in the group (what the decision saw).
        A batch's id is the stream sequence of its first record. The broker keeps a group
        within the server's atomic batch limit (``limits.max_batch_records``)."""
        self._check_connected()
        msgs: list[tuple[str, bytes, dict[str, str]]] = []
        for e, replaced, first in zip(plan.entries, plan.replaces, plan.first(), strict=True):
            headers = {}
            if first:
                # conditional on exactly what the decision saw: the key's subject last written
                # at that version's stream sequence (0: never)
                expected = 0 if replaced is None else replaced + 1
                headers["Nats-Expected-Last-Subject-Sequence"] = str(expected)
            msgs.append((self._subject(e.dataset, e.key), _enc.encode(e), headers))
        first_seq = self.view.size
        if msgs:
            # StaleRead: another broker wrote one of these keys; the retry reads them anew
            last_stream_seq = await self._atomic(msgs)
            first_seq = last_stream_seq - len(msgs)  # seq of the first record (stream seq - 1)
            with unavailable("announcing an append"):
                for dataset in dict.fromkeys(b.dataset for b in plan.batches if b is not None):
                    await self.nc.publish(f"{self.prefix}.appended.{dataset}",
                                          str(last_stream_seq - 1).encode())
        await self.add_dead_letters(plan.dead, quality=plan.quality)
        # the receipt signs the log with these records in it, and every record it cites (a
        # duplicate read from the stream may not be in the log yet, after a fail-over)
        need = max(first_seq + len(msgs) if msgs else 0, self._cited + 1)
        if need > self.view.size:
            await self.queries.state(self.view, need, self._wait_logged())
        return Appended([0 if b is None else first_seq + b.offset + 1 for b in plan.batches],
                        first_seq)

    async def add_dead_letters(self, dead: Sequence[ledger.DeadLetter], *,
                               quality: Sequence[ledger.QualityRow] = ()) -> None:
        self._check_connected()
        if dead:
            await self._atomic([(f"{self.prefix}.dead.{token(d.publisher)}", _enc.encode(d), {})
                                for d in dead])
        await self.kv.save_quality(quality)

    async def read(self, dataset: str, after: int, limit: int) -> list[ledger.StoredRecord]:
        return await self.feeds.read(dataset, after, limit)

    async def versions(self, dataset: str, key: str) -> list[ledger.StoredRecord]:
        """Every version of one key: the messages on its own subject, read by direct gets."""
        subject = self._subject(dataset, key)
        out: list[ledger.StoredRecord] = []
        start = 1
        size = self.view.size
        while start <= size:
            msgs = await self.direct.get(
                self.records_stream, {"seq": start, "batch": PAGE, "next_by_subj": subject},
                batch=True)
            rows = [record_of(m)[0] for m in msgs if seq_of(m) < size]
            out.extend(rows)
            if len(rows) < PAGE:
                break
            start = rows[-1].seq + 2
        return out

    async def add_access(self, rows: Sequence[AccessRow]) -> None:
        self._check_connected()
        if rows:
            await self._atomic([(f"{self.prefix}.access.{token(r.dataset)}", _enc.encode(r), {})
                                for r in rows])

    async def access(self, dataset: str, seqs: Sequence[int]) -> list[AccessRow]:
        """Reads the dataset's access messages in order and keeps those holding a seq (a scan
        of the dataset's acks: an index per key is a follow-up)."""
        wanted = sorted(set(seqs))
        found: list[AccessRow] = []
        start = 1
        while wanted:
            msgs = await self.direct.get(self.access_stream, {
                "seq": start, "batch": PAGE,
                "next_by_subj": f"{self.prefix}.access.{token(dataset)}"}, batch=True)
            for m in msgs:
                row = _access.decode(m.data)
                i = bisect.bisect_left(wanted, row.first_seq)
                if i < len(wanted) and wanted[i] <= row.last_seq:
                    found.append(row)
            if len(msgs) < PAGE:
                break
            assert msgs[-1].headers is not None
            start = int(msgs[-1].headers["Nats-Sequence"]) + 1
        return found

    async def read_range(self, start: int, end: int) -> list[ledger.StoredRecord]:
        """Records start <= seq < end of every dataset, none beyond the log; a replica behind
        the leader may serve a prefix: read on from it, a few times, before settling."""
        end = min(end, self.view.size)
        out: list[ledger.StoredRecord] = []
        while start < end:
            rows, _ = await read_logged(self.direct, self.records_stream, start - 1,
                                        min(PAGE, end - start), end - 1)
            if not rows:
                break
            out.extend(rows)
            start = rows[-1].seq + 1
        return out

    async def seq_before_time(self, dataset: str, t: float) -> int:
        return int(await self.queries.ask("before", dataset, t))

    async def count_after(self, dataset: str, seq: int) -> int:
        return int(await self.queries.ask("count_after", dataset, seq))

    async def batches(self, ids: Sequence[int]) -> dict[int, ledger.BatchRow]:
        recent = self.feeds.batches(ids)
        if len(recent) == len(set(ids)):
            return recent
        unique = [i for i in dict.fromkeys(ids) if i not in self._batch_cache
                  and i not in recent]

        async def one(bid: int) -> None:
            for m in await self.direct.get(self.records_stream, {"seq": bid}, batch=False):
                e = _entry.decode(m.data)
                if e.n == 0 and e.statement:
                    self._batch_cache[bid] = ledger.BatchRow(bid, _stmt.decode(e.statement),
                                                      e.signature)

        if unique:
            if len(self._batch_cache) > 100_000:
                self._batch_cache.clear()
            await asyncio.gather(*(one(b) for b in unique))
        return {**recent, **{i: self._batch_cache[i] for i in ids if i in self._batch_cache}}

    # -- dead letters --------------------------------------------------------------------------

    async def dead_letter_count(self, publisher: str) -> int:
        subject = f"{self.prefix}.dead.{token(publisher)}"
        with unavailable("counting dead letters"):
            info = await self.nc.jetstream(timeout=self.timeout).stream_info(
                self.dead_stream, subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0))

    async def dead_letters(self, publisher: str, after: int, limit: int) -> list[ledger.DeadLetter]:
        if limit <= 0:
            return []
        msgs = await self.direct.get(self.dead_stream, {
            "seq": max(after, 0) + 1, "batch": min(limit, PAGE),
            "next_by_subj": f"{self.prefix}.dead.{token(publisher)}"}, batch=True)
        out = []
        for m in msgs:
            assert m.headers is not None
            out.append(msgspec.structs.replace(_dead.decode(m.data),
                                               id=int(m.headers["Nats-Sequence"])))
        return out

    # -- quality and references ------------------------------------------------------------

    async def save_quality(self, rows: Sequence[ledger.QualityRow]) -> None:
        await self.kv.save_quality(rows)

    async def load_quality(self) -> list[ledger.QualityRow]:
        """A new process counts from zero; what earlier ones counted is ``other_quality``."""
        return []

    async def other_quality(self) -> list[ledger.QualityRow]:
        return await self.kv.other_quality()

    async def _unresolved(self) -> list[ledger.Reference]:
        return [(str(t), str(tk), str(d), str(k))
                for t, tk, d, k in await self.queries.ask("unresolved")]

    async def unresolved_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, _, dataset, _ in await self._unresolved():
            out[dataset] = out.get(dataset, 0) + 1
        return out

    async def unresolved_sample(self, dataset: str, limit: int = 20) -> list[ledger.Reference]:
        return sorted(r for r in await self._unresolved() if r[2] == dataset)[:limit]

    # -- subscriptions -----------------------------------------------------------------------

    async def subscription(self, node: str, dataset: str, name: str) -> SubscriptionRow | None:
        return await self.kv.subscription(node, dataset, name)

    async def create_subscription(self, node: str, dataset: str, name: str, acked: int,
                                  now: float) -> SubscriptionRow:
        return await self.kv.create_subscription(node, dataset, name, acked, now)

    async def ack(self, node: str, dataset: str, name: str, seq: int, *,
                  access: AccessRow | None = None) -> None:
        # the access row first: an ack is never stored without the record of who received
        await self.add_access([access] if access is not None else [])
        await self.kv.ack(node, dataset, name, seq)

    async def subscriptions(self) -> list[SubscriptionRow]:
        return await self.kv.subscriptions()

    # -- transparency log --------------------------------------------------------------------

    def log_state(self) -> tuple[int, bytes]:
        """The log as last announced by the sequencer (its own, on the sequencer)."""
        return self.view.size, self.view.root

    async def log_nodes(self, coords: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        if not coords:
            return {}
        return {(int(lv), int(ix)): bytes(h)
                for lv, ix, h in await self.queries.ask("nodes", list(coords))}

    async def _latest_cp(self) -> tuple[int, tlog.Checkpoint | None]:
        msgs = await self.direct.get(self.cp_stream, {"last_by_subj": f"{self.prefix}.checkpoint"},
                                  batch=False)
        if not msgs:
            return 0, None
        m = msgs[0]
        assert m.headers is not None
        return int(m.headers["Nats-Sequence"]), _note(m.data.decode())

    async def add_checkpoint(self, cp: tlog.Checkpoint, now: float) -> None:
        self._check_connected()
        for _ in range(100):
            seq, latest = await self._latest_cp()
            if latest is not None:
                if latest.size >= cp.size:
                    # another broker got there first; both came from the same stream order
                    if latest.size == cp.size and latest.root != cp.root:
                        raise IntegrityError("a stored checkpoint of the same size has another "
                                             "root (split view)", code=Code.SPLIT_VIEW)
                    return
                if latest.size > 0:
                    await self._check_extends(latest, cp)
            with unavailable("storing a checkpoint"):
                reply = await self.nc.request(
                    f"{self.prefix}.checkpoint", cp.note.encode(), timeout=self.timeout,
                    headers={"Nats-Expected-Last-Subject-Sequence": str(seq)})
            err = _pub_ack.decode(reply.data).get("error")
            if err and err.get("err_code") in WRONG_LAST_SEQUENCE:
                continue  # lost the race: read the winner and check again
            if err:
                raise UnavailableError(f"NATS refused the checkpoint: {err}",
                                       code=Code.STORE_UNAVAILABLE)
            return
        raise UnavailableError("checkpoint kept losing races", code=Code.STORE_UNAVAILABLE)

    async def _check_extends(self, old: tlog.Checkpoint, new: tlog.Checkpoint) -> None:
        """Refuse to store ``new`` unless this broker's tree proves it extends ``old``."""
        if old.size > self.view.size:
            raise UnavailableError("the latest checkpoint is beyond this broker's log",
                                   code=Code.STORE_UNAVAILABLE)
        wanted: list[tuple[int, int]] = []

        def plan(level: int, index: int) -> bytes:
            wanted.append((level, index))
            return b"\x00" * 32

        merkle.consistency_proof(plan, old.size, new.size)
        nodes = await self.log_nodes(wanted)
        proof = merkle.consistency_proof(lambda lv, ix: nodes[(lv, ix)], old.size, new.size)
        tlog.check_consistent(old, new, proof)

    async def checkpoints(self, since_size: int = 0) -> list[tlog.Checkpoint]:
        out: list[tlog.Checkpoint] = []
        seq = 1
        while True:
            msgs = await self.direct.get(self.cp_stream, {"seq": seq, "batch": PAGE}, batch=True)
            for m in msgs:
                cp = _note(m.data.decode())
                if cp.size >= since_size:
                    out.append(cp)
            if len(msgs) < PAGE:
                return out
            assert msgs[-1].headers is not None
            seq = int(msgs[-1].headers["Nats-Sequence"]) + 1

    async def latest_checkpoint(self) -> tlog.Checkpoint | None:
        return (await self._latest_cp())[1]


def _lease_id(path: Path) -> str:
    """This broker's lease id, kept in ``path`` (made on first use): one process at a time
    serves a data directory, so a lease naming it is this broker's own."""
    try:
        value = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        value = ""
    if not re.fullmatch(r"[0-9a-f]{32}", value):
        value = uuid.uuid4().hex
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n", encoding="ascii")
    return value


def _note(note: str) -> tlog.Checkpoint:
    return tlog.Checkpoint.parse(note.split("\n\n")[0] + "\n", note)
