"""Event-time helpers: local days per team time zone, and the partition watermark.

All times are epoch milliseconds. A "day" is an integer day number in the team's local
calendar: ``(ts_ms + utc_offset_ms) // DAY_MS``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


def iso_ms(ts_ms: int) -> str:
    """RFC 3339 UTC text with milliseconds.

    >>> iso_ms(1772356502123)
    '2026-03-01T09:15:02.123Z'
    """
    seconds, ms = divmod(ts_ms, 1000)
    return f"{datetime.fromtimestamp(seconds, UTC).isoformat()[:19]}.{ms:03d}Z"


@lru_cache(maxsize=1024)
def _zone(tz: str) -> ZoneInfo:
    # ZoneInfo keeps only a few zones alive by itself; past those it reads the file again
    return ZoneInfo(tz)


@lru_cache(maxsize=4096)
def _offset_at_hour(tz: str, hour: int) -> int:
    offset = datetime.fromtimestamp(hour * 3600, _zone(tz)).utcoffset()
    return int(offset.total_seconds() * 1000) if offset is not None else 0


def utc_offset_ms(tz: str, at_ms: int) -> int:
    """UTC offset of ``tz`` at an instant, in ms (cached per hour).

    >>> utc_offset_ms("Europe/Berlin", 1772356502123) // HOUR_MS
    1
    >>> utc_offset_ms("UTC", 0)
    0
    """
    return _offset_at_hour(tz, at_ms // HOUR_MS)


def local_day(ts_ms: int, offset_ms: int) -> int:
    """Local day number of an instant.

    >>> local_day(DAY_MS - 1, 0), local_day(DAY_MS - 1, HOUR_MS)
    (0, 1)
    """
    return (ts_ms + offset_ms) // DAY_MS


def day_end_ms(day: int, offset_ms: int) -> int:
    """UTC instant at which local ``day`` ends.

    >>> day_end_ms(0, HOUR_MS) == DAY_MS - HOUR_MS
    True
    """
    return (day + 1) * DAY_MS - offset_ms


#: jump candidates further apart than this are not one stream coming back
_CLUSTER_MS = 2 * DAY_MS


class Watermark:
    """Per-partition event-time watermark: newest event time seen minus allowed lateness.

    A timestamp more than ``max_future_ms`` ahead of the newest time is a jump: a device
    with a broken clock, or a real gap in the stream. It is rejected and does not move the
    watermark until it is confirmed: ``confirmations`` distinct teams (at most as many as
    ``active_teams`` says were active over the last ``max_future_ms``; one, when one team is
    all there is) send times beyond the horizon, spread over at least ``confirm_span_ms`` of
    event time, with no event in between inside the horizon; or, however few teams, a day of
    such times with none inside the horizon. Candidates more than two days apart start over
    (a stream comes back at one time). Broken clocks do not pass:
    the stream's own events keep coming, which clears the candidates, and a batch of lines
    with one wrong stamp (a clock reset to a fixed date) spans no time. In live mode the
    service also sets ``limit_ms`` (wall clock plus a small skew): nothing from the future
    passes.

    >>> wm = Watermark(lateness_ms=HOUR_MS, max_future_ms=7 * DAY_MS, confirmations=3)
    >>> wm.observe(10 * DAY_MS, "a"), wm.value == 10 * DAY_MS - HOUR_MS
    (None, True)
    >>> wm.observe(10 * DAY_MS - 2 * HOUR_MS, "b")
    'late'
    >>> wm.observe(900 * DAY_MS, "broken"), wm.observe(10 * DAY_MS + 1, "a")
    ('future_timestamp', None)
    >>> [wm.observe(30 * DAY_MS + h * HOUR_MS, t) for h, t in ((0, "b"), (1, "c"), (2, "b"))]
    ['future_timestamp', 'future_timestamp', 'future_timestamp']
    >>> wm.observe(30 * DAY_MS + 3 * HOUR_MS, "d"), wm.max_seen == 30 * DAY_MS
    (None, True)
    >>> wm.limit_ms = 31 * DAY_MS
    >>> wm.observe(32 * DAY_MS, "d")
    'future_timestamp'
    """

    __slots__ = (
        "active_teams",
        "confirm_span_ms",
        "confirmations",
        "lateness_ms",
        "limit_ms",
        "max_future_ms",
        "max_seen",
        "newest_candidate",
        "pending",
    )

    def __init__(
        self,
        lateness_ms: int,
        max_future_ms: int,
        confirmations: int,
        confirm_span_ms: int = HOUR_MS,
        active_teams: Callable[[int], int] | None = None,
    ) -> None:
        self.lateness_ms = lateness_ms
        self.max_future_ms = max_future_ms
        self.confirmations = confirmations
        self.confirm_span_ms = confirm_span_ms
        #: teams with an event since the given time (ms); None: assume enough to confirm
        self.active_teams = active_teams
        self.max_seen: int | None = None
        #: jump candidates: team -> its earliest time beyond the horizon
        self.pending: dict[str, int] = {}
        self.newest_candidate = 0
        self.limit_ms: int | None = None

    @property
    def value(self) -> int | None:
        return None if self.max_seen is None else self.max_seen - self.lateness_ms

    def observe(self, ts_ms: int, team_id: str) -> str | None:
        """Account for one event time; returns a DLQ reason if the event is unusable."""
        if self.limit_ms is not None and ts_ms > self.limit_ms:
            return "future_timestamp"
        max_seen = self.max_seen
        if max_seen is None:
            self.max_seen = ts_ms
            return None
        if ts_ms <= max_seen:
            return "late" if ts_ms < max_seen - self.lateness_ms else None
        if ts_ms > max_seen + self.max_future_ms:
            return self._jump(ts_ms, team_id, max_seen)
        if self.pending:  # the stream goes on inside the horizon: the candidates were strays
            self.pending.clear()
        self.max_seen = ts_ms
        return None

    def _jump(self, ts_ms: int, team_id: str, max_seen: int) -> str | None:
        pending = self.pending
        if pending and not -_CLUSTER_MS <= ts_ms - min(pending.values()) <= _CLUSTER_MS:
            pending.clear()  # a stream coming back comes back at one time; broken clocks scatter
        if not pending:
            self.newest_candidate = ts_ms
        if team_id not in pending or ts_ms < pending[team_id]:
            pending[team_id] = ts_ms
        self.newest_candidate = max(self.newest_candidate, ts_ms)
        earliest = min(pending.values())
        needed = self.confirmations
        if len(pending) < needed and self.active_teams is not None:
            needed = max(1, min(needed, self.active_teams(max_seen - self.max_future_ms)))
        span = self.newest_candidate - earliest
        # a day of events beyond the horizon and none inside it: the stream moved on, however
        # few of the teams came back (or the watermark would wait for them for ever)
        if span < self.confirm_span_ms or (len(pending) < needed and span < DAY_MS):
            return "future_timestamp"
        pending.clear()
        # from the earliest: the candidates' own later events are not late
        self.max_seen = earliest
        return None

    def advance_by(self, elapsed_ms: int) -> None:
        """Live mode: move forward by idle time that really elapsed (never to 'now')."""
        if self.max_seen is not None and elapsed_ms > 0:
            self.max_seen += elapsed_ms
