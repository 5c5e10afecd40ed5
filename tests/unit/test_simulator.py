"""Tests of the product simulator (detector.simulator): determinism, format, realism."""

from __future__ import annotations

import collections
import datetime as dt
import inspect
import re
import statistics
from zoneinfo import ZoneInfo

import orjson
import pytest

from detector.simulator import (
    CHURN_SCENARIOS,
    EVENT_TYPES,
    FEATURES,
    LIFECYCLE_TYPES,
    SCENARIOS,
    TASKS,
    SimulationConfig,
    format_ts,
    simulate,
    to_segment,
    write_jsonl,
)

SMALL = SimulationConfig(teams=40, days=120, seed=3)
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UTC = dt.UTC


def ms(ts: str) -> int:
    return int(dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


@pytest.fixture(scope="module")
def sim():
    return simulate(SMALL)


@pytest.fixture(scope="module")
def events(sim):
    return list(sim.events())


@pytest.fixture(scope="module")
def truth(sim):
    return sim.truth()


@pytest.fixture(scope="module")
def team_truth(truth):
    return {r["entity_id"]: r for r in truth if r["entity_type"] == "team"}


@pytest.fixture(scope="module")
def timezones(events):
    return {
        e["team_id"]: e["properties"]["timezone"] for e in events if e["type"] == "team.updated"
    }


def local_date(ts: str, tz: str) -> dt.date:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(ZoneInfo(tz)).date()


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path):
    cfg = SimulationConfig(teams=12, days=50, seed=5)
    paths = [tmp_path / f"{i}.jsonl" for i in range(3)]
    n0 = write_jsonl(paths[0], simulate(cfg).events())
    n1 = write_jsonl(paths[1], simulate(cfg).events())
    write_jsonl(paths[2], simulate(SimulationConfig(teams=12, days=50, seed=6)).events())
    assert n0 == n1 > 1000
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()
    assert simulate(cfg).truth() == simulate(cfg).truth()


def test_events_is_a_replayable_stream():
    sim = simulate(SimulationConfig(teams=5, days=20, seed=1))
    stream = sim.events()
    assert inspect.isgenerator(stream)
    first = next(stream)
    assert first == next(sim.events())  # each call starts over, identically


# --------------------------------------------------------------------------- format


def test_event_shape_ids_and_order(events):
    assert len(events) > 50_000
    keys = {"event_id", "type", "timestamp", "user_id", "team_id", "properties"}
    last = ""
    ids = set()
    for e in events:
        assert set(e) == keys
        assert TS_RE.match(e["timestamp"]), e
        assert e["timestamp"] >= last
        last = e["timestamp"]
        ids.add(e["event_id"])
        assert re.match(r"^t-\d{5}$", e["team_id"])
        assert e["user_id"] is None or re.match(r"^u-\d{7}$", e["user_id"])
        if e["type"] not in LIFECYCLE_TYPES:
            assert e["user_id"] is not None
    assert len(ids) == len(events)


def test_every_type_appears_with_its_properties(events):
    by_type = collections.defaultdict(list)
    for e in events:
        by_type[e["type"]].append(e["properties"])
    assert set(by_type) == set(EVENT_TYPES)
    assert all(p == {} for p in by_type["session.started"])
    assert all(p["duration_s"] > 0 for p in by_type["session.ended"])
    assert {p["feature"] for p in by_type["feature.used"]} <= set(FEATURES)
    assert {p["task"] for p in by_type["task.completed"]} <= set(TASKS)
    assert all(p["duration_s"] > 0 for p in by_type["task.completed"])
    assert all(p["error"] for p in by_type["task.failed"])
    assert all(p == {"plan": "trial"} for p in by_type["trial.started"])
    assert all(set(p) == {"plan", "mrr", "seats"} for p in by_type["subscription.started"])
    assert all(p["reason"] for p in by_type["subscription.cancelled"])
    assert {p["reason"] for p in by_type["payment.failed"]} <= {
        "card_expired",
        "insufficient_funds",
        "card_declined",
    }
    assert all(p["amount"] > 0 for p in by_type["payment.succeeded"])
    for p in by_type["team.updated"]:
        assert set(p) == {"plan", "mrr", "seats", "timezone"}
        assert 1 <= p["seats"] <= 500
        ZoneInfo(p["timezone"])


