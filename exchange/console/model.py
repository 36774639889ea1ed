"""The console's view model: broker JSON and ``/metrics`` text in, one JSON-ready snapshot out.

No I/O and no clock: the server fetches a ``Sample`` (with the time it fetched it) and calls
``Model.update``. Everything the page shows goes through here, and only through named fields:
counts, rates, scores, states, times, node ids and catalogue metadata. A record's contents
(``data``), its keys and the quality report's unresolved-reference samples are never copied, so
the console cannot show what it never receives (the tests publish a distinctive name and look
for it in every payload).

Sources, each optional (a missing one shows as a dash, never as a made-up zero):

- ``/v1/quality``: per dataset and publisher counters (accepted, rejected by code, duplicates,
  delivered) and the four scores with the stale flag;
- ``/v1/catalog``: titles (Vietnamese and English), publisher, classification, periodicity;
- ``/v1/agreements`` and ``/v1/subscriptions``;
- ``/v1/log/checkpoint`` (signature-checked by the server before it gets here);
- ``/healthz``: the store kind and, on NATS, what the client knows of its cluster;
- ``/metrics``: process CPU, RSS and descriptors, log size and checkpoint age, connected nodes
  and last seen, certificate and CRL expiry, subscription lag in seconds, credits and
  redeliveries, where the broker exports them;
- the nodes' signing certificates (``/v1/nodes/ID/certificate``): expiry for nodes the metrics
  do not name.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["CHECKPOINTS_SENT", "WARN_DAYS", "CheckpointSeen", "Metrics", "Model", "Sample",
           "parse_metrics"]

#: a certificate or CRL expiring within this many days shows in the warning style
WARN_DAYS = 30.0
_DAY = 86_400.0
#: a node whose last-seen time is this close to the poll's is connected now (the broker
#: reports the scrape's own time for nodes with an open connection)
CONNECTED_WITHIN_S = 5.0
#: agreements no longer in force (rejected, revoked, expired) listed, newest first
CLOSED_SHOWN = 20
#: the exchange's own system dataset: agreements, published by the broker, scored by nobody
SYSTEM_DATASETS = frozenset({"agreement"})
#: checkpoints sent in each snapshot, newest last: 360 is the hour at the default 10 s step,
#: and keeps a snapshot small however short the step (one per second would be 3,600 points)
CHECKPOINTS_SENT = 360
#: sizes whose root the model remembers to catch a second root for one size; a log that grows
#: every poll fills it in about an hour at the default interval
ROOTS_KEPT = 4096
#: split-view and shrink warnings kept (the first ones are the evidence; later ones repeat it)
LOG_WARNINGS_KEPT = 20


class Metrics:
    """Prometheus text, parsed: samples by name, each a (labels, value) pair."""

    def __init__(self, samples: Mapping[str, list[tuple[dict[str, str], float]]]) -> None:
        self.samples = samples

    def all(self, name: str) -> list[tuple[dict[str, str], float]]:
        return list(self.samples.get(name, []))

    def one(self, name: str) -> float | None:
        """The value of an unlabelled sample (the sum if several), or None if absent."""
        values = [v for _, v in self.samples.get(name, [])]
        return sum(values) if values else None

    def has(self, name: str) -> bool:
        return name in self.samples


def parse_metrics(text: str | None) -> Metrics:
    """Parse the exposition text; an unparsable text is as good as none (the console shows
    dashes rather than failing)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    if not text:
        return Metrics(out)
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    except (ValueError, TypeError, IndexError):
        return Metrics({})
    return Metrics(out)


@dataclass(frozen=True)
class CheckpointSeen:
    """A checkpoint whose signature the console checked: when it first saw it, size, root."""

    seen_at: float
    size: int
    root: str


