"""Histogram counts kept as plain ints, so the engine can record a distribution cheaply.

The engine has no Prometheus dependency: it bumps one int per observation here, and the
metrics adapter turns the counts into a histogram family at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

#: upper bounds of the team risk score buckets (scores are in [0, 1])
RISK_BOUNDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: upper bounds of the sweep duration buckets, seconds
SWEEP_BOUNDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


class BucketCounts:
    """Observations counted per bucket (``le`` upper bounds, +Inf implied).

    >>> b = BucketCounts((0.5, 1.0))
    >>> for x in (0.2, 0.5, 0.7, 3.0):
    ...     b.observe(x)
    >>> b.cumulative(), b.count, b.sum
    ([('0.5', 2), ('1.0', 3), ('+Inf', 4)], 4, 4.4)
    """

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def merge(self, other: BucketCounts) -> None:
        """Add another histogram with the same bounds (engines of several partitions)."""
        assert other.bounds == self.bounds
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.count += other.count
        self.sum += other.sum

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` pairs, the Prometheus histogram shape."""
        out, total = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out
