"""Publish: bytes in, the core's decisions, the store's append, a signed receipt out.

One instance per broker process. A batch is decoded and checked as it arrives
(``wire.decode_batch``, ``gate.check``); one writer task then takes the checked batches in arrival
order, reads the current versions of their keys, has the core decide them as a group
(``gate.decide_group``) and plan the append (``ledger.plan``), hands the plan to the store, and
signs the receipts the core builds (``ledger.receipts``). Nothing here decides a version, builds a
row or picks a status.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exchange.broker.metrics import QualityTracker
from exchange.broker.workers import GatePool
from exchange.clock import SYSTEM, Clock
from exchange.core import datasets, gate, ledger, quality
from exchange.core.access import Limits
from exchange.core.envelope import rfc3339
from exchange.core.errors import Code, ExchangeError, UnavailableError
from exchange.core.ledger import Outcome
from exchange.core.receipts import sign as sign_receipts
from exchange.core.signing import Batch, Verifier
from exchange.core.wire import decode_batch
from exchange.store.base import StaleRead, Store

__all__ = ["Outcome", "Publisher"]

logger = structlog.get_logger("exchange.publish")

#: decide again at most this often when another broker wrote the same keys meanwhile (NATS)
STALE_READ_RETRIES = 20
#: most batches stored in one group commit
MAX_GROUP = 64
#: most records in one group commit (past its first batch): bounds the rows built in memory
MAX_GROUP_RECORDS = 8192


@dataclass
class _Job:
    """A batch waiting for the writer, in arrival order: checked, or being checked in a gate
    worker (``gated`` not done yet)."""

    node: str
    dataset: str
    future: asyncio.Future[Outcome]
    spec: datasets.DatasetSpec | None = None
    batch: Batch | None = None
    checked: gate.Checked | None = None
    #: set True once a worker's check is in (spec, batch, checked), False when it refused the
    #: batch; None: checked in this process before the job was queued
    gated: asyncio.Future[bool] | None = None
    #: the body, while ``batch`` holds no records (a worker checked it): a refused record's
    #: dead letter decodes it again
    body: tuple[bytes, str] | None = None

    def part(self) -> tuple[datasets.DatasetSpec, Batch, gate.Checked]:
        """What the writer takes of a checked job."""
        assert self.spec is not None and self.batch is not None and self.checked is not None
        return self.spec, self.batch, self.checked

    @property
    def size(self) -> int:
        """Its records (once checked)."""
        assert self.checked is not None
        return len(self.checked.candidates) + len(self.checked.rejected)

    @property
    def ready(self) -> bool:
        return self.gated is None or (self.gated.done() and self.gated.result())

    def records(self) -> Batch:
        """The batch with its records (decoded again when a worker checked it)."""
        assert self.batch is not None
        if self.body is not None:
            self.batch, self.body = decode_batch(*self.body), None
        return self.batch


def utc_date(t: float) -> dt.date:
    """The UTC day of Unix time ``t``: what the domain rules compare dates against."""
    return dt.datetime.fromtimestamp(t, dt.UTC).date()


@dataclass(kw_only=True)
class Publisher:
    store: Store
    broker_id: str
    signing_key: Ed25519PrivateKey
    verifier: Verifier
    limits: Callable[[], Limits]
    #: told (dataset, last seq) after every append: live subscribers wake
    on_append: Callable[[str, int], None]
    quality: QualityTracker | None = None
    clock: Clock = SYSTEM
    #: the exchange's public URL every ``dataschema`` must start with (None: any https origin)
    schema_base: Callable[[], str | None] = lambda: None
    #: gate worker processes doing each batch's per-record checks (None: this process does)
    pool: GatePool | None = None
    #: dead letters each publisher has stored (read from the store once, then counted)
    _dead_used: dict[str, int] = field(default_factory=dict)
    # one writer task: the version decision and the append must see the same state
    _pending: list[_Job] = field(default_factory=list)
    _writer: asyncio.Task[None] | None = None

    async def refuse(self, node: str, dataset: str, err: ExchangeError,
                     batch: Batch | None, body: bytes) -> None:
        """Keep a batch refused whole in the publisher's dead letters: each record, or the body."""
        dead = ledger.refused(node, dataset, err, batch, body, self.clock.time())
        deltas = {(dataset, node): quality.refused(len(dead), err.code)}
        rows = self.quality.rows(deltas) if self.quality else []
        kept, dropped = await self._bound(node, dead)
        self._dead_used[node] += len(kept)  # reserved before the await: no two overshoot
        try:
            await self.store.add_dead_letters(kept, quality=rows)
        except BaseException:
            self._dead_used[node] -= len(kept)
            raise
        if dropped:
            err.message += (f" ({dropped} refused record(s) not kept: {node}'s dead-letter "
                            "store is full)")
        if self.quality:
            self.quality.add(deltas)

    async def publish(self, node: str, dataset: str, body: bytes, content_type: str) -> Outcome:
        if self.pool is not None:
            return await self._publish_pooled(self.pool, node, dataset, body, content_type)
        batch: Batch | None = None
        try:
            batch = decode_batch(body, content_type)
            spec = gate.spec_of(batch, dataset)
            checked = self._check(batch, node, spec)
        except ExchangeError as err:
            await self.refuse(node, dataset, err, batch, body)
            raise
        return await self._queue(_Job(node, dataset, self._future(), spec, batch, checked))

    def _check(self, batch: Batch, node: str, spec: datasets.DatasetSpec) -> gate.Checked:
        return gate.check(batch, node=node, spec=spec, verifier=self.verifier,
                          limits=self.limits(),
                          ctx=datasets.RuleContext(today=utc_date(self.clock.time())),
                          scorer=quality.completeness if self.quality else None,
                          references=quality.references if self.quality else None,
                          schema_base=self.schema_base())

    @staticmethod
    def _future() -> asyncio.Future[Outcome]:
        return asyncio.get_running_loop().create_future()

    async def _queue(self, job: _Job) -> Outcome:
        self._enqueue(job)
        return await job.future

    def _enqueue(self, job: _Job) -> None:
        self._pending.append(job)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())

    async def _publish_pooled(self, pool: GatePool, node: str, dataset: str, body: bytes,
                              content_type: str) -> Outcome:
        """The checks in a worker; the job holds its place in arrival order meanwhile, so the
        writer decides batches in the order they came whichever worker finishes first."""
        loop = asyncio.get_running_loop()
        job = _Job(node, dataset, self._future(), gated=loop.create_future(),
                   body=(body, content_type))
        assert job.gated is not None
        self._enqueue(job)  # its place in the order, now
        try:
            checked = await pool.check(
                node, dataset, body, content_type, key=self.verifier.current(node),
                limits=self.limits(), today=utc_date(self.clock.time()),
                scored=self.quality is not None, schema_base=self.schema_base())
            if checked is None:  # another key, or the pool broke: checked here
                whole = decode_batch(body, content_type)
                spec = gate.spec_of(whole, dataset)
                job.spec, job.batch, job.checked, job.body = (spec, whole,
                                                              self._check(whole, node, spec), None)
            else:
                st, signature = checked.batch.statement, checked.batch.signature
                if checked.statement_checked:
                    # as if checked here: a retry after a rotation is judged alike
                    self.verifier.remember(st, signature)
                else:  # another key: the certificate history decides, here
                    self.verifier.verify_statement(st, signature)
                job.spec, job.batch, job.checked = checked.spec, checked.batch, checked.checked
        except BaseException as err:
            job.gated.set_result(False)
            if isinstance(err, ExchangeError):
                try:
                    batch: Batch | None = decode_batch(body, content_type)
                except ExchangeError:
                    batch = None
                await self.refuse(node, dataset, err, batch, body)
            raise
        job.gated.set_result(True)
        return await job.future

    # -- the writer: one task decides and stores, in arrival order -------------------------

    def _next_group(self) -> list[_Job]:
        """At most MAX_GROUP batches and, past the first, MAX_GROUP_RECORDS records, all of them
        checked (the group stops at the first batch still in a worker): a group's rows are
        built in memory before its one transaction. A store whose group is one atomic batch of
        bounded size (NATS) takes at most a batch's worth."""
        cap = MAX_GROUP_RECORDS
        if self.store.atomic_batch_bounded:
            cap = min(cap, self.limits().max_batch_records)
        k, records = 1, self._pending[0].size
        while k < min(MAX_GROUP, len(self._pending)) and self._pending[k].ready:
            records += self._pending[k].size
            if records > cap:
                break
            k += 1
        jobs, self._pending = self._pending[:k], self._pending[k:]
        return jobs

    async def _head(self) -> bool:
        """Wait until the first queued batch is checked (dropping those refused whole);
        False when none is left."""
        while self._pending:
            head = self._pending[0]
            if head.ready:
                return True
            assert head.gated is not None
            if head.gated.done():  # refused: its publisher has the answer already
                self._pending.pop(0)
                continue
            await asyncio.wait([head.gated])
        return False

    async def _write(self) -> None:
        while await self._head():
            jobs = self._next_group()
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
                for j in [*jobs, *self._pending]:
                    if not j.future.done():
                        j.future.set_exception(UnavailableError("broker stopping",
                                                                code=Code.UNAVAILABLE))
                self._pending.clear()  # answered: a later writer must not commit them
                raise
            self._resolve(jobs, outcomes)

    @staticmethod
    def _resolve(jobs: list[_Job], outcomes: list[Outcome]) -> None:
        for j, o in zip(jobs, outcomes, strict=True):
            if not j.future.done():  # the publisher may have gone away meanwhile
                j.future.set_result(o)

    async def _commit(self, jobs: list[_Job]) -> list[Outcome]:
        """Decide the group against the store and store it in one step. A store shared with
        other brokers may refuse a decision made on a stale read (``StaleRead``): then read and
        decide again."""
        for attempt in range(STALE_READ_RETRIES + 1):
            try:
                return await self._try_commit(jobs)
            except StaleRead:
                # the other broker's write may still be committing (an atomic batch is not in
                # the stream's state until its commit): back off a little, or twenty retries
                # go by in the time it takes (I/O timing, not the exchange's clock)
                await asyncio.sleep(min(0.002 * 2**attempt, 0.1) * (0.5 + random.random()))
        raise UnavailableError("the keys kept changing under this batch; retry",
                               code=Code.CONTENDED)

    async def _try_commit(self, jobs: Sequence[_Job]) -> list[Outcome]:
        now = self.clock.time()
        parts = [j.part() for j in jobs]
        wanted: dict[str, list[str]] = {}
        for j, (_, _, checked) in zip(jobs, parts, strict=True):
            wanted.setdefault(j.dataset, []).extend(c.key for c in checked.candidates)
        current = {ds: await self.store.current(ds, keys) for ds, keys in wanted.items()}
        decisions = gate.decide_group([(j.dataset, p[2]) for j, p in zip(jobs, parts,
                                                                         strict=True)], current)
        group: list[ledger.Append] = []
        deltas: dict[tuple[str, str], quality.Counters] = {}
        dropped: list[int] = []
        reserved: dict[str, int] = {}
        for j, (spec, batch, checked), decided in zip(jobs, parts, decisions, strict=True):
            dead = ledger.dead_letters(j.node, j.dataset, j.records() if decided.rejected
                                       else batch, decided.rejected, now)
            dead, cut = await self._bound(j.node, dead)
            # reserved at once (no await between the bound and this): concurrent refusals
            # see it; given back if the commit fails
            self._dead_used[j.node] += len(dead)
            reserved[j.node] = reserved.get(j.node, 0) + len(dead)
            dropped.append(cut)
            unresolved: list[ledger.Reference] = []
            if self.quality is not None:
                unresolved, references = await self.quality.unresolved_for(spec, decided)
                delta = quality.gated(checked, decided, now, references=references)
                pair = (j.dataset, j.node)
                deltas[pair] = deltas[pair].merge(delta) if pair in deltas else delta
            group.append(ledger.Append(j.node, j.dataset, batch, decided, dead, unresolved))
        plan = ledger.plan(group, now,
                           quality=self.quality.rows(deltas) if self.quality else ())
        try:
            appended = await self.store.append(plan)
        except BaseException:
            for node, n in reserved.items():
                self._dead_used[node] -= n
            raise
        if self.quality is not None:
            self.quality.add(deltas)
        for a in group:
            if a.decided.accepted:
                self.on_append(a.dataset, appended.first_seq + a.decided.offset
                                + len(a.decided.accepted) - 1)
        log_size, log_root = self.store.log_state()
        receipts = ledger.receipts(self.broker_id, group, appended.first_seq, log_size,
                                   log_root, rfc3339(now))
        # one signature for the group's receipts, as publishers sign their batches
        outcomes = [ledger.outcome(s) for s in sign_receipts(self.signing_key, receipts)]
        for o, cut in zip(outcomes, dropped, strict=True):
            if cut and o.problem is not None:
                o.problem["dead_letters_not_kept"] = cut
                o.problem["detail"] += (f" ({cut} refused record(s) not kept: the "
                                        "publisher's dead-letter store is full)")
        return outcomes

    async def _bound(self, node: str, dead: list[ledger.DeadLetter]
                     ) -> tuple[list[ledger.DeadLetter], int]:
        """The dead letters ``node``'s quota has room for (its stored count is read once).
        The caller reserves what it keeps before its next await."""
        if node not in self._dead_used:
            count = await self.store.dead_letter_count(node)
            self._dead_used.setdefault(node, count)  # another task may have read it first
        limits = self.limits()
        return ledger.bounded(dead, limits.max_dead_letters_per_publisher
                              - self._dead_used[node], limits.max_dead_letter_record_bytes)