@dataclass
class Sample:
    """One poll of the broker, as fetched at ``at`` (seconds since the epoch). ``None`` means
    the source could not be read this time (``errors`` says why)."""

    at: float
    health: dict[str, Any] | None = None
    metrics: str | None = None
    quality: dict[str, Any] | None = None
    catalog: list[dict[str, Any]] | None = None
    agreements: list[dict[str, Any]] | None = None
    subscriptions: list[dict[str, Any]] | None = None
    checkpoint: CheckpointSeen | None = None
    #: node id -> notAfter of its signing certificate (seconds since the epoch)
    certificates: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class _Totals:
    at: float
    accepted: int
    delivered: int
    per_dataset: dict[str, int]
    cpu: float | None


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _int(x: Any) -> int:
    return int(x) if isinstance(x, int | float) and not isinstance(x, bool) else 0


def _str(x: Any) -> str:
    return x if isinstance(x, str) else ""


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None or math.isnan(x) else round(x, digits)


def _expiry(at: float, now: float) -> dict[str, Any]:
    days = (at - now) / _DAY
    return {"expires": at, "days": round(days, 2), "warn": days <= WARN_DAYS,
            "expired": days <= 0}


def _counters(entry: Any) -> dict[str, Any]:
    c = entry.get("counters", {}) if isinstance(entry, dict) else {}
    return c if isinstance(c, dict) else {}


def _rejected(c: Mapping[str, Any]) -> dict[str, int]:
    r = c.get("rejected", {})
    return {str(k): _int(v) for k, v in r.items()} if isinstance(r, dict) else {}


