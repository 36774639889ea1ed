"""Data quality: "correct, sufficient, clean, live" (đúng, đủ, sạch, sống) as numbers (pure).

Each principle is a score in [0, 1] per dataset and per publisher, computed from counters the
gate keeps (Decision 1437/QĐ-TTg's quality measures, DESIGN.md "Data principles"):

- **correct** = accepted ÷ (accepted + rejected): records that passed authenticity, schema and
  domain rules, of all distinct records received (exact re-sends are not counted twice).
- **sufficient** = mean completeness of accepted records, where a record's completeness is the
  share of its dataset's *recommended* fields that are present and non-empty (required fields are
  enforced by the schema, so a record without them is not accepted at all).
- **clean** = 1 − dirty ÷ received, where dirty counts records that arrived not normalised (NFC,
  one tone-mark style, trimmed whitespace, code case), exact duplicates, version conflicts, and
  accepted records that still hold a reference (owner, personal id) to a record the exchange does
  not have. A late population record resolves such references and the score recovers.
- **live** = freshness × timeliness. Freshness is 1 while the publisher's last accepted record
  is younger than the dataset's declared update interval, then falls as interval ÷ age.
  Timeliness is the share of *live* deliveries made within ``timely_s`` of acceptance: a
  record's first delivery to a subscriber connected when it was accepted. Replays (a subscriber
  catching up from ``earliest``) and redeliveries are not the publisher's doing and do not
  count.

A score with nothing to measure (no record received, none accepted) is ``None``, not 1.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from exchange.core.datasets import DatasetSpec
from exchange.core.errors import Violation
from exchange.core.gate import Checked, Decided

__all__ = ["Counters", "Scores", "completeness", "gated", "references", "refused", "scores"]

_PERSONAL_ID = re.compile(r"^[0-9]{12}$")
_TAX_ID = re.compile(r"^[0-9]{10}(-[0-9]{3})?$")


class Counters(msgspec.Struct, kw_only=True):
    """What the gate counted for one (dataset, publisher). Persisted as MessagePack."""

    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = {}
    conflicts: int = 0
    not_normalised: int = 0
    completeness_sum: float = 0.0
    references: int = 0
    as_of_age_sum_s: float = 0.0
    as_of_count: int = 0
    last_accepted_at: float = 0.0
    delivered: int = 0
    #: first deliveries to subscribers connected when the record was accepted
    delivered_live: int = 0
    delivered_timely: int = 0

    def merge(self, other: Counters) -> Counters:
        rejected = dict(self.rejected)
        for code, n in other.rejected.items():
            rejected[code] = rejected.get(code, 0) + n
        return Counters(
            received=self.received + other.received, accepted=self.accepted + other.accepted,
            duplicates=self.duplicates + other.duplicates, rejected=rejected,
            conflicts=self.conflicts + other.conflicts,
            not_normalised=self.not_normalised + other.not_normalised,
            completeness_sum=self.completeness_sum + other.completeness_sum,
            references=self.references + other.references,
            as_of_age_sum_s=self.as_of_age_sum_s + other.as_of_age_sum_s,
            as_of_count=self.as_of_count + other.as_of_count,
            last_accepted_at=max(self.last_accepted_at, other.last_accepted_at),
            delivered=self.delivered + other.delivered,
            delivered_live=self.delivered_live + other.delivered_live,
            delivered_timely=self.delivered_timely + other.delivered_timely)


def gated(checked: Checked, decided: Decided, now: float, *, references: int = 0) -> Counters:
    """What one decided batch adds to its (dataset, publisher) counters: a delta, merged into
    the totals only once the batch is stored. ``references``: how many references to other
    datasets its accepted records hold."""
    first: dict[int | None, Violation] = {}
    for v in decided.rejected:
        first.setdefault(v.index, v)  # a record counts once, under its first finding
    c = Counters(received=len(decided.accepted) + len(decided.duplicates)
                 + len(decided.echoes) + len(first),
                 duplicates=len(decided.duplicates) + len(decided.echoes),
                 not_normalised=sum(1 for x in checked.candidates if not x.normalised),
                 references=references)
    for v in first.values():
        c.rejected[v.code] = c.rejected.get(v.code, 0) + 1
        if v.conflict:
            c.conflicts += 1
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    for a in decided.accepted:
        c.accepted += 1
        c.completeness_sum += a.completeness
        as_of = a.as_of
        if as_of is not None:
            try:
                age_days = (today - dt.date.fromisoformat(as_of)).days
            except ValueError:
                age_days = 0
            c.as_of_age_sum_s += max(0, age_days) * 86_400.0
            c.as_of_count += 1
    if decided.accepted:
        c.last_accepted_at = now
    return c


def refused(records: int, code: str) -> Counters:
    """A whole batch refused (bad signature, undecodable): each record counts as rejected."""
    return Counters(received=records, rejected={code: records})


class Scores(msgspec.Struct, frozen=True):
    """The four scores; ``None`` where there is nothing to score yet (no record received or
    accepted): no data is not a score of 1."""

    correct: float | None
    sufficient: float | None
    clean: float | None
    live: float
    stale: bool
    unresolved_references: int
    seconds_since_update: float | None


def completeness(spec: DatasetSpec, data: Mapping[str, Any]) -> float:
    """Share of the recommended fields present and non-empty (1.0 when none are recommended)."""
    if not spec.recommended:
        return 1.0
    have = sum(1 for f in spec.recommended if data.get(f) not in _EMPTY)
    return have / len(spec.recommended)


#: what counts as absent (built once: a tuple holding a list and a dict is not a constant)
_EMPTY: tuple[Any, ...] = (None, "", [], {})


def references(spec: DatasetSpec, data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(target dataset, key) of every id this record refers to in another dataset."""
    out: list[tuple[str, str]] = []
    for f in spec.references:
        value = data.get(f)
        values: Iterable[Any] = value if isinstance(value, list) else (value,)
        for v in values:
            if not isinstance(v, str):
                continue
            if _PERSONAL_ID.match(v):
                out.append(("population", v))
            elif _TAX_ID.match(v):
                out.append(("tax", v))
    return out


def _ratio(num: float, den: float) -> float:
    return 1.0 if den <= 0 else max(0.0, min(1.0, num / den))


def scores(c: Counters, *, unresolved: int, now: float, update_interval_s: float) -> Scores:
    """The four scores from counters, the current unresolved-reference count and a clock."""
    distinct = c.accepted + sum(c.rejected.values())
    dirty = c.not_normalised + c.duplicates + c.conflicts + unresolved
    if c.last_accepted_at:
        age = max(0.0, now - c.last_accepted_at)
        freshness = 1.0 if age <= update_interval_s else update_interval_s / age
        since: float | None = age
    else:
        freshness, since = 0.0, None
    timeliness = _ratio(c.delivered_timely, c.delivered_live)
    return Scores(
        correct=_ratio(c.accepted, distinct) if distinct else None,
        sufficient=_ratio(c.completeness_sum, c.accepted) if c.accepted else None,
        clean=1.0 - _ratio(dirty, c.received) if c.received else None,
        live=freshness * timeliness,
        stale=since is None or since > update_interval_s,
        unresolved_references=unresolved,
        seconds_since_update=since)