def test_sessions_start_and_end(events):
    open_sessions = collections.Counter()
    for e in events:
        if e["type"] == "session.started":
            open_sessions[e["user_id"]] += 1
        elif e["type"] == "session.ended":
            open_sessions[e["user_id"]] -= 1
    # outage losses and cancellations leave a few sessions unbalanced, not more
    assert sum(abs(v) for v in open_sessions.values()) < 0.05 * sum(
        1 for e in events if e["type"] == "session.started"
    )


# --------------------------------------------------------------------------- truth & scenarios


def test_truth_has_one_record_per_entity(events, truth, team_truth):
    ids = [r["entity_id"] for r in truth]
    assert len(ids) == len(set(ids))
    assert set(team_truth) == {e["team_id"] for e in events}
    users = {r["entity_id"] for r in truth if r["entity_type"] == "user"}
    assert {e["user_id"] for e in events if e["user_id"]} <= users
    for r in truth:
        assert set(r) == {
            "entity_type",
            "entity_id",
            "team_id",
            "churned",
            "decay_start",
            "churned_at",
            "scenario",
        }
        if r["churned"]:
            assert TS_RE.match(r["churned_at"]) and TS_RE.match(r["decay_start"])
            assert r["decay_start"] <= r["churned_at"]
        else:
            assert r["churned_at"] is None


def test_all_scenarios_appear_in_a_small_config(team_truth):
    assert {r["scenario"] for r in team_truth.values()} == set(SCENARIOS)


def test_scenario_mix_is_mostly_healthy():
    sim = simulate(SimulationConfig(teams=1000, days=180))
    mix = collections.Counter(r["scenario"] for r in sim.truth() if r["entity_type"] == "team")
    healthy = sum(v for k, v in mix.items() if k.startswith("healthy_"))
    assert 0.6 <= healthy / 1000 <= 0.65
    assert all(mix[s] >= 30 for s in CHURN_SCENARIOS)


def test_cancellations_match_truth_and_nothing_follows(events, truth, team_truth):
    cancelled = {
        e["team_id"]: e["timestamp"] for e in events if e["type"] == "subscription.cancelled"
    }
    churned = {t: r["churned_at"] for t, r in team_truth.items() if r["churned"]}
    assert cancelled == churned
    assert churned
    user_end = {
        r["entity_id"]: r["churned_at"]
        for r in truth
        if r["entity_type"] == "user" and r["churned"]
    }
    for e in events:
        end = churned.get(e["team_id"])
        assert end is None or e["timestamp"] <= end, e
        u_end = user_end.get(e["user_id"])
        assert u_end is None or e["timestamp"] <= u_end, e
    for t, r in team_truth.items():
        if r["scenario"] in CHURN_SCENARIOS and not r["churned"]:
            assert t not in cancelled  # the planned churn falls after the window


def test_churn_mostly_in_second_half():
    sim = simulate(SimulationConfig(teams=600, days=180, seed=11))
    start = ms("2026-01-05T00:00:00.000Z")
    days = [
        (ms(r["churned_at"]) - start) / 86_400_000
        for r in sim.truth()
        if r["entity_type"] == "team" and r["churned"] and r["scenario"] != "trial_never_activates"
    ]
    assert len(days) > 100
    assert sum(d < 45 for d in days) <= 0.02 * len(days)
    assert statistics.median(days) > 90


