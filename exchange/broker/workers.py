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
exchange's public URL and whether quality is scored. A batch whose statement names another key
(a rotated-out one, or one the broker has not heard of yet) is checked in full but for that one
signature, which the broker verifies itself against the certificate history, exactly as it
would alone (``Gated.statement_checked``). A batch held by a worker that goes away is checked in
the broker's own process (``Delegated``), and a new worker takes the old one's place.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import multiprocessing
import os
import signal
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from exchange.core import datasets, errors, gate, quality
from exchange.core.access import Limits
from exchange.core.errors import ExchangeError, Violation
from exchange.core.signing import Batch, Statement, Verifier, key_id
from exchange.core.wire import decode_batch

__all__ = ["Delegated", "GatePool", "Gated", "gate_batch"]

logger = structlog.get_logger("exchange.workers")


# -- what a worker answers -------------------------------------------------------------------


class Gated(msgspec.Struct, tag=True, array_like=True):
    """A checked batch: its schema version, its statement and signature (its records stay in
    the body the broker holds: only a refusal needs them), and the gate's findings.
    ``statement_checked`` is False when the statement names a key other than the current one:
    the broker verifies that signature itself."""

    version: int
    statement: Statement
    signature: bytes
    checked: gate.Checked
    statement_checked: bool = True


class Refused(msgspec.Struct, tag=True, array_like=True):
    """The batch refused whole: the error, rebuilt as the same class in the broker."""

    error: str
    code: str
    message: str
    violations: list[Violation]
    extra: dict[str, Any]


class Delegated(msgspec.Struct, tag=True, array_like=True):
    """Not checked by the worker: the broker checks the batch itself (an error the worker
    could not send back as it is)."""


Answer = Gated | Refused | Delegated

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Answer).decode


class _WorkerVerifier(Verifier):
    """Verifies statements under the node's current key; one naming another key is left for
    the broker (``deferred``), which holds the certificate history and its own cache."""

    def __init__(self, node: str, key: Ed25519PublicKey | None) -> None:
        super().__init__({node: key} if key is not None else {}, current_only=True)
        self.kid = key_id(key) if key is not None else None
        self.deferred = False

    def verify_statement(self, statement: Statement, signature: bytes) -> None:
        if statement.kid is not None and statement.kid != self.kid:
            self.deferred = True
            return
        super().verify_statement(statement, signature)


# -- the worker process ----------------------------------------------------------------------

#: per (node, current key): a verifier remembering the statements it verified (a retried
#: batch costs no second signature check in the same worker)
_verifiers: dict[tuple[str, bytes], _WorkerVerifier] = {}
_limits: dict[bytes, Limits] = {}


def _verifier(node: str, key: bytes | None) -> _WorkerVerifier:
    found = _verifiers.get((node, key or b""))
    if found is None:
        if len(_verifiers) > 1024:
            _verifiers.clear()
        public = Ed25519PublicKey.from_public_bytes(key) if key else None
        found = _verifiers[(node, key or b"")] = _WorkerVerifier(node, public)
    found.deferred = False
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
    verifier = _verifier(node, key)
    try:
        spec = gate.spec_of(batch, dataset)
        checked = gate.check(batch, node=node, spec=spec, verifier=verifier,
                             limits=lim, ctx=datasets.RuleContext(dt.date.fromordinal(today)),
                             scorer=quality.completeness if scored else None,
                             references=quality.references if scored else None,
                             schema_base=schema_base)
    except ExchangeError as err:
        return _encode(_refused(err))
    return _encode(Gated(spec.version, batch.statement, batch.signature, checked,
                         not verifier.deferred))


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
    #: False: the statement names another key; the broker verifies its signature
    statement_checked: bool = True


class Request(msgspec.Struct, array_like=True):
    """One batch to check, as a worker receives it."""

    node: str
    dataset: str
    body: bytes
    content_type: str
    key: bytes | None
    limits: bytes
    today: int
    scored: bool
    schema_base: str | None


_request = msgspec.msgpack.Encoder().encode
_HEADER = struct.Struct("!I")


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return bytes(buf)


def serve(sock: socket.socket) -> None:
    """A worker's loop: length-prefixed requests in, answers out, in order, until the broker
    closes its end (or goes away: the socket's end of file)."""
    # the broker stops its workers (end of file on the socket): a Ctrl-C or a service
    # manager's SIGTERM to the whole group is the broker's to handle, not theirs
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pid = str(_warm()).encode()
    decode = msgspec.msgpack.Decoder(Request).decode
    with sock:
        sock.sendall(_HEADER.pack(len(pid)) + pid)  # ready: imports done
        while True:
            head = _recv_exact(sock, _HEADER.size)
            if head is None:
                return
            raw = _recv_exact(sock, _HEADER.unpack(head)[0])
            if raw is None:
                return
            try:
                r = decode(raw)
                answer = gate_batch(r.node, r.dataset, r.body, r.content_type, r.key,
                                    r.limits, r.today, r.scored, r.schema_base)
            except Exception:  # a fault of ours: the broker checks it and says what it is
                answer = _encode(Delegated())
            sock.sendall(_HEADER.pack(len(answer)) + answer)


