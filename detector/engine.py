"""The detection engine for one partition: events in, alerts out, state explicit.

Per event (the hot path) it only validates, moves the watermark and increments the current
daily bucket of the team and the user. Scoring runs when the watermark closes a day, on a
sweep every ``sweep_interval_s`` of event time, so a team that sends nothing is still
scored and its silence noticed. The same engine runs in the Faust worker, in replay and in
the demo; given the same events it produces the same alerts and state, in any order that keeps
every event within the allowed lateness: what depends on order (active days, lifecycle events
and traits, the first session, task durations against the population norm) is kept per open
day and taken in, in event-time order, when the day closes.
"""

from __future__ import annotations

import bisect
import math
import time
import zlib
from bisect import insort
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter
from typing import Any, NamedTuple

from . import health as hs
from .alerts import build_alert
from .buckets import RISK_BOUNDS, SWEEP_BOUNDS, BucketCounts
from .events import (
    NON_ACTIVITY_TYPES,
    PAYMENT_FAILED,
    PAYMENT_SUCCEEDED,
    SUBSCRIPTION_CANCELLED,
    SUBSCRIPTION_STARTED,
    TEAM_UPDATED,
    TRIAL_STARTED,
    EventFields,
    Invalid,
    decode_fields,
)
from .population import MAX_TASK_S, Population
from .risk_model import RiskModel, features_of, snapshot
from .scoring import (
    Reason,
    Signal,
    combine,
    decay_strength,
    explain,
    low_activity_p_value,
    payment_strength,
    sharp_drop_strength,
    silence_strength,
)
from .settings import EngineSettings
from .state import (
    ACTIVE_USERS,
    EVENTS,
    FAST_ALPHA,
    FEATURES,
    FIELDS,
    KEY_ACTIONS,
    NOTHING,
    RING_DAYS,
    SLOW_ALPHA,
    TASK_FAILURES,
    TASK_RATIO,
    TASKS,
    TeamState,
    UserState,
    fold_past_active_day,
    fold_user,
)
from .timemodel import DAY_MS, Watermark, day_end_ms, utc_offset_ms

#: team-level types that carry traits, and those that only change the team's status
_TRAIT_TYPES = frozenset({TEAM_UPDATED, SUBSCRIPTION_STARTED, TRIAL_STARTED})
_STATUS_TYPES = frozenset({SUBSCRIPTION_CANCELLED, PAYMENT_FAILED, PAYMENT_SUCCEEDED})
_TRAITS = ("plan", "mrr", "seats", "timezone")
_SESSION_ENDED = "session.ended"
_EVENT_ORDER = itemgetter(0, 1)  # a pending team-level event: (event time, event id)
_NEW_TEAM_GRACE_DAYS = 7  # a team first seen a week after the partition started is new
_REGULAR_USER_DAYS = 4
#: user states counted in their team's users_at_risk
_BAD_USER_STATES = (hs.AT_RISK, hs.CHURNED)
_WEEK_MS = 7 * DAY_MS
_STRUGGLE_DAYS = 14  # task durations and failures are judged over two weeks
#: a team's finished tasks of the days not closed yet, kept by name (more: one neutral entry)
_MAX_OPEN_TASKS = 256
#: joins a user id and a team id into the key of the user's state in a second team (the
#: first team's state is keyed by the user id alone); ids are not checked for it, so only a
#: user id made to contain it and a team id could share another person's key
OTHER_TEAM = "\x1f"
#: "Key action stopped while logins go on" is weak evidence: on its own it was wrong more often
#: than right (healthy teams have quiet publishing weeks), so alone it raises no alert; with
#: another signal (noisy-or) it adds to the risk.
KEY_ACTION_STRENGTH = 0.3
#: the rest of the team, without its away champion, still at this share of its usual: the
#: champion went first (in a team-wide decline the champion goes quiet after the others fell)
CARRIES_ON = 0.8
#: the most a team's shortfall counts in a window that is mostly a population-wide low
LOW_POPULATION_STRENGTH = 0.3
#: a day later than any event's
NEVER = 2**62


@dataclass
class EngineStats:
    """Plain counters, read by the metrics adapter at scrape time (nothing per event)."""

    events_valid: int = 0
    invalid: dict[str, int] = field(default_factory=dict)
    alerts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    sweeps: int = 0
    sweep_seconds_total: float = 0.0
    last_sweep_seconds: float = 0.0
    tracking_gap_days: int = 0
    #: entities dropped from the state after evict_after_days without activity, by type
    evicted: dict[str, int] = field(default_factory=dict)
    #: distribution of team risk scores, one observation per scored team-day
    risk: BucketCounts = field(default_factory=lambda: BucketCounts(RISK_BOUNDS))
    sweep_duration: BucketCounts = field(default_factory=lambda: BucketCounts(SWEEP_BOUNDS))


class LatestScore(NamedTuple):
    """An entity's latest score, kept for the health query API (not persisted)."""

    day: int
    risk: float
    signals: list[Signal]