def test_trials_never_activate(events, team_truth, timezones):
    trials = {t for t, r in team_truth.items() if r["scenario"] == "trial_never_activates"}
    assert trials
    active_days = collections.defaultdict(set)
    first_session = {}
    for e in events:
        t = e["team_id"]
        if t not in trials:
            continue
        assert e["type"] != "document.published"
        if e["type"] == "task.completed":
            assert e["properties"]["task"] != "publish_document"
        if e["type"] not in LIFECYCLE_TYPES:
            active_days[t].add(local_date(e["timestamp"], timezones[t]))
        if e["type"] == "session.ended":
            first_session.setdefault(t, e["properties"]["duration_s"])
    for t in trials:
        begin = local_date(team_truth[t]["decay_start"], timezones[t])
        first10 = [d for d in active_days[t] if (d - begin).days < 10]
        assert len(first10) < 2
        r = team_truth[t]
        if r["churned"]:  # the trial expires 14 days after it started
            assert ms(r["churned_at"]) - ms(r["decay_start"]) == 14 * 86_400_000


def test_trial_teams_that_convert_start_a_subscription(events):
    started = {e["team_id"] for e in events if e["type"] == "trial.started"}
    subscribed = {e["team_id"] for e in events if e["type"] == "subscription.started"}
    assert subscribed and subscribed <= started


def test_involuntary_churn_follows_failed_payments(events, team_truth):
    inv = {t for t, r in team_truth.items() if r["scenario"] == "involuntary" and r["churned"]}
    assert inv
    fails = collections.Counter(e["team_id"] for e in events if e["type"] == "payment.failed")
    reasons = {
        e["team_id"]: e["properties"]["reason"]
        for e in events
        if e["type"] == "subscription.cancelled"
    }
    for t in inv:
        assert fails[t] >= 2
        assert reasons[t] == "payment_failed"


def test_champion_goes_silent_first(events, truth):
    champs = [
        r
        for r in truth
        if r["entity_type"] == "user"
        and r["scenario"] == "champion_leaves"
        and r["churned"]
        and r["churned_at"] == r["decay_start"]
    ]
    assert champs
    last = {}
    for e in events:
        if e["user_id"]:
            last[e["user_id"]] = e["timestamp"]
    for r in champs:
        assert last[r["entity_id"]] < r["churned_at"]


