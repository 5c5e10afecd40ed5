"""Compact per-entity state: a fixed ring of daily buckets for teams, a few floats for users.

Budget (DESIGN.md): ≤ 1 KB per user, ≤ 4 KB per team, measured by the benchmark.
"""

from __future__ import annotations

from array import array
from typing import Any

from .dedup import RecentIds
from .health import NOT_ENOUGH_DATA

#: what a team with no pending events or open tasks holds: one shared empty tuple (an empty
#: list per team would cost 56 bytes each)
NOTHING: tuple[()] = ()
#: days kept in a team's ring of daily buckets
RING_DAYS = 16
# fields of one daily bucket
EVENTS, ACTIVE_USERS, KEY_ACTIONS, FEATURES, TASKS, TASK_RATIO, TASK_FAILURES = range(7)
FIELDS = 7  # TeamState.windows unpacks a bucket's fields in this order


class TeamState:
    """One team: traits, daily buckets, baselines, lifecycle and alert state."""

    __slots__ = (
        "active_days",
        "base_active",
        "base_breadth",
        "base_days",
        "base_events",
        "base_key",
        "calm_days",
        "cancelled",
        "champion",
        "champion_left_first",
        "champion_rate",
        "cooldown_until",
        "events_total",
        "first_day",
        "first_session_s",
        "gap",
        "health",
        "hot_days",
        "is_new",
        "key_total",
        "last_active_day",
        "last_scored_day",
        "mrr",
        "offset_ms",
        "open_days",
        "open_days_early",
        "open_tasks",
        "payment_failures",
        "pending",
        "plan",
        "reactivated",
        "recent_ids",
        "ring",
        "ring_day",
        "seats",
        "snapshots",
        "team_id",
        "trial",
        "tz",
        "users_at_risk",
        "users_regular",
    )

    def __init__(self, team_id: str, first_day: int, is_new: bool) -> None:
        self.team_id = team_id
        self.tz = "UTC"
        self.offset_ms = 0
        self.plan: str | None = None
        self.mrr: float | None = None
        self.seats: int | None = None
        self.trial = False
        self.is_new = is_new
        self.ring = array("d", bytes(8 * RING_DAYS * FIELDS))
        self.ring_day = first_day
        self.first_day = first_day
        self.last_active_day = first_day - 1
        self.last_scored_day = first_day - 1
        #: active days not closed yet: bit i is local day ``last_scored_day + 1 + i``; the
        #: activity statistics take a day in when it closes, so arrival order cannot matter
        self.open_days = 0
        #: of those, the days counted in the population's first UTC day of the local day
        self.open_days_early = 0
        #: finished tasks of open days, [day, task, count, total milliseconds] each: their
        #: share of the population's norm is taken when the day closes (order-free)
        self.open_tasks: list[list[Any]] | tuple[()] = NOTHING
        #: team-level events (lifecycle, traits, the first session) not applied yet,
        #: [ts, event_id, type, properties] each: applied in event-time order when the
        #: team's day that holds them closes, so arrival order cannot matter
        self.pending: list[list[Any]] | tuple[()] = NOTHING
        self.active_days = 0
        self.events_total = 0
        self.key_total = 0
        self.first_session_s = -1.0
        self.base_active = 0.0
        self.base_events = 0.0
        self.base_key = 0.0
        self.base_breadth = 0.0
        self.base_days = 0
        self.gap = 1.0
        self.payment_failures = 0
        self.cancelled = False
        self.reactivated = False
        self.champion: str | None = None
        self.champion_rate = 0.0
        #: the champion went quiet while the rest of the team still carried on: if the team
        #: falls later, "the champion left" is the cause to name, not "activity fell"
        self.champion_left_first = False
        self.users_at_risk = 0
        self.users_regular = 0
        #: risk-model feature snapshots awaiting their delayed label, oldest first; each is
        #: sparse: [day, feature index, value, feature index, value, ...]
        self.snapshots: list[list[float]] = []
        self.health = NOT_ENOUGH_DATA
        self.hot_days = 0
        self.calm_days = 0
        self.cooldown_until = 0
        self.recent_ids = RecentIds()  # duplicate detection (detector/dedup.py)

    def advance_ring(self, day: int) -> None:
        """Make ``day`` the newest bucket, clearing the buckets of days that passed."""
        ring_day = self.ring_day
        if day <= ring_day:
            return
        ring = self.ring
        for d in range(max(ring_day + 1, day - RING_DAYS + 1), day + 1):
            base = (d % RING_DAYS) * FIELDS
            ring[base : base + FIELDS] = _ZEROS
        self.ring_day = day

    def window(self, last_day: int, days: int) -> list[float]:
        """Sums of each bucket field over ``days`` days ending at ``last_day``;
        the FEATURES field is the union (bit-or) of feature masks."""
        return self.windows(last_day, (days,))[days]

    def windows(self, last_day: int, sizes: tuple[int, ...]) -> dict[int, list[float]]:
        """:meth:`window` for several sizes in one pass over the ring.

        >>> t = TeamState("t", 0, False); t.advance_ring(9); t.ring[9 % RING_DAYS * FIELDS] = 2.0
        >>> t.ring[8 % RING_DAYS * FIELDS] = 3.0
        >>> w = t.windows(9, (1, 7)); w[1][EVENTS], w[7][EVENTS]
        (2.0, 5.0)
        """
        ring, newest = self.ring, self.ring_day
        # one running sum per field, unrolled (in bucket field order): this runs for every
        # team and day, and a loop over the fields costs half again as much
        events = active = key = tasks = ratio = failures = 0.0
        mask = 0
        out: dict[int, list[float]] = {}
        wanted = set(sizes)
        for back in range(max(sizes)):
            d = last_day - back
            if newest - RING_DAYS < d <= newest:
                base = (d % RING_DAYS) * FIELDS
                e, a, k, f, t, r, x = ring[base : base + FIELDS]
                events += e
                active += a
                key += k
                tasks += t
                ratio += r
                failures += x
                mask |= int(f)
            if back + 1 in wanted:
                out[back + 1] = [
                    events,
                    active,
                    key,
                    float(mask.bit_count()),
                    tasks,
                    ratio,
                    failures,
                ]
        return out


