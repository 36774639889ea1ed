"""The parallel gate: a batch's per-record work in worker processes, its decision in the broker.

``exchange broker serve --workers N`` (or ``gate_workers`` in the config) starts N processes
that do what a batch costs per record: decode the body, verify the batch signature and every
record's Merkle path, recompute the commitments and digests, check the schema and the domain
rules, score completeness, encode the stored body (``wire.decode_batch``, ``gate.check``).
What comes back is a ``gate.Checked`` of plain values (MessagePack). The broker's one writer
still takes the checked batches in the order they arrived, decides their versions and commits
them (``exchange.broker.publish``): decisions, receipts and the log are exactly what one process
makes, only the checks run side by side.

A worker holds no state the broker must keep current. With each batch it is given the
publisher's current signing key, the limits, the day the rules compare dates with, the
exchange's public URL and whether quality is scored. A batch signed with any other key (a
rotated-out one, or one the broker has not heard of yet) is handed back: the broker decides it
in its own process, from the certificate history (``Delegated``). So is every batch when the
pool has broken (a worker killed): the pool is started again for the batches after it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import multiprocessing
import os
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from exchange.core import datasets, errors, gate, quality
from exchange.core.access import Limits
from exchange.core.errors import ExchangeError, Violation
from exchange.core.signing import Batch, Statement, Verifier
from exchange.core.wire import decode_batch

__all__ = ["Delegated", "GatePool", "Gated", "gate_batch"]

logger = structlog.get_logger("exchange.workers")


# -- what a worker answers -------------------------------------------------------------------


class Gated(msgspec.Struct, tag=True, array_like=True):
    """A checked batch: its schema version, its statement and signature (its records stay in
    the body the broker holds: only a refusal needs them), and the gate's findings."""

    version: int
    statement: Statement
    signature: bytes
    checked: gate.Checked


class Refused(msgspec.Struct, tag=True, array_like=True):
    """The batch refused whole: the error, rebuilt as the same class in the broker."""

    error: str
    code: str
    message: str
    violations: list[Violation]
    extra: dict[str, Any]


class Delegated(msgspec.Struct, tag=True, array_like=True):
    """Not for a worker: the batch names a key other than the current one."""


Answer = Gated | Refused | Delegated

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Answer).decode


class _OtherKey(Exception):
    """The statement's key is not the current one: the certificate history decides."""


def _other_key(node: str, kid: str, time: str | None) -> Ed25519PublicKey | None:
    raise _OtherKey


# -- the worker process ----------------------------------------------------------------------

#: per (node, current key): a verifier remembering the statements it verified (a retried
#: batch costs no second signature check in the same worker)
_verifiers: dict[tuple[str, bytes], Verifier] = {}
_limits: dict[bytes, Limits] = {}


def _verifier(node: str, key: bytes | None) -> Verifier:
    found = _verifiers.get((node, key or b""))
    if found is None:
        if len(_verifiers) > 1024:
            _verifiers.clear()
        public = Ed25519PublicKey.from_public_bytes(key) if key else None
        found = _verifiers[(node, key or b"")] = Verifier(
            {node: public} if public is not None else {}, history=_other_key,
            current_only=True)
    return found


def _warm() -> int:
    """Imports done, the start-up heap out of the collector's sight: the worker is ready."""
    import gc

    gc.collect()
    gc.freeze()
    return os.getpid()


def gate_batch(node: str, dataset: str, body: bytes, content_type: str, key: bytes | None,
               limits: bytes, today: int, scored: bool, schema_base: str | None) -> bytes:
    """One batch's checks, in a worker: an ``Answer`` as MessagePack."""
    try:
        batch = decode_batch(body, content_type)
    except ExchangeError as err:
        return _encode(_refused(err))
    lim = _limits.get(limits)
    if lim is None:
        _limits.clear()
        lim = _limits[limits] = msgspec.msgpack.decode(limits, type=Limits)
    try:
        spec = gate.spec_of(batch, dataset)
        checked = gate.check(batch, node=node, spec=spec, verifier=_verifier(node, key),
                             limits=lim, ctx=datasets.RuleContext(dt.date.fromordinal(today)),
                             scorer=quality.completeness if scored else None,
                             references=quality.references if scored else None,
                             schema_base=schema_base)
    except _OtherKey:
        return _encode(Delegated())
    except ExchangeError as err:
        return _encode(_refused(err))
    return _encode(Gated(spec.version, batch.statement, batch.signature, checked))


def _refused(err: ExchangeError) -> Refused | Delegated:
    try:
        msgspec.msgpack.encode(err.extra)
    except (TypeError, ValueError):
        return Delegated()  # nothing a worker raises, but the broker would say it whole
    return Refused(type(err).__name__, err.code, err.message, err.violations, err.extra)


def rebuilt(r: Refused) -> ExchangeError:
    """The error a worker refused a batch with, as the broker's own process raises it."""
    cls = getattr(errors, r.error, None)
    if not (isinstance(cls, type) and issubclass(cls, ExchangeError)):
        cls = ExchangeError
    err = cls(r.message, violations=r.violations, **r.extra)
    err.code = r.code
    return err


# -- the broker's side -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checked:
    """A batch a worker checked, as the broker's writer takes it."""

    spec: datasets.DatasetSpec
    batch: Batch  # statement and signature; no records (decoded again only for a refusal)
    checked: gate.Checked


class GatePool:
    """N worker processes (spawned: the broker's threads and sockets stay its own)."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("a pool has one worker or more")
        self.workers = workers
        self._context = multiprocessing.get_context("spawn")
        self._pool = self._start()
        self._limits: tuple[Limits, bytes] | None = None
        #: batches checked in workers, and batches the broker checked itself (other key,
        #: broken pool)
        self.gated = 0
        self.delegated = 0
        self.restarts = 0

    def _start(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=self._context)

    async def start(self) -> list[int]:
        """Start every worker now (not on the first batch); their process ids."""
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(self._pool, _warm)
                                           for _ in range(self.workers))))

    def pids(self) -> list[int]:
        return sorted(p.pid for p in (self._pool._processes or {}).values()
                      if p.pid is not None)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _limits_bytes(self, limits: Limits) -> bytes:
        if self._limits is None or self._limits[0] is not limits:
            self._limits = (limits, msgspec.msgpack.encode(limits))
        return self._limits[1]

    async def check(self, node: str, dataset: str, body: bytes, content_type: str, *,
                    key: Ed25519PublicKey | None, limits: Limits, today: dt.date,
                    scored: bool, schema_base: str | None) -> Checked | None:
        """The batch checked in a worker; None when the broker must check it itself. Raises
        the gate's error for a batch refused whole."""
        raw = key.public_bytes_raw() if key is not None else None
        pool = self._pool
        try:
            answer = _decode(await asyncio.get_running_loop().run_in_executor(
                pool, gate_batch, node, dataset, body, content_type, raw,
                self._limits_bytes(limits), today.toordinal(), scored, schema_base))
        except BrokenProcessPool:
            if self._pool is pool:  # the first to notice starts a new one
                logger.error("gate_workers_broken", workers=self.workers)
                self.restarts += 1
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._start()
            self.delegated += 1
            return None
        if isinstance(answer, Delegated):
            self.delegated += 1
            return None
        self.gated += 1
        if isinstance(answer, Refused):
            raise rebuilt(answer)
        return Checked(datasets.get(dataset, answer.version),
                       Batch(answer.statement, answer.signature, []), answer.checked)
