from __future__ import annotations

import random

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.codec import (
    decode_team,
    decode_user,
    encode_partition,
    encode_team,
    encode_user,
    restore_partition,
)
from detector.dedup import RecentIds
from detector.engine import PartitionEngine
from detector.events import Event
from detector.settings import EngineSettings
from detector.state import EVENTS, FIELDS, KEY_ACTIONS, TeamState, UserState
from detector.timemodel import DAY_MS, HOUR_MS

from .streams import START_DAY, TeamSpec, healthy_teams, stream

T0 = START_DAY * DAY_MS + 10 * HOUR_MS


def ev(event_id: str, ts_ms: int, team: str = "t1", user: str | None = "u1") -> Event:
    return Event(event_id, "feature.used", ts_ms, user, team, {"feature": "search"})


def engine(**changes: object) -> PartitionEngine:
    return PartitionEngine(EngineSettings(**changes), clock=lambda: 0.0)  # type: ignore[arg-type]


def test_a_retry_is_not_counted_twice():
    e = engine()
    assert e.process(ev("a", T0)) is None
    assert e.process(ev("b", T0 + HOUR_MS)) is None
    retry = e.process(ev("a", T0))
    assert retry is not None and retry.reason == "duplicate"
    assert (e.stats.events_valid, e.teams["t1"].events_total) == (2, 2)
    assert e.stats.invalid == {"duplicate": 1}


def test_a_team_level_event_delivered_twice_counts_once():
    e = engine()
    failed = Event("p1", "payment.failed", T0, None, "t1", {"amount": 9.0})
    assert e.process(failed) is None
    assert e.process(failed).reason == "duplicate"
    assert [p[1] for p in e.teams["t1"].pending] == ["p1"]  # applied once, when its day closes


def test_a_retry_within_24_hours_is_never_counted_again():
    # with 24 h of allowed lateness the original is still acceptable 20 h later: deduplicated
    e = engine(allowed_lateness_s=24 * 3600)
    e.process(ev("a", T0))
    for hour in range(1, 21):
        assert e.process(ev(f"later-{hour}", T0 + hour * HOUR_MS)) is None
    assert e.process(ev("a", T0)).reason == "duplicate"
    # with the default 2 h it is already behind the watermark: rejected as late, not counted
    d = engine()
    d.process(ev("a", T0))
    d.process(ev("later", T0 + 20 * HOUR_MS))
    assert d.process(ev("a", T0)).reason == "late"
    assert d.stats.events_valid == e.stats.events_valid - 19 == 2


def test_an_id_reused_after_24_hours_by_a_new_event_counts():
    e = engine()
    assert e.process(ev("a", T0)) is None
    assert e.process(ev("a", T0 + 25 * HOUR_MS)) is None
    assert e.stats.events_valid == 2


def test_ids_are_per_team_but_shared_by_its_users():
    e = engine()
    assert e.process(ev("a", T0, team="t1", user="u1")) is None
    assert e.process(ev("a", T0, team="t2", user="u9")) is None  # another team: its own id
    assert e.process(ev("a", T0, team="t1", user="u2")).reason == "duplicate"


def test_seen_ids_survive_a_restart_from_the_encoded_records():
    e = engine()
    for i in range(50):
        e.process(ev(f"e{i}", T0 + i * 60_000, user=f"u{i % 3}"))
    teams = {t: decode_team(encode_team(s)) for t, s in e.teams.items()}
    users = {u: decode_user(encode_user(s)) for u, s in e.users.items()}
    restored = engine()
    restore_partition(restored, encode_partition(e, 0), teams, users)
    assert restored.process(ev("e7", T0 + 7 * 60_000)).reason == "duplicate"
    assert restored.process(ev("e50", T0 + 50 * 60_000)) is None


def test_a_team_record_without_ids_still_decodes():
    team = decode_team(encode_team(engine().teams.get("x") or _team()))
    old_record = encode_team(team)[: -len(team.recent_ids.to_bytes())]
    assert len(decode_team(old_record).recent_ids) == 0


def _team():
    e = engine()
    e.process(ev("a", T0))
    return e.teams["t1"]


def test_no_false_duplicates_among_a_million_distinct_ids():
    ids = RecentIds()
    rng = random.Random(5)
    false = sum(ids.seen(f"{rng.getrandbits(64):x}-{i}", T0 + i, 10**12) for i in range(1_000_000))
    # expected collisions of 32-bit hashes: n^2 / 2^33 = 116 when ONE team holds 1M ids;
    # a real team holds a few hundred, where the rate is (ids held) / 2^32 < 1e-6
    assert false < 200
    assert len(ids) == 1_000_000 - false


# --------------------------------------------------------------------------- order


