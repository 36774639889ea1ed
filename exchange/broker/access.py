"""Lookups on record, group-committed: each lookup's access row is durable before its reply
leaves, and the rows of lookups in flight together share one transaction."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from exchange.store.base import AccessRow, Store

__all__ = ["AccessLog"]


@dataclass
class AccessLog:
    store: Store
    _pending: list[tuple[AccessRow, asyncio.Future[None]]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def record(self, row: AccessRow) -> None:
        """Return once ``row`` is stored (raises what the store raised)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush())
        await asyncio.shield(future)  # a cancelled caller's row is written all the same

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self.store.add_access([row for row, _ in batch])
            except Exception as err:
                for _, f in batch:
                    if not f.done():
                        f.set_exception(err)
            else:
                for _, f in batch:
                    if not f.done():
                        f.set_result(None)
