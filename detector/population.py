"""Population context for one partition: how active is everybody, compared with normal?

A company-wide holiday or a tracking outage lowers every team at once; that is not churn.
Activity is counted per UTC day for the whole partition and compared with a per-weekday
baseline, giving a *day factor* (1.0 = a normal day). Team ratios are divided by the
population's factor, and absence is counted in population-adjusted days.
Task durations get a population norm per task, for the struggle signal: a UTC day's
durations are summed per task (in exact integer units, so any delivery order gives the same
sums) and taught to the norm when the day closes.
"""

from __future__ import annotations

import math

from .timemodel import DAY_MS

_WEEKDAY_ALPHA = 0.25  # one update per weekday per week: ~4 weeks of memory
_MAX_STEP = 0.3  # a day moves its weekday's baseline by at most this share of it (times alpha)
_TASK_ALPHA = 0.01  # per observation: a day of n observations weighs 1 - (1 - alpha)^n
_MAX_TASKS = 256  # task names with a norm (more are counted as at their norm)
#: log-durations are summed in millionths: integers add up the same in any order
LOG_UNITS = 1_000_000
#: durations are capped (a broken client's 1e300 s must not overflow the sums)
MAX_TASK_S = 1e9
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
        "task_days",
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
        #: UTC day -> task -> [observations, sum of log1p(duration) in LOG_UNITS], until the
        #: day closes
        self.task_days: dict[int, dict[str, list[int]]] = {}

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
            # starts with its first active day, once that is closable (days from before
            # ``utc_day`` are complete: an event of a later day delivered first must not
            # start it later than in-order delivery does)
            if not self.counts or min(self.counts) >= utc_day:
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
        tasks = self.task_days.pop(day, None)
        if tasks:
            self._learn_tasks(tasks)

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

    def observe_task(self, task: str, duration_s: float, utc_day: int) -> None:
        """Count a finished task of ``utc_day``; the norm learns it when the day closes."""
        tasks = self.task_days.get(utc_day)
        if tasks is None:
            tasks = self.task_days[utc_day] = {}
        units = round(math.log1p(min(duration_s, MAX_TASK_S)) * LOG_UNITS)
        seen = tasks.get(task)
        if seen is not None:
            seen[0] += 1
            seen[1] += units
        elif len(tasks) < _MAX_TASKS:
            tasks[task] = [1, units]

    def _learn_tasks(self, tasks: dict[str, list[int]]) -> None:
        """Teach a closed day's durations to the norms: n observations with mean m move a
        norm as n steps of the moving average would if they were all m (order-free).

        >>> p = Population(0); p._learn_tasks({"a": [1, 2 * LOG_UNITS]}); p.task_log_norm
        {'a': 2.0}
        >>> p._learn_tasks({"a": [100, 300 * LOG_UNITS]}); round(p.task_log_norm["a"], 3)
        2.634
        """
        norms = self.task_log_norm
        for task in sorted(tasks):
            n, units = tasks[task]
            mean = units / LOG_UNITS / n
            norm = norms.get(task)
            if norm is not None:
                keep = (1.0 - _TASK_ALPHA) ** n
                norms[task] = keep * norm + (1.0 - keep) * mean
            elif len(norms) < _MAX_TASKS:
                norms[task] = mean

    def task_ratio(self, task: str, total_s: float, n: int) -> float:
        """``n`` durations of ``task`` totalling ``total_s``, in multiples of its norm (each
        counts as 1.0 while the task has no norm yet).

        >>> p = Population(0); p.task_log_norm["a"] = math.log1p(60.0)
        >>> round(p.task_ratio("a", 180.0, 2), 6), p.task_ratio("new", 5.0, 2)
        (3.0, 2.0)
        """
        norm = self.task_log_norm.get(task)
        if norm is None:
            return float(n)
        return total_s / max(1.0, math.expm1(norm))

    def tracking_gap(self, day: int, ratio: float) -> bool:
        return self.factors.get(day, 1.0) < ratio