def night_owl_stream(seed: int) -> list[Event]:
    """Events around midnight UTC (out-of-order delivery then crosses day boundaries),
    with a decaying team, a cancelled one and payment failures, so alerts are raised."""
    teams = [
        *healthy_teams(3, users=4),
        TeamSpec("decay", 5, level=lambda d: 1.0 if d < 30 else 0.15),
        TeamSpec("cancel", 3, cancel_day=34),
        TeamSpec("pay", 3, payment_failures=(20, 21, 22)),
    ]
    shifted = [e._replace(ts_ms=e.ts_ms + 11 * HOUR_MS) for e in stream(teams, 50, seed)]
    return sorted(shifted, key=lambda e: e.ts_ms)


def run(events: list[Event]) -> tuple[list[dict], dict[str, tuple], dict[str, tuple]]:
    """Alerts, and per team / user what was counted: events, and the days they were active."""
    e = engine()
    alerts: list[dict] = []
    for event in events:
        assert e.process(event) is None, "no event is late or a duplicate here"
        alerts.extend(e.drain_alerts())
    # teams' alerts of one sweep come in the order the teams were first seen: compare as a set
    alerts.sort(key=lambda a: (a["time"], a["id"]))
    teams = {t: (s.events_total, s.active_days, list(s.ring)) for t, s in e.teams.items()}
    users = {u: (s.events_total, s.active_days) for u, s in e.users.items()}
    return alerts, teams, users


_IN_ORDER: dict[int, tuple] = {}


def deliver_late(events: list[Event], shuffle_seed: int) -> list[Event]:
    """Each event delayed by up to 90% of the allowed lateness: out of order, never late."""
    rng = random.Random(shuffle_seed)
    lateness = EngineSettings().allowed_lateness_s * 1000
    return sorted(events, key=lambda e: e.ts_ms + rng.randrange(lateness * 9 // 10))


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([1, 2]))
def test_out_of_order_within_the_allowed_lateness_counts_the_same(shuffle_seed, seed):
    """Every event is applied and counted once, into the same daily buckets."""
    events = night_owl_stream(seed)
    if seed not in _IN_ORDER:
        _IN_ORDER[seed] = run(events)
    delivered = deliver_late(events, shuffle_seed)
    assert delivered != events
    _, teams, users = run(delivered)
    _, in_order_teams, in_order_users = _IN_ORDER[seed]
    assert {u: v[0] for u, v in users.items()} == {u: v[0] for u, v in in_order_users.items()}
    for team_id, (events_total, _, ring) in teams.items():
        expected_total, _, expected_ring = in_order_teams[team_id]
        assert events_total == expected_total
        assert ring[EVENTS::FIELDS] == expected_ring[EVENTS::FIELDS]
        assert ring[KEY_ACTIONS::FIELDS] == expected_ring[KEY_ACTIONS::FIELDS]


def test_out_of_order_across_midnight_gives_the_in_order_alerts_and_active_days():
    events = night_owl_stream(2)
    assert run(deliver_late(events, 50)) == run(events)


def test_a_stream_with_every_tenth_event_delivered_twice_counts_each_event_once():
    events = night_owl_stream(1)
    rng = random.Random(3)
    retries: dict[int, list[Event]] = {}
    for i in range(0, len(events), 10):  # a retry up to 50 events (< 1 h of event time) later
        last = i
        while (
            last + 1 < min(len(events), i + 50)
            and events[last + 1].ts_ms < events[i].ts_ms + HOUR_MS
        ):
            last += 1
        retries.setdefault(rng.randint(i, last), []).append(events[i])
    delivered = [d for j, event in enumerate(events) for d in [event, *retries.get(j, [])]]
    copies = len(delivered) - len(events)
    e = engine()
    alerts = []
    for event in delivered:
        rejected = e.process(event)
        assert rejected is None or rejected.reason == "duplicate"
        alerts.extend(e.drain_alerts())
    once, teams, _ = run(events)
    assert e.stats.invalid == {"duplicate": copies}
    assert e.stats.events_valid == len(events)
    assert sorted(alerts, key=lambda a: (a["time"], a["id"])) == once
    assert {t: s.events_total for t, s in e.teams.items()} == {t: v[0] for t, v in teams.items()}


# time zones (UTC offsets in January) of the teams of the zoned stream
_ZONES = {"h0": None, "ny": "America/New_York", "tokyo": "Asia/Tokyo", "delhi": "Asia/Kolkata"}
_OFFSET_H = {"h0": 0.0, "ny": -5.0, "tokyo": 9.0, "delhi": 5.5}


def zoned_stream(seed: int) -> list[Event]:
    """Teams in four time zones, each working around its own local midnight (their activity
    crosses the local day and, for some, the UTC day), one of them decaying."""
    teams = [
        TeamSpec("h0", 4),
        TeamSpec("ny", 5, level=lambda d: 1.0 if d < 25 else 0.1),
        TeamSpec("tokyo", 4),
        TeamSpec("delhi", 3, cancel_day=30),
    ]
    setup = [
        Event(f"tz-{t}", "team.updated", START_DAY * DAY_MS, None, t, {"timezone": tz})
        for t, tz in _ZONES.items()
        if tz is not None
    ]
    shifted = [
        e._replace(ts_ms=e.ts_ms + int((11.0 - _OFFSET_H[e.team_id]) * HOUR_MS))
        for e in stream(teams, 40, seed)
    ]
    return setup + sorted(shifted, key=lambda e: e.ts_ms)


def run_state(events: list[Event]) -> tuple[list[dict], dict, dict, dict]:
    """Alerts and the whole state: every team and user field (the ring as a list; the
    duplicate filter aside: its layout follows arrival) and the partition's record."""
    e = engine()
    alerts: list[dict] = []
    for event in events:
        assert e.process(event) is None
        alerts.extend(e.drain_alerts())
    alerts.sort(key=lambda a: (a["time"], a["id"]))
    teams = {
        t: {n: getattr(s, n) for n in TeamState.__slots__ if n not in ("recent_ids", "ring")}
        | {"ring": list(s.ring)}
        for t, s in e.teams.items()
    }
    users = {u: {n: getattr(s, n) for n in UserState.__slots__} for u, s in e.users.items()}
    return alerts, teams, users, orjson.loads(encode_partition(e, 0))


_IN_ORDER_STATE: dict[tuple[str, int], tuple] = {}
_STREAMS = {"night_owl": night_owl_stream, "zoned": zoned_stream}


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from(sorted(_STREAMS)), st.sampled_from([1, 2]))
def test_delays_within_the_lateness_give_the_in_order_alerts_and_state(shuffle_seed, name, seed):
    """Across midnight and across time zones: random delays (up to 90% of the lateness)
    change nothing, neither the alerts nor any field of any team, user or the partition."""
    events = _STREAMS[name](seed)
    if (name, seed) not in _IN_ORDER_STATE:
        _IN_ORDER_STATE[(name, seed)] = run_state(events)
    expected = _IN_ORDER_STATE[(name, seed)]
    delivered = deliver_late(events, shuffle_seed)
    assert delivered != events
    alerts, teams, users, partition = run_state(delivered)
    assert alerts == expected[0]
    assert teams == expected[1]
    assert users == expected[2]
    assert partition == expected[3]
    assert len(expected[0]) > 0


