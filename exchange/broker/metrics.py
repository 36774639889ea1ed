"""The broker's quality bookkeeping: counters per (dataset, publisher), persisted with each
append; scores on demand; Prometheus metrics. The scoring itself is ``exchange.quality``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from exchange.core import datasets, quality
from exchange.core.gate import Decided
from exchange.core.ledger import QualityRow, Reference
from exchange.store.base import Store

__all__ = ["QualityTracker"]

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(quality.Counters)

#: a delivery within this many seconds of acceptance is "timely" (the live score)
TIMELY_S = 1.0
#: publish→deliver latency buckets (seconds): 1 ms … 1 day; a live delivery is fast, but the
#: histogram must show how slow a slow one was, not cap it at the top bucket
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
                   30.0, 60.0, 300.0, 900.0, 3600.0, 21_600.0, 86_400.0)


class QualityTracker:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time,
                 owners: Callable[[], dict[str, str]] = dict) -> None:
        self.store = store
        self.clock = clock
        self._owners = owners
        self.counters: dict[tuple[str, str], quality.Counters] = {}
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "exchange_delivery_latency_seconds", "Publish (acceptance) to delivery latency",
            ["dataset", "subscriber"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.lag: dict[tuple[str, str, str], tuple[int, float]] = {}
        #: set by the metrics handler before each scrape (other brokers' counters included)
        self.scraped: dict[tuple[str, str], quality.Counters] = {}
        self.registry.register(_Collector(self))

    async def load(self) -> None:
        for dataset, publisher, blob in await self.store.load_quality():
            self.counters[(dataset, publisher)] = _dec.decode(blob)

    def _get(self, dataset: str, publisher: str) -> quality.Counters:
        c = self.counters.get((dataset, publisher))
        if c is None:
            c = self.counters[(dataset, publisher)] = quality.Counters()
        return c

    def rows(self, deltas: Mapping[tuple[str, str], quality.Counters]) -> list[QualityRow]:
        """The totals each (dataset, publisher) will have once ``deltas`` are committed: stored
        in the same step as the records they count."""
        return [(d, p, _enc.encode(self._get(d, p).merge(c))) for (d, p), c in deltas.items()]

    def add(self, deltas: Mapping[tuple[str, str], quality.Counters]) -> None:
        """Count what was committed (never before the commit: nothing to roll back)."""
        for (d, p), c in deltas.items():
            self.counters[(d, p)] = self._get(d, p).merge(c)

    async def unresolved_for(self, spec: datasets.DatasetSpec, decided: Decided
                             ) -> tuple[list[Reference], int]:
        """References of the accepted records to records the exchange does not hold, and how
        many references they hold in all."""
        wanted: dict[str, list[tuple[str, str]]] = {}
        for a in decided.accepted:
            for target, key in quality.references(spec, a.record.event.data):
                wanted.setdefault(target, []).append((key, a.key))
        out: list[Reference] = []
        for target, pairs in wanted.items():
            have = await self.store.current(target, [k for k, _ in pairs])
            out.extend((target, k, spec.name, src) for k, src in pairs if k not in have)
        return out, sum(len(p) for p in wanted.values())

    def delivered(self, dataset: str, subscriber: str, accepted_at: list[float],
                  now: float, *, total: int | None = None) -> None:
        """``total`` records delivered, of which those accepted at ``accepted_at`` live (first
        sent to a subscriber connected when they were accepted): only those count for
        latency and timeliness."""
        owner = self._owners().get(dataset, "")
        c = self._get(dataset, owner)
        c.delivered += len(accepted_at) if total is None else total
        c.delivered_live += len(accepted_at)
        hist = self.latency.labels(dataset, subscriber)
        for t in accepted_at:
            latency = max(0.0, now - t)
            hist.observe(latency)
            if latency <= TIMELY_S:
                c.delivered_timely += 1

    async def flush(self) -> None:
        await self.store.save_quality([(d, p, _enc.encode(c))
                                       for (d, p), c in self.counters.items()])

    async def totals(self) -> dict[tuple[str, str], quality.Counters]:
        """This process's counters plus those of every other broker sharing the store."""
        out = dict(self.counters)
        for d, p, blob in await self.store.other_quality():
            other = _dec.decode(blob)
            mine = out.get((d, p))
            out[(d, p)] = other if mine is None else mine.merge(other)
        return out

    async def report(self, dataset: str | None = None, publisher: str | None = None
                     ) -> dict[str, Any]:
        """Scores per dataset and per publisher, with the counters behind them."""
        now = self.clock()
        unresolved = await self.store.unresolved_counts()
        counters = await self.totals()
        out: dict[str, Any] = {}
        # the exchange's own system datasets (agreements) are not data anyone scores
        names = [dataset] if dataset else sorted(
            d for d in {d for d, _ in counters} | set(self._owners())
            if d in datasets.names())
        for name in names:
            spec = datasets.get(name)
            pubs = {p: c for (d, p), c in counters.items() if d == name and p
                    and (publisher is None or p == publisher)}
            total = quality.Counters()
            for c in pubs.values():
                total = total.merge(c)
            # deliveries are counted on the owner's row, so they are in `total` already
            sc = quality.scores(total, unresolved=unresolved.get(name, 0), now=now,
                                update_interval_s=spec.update_interval_s)
            out[name] = {
                "scores": _scores(sc),
                "counters": msgspec.to_builtins(total),
                "update_interval_s": spec.update_interval_s,
                "publishers": {p: {"scores": _scores(quality.scores(
                    c, unresolved=unresolved.get(name, 0), now=now,
                    update_interval_s=spec.update_interval_s)),
                    "counters": msgspec.to_builtins(c)} for p, c in sorted(pubs.items())},
                "unresolved": [{"target_dataset": t, "target_key": tk, "key": k}
                               for t, tk, _, k in await self.store.unresolved_sample(name, 10)],
                "latency_ms": self._latency(name),
            }
        return out

    def _latency(self, dataset: str) -> dict[str, dict[str, float | None]]:
        """p50/p95/p99 publish→deliver latency per subscriber, from the histogram buckets
        (upper bound of the bucket holding the quantile)."""
        out: dict[str, dict[str, float | None]] = {}
        for metric in self.latency.collect():
            per: dict[str, list[tuple[float, float]]] = {}
            for s in metric.samples:
                if s.name.endswith("_bucket") and s.labels.get("dataset") == dataset:
                    per.setdefault(s.labels["subscriber"], []).append(
                        (float(s.labels["le"]), s.value))
            for sub, buckets in per.items():
                buckets.sort()
                total = buckets[-1][1]
                q: dict[str, float | None] = {}
                for name, p in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
                    q[name] = next((le * 1000 for le, n in buckets if total and n >= p * total),
                                   None)
                    if q[name] == float("inf"):
                        q[name] = None
                out[sub] = q
        return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _scores(s: quality.Scores) -> dict[str, Any]:
    return {"correct": _round(s.correct), "sufficient": _round(s.sufficient),
            "clean": _round(s.clean), "live": round(s.live, 4), "stale": s.stale,
            "unresolved_references": s.unresolved_references,
            "seconds_since_update": (None if s.seconds_since_update is None
                                     else round(s.seconds_since_update, 3))}