class Model:
    """The rolling state behind the page: the last totals (for rates), the history of quality
    scores, rates and checkpoints (``history_s`` long, a point at most every ``step_s``), the
    checkpoints' sizes and roots (to catch a split view or a shrinking log between polls), and
    the last consistency check."""

    def __init__(self, *, history_s: float = 3600.0, step_s: float = 10.0) -> None:
        self.history_s = history_s
        self.step_s = step_s
        self._prev: _Totals | None = None
        self.quality_history: dict[str, deque[list[float | None]]] = {}
        self.rate_history: deque[list[float]] = deque()
        self.checkpoints: deque[CheckpointSeen] = deque(maxlen=CHECKPOINTS_SENT)
        #: the outcome of the last consistency check the operator asked for (the server
        #: makes it; the page shows it)
        self.verification: dict[str, Any] | None = None
        #: split-view and shrink findings among the polled checkpoints, the first ones kept
        self.log_warnings: list[dict[str, Any]] = []
        self.log_warnings_total = 0
        self._warned: set[tuple[str, int, str]] = set()
        self._roots: dict[int, str] = {}
        self._largest: CheckpointSeen | None = None
        self._last_point = -math.inf
        self._last_checkpoint_point = -math.inf

    # -- history ---------------------------------------------------------------------------

    def _trim(self, points: deque[Any], now: float, at: Any) -> None:
        while points and at(points[0]) < now - self.history_s:
            points.popleft()

    def see_checkpoint(self, cp: CheckpointSeen) -> dict[str, Any] | None:
        """Compare a signature-checked checkpoint with those seen before, then remember it.

        A log only grows, and one size has one root (RFC 6962 §2.1): another root for a size
        seen before is a split view, a smaller size than the largest seen a shrunk log. Either
        is returned (and kept in ``log_warnings``), and the checkpoint stays out of the
        history, which draws the log as the console saw it grow. Otherwise the history keeps
        a point per ``step_s``: the latest checkpoint of each step."""
        warning = self._compare(cp)
        if warning is not None:
            key = (warning["code"], cp.size, cp.root)
            if key not in self._warned:
                self._warned.add(key)
                self.log_warnings_total += 1
                if len(self.log_warnings) < LOG_WARNINGS_KEPT:
                    self.log_warnings.append(warning)
            return warning
        self._roots[cp.size] = cp.root
        while len(self._roots) > ROOTS_KEPT:
            del self._roots[next(iter(self._roots))]
        if self._largest is None or cp.size > self._largest.size:
            self._largest = cp
        last = self.checkpoints[-1] if self.checkpoints else None
        if last is not None and (last.size, last.root) == (cp.size, cp.root):
            pass  # nothing new since the last poll
        elif last is None or cp.seen_at - self._last_checkpoint_point >= self.step_s:
            self._last_checkpoint_point = cp.seen_at
            self.checkpoints.append(cp)
        else:
            self.checkpoints[-1] = cp
        self._trim(self.checkpoints, cp.seen_at, lambda c: c.seen_at)
        return None

    def _compare(self, cp: CheckpointSeen) -> dict[str, Any] | None:
        root = self._roots.get(cp.size)
        largest = self._largest
        if largest is not None and largest.size == cp.size:
            root = largest.root
        if root is not None and root != cp.root:
            return {"code": "split_view", "at": cp.seen_at, "size": cp.size, "root": cp.root,
                    "seen_root": root,
                    "detail": f"two roots for size {cp.size}: {root} seen before, now "
                              f"{cp.root}"}
        if largest is not None and cp.size < largest.size:
            return {"code": "shrunk", "at": cp.seen_at, "size": cp.size, "root": cp.root,
                    "seen_size": largest.size,
                    "detail": f"the log shrank: size {cp.size} after size {largest.size}"}
        return None

    # -- the snapshot ----------------------------------------------------------------------

    def update(self, s: Sample) -> dict[str, Any]:
        """Take one sample; return the snapshot the page renders. A source whose JSON has an
        unexpected shape loses its malformed entries (or all of it) and says so in
        ``errors``; the rest of the snapshot is unaffected."""
        now = s.at
        errors = dict(s.errors)
        s = _clean(s, errors)
        m = parse_metrics(s.metrics)
        report = (s.quality or {}).get("datasets", {}) if isinstance(s.quality, dict) else {}
        report = report if isinstance(report, dict) else {}
        if s.checkpoint is not None:
            self.see_checkpoint(s.checkpoint)

        per_dataset = {name: _int(_counters(e).get("accepted")) for name, e in report.items()}
        accepted = sum(per_dataset.values())
        delivered = sum(_int(_counters(e).get("delivered")) for e in report.values())
        rejected = sum(sum(_rejected(_counters(e)).values()) for e in report.values())
        duplicates = sum(_int(_counters(e).get("duplicates")) for e in report.values())
        cpu = m.one("process_cpu_seconds_total")
        totals = _Totals(now, accepted, delivered, per_dataset, cpu)
        rate_in = rate_out = cpu_share = None
        rates: dict[str, float | None] = {}
        prev = self._prev
        if prev is not None and now > prev.at and s.quality is not None:
            dt = now - prev.at
            rate_in = max(0.0, (accepted - prev.accepted) / dt)
            rate_out = max(0.0, (delivered - prev.delivered) / dt)
            rates = {d: max(0.0, (n - prev.per_dataset.get(d, n)) / dt)
                     for d, n in per_dataset.items()}
            if cpu is not None and prev.cpu is not None:
                cpu_share = max(0.0, (cpu - prev.cpu) / dt)
        if s.quality is not None:
            self._prev = totals

        point = now - self._last_point >= self.step_s
        if point:
            self._last_point = now
            if rate_in is not None and rate_out is not None:
                self.rate_history.append([now, round(rate_in, 2), round(rate_out, 2)])
            for name, entry in report.items():
                sc = (entry.get("scores") or {}) if isinstance(entry, dict) else {}
                self.quality_history.setdefault(name, deque()).append(
                    [now, *(_round(_num(sc.get(k)), 4)
                            for k in ("correct", "sufficient", "clean", "live"))])
        self._trim(self.rate_history, now, lambda p: p[0])
        for points in self.quality_history.values():
            self._trim(points, now, lambda p: p[0])

        latest = self.checkpoints[-1] if self.checkpoints else None
        age = m.one("exchange_checkpoint_age_seconds")
        if age is None and latest is not None:
            age = now - latest.seen_at  # since the console first saw this one
        log_size = m.one("exchange_log_size")
        if log_size is None and latest is not None:
            log_size = latest.size
        health = s.health if isinstance(s.health, dict) else {}
        overview = {
            "in_per_s": _round(rate_in, 1), "out_per_s": _round(rate_out, 1),
            "accepted": accepted if s.quality is not None else None,
            "rejected": rejected if s.quality is not None else None,
            "duplicates": duplicates if s.quality is not None else None,
            "delivered": delivered if s.quality is not None else None,
            "log_size": None if log_size is None else int(log_size),
            "checkpoint_age_s": _round(age, 1),
            "cpu_percent": _round(None if cpu_share is None else cpu_share * 100, 1),
            "rss_bytes": m.one("process_resident_memory_bytes"),
            "open_fds": m.one("process_open_fds"),
            "store": _str(health.get("store")) or None,
            "cluster": _cluster(health.get("cluster")),
            "broker": _str(health.get("broker")) or None,
            "uptime_s": _num(health.get("uptime_s")),
            "connected_nodes": m.one("exchange_connected_nodes"),
            "rates": list(self.rate_history),
        }

        def panel(name: str, build: Callable[[], Any], empty: Any) -> Any:
            # the sources were cleaned above; this catches a shape no check foresaw, so one
            # panel shows its error instead of the whole page freezing on every poll
            try:
                return build()
            except (AttributeError, KeyError, IndexError, TypeError, ValueError) as err:
                errors[name] = f"not shown: {type(err).__name__}: {err}"
                return empty

        sent = list(self.checkpoints)[-CHECKPOINTS_SENT:]
        snapshot = {
            "at": now,
            "overview": overview,
            "nodes": panel("nodes", lambda: self._nodes(s, m, report, now), []),
            "certificates": panel("certificates", lambda: self._certificates(m, now), []),
            "crl": panel("crl", lambda: self._crl(m, now), None),
            "datasets": panel("datasets", lambda: self._datasets(s, m, report, rates), []),
            "agreements": panel("agreements", lambda: _agreements(s.agreements or []),
                                {"pending": [], "active": [], "closed": []}),
            "subscriptions": panel("subscriptions",
                                   lambda: self._subscriptions(s, m, report), []),
            "log": {
                "size": None if log_size is None else int(log_size),
                "root": latest.root if latest else None,
                "checkpoints": [[c.seen_at, c.size, c.root] for c in sent],
                "warnings": list(self.log_warnings),
                "warnings_total": self.log_warnings_total,
                "verification": self.verification,
            },
        }
        snapshot["errors"] = dict(sorted(errors.items()))
        return snapshot

    # -- panels ----------------------------------------------------------------------------

    def _nodes(self, s: Sample, m: Metrics, report: Mapping[str, Any], now: float
               ) -> list[dict[str, Any]]:
        nodes: dict[str, dict[str, Any]] = {}

        def node(node_id: str) -> dict[str, Any]:
            return nodes.setdefault(node_id, {
                "id": node_id, "roles": set(), "connected": None, "last_seen": None,
                "certificate": None, "published": 0, "rejected": {}})

        for entry in report.values():
            pubs = entry.get("publishers", {}) if isinstance(entry, dict) else {}
            for pub, p in (pubs.items() if isinstance(pubs, dict) else ()):
                n = node(pub)
                n["roles"].add("publisher")
                c = _counters(p)
                n["published"] += _int(c.get("accepted"))
                for code, k in _rejected(c).items():
                    n["rejected"][code] = n["rejected"].get(code, 0) + k
        for d in s.catalog or []:
            if isinstance(d, dict) and _str(d.get("publisher")):
                node(d["publisher"])["roles"].add("owner")
        for a in s.agreements or []:
            req = a.get("request") if isinstance(a, dict) else None
            sub = _str(req.get("subscriber")) if isinstance(req, dict) else ""
            if sub:
                node(sub)["roles"].add("subscriber")
        live: dict[str, bool] = {}
        for row in s.subscriptions or []:
            who = _str(row.get("node")) if isinstance(row, dict) else ""
            if who:
                node(who)["roles"].add("subscriber")
                live[who] = live.get(who, False) or bool(row.get("connected"))
        last_seen = {lb.get("node", ""): v
                     for lb, v in m.all("exchange_node_last_seen_timestamp_seconds")}
        connected_metric = {lb.get("node", ""): v > 0
                            for lb, v in m.all("exchange_node_connected")}
        # a node has a TLS and a signing certificate: the first to expire is the one to renew
        certs: dict[str, float] = {}
        for lb, v in m.all("exchange_certificate_expiry_timestamp_seconds"):
            if lb.get("role", "node") == "node":
                who = lb.get("subject", "")
                certs[who] = min(v, certs.get(who, v))
        revoked = {lb.get("subject", "") for lb, v in m.all("exchange_certificate_revoked")
                   if lb.get("role", "node") == "node" and v > 0}
        for who in set(last_seen) | set(certs):
            if who:
                node(who)
        for who, n in nodes.items():
            seen = last_seen.get(who)
            n["last_seen"] = seen
            if who in connected_metric:
                n["connected"] = connected_metric[who]
            elif m.has("exchange_node_last_seen_timestamp_seconds"):
                # the broker reports "now" as last seen while a connection is open
                n["connected"] = seen is not None and now - seen < CONNECTED_WITHIN_S
            elif who in live:
                n["connected"] = live[who]  # a live subscription is a connection
            expiry = certs.get(who, s.certificates.get(who))
            n["certificate"] = None if expiry is None else {
                **_expiry(expiry, now), "revoked": who in revoked}
            n["roles"] = sorted(n["roles"])
            n["rejected"] = dict(sorted(n["rejected"].items()))
        return [nodes[k] for k in sorted(nodes)]

    def _certificates(self, m: Metrics, now: float) -> list[dict[str, Any]]:
        """Every certificate the broker reports the expiry of (broker, operators, nodes)."""
        out = [{"subject": lb.get("subject", ""), "role": lb.get("role", ""),
                "usage": lb.get("usage", ""), **_expiry(v, now)}
               for lb, v in m.all("exchange_certificate_expiry_timestamp_seconds")]
        return sorted(out, key=lambda c: c["expires"])

    def _crl(self, m: Metrics, now: float) -> dict[str, Any] | None:
        at = m.one("exchange_crl_next_update_timestamp_seconds")
        return None if at is None else _expiry(at, now)

    def _datasets(self, s: Sample, m: Metrics, report: Mapping[str, Any],
                  rates: Mapping[str, float | None]) -> list[dict[str, Any]]:
        stale_metric: dict[str, bool] = {}
        for lb, v in m.all("exchange_dataset_stale"):
            key = lb.get("dataset", "")
            stale_metric[key] = stale_metric.get(key, False) or v > 0
        catalog = [c for c in s.catalog or [] if isinstance(c, dict)]
        names = [_str(c.get("identifier")) for c in catalog] or sorted(report)
        cat = {_str(c.get("identifier")): c for c in catalog}
        out = []
        for name in names:
            if not name or name in SYSTEM_DATASETS:
                continue
            d, entry = cat.get(name, {}), report.get(name, {})
            sc = (entry.get("scores") or {}) if isinstance(entry, dict) else {}
            title = d.get("title")
            stale = sc.get("stale") if isinstance(sc.get("stale"), bool) else stale_metric.get(
                name)
            out.append({
                "name": name,
                "title": ({"vi": _str(title.get("vi")), "en": _str(title.get("en"))}
                          if isinstance(title, dict) else {"vi": _str(title), "en": _str(title)}),
                "publisher": _str(d.get("publisher")) or None,
                "classification": _str(d.get("classification")) or None,
                "category": _str(d.get("category")) or None,
                "periodicity": _str(d.get("accrualPeriodicity")) or None,
                "version": _num(d.get("version")),
                "theme": _str(d.get("theme")) or None,
                "countersignature_required": bool(d.get("countersignature_required")),
                "agreements_live": _int((d.get("agreements") or {}).get("live")),
                "rate": _round(rates.get(name), 1),
                "accepted": _int(_counters(entry).get("accepted")),
                "rejected": sum(_rejected(_counters(entry)).values()),
                "scores": {k: _round(_num(sc.get(k)), 4)
                           for k in ("correct", "sufficient", "clean", "live")},
                "stale": stale,
                "seconds_since_update": _round(_num(sc.get("seconds_since_update")), 1),
                "history": list(self.quality_history.get(name, ())),
            })
        return out

    def _subscriptions(self, s: Sample, m: Metrics, report: Mapping[str, Any]
                       ) -> list[dict[str, Any]]:
        def by_key(name: str) -> dict[tuple[str, str, str], float]:
            return {(lb.get("dataset", ""), lb.get("subscriber", ""),
                     lb.get("subscription", "")): v for lb, v in m.all(name)}

        lag_s = by_key("exchange_subscription_lag_seconds")
        credits = by_key("exchange_subscription_credits")
        redeliveries = by_key("exchange_subscription_redeliveries_total")
        for entry in report.values():  # /v1/quality carries lag in seconds too
            for sub in (entry.get("subscriptions") or []) if isinstance(entry, dict) else []:
                key = (_str(sub.get("dataset")), _str(sub.get("node")), _str(sub.get("name")))
                if key not in lag_s and _num(sub.get("lag_s")) is not None:
                    lag_s[key] = float(sub["lag_s"])
        out = []
        for row in s.subscriptions or []:
            key = (_str(row.get("dataset")), _str(row.get("node")), _str(row.get("name")))
            out.append({
                "node": key[1], "dataset": key[0], "name": key[2],
                "acked": _int(row.get("acked")), "head": _int(row.get("head")),
                "lag": _int(row.get("lag")),
                "lag_s": _round(lag_s.get(key), 2),
                "credits": _num(row.get("credits")) if "credits" in row else credits.get(key),
                "redeliveries": (_num(row.get("redeliveries")) if "redeliveries" in row
                                 else redeliveries.get(key)),
                "connected": bool(row.get("connected")),
            })
        return sorted(out, key=lambda r: (r["dataset"], r["node"], r["name"]))


