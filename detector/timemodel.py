"""Event-time helpers: local days per team time zone, and the partition watermark.

All times are epoch milliseconds. A "day" is an integer day number in the team's local
calendar: ``(ts_ms + utc_offset_ms) // DAY_MS``.
"""

from __future__ import annotations

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
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@lru_cache(maxsize=4096)
def _offset_at_hour(tz: str, hour: int) -> int:
    offset = datetime.fromtimestamp(hour * 3600, ZoneInfo(tz)).utcoffset()
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


class Watermark:
    """Per-partition event-time watermark: newest plausible event time minus lateness.

    "Plausible" is the newest time reached by at least two different teams, so one device
    with a broken clock cannot drag the partition's time forward (and make everybody else
    late). A timestamp beyond ``max_future_ms`` ahead is rejected; only when
    ``confirmations`` distinct teams send times beyond that horizon is the jump accepted
    (a real gap in the stream).

    >>> wm = Watermark(lateness_ms=HOUR_MS, max_future_ms=7 * DAY_MS, confirmations=3)
    >>> wm.observe(10 * DAY_MS, "a"), wm.observe(10 * DAY_MS, "b"), wm.value == 10 * DAY_MS - HOUR_MS
    (None, None, True)
    >>> wm.observe(10 * DAY_MS - 2 * HOUR_MS, "a")
    'late'
    >>> wm.observe(12 * DAY_MS, "skewed"), wm.value == 10 * DAY_MS - HOUR_MS
    (None, True)
    >>> wm.observe(900 * DAY_MS, "broken")
    'future_timestamp'
    >>> wm.observe(30 * DAY_MS, "b"), wm.observe(30 * DAY_MS, "c")
    ('future_timestamp', None)
    """

    __slots__ = (
        "confirmations",
        "lateness_ms",
        "max_future_ms",
        "max_seen",
        "pending",
        "single",
        "top_team",
        "top_ts",
    )

    def __init__(self, lateness_ms: int, max_future_ms: int, confirmations: int) -> None:
        self.lateness_ms = lateness_ms
        self.max_future_ms = max_future_ms
        self.confirmations = confirmations
        #: newest time confirmed by two teams (or by the only team seen so far)
        self.max_seen: int | None = None
        #: the single newest (team, time), not yet confirmed by another team
        self.top_team: str | None = None
        self.top_ts = 0
        self.pending: dict[str, int] = {}
        self.single = True

    @property
    def value(self) -> int | None:
        return None if self.max_seen is None else self.max_seen - self.lateness_ms

    def observe(self, ts_ms: int, team_id: str) -> str | None:
        """Account for one event time; returns a DLQ reason if the event is unusable."""
        max_seen = self.max_seen
        if max_seen is None:
            self.max_seen, self.top_team, self.top_ts = ts_ms, team_id, ts_ms
            return None
        if ts_ms <= max_seen:
            return "late" if ts_ms < max_seen - self.lateness_ms else None
        if ts_ms > max_seen + self.max_future_ms:
            pending = self.pending
            if team_id not in pending or ts_ms < pending[team_id]:
                pending[team_id] = ts_ms
            if len(pending) < self.confirmations:
                return "future_timestamp"
            self.max_seen = min(pending.values())
            self.top_team, self.top_ts = None, self.max_seen
            self.single = False
            pending.clear()
            return None
        top_ts = self.top_ts
        if team_id == self.top_team:
            if ts_ms > top_ts:
                self.top_ts = ts_ms
                if self.single:
                    self.max_seen = ts_ms
            return None
        self.single = False
        if ts_ms > top_ts:
            # the former newest team is now confirmed up to its time by this later one
            self.max_seen = top_ts if top_ts > max_seen else max_seen
            self.top_team, self.top_ts = team_id, ts_ms
        else:
            self.max_seen = ts_ms
        return None

    def advance_by(self, elapsed_ms: int) -> None:
        """Live mode: move forward by idle time that really elapsed (never to 'now')."""
        if self.max_seen is not None and elapsed_ms > 0:
            self.max_seen += elapsed_ms
            if self.top_ts < self.max_seen:
                self.top_ts = self.max_seen
