"""Who sequences: a lease in a NATS KV bucket whose entries expire (the bucket's ``ttl``).

One broker process at a time holds the key ``sequencer`` of bucket ``P_LEASE``: it created the
key (create fails while the key exists) and renews it by revision every third of the lease.
A holder that dies stops renewing; the key expires after the lease and the next broker to try
creates it. A holder that stops cleanly deletes the key, and every broker hears the deletion
on the key's subject (``poke``) and tries at once. A holder whose renewal fails (NATS
unreachable) gives the role up when that failure comes after most of the lease has run out,
because another broker may hold it by then (a renewal that hangs longer than the lease leaves
it sequencing meanwhile, which the log tolerates, below); a renewal refused on revision means
another broker holds it now, unless the key still names this holder (a renewal whose reply was
lost), and then the renewal is kept. Either way the role is given up before anything
else is done as the sequencer.

Two holders at once (a paused holder that has not noticed yet) cannot harm the log: every
sequencer derives the same tree from the same stream, and checkpoints are stored conditionally
on the latest one (``NatsStore.add_checkpoint``). The lease only keeps the work in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

import nats.js.errors
from exchange.core.errors import UnavailableError
from exchange.store.nats.direct import unavailable

__all__ = ["KEY", "Lease"]

logger = structlog.get_logger("exchange.store.nats")

KEY = "sequencer"


class Lease:
    """Takes, renews and gives up the sequencer's lease; calls ``on_gain``/``on_lose`` as the
    role changes. ``on_gain`` (reading the whole log up: seconds to minutes) runs beside the
    renewals, so a long start does not let the lease run out; losing the lease cancels it."""

    def __init__(self, kv: Callable[[], Awaitable[Any]], instance: str, ttl: float, *,
                 on_gain: Callable[[], Awaitable[None]],
                 on_lose: Callable[[], Awaitable[None]]) -> None:
        self._kv = kv
        self.instance = instance
        self.ttl = ttl
        self._on_gain = on_gain
        self._on_lose = on_lose
        self._revision: int | None = None
        self._renewed = 0.0
        self._task: asyncio.Task[None] | None = None
        #: ``on_gain`` running since the lease was taken; done once sequencing
        self.gaining: asyncio.Task[bool] | None = None
        #: set whenever the role changes (tests and the store's start wait on it)
        self.changed = asyncio.Event()
        self._poked = asyncio.Event()
        self._stopping = False

    @property
    def held(self) -> bool:
        return self._revision is not None

    async def step(self) -> None:
        """One round: take the lease if free, else renew it if held."""
        kv = await self._kv()
        if self._revision is None:
            try:
                with unavailable("taking the sequencer lease"):
                    rev = await kv.create(KEY, self.instance.encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                # held: by another broker, or by this one before a crash (the same lease id,
                # kept in its data directory), which takes it back instead of waiting it out
                own = await self._own_revision(kv)
                if own is None:
                    return
                rev = own
            self._revision, self._renewed = rev, time.monotonic()
            logger.info("sequencer_lease_taken", instance=self.instance)
            self.gaining = asyncio.create_task(self._gain())
            return
        sent = self._revision
        try:
            with unavailable("renewing the sequencer lease"):
                rev = await kv.update(KEY, self.instance.encode(), last=sent)
        except nats.js.errors.KeyWrongLastSequenceError:
            # a renewal whose reply was lost moved the key on: still ours if it names us
            own = await self._own_revision(kv)
            if own is not None and self._revision == sent:
                self._revision, self._renewed = own, time.monotonic()
                return
            await self._give_up("another broker holds the lease, or it expired")
            return
        except UnavailableError:
            if time.monotonic() - self._renewed > self.ttl * 0.8:
                await self._give_up("lease not renewed in time")
            raise
        if self._revision != sent:
            # given up meanwhile (a start that failed): the renewal must not bring it back
            with contextlib.suppress(Exception):  # it expires anyway
                await kv.delete(KEY, last=rev)
            return
        self._revision, self._renewed = rev, time.monotonic()

    async def _gain(self) -> bool:
        """Start sequencing; whether it started (if not, the lease is given up for another
        broker, or this one's next round, to take)."""
        try:
            await self._on_gain()
        except Exception as err:  # NATS went away meanwhile: let the role move on
            logger.warning("sequencer_start_failed", instance=self.instance, error=repr(err))
            held, self._revision = self._revision is not None, None
            if held:
                await self._on_lose()
                with contextlib.suppress(Exception):  # it expires anyway
                    await self._delete_own()
            self._changed()
            return False
        self._changed()
        return True

    async def _cancel_gain(self) -> None:
        task, self.gaining = self.gaining, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _give_up(self, why: str) -> None:
        self._revision = None
        logger.warning("sequencer_lease_lost", instance=self.instance, reason=why)
        await self._cancel_gain()
        await self._on_lose()
        self._changed()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def poke(self) -> None:
        """The lease was given up (its key deleted): try for it now, not at the next round."""
        self._poked.set()

    async def _run(self) -> None:
        while not self._stopping:
            self._poked.clear()
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # NATS down: keep trying; the role follows the lease
                logger.info("sequencer_lease_step_failed", error=repr(err))
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancel that
            # stop() sends when the event is set at the same moment
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ttl / 3):
                    await self._poked.wait()

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop renewing; a lease held is given up: sequencing stops, then the key is deleted
        (by revision), so another broker takes the role at once (it hears the deletion)
        instead of after the lease runs out."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._revision is not None:
            self._revision = None
            await self._cancel_gain()
            await self._on_lose()
            with contextlib.suppress(Exception):  # it expires anyway
                await asyncio.wait_for(self._delete_own(), 2.0)
            self._changed()

    async def _own_revision(self, kv: Any) -> int | None:
        """The key's revision if it names this instance, else None (another's, or gone)."""
        try:
            with unavailable("reading the sequencer lease"):
                entry = await kv.get(KEY)
        except nats.js.errors.KeyNotFoundError:
            return None
        return int(entry.revision) if entry.value == self.instance.encode() else None

    async def _delete_own(self) -> None:
        """Delete the key if it still names this instance, at the revision read: a renewal
        cancelled in flight may have moved it past the one this lease last saw."""
        kv = await self._kv()
        own = await self._own_revision(kv)
        if own is not None:
            await kv.delete(KEY, last=own)

