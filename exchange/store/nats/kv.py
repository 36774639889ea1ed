"""The NATS store's key-value buckets: subscription positions and quality counters.

- ``P_SUBS``: one key per (node, dataset, name) subscription; its position moves only forward, by
  KV revision (``update(last=revision)``), so two connections of one subscription on two brokers
  cannot move it back.
- ``P_QUALITY``: each broker process's counters per (dataset, publisher) under a key prefixed
  with its own instance id: processes never overwrite each other, and the exchange's totals are
  the sum over every process that ever ran.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

import nats.js.errors
from exchange.core.errors import Code, UnavailableError
from exchange.core.ledger import QualityRow
from exchange.store.base import SubscriptionRow
from exchange.store.nats.direct import DirectGets, unavailable
from nats.aio.client import Client

__all__ = ["Buckets", "SubValue"]

_enc = msgspec.msgpack.Encoder()


class SubValue(msgspec.Struct, frozen=True, array_like=True):
    node: str
    dataset: str
    name: str
    acked: int
    created_at: float


_sub = msgspec.msgpack.Decoder(SubValue)


@dataclass
class Buckets:
    """Subscription positions and quality counters in JetStream KV."""

    nc: Callable[[], Client]
    direct: DirectGets
    subs_bucket: str
    quality_bucket: str
    #: this broker process's own prefix for its quality counters
    instance: str
    timeout: float
    _handles: dict[str, Any] = field(default_factory=dict)
    _subs_seen: dict[str, tuple[int, SubValue]] = field(default_factory=dict)

    def forget(self) -> None:
        """Drop the bucket handles (the connection closed)."""
        self._handles.clear()

    async def bucket(self, name: str) -> Any:
        """A KV bucket's handle, looked up once (each lookup is a stream-info round trip)."""
        kv = self._handles.get(name)
        if kv is None:
            kv = self._handles[name] = await self.nc().jetstream(
                timeout=self.timeout).key_value(name)
        return kv

    # -- subscriptions -----------------------------------------------------------------------

    @staticmethod
    def _sub_key(node: str, dataset: str, name: str) -> str:
        return "s" + hashlib.sha256(f"{node}\0{dataset}\0{name}".encode()).hexdigest()[:40]

    async def _kv(self) -> Any:
        with unavailable("opening the subscriptions bucket"):
            return await self.bucket(self.subs_bucket)

    async def subscription(self, node: str, dataset: str, name: str) -> SubscriptionRow | None:
        v = await self._sub_get(await self._kv(), self._sub_key(node, dataset, name))
        return None if v is None else SubscriptionRow(v.node, v.dataset, v.name, v.acked,
                                                      v.created_at)

    async def _sub_get(self, kv: Any, key: str) -> SubValue | None:
        try:
            with unavailable("reading a subscription"):
                entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        v = _sub.decode(entry.value)
        self._subs_seen[key] = (entry.revision or 0, v)
        return v

    async def create_subscription(self, node: str, dataset: str, name: str, acked: int,
                                  now: float) -> SubscriptionRow:
        kv = await self._kv()
        key = self._sub_key(node, dataset, name)
        # created meanwhile, by this or another broker: keep that one
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError), \
                unavailable("creating a subscription"):
            await kv.create(key, _enc.encode(SubValue(node, dataset, name, acked, now)))
        row = await self.subscription(node, dataset, name)
        assert row is not None
        return row

    async def ack(self, node: str, dataset: str, name: str, seq: int) -> None:
        """Move the position to ``seq`` if that is forward, by KV revision (two connections of
        one subscription, on two brokers, cannot move it back)."""
        kv = await self._kv()
        key = self._sub_key(node, dataset, name)
        for _ in range(100):
            known = self._subs_seen.get(key)
            if known is None:
                if await self._sub_get(kv, key) is None:
                    return
                known = self._subs_seen[key]
            revision, v = known
            if seq <= v.acked:
                return
            new = msgspec.structs.replace(v, acked=seq)
            try:
                with unavailable("storing an ack"):
                    new_rev = await kv.update(key, _enc.encode(new), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                self._subs_seen.pop(key, None)  # moved elsewhere: read it again
                continue
            self._subs_seen[key] = (new_rev, new)
            return
        raise UnavailableError("ack kept losing revision races", code=Code.STORE_UNAVAILABLE)

    async def subscriptions(self) -> list[SubscriptionRow]:
        msgs = await self.direct.get(f"KV_{self.subs_bucket}", {
            "multi_last": [f"$KV.{self.subs_bucket}.>"], "batch": 100_000}, batch=True)
        rows = []
        for m in msgs:
            if m.data:
                v = _sub.decode(m.data)
                rows.append(SubscriptionRow(v.node, v.dataset, v.name, v.acked, v.created_at))
        return sorted(rows, key=lambda r: (r.dataset, r.node, r.name))

    # -- quality -------------------------------------------------------------------------------

    async def save_quality(self, rows: Sequence[QualityRow]) -> None:
        """This broker process's counters per (dataset, publisher), under a key of its own:
        the exchange's totals are the sum over every process that ever ran."""
        if not rows:
            return
        with unavailable("saving quality counters"):
            kv = await self.bucket(self.quality_bucket)
            for dataset, publisher, blob in rows:
                key = hashlib.sha256(f"{dataset}\0{publisher}".encode()).hexdigest()[:40]
                await kv.put(f"{self.instance}.{key}",
                             _enc.encode((dataset, publisher, blob)))

    async def other_quality(self) -> list[QualityRow]:
        """The counters of every other broker process, live or gone."""
        msgs = await self.direct.get(f"KV_{self.quality_bucket}", {
            "multi_last": [f"$KV.{self.quality_bucket}.>"], "batch": 100_000}, batch=True)
        out: list[QualityRow] = []
        own = f"$KV.{self.quality_bucket}.{self.instance}."
        for m in msgs:
            # a direct get's reply names the message's own subject in a header
            subject = (m.headers or {}).get("Nats-Subject", "")
            if m.data and not subject.startswith(own):
                d, p, blob = msgspec.msgpack.decode(m.data, type=tuple[str, str, bytes])
                out.append((d, p, blob))
        return out