# -- the sources, cleaned ---------------------------------------------------------------------
#
# The broker's JSON is read field by field with type checks (``_str``, ``_int``, ...), but a
# container of the wrong kind (a string where an object was, a number where a list was) would
# break every poll. ``_clean`` drops such entries before any panel reads them, and says so.


def _absent_or(value: Any, kind: type | tuple[type, ...]) -> bool:
    return value is None or isinstance(value, kind)


def _bad_agreement(a: dict[str, Any]) -> str | None:
    req = a.get("request")
    if not _absent_or(req, dict):
        return "request is not an object"
    groups = req.get("groups") if isinstance(req, dict) else None
    if not _absent_or(groups, list) or not all(isinstance(g, str) for g in groups or ()):
        return "request.groups is not a list of names"
    decisions = a.get("decisions")
    if not _absent_or(decisions, list):
        return "decisions is not a list"
    for d in decisions or ():
        if not isinstance(d, dict) or not _absent_or(d.get("signed"), dict):
            return "a decision is not an object with a signed object"
    return None


def _bad_dataset(d: dict[str, Any]) -> str | None:
    if not _absent_or(d.get("agreements"), dict):
        return "agreements is not an object"
    if not _absent_or(d.get("title"), (dict, str)):
        return "title is neither an object nor a text"
    return None


