"""Publish: decode → gate → store → signed receipt. One instance per broker process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exchange.broker.metrics import QualityTracker
from exchange.core import datasets, gate, quality
from exchange.core.access import Limits
from exchange.core.envelope import now_rfc3339
from exchange.core.errors import (
    Code,
    ConflictError,
    ExchangeError,
    InputError,
    InvalidRecord,
    UnavailableError,
    Violation,
)
from exchange.core.receipts import sign as sign_receipts
from exchange.core.signing import Batch, Verifier
from exchange.core.wire import Duplicate, Receipt, SignedReceipt
from exchange.store.base import (
    Append,
    DeadLetter,
    QualityRow,
    Reference,
    StaleRead,
    Store,
)

__all__ = ["Outcome", "Publisher"]

_json_batch = msgspec.json.Decoder(Batch)
def _no_ext(code: int, data: memoryview) -> Any:
    # MessagePack extension types have no JSON form, so no canonical bytes: refuse them here
    raise InputError(f"MessagePack extension type {code} is not allowed in records",
                     code=Code.MALFORMED)


_msgpack_batch = msgspec.msgpack.Decoder(Batch, ext_hook=_no_ext)
_json = msgspec.json.Encoder()

#: decide again at most this often when another broker wrote the same keys meanwhile (NATS)
STALE_READ_RETRIES = 20


#: most batches stored in one group commit
MAX_GROUP = 64
#: most records in one group commit (past its first batch): bounds the rows built in memory
MAX_GROUP_RECORDS = 8192


@dataclass
class _Job:
    """A checked batch waiting for the writer."""

    node: str
    dataset: str
    spec: datasets.DatasetSpec
    batch: Batch
    checked: gate.Checked
    future: asyncio.Future[Outcome]


@dataclass
class Outcome:
    """What a publish produced: the signed receipt, and the problem when something was refused."""

    receipt: SignedReceipt
    status: int
    problem: dict[str, Any] | None
    last_seq: int


class Publisher:
    def __init__(self, *, store: Store, broker_id: str, signing_key: Ed25519PrivateKey,
                 verifier: Verifier, limits: Callable[[], Limits],
                 on_append: Callable[[str, int], None],
                 quality: QualityTracker | None = None) -> None:
        self.store = store
        self.broker_id = broker_id
        self.key = signing_key
        self.verifier = verifier
        self._limits = limits
        self._on_append = on_append
        self.quality = quality
        # one writer task: the version decision and the append must see the same state
        self._pending: list[_Job] = []
        self._writer: asyncio.Task[None] | None = None

    def decode(self, body: bytes, content_type: str) -> Batch:
        dec = _msgpack_batch if content_type in ("application/msgpack",
                                                 "application/x-msgpack") else _json_batch
        try:
            return dec.decode(body)
        except msgspec.ValidationError as err:
            raise InputError(f"batch does not match the wire schema: {err}",
                             code=Code.SCHEMA_VIOLATION) from None
        except (msgspec.DecodeError, UnicodeDecodeError) as err:
            # msgspec's MessagePack decoder raises UnicodeDecodeError for a str that is not
            # UTF-8; a truncated body's message has no position, so give it
            where = f" (at byte {len(body)})" if "truncated" in str(err) else ""
            kind = "MessagePack" if dec is _msgpack_batch else "JSON"
            raise InputError(f"body is not valid {kind}: {err}{where}",
                             code=Code.MALFORMED) from None
        except RecursionError:
            raise InputError("body is nested too deeply", code=Code.TOO_DEEP) from None

    async def refuse(self, node: str, dataset: str, err: ExchangeError,
                     batch: Batch | None, body: bytes) -> None:
        """Keep a refused batch in the publisher's dead letters: each record, or the body."""
        now = time.time()
        if batch is None:
            dead = [DeadLetter(publisher=node, dataset=dataset, received_at=now, index=None,
                               code=err.code, path="$", message=err.message, record=body[:4096])]
        else:
            dead = [DeadLetter(publisher=node, dataset=dataset, received_at=now, index=i,
                               code=err.code, path="$", message=err.message,
                               record=_json.encode(r)) for i, r in enumerate(batch.records)]
        rows = ([self.quality.refused(dataset, node, max(1, len(dead)), err.code)]
                if self.quality else [])
        await self.store.add_dead_letters(dead, quality=rows)

    async def publish(self, node: str, dataset: str, body: bytes, content_type: str) -> Outcome:
        spec = datasets.get(dataset)
        limits = self._limits()
        batch: Batch | None = None
        try:
            try:
                batch = self.decode(body, content_type)
                checked = gate.check(batch, node=node, spec=spec, verifier=self.verifier,
                                     limits=limits, ctx=datasets.RuleContext(),
                                     scorer=quality.completeness if self.quality else None)
            except (TypeError, ValueError, OverflowError) as err:
                # a value the canonical encoding cannot take: the publisher's fault, not ours
                raise InputError(f"a record holds a value with no canonical form: {err}",
                                 code=Code.MALFORMED) from None
        except ExchangeError as err:
            await self.refuse(node, dataset, err, batch, body)
            raise
        loop = asyncio.get_running_loop()
        return await self._grouped(_Job(node, dataset, spec, batch, checked,
                                        loop.create_future()))

    def _receipt(self, node: str, dataset: str, batch: Batch, decided: gate.Decided,
                 first: int, log_size: int, log_root: bytes) -> Receipt:
        """The receipt for one stored batch (signed with the rest of its group).

        A duplicate of a record accepted earlier in the same batch carries the placeholder seq
        ``-1-k`` (the batch's k-th accepted record); ``first`` is the batch's first seq.
        """
        last = first + len(decided.accepted) - 1
        if decided.accepted:
            self._on_append(dataset, last)
        duplicates = [Duplicate(d.index, first - 1 - d.seq if d.seq < 0 else d.seq)
                      for d in decided.duplicates]
        return Receipt(
            broker=self.broker_id, publisher=node, dataset=dataset,
            batch_root=batch.statement.root, first_seq=first if decided.accepted else 0,
            last_seq=last if decided.accepted else -1, accepted=len(decided.accepted),
            duplicates=duplicates, rejected=decided.rejected, time=now_rfc3339(),
            log_size=log_size, log_root=log_root)

    def _outcome(self, signed: SignedReceipt) -> Outcome:
        """The reply for one batch: its signed receipt, and the problem if anything was refused."""
        r = signed.receipt
        if not r.rejected:
            return Outcome(signed, 200, None, r.last_seq)
        return Outcome(signed, *self._problem(r.rejected, signed), r.last_seq)

    # -- the writer: one task decides and stores, in arrival order -------------------------

    async def _grouped(self, job: _Job) -> Outcome:
        """Queue a checked batch for the writer; concurrent batches share one commit where the
        store can (group commit)."""
        self._pending.append(job)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        return await job.future

    async def _write(self) -> None:
        while self._pending:
            # at most MAX_GROUP batches and, past the first, MAX_GROUP_RECORDS records: a
            # group's rows are built in memory before its one transaction. A store whose group
            # is one atomic batch of bounded size (NATS) takes at most a batch's worth.
            cap = MAX_GROUP_RECORDS
            if self.store.atomic_batch_bounded:
                cap = min(cap, self._limits().max_batch_records)
            k, records = 1, len(self._pending[0].batch.records)
            while k < min(MAX_GROUP, len(self._pending)):
                records += len(self._pending[k].batch.records)
                if records > cap:
                    break
                k += 1
            jobs, self._pending = self._pending[:k], self._pending[k:]
            try:
                outcomes = await self._commit(jobs)
            except Exception as err:
                failed: Exception = err
                if len(jobs) > 1:
                    # one batch must not fail its neighbours: the first goes alone, the rest
                    # back to the queue
                    self._pending[:0] = jobs[1:]
                    jobs = jobs[:1]
                    try:
                        outcomes = await self._commit(jobs)
                    except Exception as single:
                        failed = single
                    else:
                        self._resolve(jobs, outcomes)
                        continue
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(failed)
                continue
            except BaseException:
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(UnavailableError("broker stopping",
                                                                code=Code.UNAVAILABLE))
                raise
            self._resolve(jobs, outcomes)

    @staticmethod
    def _resolve(jobs: list[_Job], outcomes: list[Outcome]) -> None:
        for j, o in zip(jobs, outcomes, strict=True):
            if not j.future.done():  # the publisher may have gone away meanwhile
                j.future.set_result(o)

    async def _commit(self, jobs: list[_Job]) -> list[Outcome]:
        """Decide every batch in order against the store and each other, then store them all in
        one transaction. A store shared with other brokers may refuse a decision made on a stale
        read (``StaleRead``): then read and decide again."""
        for attempt in range(STALE_READ_RETRIES + 1):
            try:
                return await self._try_commit(jobs)
            except StaleRead:
                if attempt == STALE_READ_RETRIES:
                    raise UnavailableError("the keys kept changing under this batch; retry",
                                           code=Code.CONTENDED) from None
        raise AssertionError("unreachable")

    async def _try_commit(self, jobs: list[_Job]) -> list[Outcome]:
        now = time.time()
        wanted: dict[str, list[str]] = {}
        for j in jobs:
            wanted.setdefault(j.dataset, []).extend(c.key for c in j.checked.candidates)
        latest = {ds: await self.store.current(ds, keys) for ds, keys in wanted.items()}
        tracker = self.quality
        saved = ({(j.dataset, j.node): tracker.snapshot(j.dataset, j.node) for j in jobs}
                 if tracker is not None else {})
        appends: list[Append] = []
        decisions: list[gate.Decided] = []
        offset = 0
        try:
            for j in jobs:
                current = latest[j.dataset]
                decided = gate.decide(j.checked, current, first_placeholder=offset)
                for k, c in enumerate(decided.accepted):
                    current[c.key] = gate.Current(c.version, c.content, -1 - (offset + k))
                offset += len(decided.accepted)
                dead = self._dead(j.node, j.dataset, j.batch, decided, now)
                unresolved: list[Reference] = []
                rows: list[QualityRow] = []
                if tracker is not None:
                    unresolved = await tracker.unresolved_for(j.spec, decided)
                    rows = [tracker.gated(j.spec, j.node, j.checked, decided, now)]
                appends.append(Append(j.node, j.dataset, j.batch, decided.accepted, dead,
                                      unresolved, rows, decided.replaces))
                decisions.append(decided)
            first = await self._store(appends, now)
        except BaseException:
            if tracker is not None:  # the counters follow what was committed
                for (ds, node), snap in saved.items():
                    tracker.restore(ds, node, snap)
            raise
        log_size, log_root = self.store.log_state()
        receipts = []
        start = first
        for j, decided in zip(jobs, decisions, strict=True):
            # a duplicate of a record accepted earlier in this commit: -1-k is the commit's
            # k-th record
            dups = [Duplicate(d.index, first - 1 - d.seq) if d.seq < 0 else d
                    for d in decided.duplicates]
            receipts.append(self._receipt(
                j.node, j.dataset, j.batch, gate.Decided(decided.accepted, dups, decided.rejected),
                start, log_size, log_root))
            start += len(decided.accepted)
        # one signature for the group's receipts, as publishers sign their batches
        return [self._outcome(s) for s in sign_receipts(self.key, receipts)]

    async def _store(self, appends: list[Append], now: float) -> int:
        """Store the group; return the seq of its first accepted record."""
        _, first = await self.store.append_group(appends, now)
        return first

    @staticmethod
    def _dead(node: str, dataset: str, batch: Batch, decided: gate.Decided, now: float
              ) -> list[DeadLetter]:
        return [DeadLetter(publisher=node, dataset=dataset, received_at=now, index=v.index,
                           code=v.code, path=v.path, message=v.message,
                           record=_json.encode(batch.records[v.index or 0]))
                for v in decided.rejected]

    def _problem(self, rejected: list[Violation], receipt: SignedReceipt
                 ) -> tuple[int, dict[str, Any]]:
        """The problem for a batch some of whose records were refused: a 409 when every refusal
        is a version conflict (a retry or a race, the catalogue's ``ConflictError`` codes), else
        a 422; its ``receipt`` covers the rest."""
        codes = {v.code for v in rejected}
        refused = len({v.index for v in rejected})
        total = receipt.receipt.accepted + len(receipt.receipt.duplicates) + refused
        klass = ConflictError if all(v.conflict for v in rejected) else InvalidRecord
        body = klass(f"{refused} of {total} records refused ({', '.join(sorted(codes))}); "
                     "the receipt covers the rest", violations=rejected).problem()
        code = codes.pop() if len(codes) == 1 else Code.RECORDS_REJECTED
        body["code"] = code
        body["type"] = f"https://exchange.gov.vn/problems/{code}"
        body["receipt"] = msgspec.to_builtins(receipt)
        return klass.status, body
