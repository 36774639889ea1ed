"""Wakes live subscriptions when their dataset grows. No records pass through here."""

from __future__ import annotations

import asyncio

__all__ = ["Hub"]


class Hub:
    """One event per dataset, replaced on every append: a waiter that took the event before
    reading the store cannot miss an append that happens after its read."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self.heads: dict[str, int] = {}

    def event(self, dataset: str) -> asyncio.Event:
        ev = self._events.get(dataset)
        if ev is None:
            ev = self._events[dataset] = asyncio.Event()
        return ev

    def appended(self, dataset: str, last_seq: int) -> None:
        self.heads[dataset] = max(self.heads.get(dataset, -1), last_seq)
        ev = self._events.pop(dataset, None)
        if ev is not None:
            ev.set()