def _bad_report(entry: dict[str, Any]) -> str | None:
    for name in ("scores", "counters", "publishers"):
        if not _absent_or(entry.get(name), dict):
            return f"{name} is not an object"
    counters = entry.get("counters") or {}
    if not _absent_or(counters.get("rejected"), dict):
        return "counters.rejected is not an object"
    for p in (entry.get("publishers") or {}).values():
        if not isinstance(p, dict) or not _absent_or(p.get("counters"), dict):
            return "a publisher is not an object with counters"
    subs = entry.get("subscriptions")
    if not _absent_or(subs, list) or not all(isinstance(x, dict) for x in subs or ()):
        return "subscriptions is not a list of objects"
    return None


def _no_check(_: dict[str, Any]) -> str | None:
    return None


def _kept(name: str, items: Any, check: Callable[[dict[str, Any]], str | None],
          errors: dict[str, str]) -> list[dict[str, Any]] | None:
    """The well-formed objects of a list source; the others are counted in ``errors``."""
    if items is None:
        return None
    if not isinstance(items, list):
        errors[name] = f"malformed: a list was expected, not {type(items).__name__}"
        return None
    kept: list[dict[str, Any]] = []
    bad: list[str] = []
    for item in items:
        why = check(item) if isinstance(item, dict) else "not an object"
        if why is None:
            kept.append(item)
        else:
            bad.append(why)
    if bad:
        errors[name] = (f"malformed: {len(bad)} of {len(items)} entries ignored "
                        f"(first: {bad[0]})")
    return kept


