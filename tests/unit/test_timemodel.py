from __future__ import annotations

import random
from datetime import UTC, datetime

from detector.timemodel import DAY_MS, HOUR_MS, Watermark, iso_ms, utc_offset_ms


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


# ---------------------------------------------------------------------------- watermark
T0 = 20_000 * DAY_MS


def _partition(teams: list[str], days: int) -> tuple[Watermark, list[str | None]]:
    """A watermark fed hourly events of ``teams`` for ``days`` days."""
    wm = Watermark(2 * HOUR_MS, 7 * DAY_MS, 3, active_teams=lambda since: len(teams))
    out = [wm.observe(T0 + h * HOUR_MS, teams[h % len(teams)]) for h in range(days * 24)]
    return wm, out


def test_broken_clocks_scattered_over_months_never_move_the_watermark():
    wm, _ = _partition(["a", "b", "c"], 10)
    far = T0 + 25_000 * DAY_MS  # a clock in the next century
    for day, team in ((10, "x"), (40, "y"), (70, "z")):
        for h in range(24 * 30):  # the stream goes on between the strays
            assert wm.observe(T0 + (day * 24 + h) * HOUR_MS, "abc"[h % 3]) is None
        assert wm.observe(far + day * DAY_MS, team) == "future_timestamp"
    assert wm.max_seen is not None and wm.max_seen < T0 + 101 * DAY_MS


def test_teams_sending_one_wrong_stamp_together_do_not_confirm_a_jump():
    """Clocks reset to a fixed date (2036-02-07, the NTP era's end) send the same instant."""
    wm, _ = _partition(["a", "b", "c"], 10)
    reset = 2_085_978_496_000
    assert [wm.observe(reset, team) for team in "abcd"] == ["future_timestamp"] * 4
    assert wm.max_seen == T0 + (10 * 24 - 1) * HOUR_MS


def test_a_real_gap_in_the_stream_is_followed_after_an_hour_of_confirmations():
    wm, _ = _partition(["a", "b", "c"], 10)
    back = T0 + 30 * DAY_MS  # the whole partition was silent for 20 days
    out = [wm.observe(back + m * 10 * 60_000, "abc"[m % 3]) for m in range(12)]
    assert out[:6] == ["future_timestamp"] * 6 and set(out[6:]) == {None}
    assert wm.max_seen is not None and back <= wm.max_seen <= back + 2 * HOUR_MS


def test_the_only_active_team_back_from_a_long_absence_confirms_its_own_return():
    wm = Watermark(2 * HOUR_MS, 7 * DAY_MS, 3, active_teams=lambda since: 0)
    assert wm.observe(T0, "a") is None
    back = T0 + 21 * DAY_MS
    out = [wm.observe(back + m * 20 * 60_000, "a") for m in range(6)]
    assert out[:3] == ["future_timestamp"] * 3 and set(out[3:]) == {None}


def test_a_jump_that_fewer_teams_confirm_than_were_active_is_followed_after_a_day():
    """Twelve teams active, a gap, two come back: waiting for a third would reject all
    their events for ever."""
    wm, _ = _partition([f"t{i}" for i in range(12)], 10)
    wm.active_teams = lambda since: 12
    back = T0 + 200 * DAY_MS
    out = [wm.observe(back + m * HOUR_MS, "ab"[m % 2]) for m in range(30)]
    assert set(out[:24]) == {"future_timestamp"} and set(out[25:]) == {None}


def test_the_jump_candidates_survive_a_restore():
    """What a restored engine decides must be what one that never stopped decides."""
    from detector.codec import encode_partition, restore_partition
    from detector.engine import PartitionEngine
    from detector.events import Event
    from detector.settings import EngineSettings

    def event(team: str, ts: int) -> Event:
        return Event(f"{team}{ts}", "feature.used", ts, f"u-{team}", team, {})

    settings = EngineSettings(max_future_skew_s=7 * 24 * 3600)
    whole = PartitionEngine(settings, clock=lambda: 0.0)
    for team in "abcd":
        assert whole.process(event(team, T0)) is None
    jump = T0 + 30 * DAY_MS  # a, then b twice: the candidates span 70 minutes
    for team, minutes in (("a", 0), ("b", 10), ("b", 70)):
        rejected = whole.process(event(team, jump + minutes * 60_000))
        assert rejected is not None and rejected.reason == "future_timestamp"
    restored = PartitionEngine(settings, clock=lambda: 0.0)
    restore_partition(restored, encode_partition(whole, source_offset=0), {}, {})
    for engine in (whole, restored):  # a third team confirms the jump
        assert engine.process(event("c", jump + 20 * 60_000)) is None
