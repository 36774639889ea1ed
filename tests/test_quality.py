"""The four quality scores on crafted counters whose answers are known in advance."""

from __future__ import annotations

import msgspec
import pytest

from exchange.core import datasets, quality
from exchange.sim.generate import Generator
from tests.conftest import TODAY

HOUR = 3600.0


def test_completeness_counts_recommended_fields() -> None:
    spec = datasets.get("population")
    person = Generator(1, today=TODAY).person()
    person.pop("ethnicity", None)
    person["religion"] = "Không"
    assert quality.completeness(spec, person) == 0.5
    person.pop("religion")
    assert quality.completeness(spec, person) == 0.0


def test_references_name_population_and_tax() -> None:
    land = datasets.get("land")
    refs = quality.references(land, {"owners": ["001203004567", "0100109106", "x"]})
    assert refs == [("population", "001203004567"), ("tax", "0100109106")]
    assert quality.references(datasets.get("population"), {"id": "001203004567"}) == []


def test_scores_known_in_advance() -> None:
    c = quality.Counters(received=12, accepted=7, duplicates=1, rejected={"unknown_ward": 2,
                                                                         "mst_checksum": 1},
                         not_normalised=1, completeness_sum=3.5, last_accepted_at=1000.0,
                         delivered=14, delivered_live=10, delivered_timely=9)
    s = quality.scores(c, unresolved=2, now=1000.0 + HOUR / 2, update_interval_s=HOUR)
    assert s.correct == 7 / 10
    assert s.sufficient == 0.5
    assert s.clean == pytest.approx(1 - (1 + 1 + 2) / 12)
    # timeliness is over live deliveries (10), not every delivery (14: replays too)
    assert s.live == 0.9 and not s.stale


def test_unresolved_references_resolve_when_population_arrives() -> None:
    c = quality.Counters(received=10, accepted=10, completeness_sum=10, references=10,
                         last_accepted_at=1.0)
    before = quality.scores(c, unresolved=7, now=2.0, update_interval_s=HOUR)
    after = quality.scores(c, unresolved=0, now=2.0, update_interval_s=HOUR)
    assert before.clean == pytest.approx(0.3) and before.unresolved_references == 7
    assert after.clean == 1.0


def test_stale_with_an_injected_clock() -> None:
    c = quality.Counters(received=1, accepted=1, completeness_sum=1, last_accepted_at=0.0 + 1)
    fresh = quality.scores(c, unresolved=0, now=1 + HOUR, update_interval_s=HOUR)
    stale = quality.scores(c, unresolved=0, now=1 + 4 * HOUR, update_interval_s=HOUR)
    assert not fresh.stale and fresh.live == 1.0
    assert stale.stale and stale.live == 0.25 and stale.seconds_since_update == 4 * HOUR
    never = quality.scores(quality.Counters(), unresolved=0, now=5, update_interval_s=HOUR)
    # no data is no score, not a perfect one
    assert never.stale and never.live == 0.0
    assert (never.correct, never.sufficient, never.clean) == (None, None, None)


def test_counters_merge_and_round_trip() -> None:
    a = quality.Counters(received=2, accepted=1, rejected={"x": 1}, last_accepted_at=5)
    b = quality.Counters(received=3, accepted=3, rejected={"x": 2, "y": 1}, last_accepted_at=4)
    m = a.merge(b)
    assert (m.received, m.accepted, m.rejected, m.last_accepted_at) == (5, 4, {"x": 3, "y": 1},
                                                                         5)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(m), type=quality.Counters) == m