class _Collector(Collector):
    """Counters and scores read from the tracker at scrape time: no second bookkeeping."""

    def __init__(self, tracker: QualityTracker) -> None:
        self.t = tracker

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        t = self.t
        now = t.clock()
        records = CounterMetricFamily("exchange_gate_records", "Records through the gate",
                                      labels=["dataset", "publisher", "outcome", "code"])
        score = GaugeMetricFamily("exchange_quality_score", "Quality score in [0, 1]",
                                  labels=["dataset", "publisher", "principle"])
        stale = GaugeMetricFamily("exchange_dataset_stale", "1 when the publisher is quiet "
                                  "beyond the dataset's update interval",
                                  labels=["dataset", "publisher"])
        delivered = CounterMetricFamily("exchange_delivered_records", "Records delivered",
                                        labels=["dataset"])
        lag = GaugeMetricFamily("exchange_subscription_lag_records",
                                "Records accepted but not yet acked by a subscription",
                                labels=["dataset", "subscriber", "subscription"])
        lag_s = GaugeMetricFamily("exchange_subscription_lag_seconds",
                                  "Age of the oldest record a subscription has not acked",
                                  labels=["dataset", "subscriber", "subscription"])
        for (d, p), c in sorted((t.scraped or t.counters).items()):
            records.add_metric([d, p, "accepted", ""], c.accepted)
            records.add_metric([d, p, "duplicate", ""], c.duplicates)
            for code, n in sorted(c.rejected.items()):
                records.add_metric([d, p, "rejected", code], n)
            if not p:
                continue
            try:
                interval = datasets.get(d).update_interval_s
            except Exception:
                continue
            s = quality.scores(c, unresolved=0, now=now, update_interval_s=interval)
            for principle in ("correct", "sufficient", "clean", "live"):
                value = getattr(s, principle)
                if value is not None:  # no data: no sample, rather than a made-up 1
                    score.add_metric([d, p, principle], value)
            stale.add_metric([d, p], 1.0 if s.stale else 0.0)
            delivered.add_metric([d], c.delivered)
        for (d, node, name), (n, seconds) in sorted(t.lag.items()):
            lag.add_metric([d, node, name], n)
            lag_s.add_metric([d, node, name], seconds)
        yield from (records, score, stale, delivered, lag, lag_s)