def _clean(s: Sample, errors: dict[str, str]) -> Sample:
    """The sample with each source's malformed entries dropped (and named in ``errors``)."""
    quality: dict[str, Any] | None = None
    if s.quality is not None:
        datasets = s.quality.get("datasets", {}) if isinstance(s.quality, dict) else None
        if not isinstance(datasets, dict):
            errors["quality"] = "malformed: no datasets object"
        else:
            report: dict[str, Any] = {}
            bad: list[str] = []
            for name, entry in datasets.items():
                why = _bad_report(entry) if isinstance(entry, dict) else "not an object"
                if why is None:
                    report[str(name)] = entry
                else:
                    bad.append(f"{name}: {why}")
            if bad:
                errors["quality"] = (f"malformed: {len(bad)} of {len(datasets)} datasets "
                                     f"ignored (first: {bad[0]})")
            quality = {"datasets": report}
    health = s.health
    if health is not None and not isinstance(health, dict):
        errors["health"] = f"malformed: an object was expected, not {type(health).__name__}"
        health = None
    metrics = s.metrics if isinstance(s.metrics, str) else None
    return replace(
        s, health=health, metrics=metrics, quality=quality,
        catalog=_kept("catalog", s.catalog, _bad_dataset, errors),
        agreements=_kept("agreements", s.agreements, _bad_agreement, errors),
        subscriptions=_kept("subscriptions", s.subscriptions, _no_check, errors))


