"""Population context for one partition: how active is everybody, compared with normal?

A company-wide holiday or a tracking outage lowers every team at once; that is not churn.
Activity is counted per UTC day for the whole partition and compared with a per-weekday
baseline, giving a *day factor* (1.0 = a normal day). Team ratios are divided by the
population's factor, and absence is counted in population-adjusted days.
Task durations get a population norm per task, for the struggle signal.
"""

from __future__ import annotations

import math

from .timemodel import DAY_MS

_WEEKDAY_ALPHA = 0.25  # one update per weekday per week: ~4 weeks of memory
_MAX_STEP = 0.3  # a day moves its weekday's baseline by at most this share of it (times alpha)
_TASK_ALPHA = 0.01
_KEEP_DAYS = 120
#: below this many active teams on a usual day, a partition is too small to be a population
MIN_TEAMS = 8


class Population:
    __slots__ = (
        "closed_day",
        "counts",
        "factors",
        "first_day",
        "min_days",
        "task_log_norm",
        "team_counts",
        "weekday",
        "weekday_teams",
    )

    def __init__(self, min_days: int) -> None:
        self.min_days = min_days
        self.counts: dict[int, int] = {}
        self.team_counts: dict[int, int] = {}
        self.weekday: list[float] = [0.0] * 7
        self.weekday_teams: list[float] = [0.0] * 7
        self.factors: dict[int, float] = {}
        self.first_day: int | None = None
        self.closed_day: int | None = None
        self.task_log_norm: dict[str, float] = {}

    def count(self, ts_ms: int) -> None:
        day = ts_ms // DAY_MS
        counts = self.counts
        counts[day] = counts.get(day, 0) + 1

    def count_team(self, ts_ms: int) -> None:
        """A team's first activity of its day."""
        day = ts_ms // DAY_MS
        self.team_counts[day] = self.team_counts.get(day, 0) + 1

    def close_until(self, utc_day: int) -> None:
        """Close every UTC day before ``utc_day`` (idempotent)."""
        if self.closed_day is None:
            if not self.counts:
                return
            self.first_day = min(self.counts)
            self.closed_day = self.first_day - 1
        while self.closed_day < utc_day - 1:
            self._close(self.closed_day + 1)

    def _close(self, day: int) -> None:
        self.closed_day = day
        assert self.first_day is not None
        observed = float(self.counts.pop(day, 0))
        teams = float(self.team_counts.pop(day, 0))
        wd = day % 7
        base = self.weekday[wd]
        base_teams = self.weekday_teams[wd]
        self.weekday_teams[wd] = (
            teams if base_teams <= 0.0 else base_teams + _WEEKDAY_ALPHA * (teams - base_teams)
        )
        age = day - self.first_day
        if age < self.min_days or base <= 0.0 or base_teams < MIN_TEAMS:
            factor = 1.0
            self.weekday[wd] = observed if base <= 0.0 else base + 0.5 * (observed - base)
        else:
            factor = observed / base
            # a robust (clipped) update: a holiday or an outage day moves the baseline a
            # little, a lasting shift (big teams left) is learned within weeks; only learning
            # from days near normal kept a shrunken population "low" forever, discounting
            # every team's days
            step = max(-_MAX_STEP * base, min(_MAX_STEP * base, observed - base))
            self.weekday[wd] = base + _WEEKDAY_ALPHA * step
        self.factors[day] = factor
        self.factors.pop(day - _KEEP_DAYS, None)

    def day_factor(self, day: int) -> float:
        """Share of normal activity on a closed UTC day (1.0 when unknown)."""
        return self.factors.get(day, 1.0)

    def window_factor(self, last_day: int, days: int) -> float:
        """Mean day factor over ``days`` days ending at ``last_day``, capped at 1."""
        return self._capped_sum(last_day - days + 1, last_day) / days

    def effective_days(self, first_day: int, last_day: int) -> float:
        """Days from first_day to last_day inclusive, each weighted by its day factor."""
        if last_day - first_day > _KEEP_DAYS:
            return float(last_day - first_day + 1)
        return self._capped_sum(first_day, last_day)

    def _capped_sum(self, first_day: int, last_day: int) -> float:
        """Sum of the day factors, each capped at 1, from first_day to last_day inclusive."""
        total = 0.0
        factor_of = self.factors.get
        for d in range(first_day, last_day + 1):
            factor = factor_of(d, 1.0)
            total += factor if factor < 1.0 else 1.0  # min(1.0, factor) without the call
        return total

    def expected_days(self, first_day: int, last_day: int) -> float:
        """Days from first_day to last_day, each weighted by its weekday's share of a usual
        week's activity and by its day factor: how many "average days" of activity to expect.

        >>> p = Population(0); p.weekday = [2.0, 2.0, 2.0, 2.0, 2.0, 0.5, 0.5]
        >>> p.expected_days(0, 6), round(p.expected_days(5, 6), 3)
        (7.0, 0.636)
        """
        weekday = self.weekday
        known = min(weekday) > 0.0  # every weekday seen at least once
        mean = sum(weekday) / 7.0
        total = 0.0
        for d in range(first_day, last_day + 1):
            weight = weekday[d % 7] / mean if known else 1.0
            total += weight * min(1.0, self.factors.get(d, 1.0))
        return total

    def observe_task(self, task: str, duration_s: float) -> float:
        """Learn the task's norm and return this duration as a multiple of it."""
        x = math.log1p(duration_s)
        norm = self.task_log_norm.get(task)
        if norm is None:
            if len(self.task_log_norm) >= 256:
                return 1.0
            self.task_log_norm[task] = x
            return 1.0
        self.task_log_norm[task] = norm + _TASK_ALPHA * (x - norm)
        return math.expm1(x) / max(1.0, math.expm1(norm))

    def tracking_gap(self, day: int, ratio: float) -> bool:
        return self.factors.get(day, 1.0) < ratio
