from __future__ import annotations

import random
from datetime import UTC, datetime

from detector.timemodel import DAY_MS, HOUR_MS, iso_ms, utc_offset_ms


def test_iso_ms_matches_the_strftime_rendering_it_replaced():
    """Alerts carry these strings: the faster rendering must give the same bytes."""
    rng = random.Random(2)
    samples = [946_684_800_000, 4_102_444_799_999, 1_772_356_502_999, 1_772_356_502_001]
    samples += [rng.randrange(946_684_800_000, 4_102_444_800_000) for _ in range(20_000)]
    for ts in samples:
        reference = datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
        assert iso_ms(ts) == reference[:-3] + "Z", ts


def test_utc_offset_follows_daylight_saving_across_many_zones():
    zones = ["Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Kolkata", "UTC"]
    zones += ["Europe/London", "America/Los_Angeles", "Asia/Tokyo", "Pacific/Auckland"]
    winter, summer = 20_454 * DAY_MS, (20_454 + 182) * DAY_MS  # 2026-01-01, 2026-07-02
    offsets = {tz: (utc_offset_ms(tz, winter), utc_offset_ms(tz, summer)) for tz in zones}
    assert offsets["Europe/Berlin"] == (HOUR_MS, 2 * HOUR_MS)
    assert offsets["Australia/Sydney"] == (11 * HOUR_MS, 10 * HOUR_MS)
    assert offsets["Asia/Kolkata"] == (5 * HOUR_MS + HOUR_MS // 2,) * 2
    assert offsets["UTC"] == (0, 0)
