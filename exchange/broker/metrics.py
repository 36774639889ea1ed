"""The broker's quality bookkeeping: counters per (dataset, publisher), persisted with each
append; scores on demand; Prometheus metrics. The scoring itself is ``exchange.quality``.

Also the operational metrics operators alert on (``ops_registry``): log size and checkpoint
age, connected nodes, certificate and CRL expiry, the process's CPU, memory and descriptors.
Every gauge is read from the broker's state at scrape time (a ``Collector``), so there is no
second bookkeeping to drift; ``deploy/`` holds the dashboard and alert rules that use them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exchange.core import datasets, quality
from exchange.core.gate import Decided
from exchange.core.ledger import QualityRow, Reference
from exchange.store.base import Store

if TYPE_CHECKING:
    from exchange.broker.app import Broker

__all__ = ["CertExpiry", "CertificateScan", "QualityTracker", "ops_registry"]

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
            for target, key in a.refs:
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
        last = GaugeMetricFamily("exchange_dataset_last_record_timestamp_seconds",
                                 "When the dataset last accepted a record (Unix time)",
                                 labels=["dataset"])
        latest: dict[str, float] = {}
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
            if c.last_accepted_at:
                latest[d] = max(latest.get(d, 0.0), c.last_accepted_at)
        for (d, node, name), (n, seconds) in sorted(t.lag.items()):
            lag.add_metric([d, node, name], n)
            lag_s.add_metric([d, node, name], seconds)
        for d, at in sorted(latest.items()):
            last.add_metric([d], at)
        yield from (records, score, stale, delivered, lag, lag_s, last)


# -- operational metrics -------------------------------------------------------------------------


def ops_registry(broker: Broker) -> CollectorRegistry:
    """The broker's own registry for ``/metrics``: its operational gauges and the process
    collector (``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
    ``process_open_fds``, …). A registry per broker, not the global one: two brokers in one
    process (the tests) each report their own state."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    registry.register(_OpsCollector(broker))
    return registry


@dataclass(frozen=True, slots=True)
class CertExpiry:
    """One certificate the broker's PKI directory holds, and when it expires."""

    subject: str
    role: str  # ca | broker | node | operator
    usage: str  # ca | tls | signing
    not_after: float  # Unix time
    serial: int


#: the certificates under the PKI directory (certs/README.md, "Layout"), per party directory
_PARTY_CERTS = (("tls", "tls.crt"), ("signing", "signing.crt"))


