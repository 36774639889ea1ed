"""A small HDR-style latency histogram: log-linear buckets, fixed relative error, O(1) record.

Like HdrHistogram (Gil Tene), values are counted in buckets whose width grows with the value, so
a percentile is exact to a fixed number of significant figures whatever the range, and recording
is one index computation. Here: values in microseconds from 1 µs to ~1 hour, 64 sub-buckets per
power of two (error ≤ 1/64 ≈ 1.6 %), which is plenty for p50/p95/p99/max of publish→deliver.

The PyPI ``hdrhistogram`` package would do, but its last release predates Python 3.11 wheels
and it pulls a C extension in for what is forty lines here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["Histogram"]

_SUB_BITS = 6
_SUB = 1 << _SUB_BITS  # sub-buckets per power of two


def _index(us: int) -> int:
    if us < 2 * _SUB:
        return us
    exp = us.bit_length() - _SUB_BITS - 1  # ≥ 1; us >> exp is in [_SUB, 2 * _SUB)
    return exp * _SUB + (us >> exp)


def _lower(index: int) -> int:
    """Smallest value (µs) counted in bucket ``index``."""
    if index < 2 * _SUB:
        return index
    exp = index // _SUB - 1
    return (index - exp * _SUB) << exp


class Histogram:
    """Counts of latencies (seconds in, milliseconds out)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0
        self.max_us = 0
        self.min_us = math.inf

    def record(self, seconds: float, count: int = 1) -> None:
        us = max(0, int(seconds * 1e6))
        i = _index(us)
        self.counts[i] = self.counts.get(i, 0) + count
        self.total += count
        if us > self.max_us:
            self.max_us = us
        if us < self.min_us:
            self.min_us = us

    def record_many(self, values: Iterable[float]) -> None:
        for v in values:
            self.record(v)

    def merge(self, other: Histogram) -> None:
        for i, c in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + c
        self.total += other.total
        self.max_us = max(self.max_us, other.max_us)
        self.min_us = min(self.min_us, other.min_us)

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile (0..100) in milliseconds; the bucket's upper edge (capped at
        the max seen), so a reported p99 is never lower than the true one."""
        if not self.total:
            return 0.0
        if p >= 100:
            return self.max_us / 1000
        rank = max(1, math.ceil(self.total * p / 100))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return min(_lower(i + 1) - 1, self.max_us) / 1000
        return self.max_us / 1000

    def summary(self) -> dict[str, float]:
        return {"count": self.total,
                "p50_ms": round(self.percentile(50), 3),
                "p95_ms": round(self.percentile(95), 3),
                "p99_ms": round(self.percentile(99), 3),
                "max_ms": round(self.max_us / 1000, 3)}