class PartitionEngine:
    """All state of one partition: teams, users, population, watermark."""

    def __init__(self, settings: EngineSettings, clock: Callable[[], float] = time.perf_counter):
        self.settings = settings
        self.clock = clock
        self.th = hs.Thresholds(
            settings.cooling_risk,
            settings.at_risk_risk,
            settings.recovered_risk,
            settings.at_risk_days,
            settings.recovery_days,
            settings.cooldown_days,
            settings.at_risk_strong_risk,
            settings.at_risk_days_moderate,
        )
        #: the last count of _active_teams_since, with the state it was counted on
        self._active_count: tuple[tuple[int, int, int | None, int], int] | None = None
        self.watermark = Watermark(
            settings.allowed_lateness_s * 1000,
            settings.max_future_skew_s * 1000,
            settings.future_jump_confirmations,
            active_teams=self._active_teams_since,
        )
        self.population = Population(settings.population_min_days)
        #: population-level online risk model, learning from this partition's cancellations
        self.risk = RiskModel()
        self.teams: dict[str, TeamState] = {}
        self.users: dict[str, UserState] = {}
        #: teams grouped by UTC offset: a group's days close together
        self.groups: dict[int, dict[str, TeamState]] = {}
        self.group_closed: dict[int, int] = {}
        #: user checks due per UTC day (each user has at most one live entry)
        self.wheel: dict[int, list[str]] = {}
        #: users with open active days, by their team's UTC offset (settled as days close)
        self.unsettled: dict[int, list[str]] = {}
        self.user_day_closed: int | None = None
        self.first_day: int | None = None
        self.next_sweep_ms: int | None = None
        self.sweep_ms = settings.sweep_interval_s * 1000
        #: event ids are kept for two spans: longer than any accepted event can be late
        self.dedup_span_ms = max(settings.allowed_lateness_s * 1000, 3_600_000)
        self.key_types = frozenset(settings.key_action_types)
        #: the earliest UTC day a key action was seen in this partition (NEVER: none yet). A
        #: product whose events never carry the configured key action type does not
        #: instrument it (or names it otherwise): its absence says nothing about a new team
        self.key_action_since = NEVER
        self.feature_bits: dict[str, int] = {}
        self.outbox: list[dict[str, Any]] = []
        self.stats = EngineStats()
        self.scores: dict[str, LatestScore] = {}
        #: users' latest scores, only while they carry a signal (memory: users at risk only)
        self.user_scores: dict[str, LatestScore] = {}
        #: ids whose state changed since the last flush (None: not tracked, as in replay)
        self.dirty_teams: set[str] | None = None
        self.dirty_users: set[str] | None = None

    def track_changes(self) -> None:
        """Record which entities change, so a durable store writes each once per batch."""
        self.dirty_teams, self.dirty_users = set(), set()

    def take_changes(self) -> tuple[set[str], set[str]]:
        teams, users = self.dirty_teams or set(), self.dirty_users or set()
        if self.dirty_teams is not None:
            self.dirty_teams, self.dirty_users = set(), set()
        return teams, users

    # ------------------------------------------------------------------ hot path
    def process_raw(self, raw: bytes) -> Invalid | None:
        decoded = decode_fields(raw, self.settings.max_event_bytes)
        if isinstance(decoded, Invalid):
            self._count_invalid(decoded.reason)
            return decoded
        return self.process(decoded)

    def process(self, ev: EventFields) -> Invalid | None:
        """Apply one valid event (an :class:`Event` or its plain fields).

        Returns an Invalid (late, future) instead of raising. Product activity (all but the
        lifecycle types) is counted inline (a call per event costs more than it reads well):
        today's bucket of the team, the user's cadence, the partition's daily count."""
        event_id, etype, ts, uid, team_id, props = ev
        watermark = self.watermark
        rejected = watermark.observe(ts, team_id)
        if rejected is not None:
            self._count_invalid(rejected)
            return Invalid(rejected, f"event time {ts} is outside the accepted window")
        team = self.teams.get(team_id)
        if team is None:
            team = self._new_team(team_id, ts)
        if team.recent_ids.seen(event_id, ts, self.dedup_span_ms):
            self._count_invalid("duplicate")
            return Invalid("duplicate", f"event_id {event_id!r:.80} was already applied")
        self.stats.events_valid += 1
        team.events_total += 1
        if self.dirty_teams is not None:
            self.dirty_teams.add(team_id)
        if etype in NON_ACTIVITY_TYPES:
            self._defer(team, ts, event_id, etype, props)
        else:
            counts = self.population.counts  # Population.count(ts), inlined
            utc_day = ts // DAY_MS
            counts[utc_day] = counts.get(utc_day, 0) + 1
            day = (ts + team.offset_ms) // DAY_MS
            if day <= team.last_scored_day:
                day = self._closed_day_event(team, ts, day)
            if day > team.ring_day:
                team.advance_ring(day)
            # else older than any bucket: possible only with a lateness beyond the ring
            if day > team.ring_day - RING_DAYS:
                ring = team.ring
                slot = (day % RING_DAYS) * FIELDS
                ring[slot + EVENTS] += 1.0
                # active days are bits of the days not closed yet (set in any order); the
                # statistics take them in, in day order, when the day closes (_close_team)
                bit = 1 << (day - team.last_scored_day - 1)
                if not team.open_days & bit:
                    team.open_days |= bit
                    self._count_team_day(team, ts, day, bit, True)
                elif (
                    not team.open_days_early & bit
                    and utc_day == (day * DAY_MS - team.offset_ms) // DAY_MS
                ):
                    self._count_team_day(team, ts, day, bit, False)
                assert uid is not None  # validation: only team-level types may lack a user
                user = self.users.get(uid)
                if user is None or user.team_id != team_id:
                    # the same person in another team too (ids are global, workspaces many):
                    # each team's activity is its own, so each has a state of its own, kept
                    # under its own key even after the first team's state was dropped
                    in_team = self.users.get(uid + OTHER_TEAM + team_id)
                    if in_team is not None or user is not None:
                        uid, user = uid + OTHER_TEAM + team_id, in_team
                if user is None:
                    user = self._new_user(uid, team, day)
                user.events_total += 1
                if self.dirty_users is not None:
                    self.dirty_users.add(uid)
                if not user.open_days and user.settled_day < team.last_scored_day:
                    # nothing open: the days its team closed are settled for the user too, so
                    # the bitmask spans the open days only, not a long absence (a user back
                    # after 64+ days made it a >64-bit int that orjson cannot encode)
                    user.settled_day = team.last_scored_day
                back = day - user.settled_day - 1
                if back < 0:
                    back = self._user_earlier_start(uid, user, team, day)
                if back >= 0:
                    bit = 1 << back
                    open_days = user.open_days
                    if not open_days & bit:
                        if not open_days:
                            self.unsettled.setdefault(team.offset_ms, []).append(uid)
                        user.open_days = open_days | bit
                        ring[slot + ACTIVE_USERS] += 1.0
                if etype in self.key_types:
                    ring[slot + KEY_ACTIONS] += 1.0
                    team.key_total += 1
                    if utc_day < self.key_action_since:
                        self.key_action_since = utc_day
                elif etype == "feature.used":
                    feature = props.get("feature")
                    if isinstance(feature, str):
                        bit = self.feature_bits.get(feature) or self._feature_bit(feature)
                        mask = int(ring[slot + FEATURES])
                        if not mask & bit:
                            ring[slot + FEATURES] = float(mask | bit)
                elif etype == "task.completed":
                    ring[slot + TASKS] += 1.0
                    self._finished_task(team, utc_day, day, props["task"], props["duration_s"])
                elif etype == "task.failed":
                    ring[slot + TASK_FAILURES] += 1.0
                elif etype == "session.ended" and team.first_session_s < 0.0:
                    # the earliest by event time wins: kept until its day closes
                    self._keep_pending(
                        team, [ts, event_id, etype, {"duration_s": props["duration_s"]}]
                    )
        next_sweep = self.next_sweep_ms
        if next_sweep is None:
            next_sweep = self.next_sweep_ms = (ts // self.sweep_ms + 1) * self.sweep_ms
        max_seen = watermark.max_seen
        if max_seen is not None and max_seen - watermark.lateness_ms >= next_sweep:
            self.sweep_until(max_seen - watermark.lateness_ms)
        return None

    def _active_teams_since(self, since_ms: int) -> int:
        """Teams active since about ``since_ms`` (whole local days): how many can confirm a
        jump in time, counted up to the confirmations needed (more change nothing).

        A function of the state alone (a restored engine decides a jump as one that never
        stopped). The count is kept only while nothing that could change it happened (no
        event applied, no sweep, no team added or dropped): a device with a broken clock
        sends one candidate after another, and counting over every quiet team for each of
        them took milliseconds per event."""
        first_day = since_ms // DAY_MS - 1
        key = (first_day, self.stats.events_valid, self.next_sweep_ms, len(self.teams))
        cached = self._active_count
        if cached is not None and cached[0] == key:
            return cached[1]
        active = (team for team in self.teams.values() if team.last_active_day >= first_day)
        count = sum(1 for _ in islice(active, self.watermark.confirmations))
        self._active_count = (key, count)
        return count

    def _count_team_day(self, team: TeamState, ts: int, day: int, bit: int, first: bool) -> None:
        """Count the team's local ``day`` once among the population's active teams, in the UTC
        day of its earliest event, as in-order delivery does. A local day spans two UTC days:
        an earlier event delivered later moves the count back (both UTC days are still open)."""
        utc_day = ts // DAY_MS
        early = utc_day == (day * DAY_MS - team.offset_ms) // DAY_MS
        counts = self.population.team_counts
        if first:
            self.population.count_team(ts)
        elif early and counts.get(utc_day + 1, 0) > 0:
            counts[utc_day + 1] -= 1
            counts[utc_day] = counts.get(utc_day, 0) + 1
        if early:
            team.open_days_early |= bit

    def _closed_day_event(self, team: TeamState, ts: int, day: int) -> int:
        """The open day for an accepted event whose local ``day`` the team closed already.

        Either it is from before the team's first day (delivered out of order): the team
        starts on that day. Or the team's UTC offset moved back when its last day closed (a
        new time zone, the end of summer time) and the event is in the hours the new offset
        repeats: it counts in the first open day, where it counts when delivered before that
        close (with the old offset), so the delivery order does not matter."""
        if self._team_earlier_start(team, ts):
            return day
        return team.last_scored_day + 1

    def _team_earlier_start(self, team: TeamState, ts: int) -> bool:
        """An event of a day before the team's first (delivered out of order, within the
        lateness): the team starts on that day, if nothing of it was closed yet."""
        utc_day = ts // DAY_MS
        if utc_day >= team.first_day or team.last_scored_day != team.first_day - 1:
            return False
        shift = team.first_day - utc_day
        if self.first_day is not None and utc_day < self.first_day:
            self.first_day = utc_day
        team.first_day, team.last_scored_day = utc_day, utc_day - 1
        team.last_active_day = utc_day - 1
        team.open_days <<= shift
        team.open_days_early <<= shift
        return True

    def _user_earlier_start(self, uid: str, user: UserState, team: TeamState, day: int) -> int:
        """As :meth:`_team_earlier_start`, for a user whose first day was not taken in yet."""
        if day >= user.first_day or day <= team.last_scored_day or user.last_day >= user.first_day:
            return -1
        shift = user.first_day - day
        user.first_day = day
        user.settled_day = user.last_day = user.ewma_day = day - 1
        user.open_days <<= shift
        if user.check_day == day + shift + self.settings.user_min_silence_days:
            self._schedule(uid, user, day + self.settings.user_min_silence_days)
        return 0

    def _team_active_day(self, team: TeamState, day: int) -> None:
        """The team was active on its local ``day``, which is closing (days come in order)."""
        if day <= team.last_active_day:
            return  # taken in before open days were tracked (a record of an older version)
        if team.last_active_day >= team.first_day:
            team.gap += 0.2 * ((day - team.last_active_day) - team.gap)
        team.last_active_day = day
        team.active_days += 1
        if team.health == hs.CHURNED:
            team.reactivated = True

    def _settle_user(self, team: TeamState, user: UserState, upto: int) -> None:
        """Take the user's active days up to ``upto`` (closed for the team) into the
        statistics, in day order, whatever order their events came in."""
        open_days, day = user.open_days, user.settled_day
        while open_days and day < upto:
            day += 1
            if open_days & 1:
                self._user_active_day(team, user, day)
            open_days >>= 1
        user.open_days = open_days
        if upto > user.settled_day:
            user.settled_day = upto

    def _user_active_day(self, team: TeamState, user: UserState, day: int) -> None:
        """The user was active on the team's local ``day`` (days come in order)."""
        if day <= user.last_day:
            return  # taken in before open days were tracked (a record of an older version)
        if day <= user.ewma_day:
            fold_past_active_day(user, day)
        elif user.last_day >= user.first_day:
            fold_user(user, day - 1)
        if user.last_day >= user.first_day:
            gap = day - user.last_day
            user.gap = gap if user.active_days == 1 else user.gap + 0.2 * (gap - user.gap)
        user.last_day = day
        user.active_days += 1
        if user.active_days == _REGULAR_USER_DAYS:
            team.users_regular += 1

    def _feature_bit(self, feature: str) -> int:
        bit = self.feature_bits.get(feature)
        if bit is None:
            bit = 1 << (zlib.crc32(feature.encode()) % 48)
            if len(self.feature_bits) < 4096:
                self.feature_bits[feature] = bit
        return bit

    def _finished_task(
        self, team: TeamState, utc_day: int, day: int, task: str, duration_s: float
    ) -> None:
        """A finished task: the population learns its duration when the UTC day closes, the
        team's bucket gets it as a multiple of the norm when the team's day closes."""
        self.population.observe_task(task, duration_s, utc_day)
        ms = round(min(duration_s, MAX_TASK_S) * 1000)
        tasks = team.open_tasks  # in (day, task) order, whatever order the tasks came in
        if not isinstance(tasks, list):
            team.open_tasks = [[day, task, 1, ms]]
            return
        at, found = _task_entry(tasks, day, task)
        if not found and len(tasks) >= _MAX_OPEN_TASKS:
            # task names can carry ids: past this many, a new name's tasks count together
            # under a name no task has, as at their norm
            task = ""
            at, found = _task_entry(tasks, day, task)
        if not found:
            tasks.insert(at, [day, task, 0, 0])
        tasks[at][2] += 1
        tasks[at][3] += ms

    def _close_tasks(self, team: TeamState, day: int) -> None:
        """The closing ``day``'s tasks against the population's norms (in task order)."""
        ratio, tasks = 0.0, team.open_tasks
        assert isinstance(tasks, list)  # called when there are open tasks
        while tasks and tasks[0][0] <= day:
            _, task, n, ms = tasks.pop(0)
            ratio += self.population.task_ratio(task, ms / 1000, n)
        if not tasks:
            team.open_tasks = NOTHING
        if day > team.ring_day - RING_DAYS:
            team.ring[(day % RING_DAYS) * FIELDS + TASK_RATIO] += ratio

    def _defer(
        self, team: TeamState, ts: int, event_id: str, etype: str, props: dict[str, Any]
    ) -> None:
        """Keep a team-level event until the team's day that holds it closes."""
        if ts // DAY_MS < team.first_day:
            self._team_earlier_start(team, ts)  # the team starts with it, as in order
        if etype in _TRAIT_TYPES:
            kept = {name: props[name] for name in _TRAITS if name in props}
        elif etype in _STATUS_TYPES:
            kept = {}
        else:
            return  # identify: nothing to apply
        self._keep_pending(team, [ts, event_id, etype, kept])

    @staticmethod
    def _keep_pending(team: TeamState, entry: list[Any]) -> None:
        """Keep a team-level event in event-time order (ties by event id) until it applies."""
        if isinstance(team.pending, list):
            insort(team.pending, entry, key=_EVENT_ORDER)
        else:
            team.pending = [entry]

    def _apply_pending(self, team: TeamState, day: int) -> None:
        """Apply the team-level events of the closing local ``day`` and before, in event-time
        order: the last by event time wins, not the last delivered."""
        end = day_end_ms(day, team.offset_ms)
        pending = team.pending
        assert isinstance(pending, list)  # called when there are pending events
        while pending and pending[0][0] < end:
            ts, _, etype, props = pending.pop(0)
            self._lifecycle(team, etype, ts, props)
        if not pending:
            team.pending = NOTHING

    def _lifecycle(self, team: TeamState, etype: str, ts: int, props: dict[str, Any]) -> None:
        if etype == _SESSION_ENDED:
            if team.first_session_s < 0.0:
                team.first_session_s = float(props["duration_s"])
        elif etype in _TRAIT_TYPES:
            if "plan" in props:
                team.plan = props["plan"]
            if "mrr" in props:
                team.mrr = float(props["mrr"])
            if "seats" in props:
                team.seats = int(props["seats"])
            if props.get("timezone"):
                team.tz = props["timezone"]  # the team moves when its day closes
            if etype == TRIAL_STARTED:
                team.trial = True
                team.is_new = True
            elif etype == SUBSCRIPTION_STARTED:
                team.trial = False
                if ts // DAY_MS - team.first_day <= 1:
                    team.is_new = True
                if team.cancelled:
                    team.cancelled = False
                    team.reactivated = True
        elif etype == SUBSCRIPTION_CANCELLED:
            team.cancelled = True
        elif etype == PAYMENT_FAILED:
            team.payment_failures += 1
        elif etype == PAYMENT_SUCCEEDED:
            team.payment_failures = 0

    def _new_team(self, team_id: str, ts: int) -> TeamState:
        utc_day = ts // DAY_MS
        if self.first_day is None or utc_day < self.first_day:  # (< : delivered out of order)
            self.first_day = utc_day
        team = TeamState(team_id, utc_day, False)  # new or not: known when its first day closes
        self.teams[team_id] = team
        self.groups.setdefault(0, {})[team_id] = team
        return team

    def reconcile_users(self) -> None:
        """After a restore: drop users whose team is not held, and count each team's regular
        and at-risk users again from its users. The counts are kept incrementally; a
        snapshot older than the changelog's tombstones (a partition back on a worker after
        their retention) can bring dropped users back, counted again or without their team.
        Consistent state comes out unchanged."""
        orphans = [uid for uid, user in self.users.items() if user.team_id not in self.teams]
        for uid in orphans:
            del self.users[uid]
        if self.dirty_users is not None:
            self.dirty_users.update(orphans)  # their records are deleted at the next commit
        for team in self.teams.values():
            team.users_regular = team.users_at_risk = 0
        for user in self.users.values():
            team = self.teams[user.team_id]
            regular, at_risk = _team_counts(user)
            team.users_regular += regular
            team.users_at_risk += at_risk

    def _regroup(self, team: TeamState, offset_ms: int) -> None:
        """Move a team to the group of its new UTC offset (its last day closed with the old).

        Only groups with teams are kept, as a restore builds them from the teams: an emptied
        group kept here had its ``group_closed`` advanced by every sweep, one rebuilt by a
        restore did not, and a group entered again (summer time ending) held a day closed
        months ago, which held back the users' checks. A group is entered as its team closed."""
        left = team.offset_ms
        if offset_ms == left:
            return
        team.offset_ms = offset_ms
        self._leave_group(team, left)
        group = self.groups.get(offset_ms)
        if group is None:
            group = self.groups[offset_ms] = {}
            self.group_closed[offset_ms] = team.last_scored_day
        group[team.team_id] = team

    def _leave_group(self, team: TeamState, offset: int) -> None:
        """Take a team out of the group of ``offset``; an emptied group goes, with what it
        held."""
        group = self.groups[offset]
        group.pop(team.team_id, None)
        if group:
            return
        del self.groups[offset]
        self.group_closed.pop(offset, None)
        # users with open days wait here for teams that moved: no sweep settles this group
        # again, so they wait in their team's group now (where a restore puts them)
        for uid in self.unsettled.pop(offset, ()):
            user = self.users.get(uid)
            moved = self.teams.get(user.team_id) if user is not None and user.open_days else None
            if moved is not None:
                self.unsettled.setdefault(moved.offset_ms, []).append(uid)

    def _new_user(self, uid: str, team: TeamState, day: int) -> UserState:
        user = UserState(team.team_id, day)
        self.users[uid] = user
        self._schedule(uid, user, day + self.settings.user_min_silence_days)
        return user

    def _schedule(self, uid: str, user: UserState, day: int) -> None:
        user.check_day = day
        self.wheel.setdefault(day, []).append(uid)

    def _count_invalid(self, reason: str) -> None:
        inv = self.stats.invalid
        inv[reason] = inv.get(reason, 0) + 1

    # ------------------------------------------------------------------ the clock
    def advance_idle(self, elapsed_ms: int) -> None:
        """Live mode: no events for a while; let the clock run by the time that passed."""
        self.watermark.advance_by(elapsed_ms)
        wm = self.watermark.value
        if wm is not None and self.next_sweep_ms is not None and wm >= self.next_sweep_ms:
            self.sweep_until(wm)

    def sweep_until(self, wm: int) -> None:
        """Run every sweep due up to watermark ``wm``."""
        assert self.next_sweep_ms is not None
        started = self.clock()
        while self.next_sweep_ms <= wm:
            self._sweep(self.next_sweep_ms)
            self.next_sweep_ms += self.sweep_ms
        spent = self.clock() - started
        self.stats.sweeps += 1
        self.stats.sweep_seconds_total += spent
        self.stats.last_sweep_seconds = spent
        self.stats.sweep_duration.observe(spent)

    def _sweep(self, t_ms: int) -> None:
        utc_day = t_ms // DAY_MS
        self.population.close_until(utc_day)
        # Groups and teams in a fixed order, not the order their first events arrived in:
        # the risk model learns while teams are scored, so the order must not depend on
        # delivery order (out-of-order input gives the in-order result).
        for offset in sorted(self.groups):
            group = self.groups[offset]
            # a team's local day D is scored against the population's day D, so east of UTC
            # (local D ends before UTC D does) it waits until the population has closed D;
            # scored earlier, D's factor is unknown and a holiday's first day looks like churn
            closed = min((t_ms + offset) // DAY_MS, utc_day) - 1
            if self.group_closed.get(offset, -(10**9)) >= closed:
                continue
            self.group_closed[offset] = closed
            self._settle_users(offset, closed)
            for team in [group[team_id] for team_id in sorted(group)]:
                if team.last_scored_day < closed:
                    self._close_team(team, closed)
        # a user's check of day D reads the team's local day D: wait until every group has
        # closed it (west of UTC, hours after UTC midnight). A group new in this sweep holds
        # teams that moved from a group that closed the day.
        closed_days = self.group_closed
        user_day = min(
            [utc_day - 1, *(closed_days.get(o, utc_day - 1) for o, g in self.groups.items() if g)]
        )
        if self.user_day_closed is None:
            self.user_day_closed = user_day
            for day in [d for d in self.wheel if d <= user_day]:
                self.wheel[user_day + 1] = self.wheel.pop(day) + self.wheel.get(user_day + 1, [])
        while self.user_day_closed < user_day:
            self.user_day_closed += 1
            self._check_users(self.user_day_closed)
        # weekly, at the sweep that starts a week: a pure function of the state and t_ms, so
        # a restored engine evicts what one that never stopped does
        if self.settings.evict_after_days and t_ms % _WEEK_MS == 0:
            self._evict_silent(utc_day)

    def evict_again(self) -> None:
        """After a restore: drop what the last weekly clean-up dropped.

        Its tombstones in the compacted changelog are removed after the topic's
        delete.retention.ms: a local snapshot older than that brings the dropped entities
        back with the records they had then (a newer record of the key is all that would
        hide them). Whatever Kafka keeps, the same rule at the same day drops them again,
        before they are judged (a user back as recovered, a team's stale days closed), and
        marks them changed, so their records are deleted again. Held consistently, nothing
        falls under it: the clean-up dropped it then, and what came since is newer."""
        if not self.settings.evict_after_days or self.next_sweep_ms is None:
            return
        last_sweep = self.next_sweep_ms - self.sweep_ms
        self._evict_silent((last_sweep - last_sweep % _WEEK_MS) // DAY_MS)

    def _evict_silent(self, utc_day: int) -> None:
        """Drop the users without activity and the teams without any event (and without
        users left) for ``evict_after_days``: churned customers would otherwise be held,
        and written to every new owner's restore, forever. A team's counts of regular and
        at-risk users lose the users dropped; an entity that comes back starts over as new.
        Dropped ids are marked changed, so the durable store deletes their records.

        Open days older than that do not keep an entity: held consistently, none are (the
        days close daily); only a record from an old snapshot has them (:meth:`evict_again`)."""
        limit = utc_day - self.settings.evict_after_days
        teams_with_users: set[str] = set()
        gone: list[str] = []
        for uid, user in self.users.items():
            if _newest_day(user) < limit:
                gone.append(uid)
            else:
                teams_with_users.add(user.team_id)
        dirty_teams = self.dirty_teams
        for uid in gone:
            user = self.users.pop(uid)
            self.user_scores.pop(uid, None)
            team = self.teams.get(user.team_id)
            if team is not None:
                if dirty_teams is not None:  # its counts change: its record is due
                    dirty_teams.add(user.team_id)
                regular, at_risk = _team_counts(user)
                team.users_regular -= regular
                team.users_at_risk -= at_risk
                if team.champion == uid:
                    team.champion, team.champion_rate = None, 0.0
                    team.champion_left_first = False
        span_ms = self.dedup_span_ms
        dropped = [
            team
            for team_id, team in self.teams.items()
            if team_id not in teams_with_users
            # the end of the generation of its newest event id: no event of any kind since,
            # so its open days and pending events are older still (-1: a record from before
            # event ids were kept, whose last event is unknown)
            and team.recent_ids.gen >= 0
            and (team.recent_ids.gen + 1) * span_ms // DAY_MS < limit
        ]
        for team in dropped:
            del self.teams[team.team_id]
            self._leave_group(team, team.offset_ms)
            self.scores.pop(team.team_id, None)
        if self.dirty_users is not None and dirty_teams is not None:
            self.dirty_users.update(gone)
            dirty_teams.update(team.team_id for team in dropped)
        evicted = self.stats.evicted
        evicted["user"] = evicted.get("user", 0) + len(gone)
        evicted["team"] = evicted.get("team", 0) + len(dropped)

    def _settle_users(self, offset: int, closed: int) -> None:
        """Before the group's teams score day ``closed``: their users' open days up to it."""
        uids = self.unsettled.pop(offset, None)
        if not uids:
            return
        keep: list[str] = []
        for uid in uids:
            user = self.users.get(uid)
            if user is None or not user.open_days:
                continue
            team = self.teams[user.team_id]
            if team.offset_ms != offset:  # the team moved to another group: settle there
                self.unsettled.setdefault(team.offset_ms, []).append(uid)
                continue
            before = user.last_day
            self._settle_user(team, user, closed)
            if user.check_day < 0 and user.last_day > before:
                # churned (or its team did) and active again: judged again, so it can recover
                self._schedule(uid, user, closed + 1)
            if self.dirty_users is not None:
                self.dirty_users.add(uid)
            if user.open_days:
                keep.append(uid)
        if keep:
            self.unsettled.setdefault(offset, []).extend(keep)

    # ------------------------------------------------------------------ teams
    def _close_team(self, team: TeamState, upto: int) -> None:
        if self.dirty_teams is not None:
            self.dirty_teams.add(team.team_id)
        assert self.first_day is not None
        if team.last_scored_day < team.first_day:
            # its first close: every earlier event of the partition is in by now
            team.is_new = team.is_new or team.first_day - self.first_day >= _NEW_TEAM_GRACE_DAYS
        for day in range(team.last_scored_day + 1, upto + 1):
            if team.open_days & 1:
                self._team_active_day(team, day)
            team.open_days >>= 1
            team.open_days_early >>= 1
            if team.pending:
                self._apply_pending(team, day)
            if team.open_tasks:
                self._close_tasks(team, day)
            if day >= team.first_day:
                self._score_team(team, day)
            team.last_scored_day = day
        offset = utc_offset_ms(team.tz, day_end_ms(upto, team.offset_ms) + DAY_MS // 2)
        if offset != team.offset_ms:
            self._regroup(team, offset)

    def _score_team(self, team: TeamState, day: int) -> None:
        s = self.settings
        if team.health == hs.CHURNED and not team.reactivated and team.cancelled:
            return
        team.advance_ring(day)
        w = s.recent_window_days
        wins = team.windows(day, (1, s.sharp_drop_days, w, 2 * w, _STRUGGLE_DAYS))
        win, today = wins[w], wins[1]
        pop = self.population
        pop_d = pop.day_factor(day)
        if pop_d < s.tracking_gap_ratio:
            self.stats.tracking_gap_days += 1
        age = day - team.first_day + 1
        mature = age >= s.min_history_days and team.base_days >= s.min_history_days // 2
        signals: list[Signal] = []
        norm = 1.0

        silent_days = pop.effective_days(team.last_active_day + 1, day)
        if mature:
            norm = self._team_decay(team, day, wins, signals)
            self._sharp_drop(team, day, wins[s.sharp_drop_days], signals)
            self._team_silence(team, silent_days, signals)
            self._champion(team, day, wins[w], signals)
            self._key_action(team, wins, max(0.05, pop.window_factor(day, 2 * w)), norm, signals)
            self._user_decay(team, signals)
        if (
            team.is_new
            and age <= s.onboarding_days + 7
            and self._usual_days(team.first_day, day) >= s.onboarding_days - 3
        ):
            self._onboarding(team, day, signals)
        self._struggle(team, wins, signals)
        payment = payment_strength(team.payment_failures)
        if payment:
            signals.append(
                Signal(
                    "payment_failure",
                    payment,
                    (
                        Reason(
                            "payment_failed",
                            f"{team.payment_failures} consecutive failed payment(s)",
                            float(team.payment_failures),
                            0.0,
                        ),
                    ),
                )
            )

        risk = combine(signals)
        self.stats.risk.observe(risk)
        self.scores[team.team_id] = LatestScore(day, risk, signals)
        silence_churn = silent_days >= s.churn_silence_days and team.active_days > 0
        churned = team.cancelled or silence_churn
        active = today[EVENTS] > 0
        before = team.health
        step = hs.step(
            team.health,
            team.hot_days,
            team.calm_days,
            team.cooldown_until,
            day=day,
            risk=risk,
            mature=mature,
            churned=churned,
            active=active,
            th=self.th,
            # repeated failed payments are a fact, not a noisy measurement
            confirmed=payment >= self.th.at_risk,
        )
        team.health, team.hot_days, team.calm_days = step.state, step.hot_days, step.calm_days
        team.cooldown_until = step.cooldown_until
        if step.alert is not None:
            if step.alert == hs.STATE_NAMES[hs.CHURNED]:
                signal = "cancellation" if team.cancelled else "silence"
                reasons = [
                    Reason("subscription_cancelled", "the subscription was cancelled", None, None)
                    if team.cancelled
                    else Reason(
                        "silent", f"no activity for {silent_days:.0f} days", silent_days, team.gap
                    )
                ]
            elif step.alert == hs.RECOVERED:
                team.reactivated = False
                signal = "recovery"
                reasons = [
                    Reason("activity_recovered", "activity is back near its baseline", norm, 1.0)
                ]
            else:
                cause = "champion_loss" if team.champion_left_first else None
                signal, reasons = explain(signals, cause)
                reasons += self._model_reason(signals, norm, mature)
            self._emit(
                "team",
                team.team_id,
                team,
                step.alert,
                before,
                signal,
                risk,
                reasons,
                day,
                # when the day was scored: its local end, or the population's (UTC) day end
                # east of UTC, whichever is later
                max(day_end_ms(day, team.offset_ms), (day + 1) * DAY_MS),
            )
        self._learn_team(team, today, win, pop_d, norm, mature)
        if step.state == hs.CHURNED:
            if team.cancelled:
                self._label_cancelled(team, day)
            team.snapshots = []
        elif (day - team.first_day) % s.risk_snapshot_days == 0:
            self._keep_snapshot(team, day, risk_features(signals, norm, mature))

    # ------------------------------------------------------------------ learned risk
    def _keep_snapshot(self, team: TeamState, day: int, features: dict[str, float]) -> None:
        """Keep today's features; a snapshot older than the horizon is now a negative."""
        horizon = self.settings.risk_horizon_days
        snaps = team.snapshots
        while snaps and day - snaps[0][0] >= horizon:
            self.risk.label(team.team_id, features_of(snaps.pop(0)), False)
        snaps.append(snapshot(day, features))

    def _label_cancelled(self, team: TeamState, day: int) -> None:
        """The team cancelled: what it looked like 1-4 weeks before is what churn looks like."""
        s = self.settings
        for snap in team.snapshots:
            if s.risk_label_min_days <= day - snap[0] <= s.risk_horizon_days:
                self.risk.label(team.team_id, features_of(snap), True)

    def _model_reason(self, signals: list[Signal], norm: float, mature: bool) -> list[Reason]:
        """The learned risk and its strongest contributions, once the model has learned."""
        model = self.risk
        if not model.ready(self.settings.risk_min_labels):
            return []
        features = risk_features(signals, norm, mature)
        p = model.predict(features)
        top = [name for name, part in model.contributions(features)[:2] if part > 0.0]
        base_rate = model.positives / (model.positives + model.negatives)
        because = f" ({', '.join(top)} weigh most)" if top else ""
        return [
            Reason(
                "learned_risk",
                f"{p:.0%} chance of cancelling within {self.settings.risk_horizon_days} days "
                f"learned from past cancellations{because}",
                p,
                base_rate,
            )
        ]

    def _team_decay(
        self, team: TeamState, day: int, wins: dict[int, list[float]], out: list[Signal]
    ) -> float:
        """Activity, active seats and feature breadth against the team's own baseline.

        One week answers fast for big teams; two weeks give small teams (few events, where a
        week of quiet is often a vacation) the evidence they need. The stronger one counts.
        """
        w = self.settings.recent_window_days
        best: tuple[float, float, list[float], int] | None = None
        norm_week = 1.0
        for days in (w, 2 * w):
            win = wins[days]
            # each window against the population over the same days: a two-week window that
            # still holds a holiday expects less than the week after it
            pop_w = max(0.05, self.population.window_factor(day, days))
            exp_active = days * team.base_active * pop_w
            exp_events = days * team.base_events * pop_w
            if exp_active <= 0.0 or exp_events <= 0.0:
                return 1.0
            n_active = min(1.5, win[ACTIVE_USERS] / exp_active)
            n_events = min(1.5, win[EVENTS] / exp_events)
            if team.base_breadth >= 3.0:
                n_breadth = min(1.5, win[FEATURES] / team.base_breadth)
                norm = 0.5 * n_active + 0.3 * n_events + 0.2 * n_breadth
            else:
                norm = 0.6 * n_active + 0.4 * n_events
            if days == w:
                norm_week = norm
            p_value = low_activity_p_value(win[ACTIVE_USERS], exp_active)
            alpha = self.settings.decay_alpha
            if team.base_active < 1.0:
                # under one active user a day, the team's days are one person's days: absences
                # come in blocks (a vacation), so ask for ten times stronger evidence
                alpha /= 10.0
            strength = decay_strength(norm, p_value, alpha)
            if pop_w < self.settings.tracking_gap_ratio:
                # mostly a population-wide low (holiday, outage): how deep each team dips in
                # it varies, so a shortfall there is weak evidence
                strength = min(strength, LOW_POPULATION_STRENGTH)
            if best is None or strength > best[0]:
                best = (strength, norm, win, days)
        assert best is not None
        strength, norm, win, days = best
        if strength > 0.0:
            reasons = [
                Reason(
                    "active_users_drop",
                    f"{win[ACTIVE_USERS] / days:.1f} active users a day over {days} days "
                    f"vs {team.base_active:.1f} usual",
                    win[ACTIVE_USERS] / days,
                    team.base_active,
                ),
                Reason(
                    "team_activity_drop",
                    f"{win[EVENTS] / days:.0f} events a day vs {team.base_events:.0f} usual",
                    win[EVENTS] / days,
                    team.base_events,
                ),
            ]
            if team.seats:
                share = win[ACTIVE_USERS] / days / team.seats
                usual = team.base_active / team.seats
                reasons.append(
                    Reason(
                        "seats_active_drop",
                        f"{share:.0%} of seats active a day vs {usual:.0%}",
                        share,
                        usual,
                    )
                )
            if team.base_breadth >= 3.0 and win[FEATURES] < 0.7 * team.base_breadth:
                reasons.append(
                    Reason(
                        "feature_breadth_drop",
                        f"{win[FEATURES]:.0f} features used vs {team.base_breadth:.0f} usual",
                        win[FEATURES],
                        team.base_breadth,
                    )
                )
            out.append(Signal("team_decay", strength, tuple(reasons)))
        return norm_week

    def _sharp_drop(self, team: TeamState, day: int, win: list[float], out: list[Signal]) -> None:
        """The last few days far below what this team does on the same weekdays.

        A whole week has to pass before a week's average falls to half; a team that dropped
        to a fifth of its activity shows it within days. The expectation is the team's own
        daily baseline times each day's weekday weight and population factor (so a weekend, a
        holiday or a tracking outage is expected to be quiet). Only a deep, significant drop
        counts, so a seasonal dip to half is left to the weekly windows.
        """
        s = self.settings
        days = s.sharp_drop_days
        expected_days = self.population.expected_days(day - days + 1, day)
        exp_active = team.base_active * expected_days
        exp_events = team.base_events * expected_days
        if exp_active <= 0.0 or exp_events <= 0.0:
            return
        n_active = min(1.5, win[ACTIVE_USERS] / exp_active)
        n_events = min(1.5, win[EVENTS] / exp_events)
        norm = 0.6 * n_active + 0.4 * n_events
        p_value = low_activity_p_value(win[ACTIVE_USERS], exp_active)
        strength = sharp_drop_strength(norm, p_value, s.sharp_drop_alpha)
        if self.population.window_factor(day, days) < s.tracking_gap_ratio:
            strength = min(strength, LOW_POPULATION_STRENGTH)
        if strength <= 0.0:
            return
        out.append(
            Signal(
                "team_decay",
                strength,
                (
                    Reason(
                        "sharp_drop",
                        f"{win[ACTIVE_USERS]:.0f} active user-days in the last {days} days "
                        f"vs {exp_active:.1f} usual for these weekdays",
                        win[ACTIVE_USERS],
                        exp_active,
                    ),
                ),
            )
        )

    def _silence_threshold(self, team: TeamState) -> float:
        floor = 7.0 if team.base_active >= 1.5 else 14.0
        return max(floor, 4.0 * team.gap)

    def _team_silence(self, team: TeamState, silent_days: float, out: list[Signal]) -> None:
        threshold = self._silence_threshold(team)
        strength = silence_strength(silent_days, threshold)
        if strength > 0.0:
            out.append(
                Signal(
                    "silence",
                    strength,
                    (
                        Reason(
                            "team_silent",
                            f"no activity for {silent_days:.0f} days; usually every {team.gap:.1f} days",
                            silent_days,
                            team.gap,
                        ),
                    ),
                )
            )

    def _key_action(
        self,
        team: TeamState,
        wins: dict[int, list[float]],
        pop_w: float,
        norm: float,
        out: list[Signal],
    ) -> None:
        """Logins go on but the key action (the product's value) stopped, for two weeks.

        Not while the champion is away: the most active user is usually the one who does
        the key action, so its stop is the same evidence as champion_loss, not more.
        """
        w = 2 * self.settings.recent_window_days
        if team.base_key < 3.0 / self.settings.recent_window_days or norm < 0.7:
            return
        if any(sig.name == "champion_loss" for sig in out):
            return
        win = wins[w]
        if win[ACTIVE_USERS] < 0.7 * w * team.base_active * pop_w:
            return  # activity fell too: that is decay, not a stopped key action
        expected = w * team.base_key * pop_w
        ratio = win[KEY_ACTIONS] / expected
        if (
            ratio < 0.3
            and low_activity_p_value(win[KEY_ACTIONS], expected) <= self.settings.decay_alpha
        ):
            out.append(
                Signal(
                    "key_action_stopped",
                    KEY_ACTION_STRENGTH,
                    (
                        Reason(
                            "key_action_drop",
                            f"{win[KEY_ACTIONS]:.0f} key actions in {w} days vs {team.base_key * w:.1f} usual, "
                            "while logins go on",
                            win[KEY_ACTIONS] / w,
                            team.base_key,
                        ),
                    ),
                )
            )

    def _champion(self, team: TeamState, day: int, week: list[float], out: list[Signal]) -> None:
        """The team's most active user is away; at risk when the rest of the team follows.

        A champion's vacation leaves the others as active as usual; when the champion has
        left, the rest slows down too. The week's active user-days are the rest's (the
        champion was away all week), against the team's usual without the champion.
        """
        if team.champion is None or team.users_regular < 3:
            return
        champ = self.users.get(team.champion)
        if champ is None or champ.last_day >= day:
            team.champion_left_first = False
            return
        silent = self.population.effective_days(champ.last_day + 1, day)
        threshold = max(7.0, 3.0 * champ.gap)
        if silent < threshold:
            return
        reasons = [
            Reason(
                "champion_inactive",
                f"the team's most active user has been away {silent:.0f} days "
                f"(usually every {champ.gap:.1f} days)",
                silent,
                champ.gap,
            )
        ]
        w = self.settings.recent_window_days
        pop_w = max(0.05, self.population.window_factor(day, w))
        rest_usual = max(0.0, team.base_active - team.champion_rate) * w * pop_w
        rest = week[ACTIVE_USERS] / rest_usual if rest_usual > 0.0 else 1.0
        following = (
            rest < 0.7
            and low_activity_p_value(week[ACTIVE_USERS], rest_usual) <= self.settings.decay_alpha
        )
        long_gone = silent >= 2.0 * threshold  # longer than most vacations
        if rest >= CARRIES_ON:
            team.champion_left_first = True
        strength = 0.45
        if following or (long_gone and rest < 0.85):
            strength = 0.7 if following and long_gone else 0.6
            reasons.append(
                Reason(
                    "rest_of_team_drop",
                    f"the others were active {week[ACTIVE_USERS] / w:.1f} user-days a day "
                    f"vs {rest_usual / w:.1f} usual",
                    week[ACTIVE_USERS] / w,
                    rest_usual / w,
                )
            )
        elif long_gone:
            # gone for longer than a vacation and the team carries on: it has moved on, and
            # the next most active user becomes the champion
            team.champion, team.champion_rate = None, 0.0
            team.champion_left_first = False
            return
        if team.users_regular > 20:
            strength = min(strength, 0.3)
        out.append(Signal("champion_loss", strength, tuple(reasons)))

    def _user_decay(self, team: TeamState, out: list[Signal]) -> None:
        decaying, regular = team.users_at_risk, max(1, team.users_regular)
        share = decaying / regular
        if decaying < 2 or share < 0.3:
            return
        out.append(
            Signal(
                "user_decay",
                0.6 if share >= 0.5 and decaying >= 3 else 0.45,
                (
                    Reason(
                        "users_decaying",
                        f"{decaying} of {regular} regular users are decaying",
                        float(decaying),
                        float(regular),
                    ),
                ),
            )
        )

    def _usual_days(self, first_day: int, last_day: int) -> float:
        """Days from first_day to last_day, a population-wide low (holiday, outage) counted
        as the share of a usual day it was: a trial that started just before a holiday has
        not had its first days yet. Ordinary days count whole (their factors only wobble)."""
        low, factor_of = self.settings.tracking_gap_ratio, self.population.day_factor
        return sum(
            min(1.0, f) if (f := factor_of(d)) < low else 1.0
            for d in range(first_day, last_day + 1)
        )

    def _onboarding(self, team: TeamState, day: int, out: list[Signal]) -> None:
        s = self.settings
        reasons: list[Reason] = []
        keep = 1.0
        if team.active_days < 2:
            keep *= 0.5
            reasons.append(
                Reason(
                    "few_active_days",
                    f"{team.active_days} active day(s) since sign-up",
                    float(team.active_days),
                    2.0,
                )
            )
        # the earliest key action by event time, so arrival order cannot matter: every event
        # of a day before the one scored is in
        if team.key_total == 0 and self.key_action_since < day:
            keep *= 0.6
            reasons.append(Reason("no_key_action", "the key action was never reached", 0.0, 1.0))
        if 0.0 <= team.first_session_s < s.short_first_session_s:
            keep *= 0.75
            reasons.append(
                Reason(
                    "short_first_session",
                    f"first session lasted {team.first_session_s:.0f} s",
                    team.first_session_s,
                    s.short_first_session_s,
                )
            )
        if reasons:
            out.append(Signal("onboarding", round(1.0 - keep, 6), tuple(reasons)))

    def _struggle(self, team: TeamState, wins: dict[int, list[float]], out: list[Signal]) -> None:
        win = wins[_STRUGGLE_DAYS]
        tasks, failures = win[TASKS], win[TASK_FAILURES]
        if tasks + failures < 3:
            return
        slow = tasks >= 3 and win[TASK_RATIO] / tasks >= 2.0
        failing = failures >= 3 and failures >= 0.5 * tasks
        if not (slow or failing):
            return
        reasons = []
        if slow:
            ratio = win[TASK_RATIO] / tasks
            reasons.append(
                Reason("slow_tasks", f"tasks take {ratio:.1f}x the usual time", ratio, 1.0)
            )
        if failing:
            reasons.append(
                Reason(
                    "repeated_failures",
                    f"{failures:.0f} failed tasks in {_STRUGGLE_DAYS} days",
                    failures,
                    None,
                )
            )
        out.append(Signal("struggle", 0.6 if slow and failing else 0.45, tuple(reasons)))

    def _learn_team(
        self,
        team: TeamState,
        today: list[float],
        win: list[float],
        pop_d: float,
        norm: float,
        mature: bool,
    ) -> None:
        if pop_d < 0.7 or team.health in (hs.COOLING, hs.AT_RISK, hs.CHURNED):
            return
        alpha = max(self.settings.baseline_alpha, 1.0 / (team.base_days + 1))
        if mature and norm < 0.85:
            alpha *= 0.25
        team.base_active += alpha * (today[ACTIVE_USERS] - team.base_active)
        team.base_events += alpha * (today[EVENTS] - team.base_events)
        team.base_key += alpha * (today[KEY_ACTIONS] - team.base_key)
        if team.base_days >= self.settings.recent_window_days - 1:
            team.base_breadth += alpha * (win[FEATURES] - team.base_breadth)
        team.base_days += 1

    # ------------------------------------------------------------------ users
    def _check_users(self, day: int) -> None:
        due = self.wheel.pop(day, None)
        if not due:
            return
        # Sorted: the order must not depend on how the state was built (a restore from the
        # table yields another insertion order), or champion choice could differ.
        for uid in sorted(due):
            user = self.users.get(uid)
            if user is not None and user.check_day == day:
                team = self.teams[user.team_id]
                self._settle_user(team, user, team.last_scored_day)
                self._check_user(uid, user, day)

    def _check_user(self, uid: str, user: UserState, day: int) -> None:
        s = self.settings
        team = self.teams[user.team_id]
        if self.dirty_users is not None and self.dirty_teams is not None:
            self.dirty_users.add(uid)
            self.dirty_teams.add(user.team_id)
        if team.health == hs.CHURNED and not team.reactivated:
            user.check_day = -1
            return
        fold_user(user, day)
        age = day - user.first_day + 1
        mature = age >= s.min_history_days and user.active_days >= _REGULAR_USER_DAYS
        silent = (
            self.population.effective_days(user.last_day + 1, day) if user.last_day < day else 0.0
        )
        threshold = max(float(s.user_min_silence_days), 4.0 * user.gap)
        signals: list[Signal] = []
        slow = user.slow / (1.0 - (1.0 - SLOW_ALPHA) ** age)
        if mature:
            strength = silence_strength(silent, threshold)
            if strength > 0.0:
                signals.append(
                    Signal(
                        "silence",
                        strength,
                        (
                            Reason(
                                "user_silent",
                                f"no activity for {silent:.0f} days; usually every {user.gap:.1f} days",
                                silent,
                                user.gap,
                            ),
                        ),
                    )
                )
            fast = user.fast / (1.0 - (1.0 - FAST_ALPHA) ** age)
            if slow >= 2.0 / 7.0 and fast < 0.4 * slow:
                signals.append(
                    Signal(
                        "user_decay",
                        0.6 if fast < 0.2 * slow else 0.45,
                        (
                            Reason(
                                "user_activity_drop",
                                f"active {fast * 7:.1f} days a week vs {slow * 7:.1f} usual",
                                fast * 7,
                                slow * 7,
                            ),
                        ),
                    )
                )
        risk = combine(signals)
        if signals:
            self.user_scores[uid] = LatestScore(day, risk, signals)
        elif self.user_scores:
            self.user_scores.pop(uid, None)
        before = user.health
        step = hs.step(
            user.health,
            user.hot_days,
            user.calm_days,
            user.cooldown_until,
            day=day,
            risk=risk,
            mature=mature,
            churned=mature and silent >= s.churn_silence_days,
            active=user.last_day == day,
            th=self.th,
        )
        user.health, user.hot_days, user.calm_days = step.state, step.hot_days, step.calm_days
        user.cooldown_until = step.cooldown_until
        was_bad = before in _BAD_USER_STATES
        is_bad = step.state in _BAD_USER_STATES
        if is_bad != was_bad:
            team.users_at_risk += 1 if is_bad else -1
        if step.alert is not None:
            if step.alert == hs.RECOVERED:
                signal = "recovery"
                reasons = [Reason("activity_recovered", "the user is active again", None, None)]
            elif step.alert == hs.STATE_NAMES[hs.CHURNED]:
                signal = "silence"
                reasons = [
                    Reason("user_silent", f"no activity for {silent:.0f} days", silent, user.gap)
                ]
            else:
                signal, reasons = explain(signals)
            self._emit(
                "user",
                uid.partition(OTHER_TEAM)[0],
                team,
                step.alert,
                before,
                signal,
                risk,
                reasons,
                day,
                (day + 1) * DAY_MS,
                key=uid,
            )
        # a champion who is away keeps the title (and the usual rate others must beat), or
        # their absence would hand it to someone else within days; a user away cannot take
        # it (one gone for longer than a vacation, dismissed, would be chosen again)
        if mature and (
            (
                team.champion != uid
                and slow > team.champion_rate
                and silent < max(7.0, 3.0 * user.gap)
            )
            or (team.champion == uid and (user.last_day == day or slow > team.champion_rate))
        ):
            if team.champion != uid:
                team.champion_left_first = False
            team.champion, team.champion_rate = uid, slow
        if step.state == hs.CHURNED:
            if user.last_day >= day - 1:  # back: judged daily until it has recovered
                self._schedule(uid, user, day + 1)
            else:
                user.check_day = -1
            return
        if step.state in (hs.COOLING, hs.AT_RISK) or signals:
            self._schedule(uid, user, day + 1)
        else:
            due = user.last_day + math.ceil(0.6 * threshold)
            self._schedule(uid, user, max(day + 1, due))

    # ------------------------------------------------------------------ output
    def _emit(
        self,
        entity_type: str,
        entity_id: str,
        team: TeamState,
        state: str,
        before: int,
        signal: str,
        risk: float,
        reasons: list[Reason],
        day: int,
        event_time_ms: int,
        key: str | None = None,
    ) -> None:
        """Queue an alert; ``key``: the entity's key in the state when it is not its id (a
        user in a second team), which keeps the alert ids of the two apart."""
        alert = build_alert(
            entity_type=entity_type,
            entity_id=entity_id,
            key=key,
            team_id=team.team_id,
            state=state,
            previous_state=hs.STATE_NAMES[before],
            signal=signal,
            risk=risk,
            reasons=reasons,
            day=day,
            event_time_ms=event_time_ms,
            window_days=self.settings.recent_window_days,
            plan=team.plan,
            mrr=team.mrr,
        )
        counted = (signal, alert["data"]["severity"], entity_type)
        self.stats.alerts[counted] = self.stats.alerts.get(counted, 0) + 1
        self.outbox.append(alert)

    def drain_alerts(self) -> list[dict[str, Any]]:
        out, self.outbox = self.outbox, []
        return out

    # ------------------------------------------------------------------ queries
    def health_counts(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for kind, entities in (("team", self.teams.values()), ("user", self.users.values())):
            for entity in entities:
                key = (kind, hs.STATE_NAMES[entity.health])
                counts[key] = counts.get(key, 0) + 1
        return counts


def risk_features(signals: list[Signal], norm: float, mature: bool) -> dict[str, float]:
    """The risk model's features: the hand rules' combined risk, each signal's strength and
    the activity deficit against the own baseline.

    >>> risk_features([Signal("silence", 0.45, ())], 0.6, True)
    {'hand_risk': 0.45, 'activity_deficit': 0.4, 'silence': 0.45}
    """
    features = {
        "hand_risk": round(combine(signals), 6),
        "activity_deficit": round(max(0.0, 1.0 - norm), 6) if mature else 0.0,
    }
    for sig in signals:
        if sig.strength > features.get(sig.name, 0.0):
            features[sig.name] = sig.strength
    return features


def _task_entry(tasks: list[list[Any]], day: int, task: str) -> tuple[int, bool]:
    """Where (day, task) is or goes in entries kept in (day, task) order, and whether it is.

    >>> _task_entry([[1, "a", 1, 5], [2, "a", 1, 5]], 1, "b"), _task_entry([[1, "a", 1, 5]], 1, "a")
    ((1, False), (0, True))
    """
    at = bisect.bisect_left(tasks, (day, task), key=lambda entry: (entry[0], entry[1]))
    return at, at < len(tasks) and tasks[at][0] == day and tasks[at][1] == task


def _newest_day(user: UserState) -> int:
    """The user's newest active day, an open one (not taken in yet) included.

    >>> u = UserState("t", 10); u.last_day, u.settled_day, u.open_days = 12, 14, 0b100
    >>> _newest_day(u), (_newest_day(UserState("t", 10)))
    (17, 9)
    """
    return user.settled_day + user.open_days.bit_length() if user.open_days else user.last_day


def _team_counts(user: UserState) -> tuple[int, int]:
    """What ``user`` adds to its team's (users_regular, users_at_risk)."""
    return int(user.active_days >= _REGULAR_USER_DAYS), int(user.health in _BAD_USER_STATES)


__all__ = ["EngineStats", "LatestScore", "PartitionEngine", "risk_features"]