class _Worker:
    """One worker process and the broker's end of its socket: requests go out in order and
    their answers come back in the same order."""

    def __init__(self, context: Any, on_gone: Callable[[_Worker], object]) -> None:
        self._on_gone = on_gone
        mine, theirs = socket.socketpair()
        self.process = context.Process(target=serve, args=(theirs,), daemon=True,
                                       name="exchange-gate")
        self.process.start()
        theirs.close()
        self._sock = mine
        self.waiting: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.alive = True

    async def open(self) -> None:
        """Once the worker says it is ready (its imports take a while)."""
        reader, self._writer = await asyncio.open_connection(sock=self._sock, limit=2**16)
        try:
            head = await reader.readexactly(_HEADER.size)
            await reader.readexactly(_HEADER.unpack(head)[0])
        except (asyncio.IncompleteReadError, ConnectionError):
            self.alive = False
            raise WorkerGone(f"gate worker {self.process.pid} exited while starting "
                             f"(exit code {self.process.exitcode})") from None
        self._reader_task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                head = await reader.readexactly(_HEADER.size)
                answer = await reader.readexactly(_HEADER.unpack(head)[0])
                if self.waiting:
                    waiter = self.waiting.popleft()
                    if not waiter.done():  # its publisher may have gone away meanwhile
                        waiter.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.alive = False
            for f in self.waiting:
                if not f.done():
                    f.set_exception(WorkerGone())
            self.waiting.clear()
            self._on_gone(self)

    def send(self, request: bytes) -> asyncio.Future[bytes]:
        if self._writer is None or self._writer.is_closing():
            raise WorkerGone
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self._writer.write(_HEADER.pack(len(request)))
        self._writer.write(request)
        return future

    async def drain(self) -> None:
        assert self._writer is not None
        await self._writer.drain()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            await asyncio.wait([self._reader_task], timeout=5)
        await asyncio.to_thread(self.process.join, 5)
        if self.process.is_alive():
            self.process.kill()
            await asyncio.to_thread(self.process.join, 5)


class WorkerGone(Exception):
    """The worker process went away with the batch (killed, crashed)."""


class GatePool:
    """N worker processes (spawned: the broker's threads and sockets stay its own), each
    behind a socket pair; a batch goes to the worker with the fewest batches waiting."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("a pool has one worker or more")
        self.workers = workers
        self._context = multiprocessing.get_context("spawn")
        self._procs: list[_Worker] = []
        self._limits: tuple[Limits, bytes] | None = None
        self._closing = False
        self._replacing: set[asyncio.Task[None]] = set()
        self._change: asyncio.Event | None = None
        #: batches checked in workers, batches the broker checked itself (another key, a
        #: worker gone), and workers started again after they went away
        self.gated = 0
        self.delegated = 0
        self.restarts = 0

    async def start(self) -> list[int]:
        """Start every worker now (not on the first batch); their process ids."""
        self._change = asyncio.Event()
        fresh = [_Worker(self._context, self._gone) for _ in range(self.workers)]
        try:
            await asyncio.gather(*(w.open() for w in fresh))  # they start side by side
        except BaseException:
            await asyncio.gather(*(w.close() for w in fresh), return_exceptions=True)
            raise
        self._procs.extend(fresh)
        return self.pids()

    def next_change(self) -> asyncio.Event:
        """Set the next time a worker is replaced."""
        assert self._change is not None, "start() first"
        return self._change

    def running(self) -> int:
        return sum(1 for w in self._procs if w.alive and w.process.is_alive())

    def pids(self) -> list[int]:
        return sorted(w.process.pid for w in self._procs if w.process.pid is not None)

    async def close(self) -> None:
        self._closing = True
        for t in list(self._replacing):
            with contextlib.suppress(BaseException):
                await t
        procs, self._procs = self._procs, []
        await asyncio.gather(*(w.close() for w in procs))

    def _limits_bytes(self, limits: Limits) -> bytes:
        if self._limits is None or self._limits[0] is not limits:
            self._limits = (limits, msgspec.msgpack.encode(limits))
        return self._limits[1]

    def _gone(self, worker: _Worker) -> None:
        """A worker's socket ended: unless the pool is closing, a new process takes its place
        (the batches it held were checked in the broker meanwhile)."""
        if self._closing or worker not in self._procs:
            return
        task = asyncio.get_running_loop().create_task(self._replace(worker))
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _replace(self, gone: _Worker) -> None:
        logger.error("gate_worker_gone", pid=gone.process.pid, exitcode=gone.process.exitcode)
        fresh = _Worker(self._context, self._gone)
        try:
            await fresh.open()
        except WorkerGone as err:
            logger.error("gate_worker_not_started", error=str(err))
            await fresh.close()
            return  # the slot keeps its dead worker: batches meant for it are checked here
        finally:
            await gone.close()
        if self._closing or gone not in self._procs:
            await fresh.close()
            return
        self._procs[self._procs.index(gone)] = fresh
        self.restarts += 1
        if self._change is not None:
            self._change.set()
            self._change = asyncio.Event()

    async def check(self, node: str, dataset: str, body: bytes, content_type: str, *,
                    key: Ed25519PublicKey | None, limits: Limits, today: dt.date,
                    scored: bool, schema_base: str | None) -> Checked | None:
        """The batch checked in a worker; None when the broker must check it itself. Raises
        the gate's error for a batch refused whole."""
        worker = min(self._procs, key=lambda w: len(w.waiting) if w.alive else 1 << 30)
        request = _request(Request(node, dataset, body, content_type,
                                   key.public_bytes_raw() if key is not None else None,
                                   self._limits_bytes(limits), today.toordinal(), scored,
                                   schema_base))
        try:
            if not worker.alive:
                raise WorkerGone
            pending = worker.send(request)
            await worker.drain()
            answer = _decode(await pending)
        except (WorkerGone, ConnectionError, RuntimeError, msgspec.DecodeError):
            # gone (replaced by ``_gone``), or an answer we cannot read: checked here
            self.delegated += 1
            return None
        if isinstance(answer, Delegated):
            self.delegated += 1
            return None
        self.gated += 1
        if isinstance(answer, Refused):
            raise rebuilt(answer)
        return Checked(datasets.get(dataset, answer.version),
                       Batch(answer.statement, answer.signature, []), answer.checked,
                       answer.statement_checked)