def test_decaying_teams_lose_activity(events, team_truth):
    start = ms("2026-01-05T00:00:00.000Z")
    daily = collections.defaultdict(collections.Counter)
    for e in events:
        if e["type"] not in LIFECYCLE_TYPES:
            daily[e["team_id"]][(ms(e["timestamp"]) - start) // 86_400_000] += 1
    ratios = []
    for t, r in team_truth.items():
        if r["scenario"] in ("gradual_decay", "sudden_drop", "struggling") and r["churned"]:
            d0 = (ms(r["decay_start"]) - start) // 86_400_000
            d1 = (ms(r["churned_at"]) - start) // 86_400_000
            before = sum(daily[t][d] for d in range(d0 - 28, d0)) / 28
            last_two_weeks = sum(daily[t][d] for d in range(d1 - 14, d1)) / 14
            ratios.append(last_two_weeks / max(before, 1e-9))
    assert ratios and statistics.median(ratios) < 0.5


# --------------------------------------------------------------------------- calendar realism


def test_holiday_outage_and_weekends_visible_in_daily_totals(sim, events):
    daily = collections.Counter(e["timestamp"][:10] for e in events)
    start = SMALL.start

    def total(i: int) -> int:
        return daily[(start + dt.timedelta(days=i)).isoformat()]

    weekdays = [i for i in range(7, SMALL.days - 7) if (start + dt.timedelta(days=i)).weekday() < 5]
    outage = (sim.outage_date - start).days
    holiday = {(d - start).days for d in sim.holiday_dates}
    assert len(holiday) == 7 and outage not in holiday
    normal = statistics.median(total(i) for i in weekdays if i not in holiday and i != outage)
    assert total(outage) < 0.25 * normal
    hol_weekdays = [total(i) for i in holiday if (start + dt.timedelta(days=i)).weekday() < 5]
    assert statistics.mean(hol_weekdays) < 0.5 * normal
    weekend = [
        total(i)
        for i in range(7, SMALL.days - 7)
        if (start + dt.timedelta(days=i)).weekday() >= 5 and i not in holiday
    ]
    assert statistics.median(weekend) < 0.3 * normal


def test_year_end_holiday_used_when_in_window():
    sim = simulate(SimulationConfig(teams=2, days=60, start=dt.date(2025, 12, 1)))
    assert sim.holiday_dates[0] == dt.date(2025, 12, 24)
    assert sim.holiday_dates[-1] == dt.date(2026, 1, 1)


def test_sessions_happen_in_local_working_hours(events, timezones):
    hours = [
        dt.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
        .astimezone(ZoneInfo(timezones[e["team_id"]]))
        .hour
        for e in events
        if e["type"] == "session.started"
    ]
    assert sum(7 <= h < 20 for h in hours) / len(hours) > 0.85


def test_seats_heavy_tailed_and_capped():
    sim = simulate(SimulationConfig(teams=2000, days=30, seed=9))
    seats = [t.seats for t in sim._teams]
    assert min(seats) >= 1 and max(seats) <= 500
    assert 0.6 < sum(2 <= s <= 20 for s in seats) / len(seats) < 0.95
    assert sum(s >= 100 for s in seats) >= 5
    plans = collections.Counter(t.plan for t in sim._teams)
    assert set(plans) == {"trial", "starter", "pro", "business", "enterprise"}


def test_breadth_narrows_when_decaying(events, team_truth):
    feats_before = collections.defaultdict(set)
    feats_late = collections.defaultdict(set)
    for e in events:
        r = team_truth[e["team_id"]]
        if e["type"] != "feature.used" or r["scenario"] != "gradual_decay" or not r["churned"]:
            continue
        t = ms(e["timestamp"])
        d0, d1 = ms(r["decay_start"]), ms(r["churned_at"])
        if d0 - 28 * 86_400_000 <= t < d0:
            feats_before[e["team_id"]].add(e["properties"]["feature"])
        elif t >= d1 - (d1 - d0) // 4:
            feats_late[e["team_id"]].add(e["properties"]["feature"])
    teams = list(feats_before)
    assert teams
    assert sum(len(feats_late[t]) for t in teams) < sum(len(feats_before[t]) for t in teams)


# --------------------------------------------------------------------------- helpers


def test_to_segment_mapping(events):
    seen = set()
    for e in events[:20_000] + [e for e in events if e["type"] in LIFECYCLE_TYPES]:
        m = to_segment(e)
        assert m["messageId"] == e["event_id"] and m["timestamp"] == e["timestamp"]
        if e["type"] == "team.updated":
            assert m["type"] == "group" and m["groupId"] == e["team_id"]
            assert m["traits"] == e["properties"]
        else:
            assert m["type"] == "track" and m["event"] == e["type"]
            assert m["context"] == {"groupId": e["team_id"]}
            assert m["properties"] == e["properties"]
        if e["user_id"] is None:
            assert "userId" not in m and m["anonymousId"] == e["team_id"]
        else:
            assert m["userId"] == e["user_id"] and "anonymousId" not in m
        seen.add((m["type"], "userId" in m))
    assert {("track", True), ("track", False), ("group", True)} <= seen


def test_write_jsonl_progress_and_roundtrip(tmp_path):
    calls = []
    recs = [{"i": i, "s": "x"} for i in range(25_000)]
    n = write_jsonl(tmp_path / "r.jsonl", recs, progress=calls.append)
    assert n == 25_000
    assert calls[:2] == [10_000, 20_000] and calls[-1] == 25_000
    lines = (tmp_path / "r.jsonl").read_bytes().splitlines()
    assert [orjson.loads(x) for x in lines] == recs
    assert write_jsonl(tmp_path / "r.jsonl.gz", recs[:3]) == 3


def test_format_ts_matches_datetime():
    for value in (0, 1, 86_399_999, 1_772_356_502_123):
        expected = dt.datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
        assert format_ts(value) == expected[:-3] + "Z"


def test_rejects_bad_config():
    with pytest.raises(ValueError):
        simulate(SimulationConfig(teams=3, scenario_mix=(("nope", 1.0),)))
    assert list(simulate(SimulationConfig(teams=0, days=10)).events()) == []
