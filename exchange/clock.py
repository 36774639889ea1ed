"""Time, supplied to the protocol code rather than read by it (httpcore's backends, trio's clock).

The pure core never reads a clock: it takes ``now`` as an argument. The shell (the broker's pumps,
the node SDK) reads time only through a ``Clock``, so a test moves a ``FakeClock`` forward to make
an ack timeout, a linger or a redelivery happen at once, instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
import time
from typing import Protocol

__all__ = ["SYSTEM", "Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the Unix epoch (acceptance times, expiries, freshness)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (timeouts, redelivery, linger)."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``monotonic()`` has reached ``deadline``."""
        ...

    def utcnow(self) -> dt.datetime:
        """``time()`` as an aware UTC datetime."""
        ...


class SystemClock:
    """The process's own clocks."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    def utcnow(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


SYSTEM = SystemClock()


class FakeClock:
    """A clock that moves only when told (``advance``): sleepers wake in deadline order, and
    ``advance`` yields to the loop until they have run, so what a timeout triggers is done
    when it returns."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self._wall = start
        self._mono = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._ids = itertools.count()
        self._slept = asyncio.Event()

    def time(self) -> float:
        return self._wall + self._mono

    def monotonic(self) -> float:
        return self._mono

    def utcnow(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.time(), dt.UTC)

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._mono:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._ids), fut))
        self._slept.set()
        await fut

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting on this clock."""
        return sum(1 for *_, f in self._sleepers if not f.done())

    async def sleeping(self, n: int = 1) -> None:
        """Until at least ``n`` tasks wait on this clock: what they wait for happens next."""
        while self.sleepers < n:
            self._slept.clear()
            await self._slept.wait()

    async def advance(self, seconds: float) -> None:
        """Move both clocks forward; wake every sleeper whose deadline has come."""
        self._mono += seconds
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
        # let the woken tasks run up to their next await
        for _ in range(10):
            await asyncio.sleep(0)