class CertificateScan:
    """Every certificate in the PKI directory the broker reads: the CA's, the broker's own,
    each enrolled node's and operator's. A scrape costs a ``stat`` per file; a file is parsed
    again only when it changed (a renewal, a rotation rewrites it)."""

    def __init__(self, pki_dir: Path, broker_id: str) -> None:
        self.root = pki_dir
        self.broker_id = broker_id
        self._parsed: dict[Path, tuple[tuple[int, int, int], float, int, str]] = {}

    def __call__(self) -> list[CertExpiry]:
        wanted: list[tuple[Path, str | None, str, str]] = [(self.root / "ca.crt", None, "ca",
                                                            "ca")]
        wanted += [(self.root / "broker" / f, self.broker_id, "broker", usage)
                   for usage, f in _PARTY_CERTS]
        for role, folder in (("node", "nodes"), ("operator", "operators")):
            base = self.root / folder
            for party in sorted(base.iterdir()) if base.is_dir() else []:
                wanted += [(party / f, party.name, role, usage) for usage, f in _PARTY_CERTS]
        out = []
        seen = set()
        for path, subject, role, usage in wanted:
            got = self._read(path)
            if got is None:
                continue
            seen.add(path)
            not_after, serial, common_name = got
            out.append(CertExpiry(subject or common_name, role, usage, not_after, serial))
        for gone in self._parsed.keys() - seen:  # a party's directory removed
            del self._parsed[gone]
        return out

    def _read(self, path: Path) -> tuple[float, int, str] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None  # a party enrolled with one certificate so far, or none
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._parsed.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1:]
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            # half-copied or foreign: the broker's own loading reports it; a scrape goes on
            return None
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common_name = str(names[0].value) if names else cert.subject.rfc4514_string()
        entry = (stamp, cert.not_valid_after_utc.timestamp(), cert.serial_number, common_name)
        self._parsed[path] = entry
        return entry[1:]


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class _OpsCollector(Collector):
    """What operators alert on, read from the broker at scrape time (its clock included)."""

    def __init__(self, broker: Broker) -> None:
        self.b = broker
        self.certs = CertificateScan(broker.pki_dir, broker.identity.node_id)

    def collect(self) -> Iterator[Metric]:
        b = self.b
        now = b.clock.time()
        size, _ = b.store.log_state()
        checkpoint = b.tlog.latest
        yield _gauge("exchange_log_size", "Entries in the transparency log", size)
        yield _gauge("exchange_checkpoint_size", "Entries the last signed checkpoint covers",
                     checkpoint.size if checkpoint is not None else 0)
        if b.tlog.latest_at is not None:
            # a checkpoint is signed only when the log grew: an idle log's checkpoint ages
            # without anything being wrong (the alert also asks log size > checkpoint size)
            yield _gauge("exchange_checkpoint_age_seconds",
                         "Seconds since the last checkpoint was signed",
                         max(0.0, now - b.tlog.latest_at))
        yield _gauge("exchange_checkpoint_interval_seconds",
                     "How often a growing log is checkpointed", b.tlog.interval)

        # a node is connected while any connection its certificate made is open (an idle
        # keep-alive one included); the operators' own connections are not counted
        connected = {node for serial, node in b.peer_nodes.items()
                     if any(not t.is_closing() for t in b.peers.get(serial, ()))}
        yield _gauge("exchange_connected_nodes",
                     "Distinct nodes with a connection open now", len(connected))
        seen = GaugeMetricFamily("exchange_node_last_seen_timestamp_seconds",
                                 "When the node was last served (now while connected)",
                                 labels=["node"])
        for node, at in sorted({**b.last_seen, **dict.fromkeys(connected, now)}.items()):
            seen.add_metric([node], at)
        yield seen

        expiry = GaugeMetricFamily("exchange_certificate_expiry_timestamp_seconds",
                                   "When the certificate expires (notAfter, Unix time)",
                                   labels=["subject", "role", "usage"])
        revoked = GaugeMetricFamily("exchange_certificate_revoked",
                                    "1 when the CRL in force lists the certificate",
                                    labels=["subject", "role", "usage"])
        for c in self.certs():
            expiry.add_metric([c.subject, c.role, c.usage], c.not_after)
            revoked.add_metric([c.subject, c.role, c.usage],
                               1.0 if c.serial in b.revoked.serials else 0.0)
        yield expiry
        yield revoked
        # the CRL the broker holds (read at start and at each reload), not the file: past its
        # nextUpdate the TLS stack refuses every handshake until a fresh one is loaded
        yield _gauge("exchange_crl_next_update_timestamp_seconds",
                     "nextUpdate of the CRL in force (Unix time)",
                     b.revoked.next_update.timestamp())
        pool = b.publisher.pool
        if pool is not None:  # the parallel gate (``gate_workers``)
            yield _gauge("exchange_gate_workers", "Gate worker processes running",
                         pool.running())
            batches = CounterMetricFamily(
                "exchange_gate_batches", "Batches checked, in a gate worker or in the broker's "
                "own process (a key other than the current one, a worker gone)",
                labels=["checked_in"])
            batches.add_metric(["worker"], pool.gated)
            batches.add_metric(["broker"], pool.delegated)
            yield batches
            yield CounterMetricFamily("exchange_gate_worker_restarts",
                                      "Gate workers started again after theirs went away",
                                      value=pool.restarts)