_ZEROS = array("d", bytes(8 * FIELDS))


class UserState:
    """One user: activity cadence and recent-vs-usual activity as moving averages."""

    __slots__ = (
        "active_days",
        "calm_days",
        "check_day",
        "cooldown_until",
        "events_total",
        "ewma_day",
        "fast",
        "first_day",
        "gap",
        "health",
        "hot_days",
        "last_day",
        "open_days",
        "settled_day",
        "slow",
        "team_id",
    )

    def __init__(self, team_id: str, day: int) -> None:
        self.team_id = team_id
        self.first_day = day
        self.last_day = day - 1
        self.ewma_day = day - 1
        #: active days the statistics have not taken in: bit i is day ``settled_day + 1 + i``
        self.open_days = 0
        self.settled_day = day - 1
        self.active_days = 0
        self.events_total = 0
        self.fast = 0.0
        self.slow = 0.0
        self.gap = 0.0
        self.health = NOT_ENOUGH_DATA
        self.hot_days = 0
        self.calm_days = 0
        self.cooldown_until = 0
        self.check_day = -1


FAST_ALPHA = 1.0 / 7.0
SLOW_ALPHA = 1.0 / 42.0


def fold_user(user: UserState, upto_day: int) -> None:
    """Fold closed days into the user's active-day moving averages.

    >>> u = UserState("t", 0)
    >>> u.last_day = 0; fold_user(u, 0); round(u.fast, 3)
    0.143
    >>> fold_user(u, 7); round(u.fast, 3)
    0.049
    """
    k = upto_day - user.ewma_day
    if k <= 0:
        return
    fast, slow = user.fast, user.slow
    keep_f, keep_s = 1.0 - FAST_ALPHA, 1.0 - SLOW_ALPHA
    if user.ewma_day < user.last_day <= upto_day:
        before = user.last_day - user.ewma_day - 1
        fast = fast * keep_f**before * keep_f + FAST_ALPHA
        slow = slow * keep_s**before * keep_s + SLOW_ALPHA
        k = upto_day - user.last_day
    user.fast = fast * keep_f**k
    user.slow = slow * keep_s**k
    user.ewma_day = upto_day


def fold_past_active_day(user: UserState, day: int) -> None:
    """Add an active ``day`` that :func:`fold_user` already passed as inactive (a check ran
    before the team's local day closed): its share, decayed to ``ewma_day``.

    >>> u = UserState("t", 0); fold_user(u, 3); fold_past_active_day(u, 2); round(u.fast, 3)
    0.122
    >>> v = UserState("t", 0); v.last_day = 2; fold_user(v, 3); round(v.fast, 3)
    0.122
    """
    user.fast += FAST_ALPHA * (1.0 - FAST_ALPHA) ** (user.ewma_day - day)
    user.slow += SLOW_ALPHA * (1.0 - SLOW_ALPHA) ** (user.ewma_day - day)