def _cluster(info: Any) -> dict[str, Any] | None:
    if not isinstance(info, dict):
        return None
    return {"connected": bool(info.get("connected")), "server": _str(info.get("server")) or None,
            "servers": _int(info.get("servers")), "replicas": _num(info.get("replicas")),
            "sequencer": bool(info.get("sequencer"))}


#: what the operator may do from each state (the lifecycle in exchange.core.agreements: only
#: the owner approves or rejects; an operator countersigns, and revokes from any open state,
#: which is how the console's "reject" of a pending request is signed)
OPERATOR_ACTIONS: dict[str, tuple[str, ...]] = {
    "requested": ("reject",),
    "approved": ("countersign", "reject"),
    "active": ("revoke",),
}


def _agreements(items: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"pending": [], "active": [], "closed": []}
    for a in items:
        req = a.get("request", {}) if isinstance(a.get("request"), dict) else {}
        state = _str(a.get("state"))
        view = {
            "id": _str(a.get("id")), "state": state,
            "dataset": _str(req.get("dataset")), "subscriber": _str(req.get("subscriber")),
            "owner": _str(a.get("owner")) or _str(req.get("owner")),
            "purpose": _str(req.get("purpose")), "legal_basis": _str(req.get("legal_basis")),
            "groups": [g for g in req.get("groups") or [] if isinstance(g, str)],
            "version": _int(req.get("version")),
            "requested_at": _str(req.get("requested_at")), "expires": _str(req.get("expires")),
            "countersign": bool(a.get("countersign")),
            "seq": _int(a.get("seq")),
            "decisions": [{"action": _str(d.get("action")),
                           "by": _str((d.get("signed") or {}).get("by")),
                           "role": _str((d.get("signed") or {}).get("role")),
                           "at": _str((d.get("signed") or {}).get("at"))}
                          for d in a.get("decisions") or [] if isinstance(d, dict)],
            "actions": list(OPERATOR_ACTIONS.get(state, ())),
        }
        if state in ("requested", "approved"):
            out["pending"].append(view)
        elif state == "active":
            out["active"].append(view)
        else:
            out["closed"].append(view)
    out["closed"] = out["closed"][:CLOSED_SHOWN]
    return out
