"""What a node knows of the broker's transparency log (the ``tlog``): the last checkpoint it
trusted, every newer one checked consistent with it, and sampled records' inclusion."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os

import aiohttp
import structlog

from exchange.core import merkle, tlog
from exchange.core.errors import Code, ExchangeError, IntegrityError, UnavailableError
from exchange.node.client import Client

__all__ = ["TlogMonitor"]

logger = structlog.get_logger("exchange.node")


class TlogMonitor:
    """What a node knows of the broker's transparency log.

    Keeps the last checkpoint it trusted, checks that every newer one is consistent with it, and
    checks sampled records' inclusion. Two checkpoints that cannot both be true (a split view)
    are reported loudly and kept as evidence; the node never trusts the newer one.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
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
        path = client.config.checkpoint_file
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                note = f.read()
            text = note.split("\n\n")[0] + "\n"
            self.trusted = tlog.Checkpoint.parse(text, note)  # re-verified on first refresh

    async def note_key(self) -> tlog.NoteKey:
        """The broker's checkpoint key, trusted only as its signing key certified by the CA."""
        if self.key is None:
            info = await self.client.get_json("/v1/log/key")
            public = await self.client.trust(info["broker"])  # via the exchange CA
            key = tlog.NoteKey(info["origin"], public)
            if key.vkey != info["vkey"]:
                raise IntegrityError("the broker's log key is not its certified signing key",
                                     code=Code.CHECKPOINT_FORGED)
            self.key, self.origin = key, info["origin"]
        return self.key

    async def refresh(self) -> tlog.Checkpoint:
        """Fetch the latest checkpoint, verify it and its consistency with the trusted one."""
        key = await self.note_key()
        note = (await self.client.get_bytes("/v1/log/checkpoint")).decode()
        cp = tlog.open_checkpoint(key, note, self.origin)
        return await self.observe(cp)

    async def observe(self, cp: tlog.Checkpoint) -> tlog.Checkpoint:
        """Check a (signature-verified) checkpoint against the trusted one; trust it if newer."""
        old = self.trusted
        if old is not None:
            if old.note:
                tlog.open_checkpoint(await self.note_key(), old.note, self.origin)
            lo, hi = (old, cp) if old.size <= cp.size else (cp, old)
            try:
                if lo.size == hi.size:
                    if lo.root != hi.root:
                        raise IntegrityError(f"two checkpoints of size {lo.size} differ",
                                             code=Code.SPLIT_VIEW)
                elif lo.size > 0:  # every tree extends the empty one: nothing to prove
                    proof = await self.client.get_json(
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
        if self.client.config.checkpoint_file:
            with open(self.client.config.checkpoint_file, "w", encoding="utf-8") as f:
                f.write(cp.note)
        return cp

    def _save_evidence(self, old: tlog.Checkpoint, new: tlog.Checkpoint) -> None:
        path = self.client.config.checkpoint_file
        if path:
            with open(path + ".split-view", "a", encoding="utf-8") as f:
                f.write(old.note + "\n" + new.note + "\n")

    async def verify_inclusion(self, seq: int, leaf: bytes) -> None:
        cp = self.trusted
        if cp is None or cp.size <= seq:
            cp = await self.refresh()
        proof = await self.client.get_json(f"/v1/log/proof/inclusion?seq={seq}&size={cp.size}")
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
