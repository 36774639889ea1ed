"""The broker's transparency log service: signs checkpoints, serves proofs and entries.

The tree itself grows inside the store's append transaction (sqlite) or in the sequencer,
the one broker process that reads the whole stream (NATS); this service only reads it. A
checkpoint is signed at most every ``interval`` seconds while the log grows, and only after
checking it is consistent with the previous one, so the broker never signs a split view. On
NATS only the sequencer signs on the timer; the other brokers follow the stored checkpoints and
sign one only when a reader asks for the latest (the same key, tree and rule: two brokers
racing store one, ``NatsStore.add_checkpoint``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog

from exchange.clock import SYSTEM, Clock
from exchange.core import merkle, tlog
from exchange.core.errors import Code, InputError, NotFound
from exchange.store.base import Store

__all__ = ["TlogService"]

logger = structlog.get_logger("exchange.checkpoints")

MAX_ENTRIES = 1000


def _plan(prove: Callable[[merkle.NodeReader], Any]) -> list[tuple[int, int]]:
    """Which stored nodes a proof needs: its control flow does not depend on hash values."""
    wanted: list[tuple[int, int]] = []

    def record(level: int, index: int) -> bytes:
        wanted.append((level, index))
        return b"\x00" * 32

    prove(record)
    return wanted


class TlogService:
    def __init__(self, store: Store, key: tlog.NoteKey, origin: str,
                 interval: float = 1.0, clock: Clock = SYSTEM) -> None:
        self.store = store
        self.key = key
        self.origin = origin
        self.interval = interval
        self.clock = clock
        self.latest: tlog.Checkpoint | None = None
        #: when ``latest`` was signed, on ``clock`` (``/metrics``: checkpoint age). A checkpoint
        #: read back from the store at start counts from then: the store keeps its signing time
        #: but does not hand it back, and the age is then a lower bound
        self.latest_at: float | None = None
        # one signer at a time: the timer and GET /v1/log/checkpoint may both call checkpoint()
        self._signing = asyncio.Lock()

    async def start(self) -> None:
        self.latest = await self.store.latest_checkpoint()
        if self.latest is not None:
            self.latest_at = self.clock.time()
        try:
            await self.checkpoint()
        except Exception:
            # a full disk must not keep the broker from serving reads: the timer tries again
            logger.exception("checkpoint_failed_at_start")

    async def served(self) -> tlog.Checkpoint:
        """The checkpoint to hand a reader: a fresh one when it can be signed and stored, else
        the last one stored (a full disk does not make the log unreadable)."""
        try:
            return await self.checkpoint()
        except Exception:
            if self.latest is None:
                raise
            logger.warning("checkpoint_stale_served", size=self.latest.size, exc_info=True)
            return self.latest

    async def run(self) -> AsyncIterator[None]:
        """aiohttp cleanup context: a checkpoint every ``interval`` while records arrive."""
        await self.start()
        task = asyncio.create_task(self._loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if not self._signs():
            return
        try:
            await self.checkpoint()
        except Exception:
            # stopping must not fail for it: the records are stored and logged, and the next
            # broker to run signs the checkpoint that covers them
            logger.exception("final_checkpoint_failed")

    def _signs(self) -> bool:
        """Whether this broker signs on the timer: the sequencer does (NATS), sqlite's one
        broker does."""
        return self.store.sequencing

    async def _loop(self) -> None:
        while True:
            await self.clock.sleep_until(self.clock.monotonic() + self.interval)
            try:
                if self._signs():
                    await self.checkpoint()
                else:
                    await self._follow()
            except Exception:  # never let the timer die; the next tick tries again
                logger.exception("checkpoint_failed")

    async def _follow(self) -> None:
        """The latest stored checkpoint (another broker signed it), for ``/metrics``."""
        latest = await self.store.latest_checkpoint()
        if latest is not None and (self.latest is None or latest.size > self.latest.size):
            self.latest, self.latest_at = latest, self.clock.time()

    async def checkpoint(self) -> tlog.Checkpoint:
        """Sign the committed log if it grew since the last checkpoint."""
        async with self._signing:
            return await self._checkpoint()

    async def _checkpoint(self) -> tlog.Checkpoint:
        if not self._signs():
            # another broker signs on its timer: start from what is stored, so a checkpoint
            # signed here is one the store keeps (never one below the stored latest)
            await self._follow()
        size, root = self.store.log_state()
        last = self.latest
        if last is not None and size <= last.size:
            return last
        cp = tlog.sign_checkpoint(self.key, self.origin, size, root)
        if last is not None and last.size > 0:
            proof = await self.consistency(last.size, size)
            tlog.check_consistent(last, cp, proof)  # never sign a split view
        now = self.clock.time()
        await self.store.add_checkpoint(cp, now)
        self.latest, self.latest_at = cp, now
        logger.debug("checkpoint", size=size)
        return cp

    async def _prove(self, prove: Callable[[merkle.NodeReader], list[bytes]]) -> list[bytes]:
        nodes = await self.store.log_nodes(_plan(prove))
        return prove(lambda level, index: nodes[(level, index)])

    async def inclusion(self, seq: int, size: int) -> list[bytes]:
        self._check_size(size)
        if not 0 <= seq < size:
            raise InputError(f"seq {seq} is not in a tree of size {size}", code=Code.BAD_RANGE)
        return await self._prove(lambda node: merkle.inclusion_proof(node, seq, size))

    async def consistency(self, old: int, new: int) -> list[bytes]:
        self._check_size(new)
        if not 0 < old <= new:
            # RFC 9162 §2.1.4: a consistency proof is between two non-empty trees; from the
            # empty tree there is nothing to prove, and an empty proof would be refused
            raise InputError(f"sizes {old} and {new} are not 0 < from <= to",
                             code=Code.BAD_RANGE)
        return await self._prove(lambda node: merkle.consistency_proof(node, old, new))

    def _check_size(self, size: int) -> None:
        committed, _ = self.store.log_state()
        if size > committed:
            raise NotFound(f"the log has {committed} entries, not {size}", code=Code.BEYOND_LOG)

    async def entries(self, start: int, end: int) -> list[dict[str, Any]]:
        committed, _ = self.store.log_state()
        if start < 0 or start > end:
            raise InputError("need 0 <= start <= end", code=Code.BAD_RANGE)
        if start > committed:
            # the same answer the proofs give for what the log does not hold yet
            raise NotFound(f"the log has {committed} entries; start {start} is beyond it",
                           code=Code.BEYOND_LOG)
        end = min(end, committed, start + MAX_ENTRIES)
        rows = await self.store.read_range(start, end)
        batches = await self.store.batches([r.batch_id for r in rows])
        out = []
        for r in rows:
            root = batches[r.batch_id].statement.root
            us = tlog.micros(r.accepted_at)
            publisher = batches[r.batch_id].statement.node
            out.append({"seq": r.seq, "dataset": r.dataset, "publisher": publisher,
                        "digest": r.digest, "batch_root": root, "accepted_us": us,
                        "leaf": tlog.entry_leaf(r.seq, r.dataset, publisher, r.digest, root,
                                                us)})
        return out
