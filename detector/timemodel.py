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


class Watermark:
    """Per-partition event-time watermark: newest event time seen minus allowed lateness.

    A timestamp more than ``max_future_ms`` ahead of the newest time (a device with a broken
    clock) is rejected and does not move the watermark; only when ``confirmations``
    distinct teams send times beyond that horizon is the jump accepted (a real gap in the
    stream). In live mode the service also sets ``limit_ms`` (wall clock plus a small skew):
    nothing from the future passes.

    >>> wm = Watermark(lateness_ms=HOUR_MS, max_future_ms=7 * DAY_MS, confirmations=3)
    >>> wm.observe(10 * DAY_MS, "a"), wm.value == 10 * DAY_MS - HOUR_MS
    (None, True)
    >>> wm.observe(10 * DAY_MS - 2 * HOUR_MS, "b")
    'late'
    >>> wm.observe(900 * DAY_MS, "broken")
    'future_timestamp'
    >>> wm.observe(30 * DAY_MS, "b"), wm.observe(30 * DAY_MS, "c")
    ('future_timestamp', None)
    >>> wm.limit_ms = 31 * DAY_MS
    >>> wm.observe(32 * DAY_MS, "d")
    'future_timestamp'
    """

    __slots__ = ("confirmations", "lateness_ms", "limit_ms", "max_future_ms", "max_seen", "pending")

    def __init__(self, lateness_ms: int, max_future_ms: int, confirmations: int) -> None:
        self.lateness_ms = lateness_ms
        self.max_future_ms = max_future_ms
        self.confirmations = confirmations
        self.max_seen: int | None = None
        self.pending: dict[str, int] = {}
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
            pending = self.pending
            if team_id not in pending or ts_ms < pending[team_id]:
                pending[team_id] = ts_ms
            if len(pending) < self.confirmations:
                return "future_timestamp"
            ts_ms = min(pending.values())
            pending.clear()
        self.max_seen = ts_ms
        return None

    def advance_by(self, elapsed_ms: int) -> None:
        """Live mode: move forward by idle time that really elapsed (never to 'now')."""
        if self.max_seen is not None and elapsed_ms > 0:
            self.max_seen += elapsed_ms