def test_the_zoned_stream_crosses_local_and_utc_midnights_and_raises_alerts():
    events = zoned_stream(1)
    local_hours = {
        (e.ts_ms + int(_OFFSET_H[e.team_id] * HOUR_MS)) // HOUR_MS % 24 for e in events[3:]
    }
    assert {22, 23, 0, 1} <= local_hours
    for team in ("ny", "tokyo"):  # some local days of these have events in two UTC days
        offset = int(_OFFSET_H[team] * HOUR_MS)
        pairs = {
            ((e.ts_ms + offset) // DAY_MS, e.ts_ms // DAY_MS) for e in events if e.team_id == team
        }
        assert len(pairs) > len({local for local, _ in pairs})
    alerts, teams, _, _ = run_state(events)
    assert {a["data"]["entity_id"] for a in alerts} >= {"ny", "delhi"}
    assert teams["tokyo"]["offset_ms"] == 9 * HOUR_MS


def test_first_events_delivered_after_later_ones_start_the_team_and_user_on_their_day():
    midnight = (START_DAY + 1) * DAY_MS
    events = [
        ev("a", midnight - HOUR_MS // 2, team="t1", user="u1"),
        ev("b", midnight - HOUR_MS // 4, team="t1", user="u2"),
        ev("c", midnight + HOUR_MS // 2, team="t1", user="u1"),
        ev("d", midnight + HOUR_MS, team="t1", user="u2"),
        *(ev(f"x{i}", midnight + (i + 2) * HOUR_MS, user=f"u{i % 3}") for i in range(60)),
    ]
    in_order = run_state(events)
    reversed_start = run_state([events[2], events[3], events[1], events[0], *events[4:]])
    assert reversed_start[1:] == in_order[1:]
    assert in_order[2]["u1"]["first_day"] == START_DAY
    assert in_order[2]["u1"]["active_days"] == in_order[2]["u2"]["active_days"] >= 2
    assert in_order[1]["t1"]["first_day"] == in_order[3]["first_day"] == START_DAY
