"""Out-of-order delivery within the allowed lateness gives the in-order alerts and state.

The stream is the product simulator's (time zones, lifecycle and billing events, plan and
seat changes, trials, tasks with durations, sessions), so everything the engine keeps is
exercised; ``test_dedup.py`` holds the hand-made streams around midnight and across zones.
A delivery order here is any order in which each event is at most the allowed lateness
behind the newest event time delivered before it (so none is ``late``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from functools import cache

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.codec import encode_partition, encode_team, encode_user
from detector.engine import PartitionEngine
from detector.events import Event, EventFields, Invalid, decode_fields
from detector.settings import EngineSettings
from detector.simulator import SimulationConfig, simulate
from detector.timemodel import DAY_MS, HOUR_MS

LATENESS_MS = EngineSettings().allowed_lateness_s * 1000


SEEDS = (11, 12)


@cache
def simulated(seed: int) -> list[EventFields]:
    sim = simulate(SimulationConfig(teams=7, days=60, seed=seed))
    out = []
    for event in sim.events():
        fields = decode_fields(orjson.dumps(event))
        assert not isinstance(fields, Invalid), fields
        out.append(fields)
    return out


def encoded_state(engine: PartitionEngine) -> tuple[dict, dict, bytes]:
    """Every team, user and partition record as the changelog stores it, except the team's
    duplicate filter (which ids sit in which generation follows arrival; what it answers
    is tested in test_dedup.py)."""
    teams = {}
    for team_id, team in engine.teams.items():
        record = encode_team(team)
        teams[team_id] = record[: len(record) - len(team.recent_ids.to_bytes())]
    users = {uid: encode_user(user) for uid, user in engine.users.items()}
    return teams, users, encode_partition(engine, 0)


def run(events: Iterable[EventFields]) -> tuple[list[dict], tuple[dict, dict, bytes]]:
    engine = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
    alerts: list[dict] = []
    for event in events:
        assert engine.process(event) is None, "no event is late or a duplicate here"
        alerts.extend(engine.drain_alerts())
    return alerts, encoded_state(engine)


@cache
def in_order(seed: int) -> tuple[list[dict], tuple[dict, dict, bytes]]:
    return run(simulated(seed))


def delivered(
    events: list[EventFields], rng: random.Random, share: float, most: float, by_team: bool
):
    """Each event (or, ``by_team``, each team's whole stream: a lagging producer) is held
    back by a random delay of at most ``most`` times the lateness, with probability
    ``share``; delivery in order of time plus delay. The newest time delivered before an
    event is then at most its own plus its delay: within the lateness."""
    lag = {team: rng.random() < share for team in sorted({e[4] for e in events})}
    limit = int(most * LATENESS_MS)

    def key(item: tuple[int, EventFields]) -> tuple[int, int]:
        i, e = item
        held = lag[e[4]] if by_team else rng.random() < share
        return (e[2] + (rng.randint(0, limit) if held else 0), i)

    return [e for _, e in sorted(enumerate(events), key=key)]


def reversed_blocks(events: list[EventFields], rng: random.Random, most: float):
    """Consecutive blocks, each spanning at most ``most`` times the lateness of event time,
    each delivered newest first: every event is within the lateness of its block's newest."""
    out: list[EventFields] = []
    block: list[EventFields] = []
    span = rng.randint(1, int(most * LATENESS_MS))
    for e in events:
        if block and e[2] - block[0][2] > span:
            out.extend(reversed(block))
            block, span = [], rng.randint(1, int(most * LATENESS_MS))
        block.append(e)
    return out + block[::-1]


def lateness_ok(events: list[EventFields]) -> bool:
    newest = events[0][2]
    for e in events:
        if e[2] < newest - LATENESS_MS:
            return False
        newest = max(newest, e[2])
    return True


@settings(max_examples=15, deadline=None)
@given(
    seed=st.sampled_from(SEEDS),
    order_seed=st.integers(0, 2**32),
    share=st.sampled_from([0.05, 0.5, 1.0]),
    most=st.sampled_from([0.25, 0.9, 1.0]),
    how=st.sampled_from(["each", "by_team", "blocks"]),
)
def test_any_order_within_the_lateness_gives_the_in_order_alerts_and_records(
    seed, order_seed, share, most, how
):
    events = simulated(seed)
    rng = random.Random(order_seed)
    if how == "blocks":
        shuffled = reversed_blocks(events, rng, most)
    else:
        shuffled = delivered(events, rng, share, most, how == "by_team")
    assert lateness_ok(shuffled)
    alerts, (teams, users, partition) = run(shuffled)
    expected_alerts, (expected_teams, expected_users, expected_partition) = in_order(seed)
    assert [a["id"] for a in alerts] == [a["id"] for a in expected_alerts]
    assert alerts == expected_alerts
    assert teams.keys() == expected_teams.keys()
    assert [t for t in teams if teams[t] != expected_teams[t]] == []
    assert [u for u in users if users[u] != expected_users.get(u)] == []
    assert users.keys() == expected_users.keys()
    assert orjson.loads(partition) == orjson.loads(expected_partition)
    assert partition == expected_partition


def test_the_streams_exercise_what_depends_on_order():
    """Alerts, lifecycle events, trait changes, tasks and sessions are all in the streams,
    and an order as the property test makes differs from the in-order stream."""
    for seed in SEEDS:
        events = simulated(seed)
        types = {e[1] for e in events}
        assert {"team.updated", "task.completed", "session.ended", "payment.failed"} <= types, seed
        assert in_order(seed)[0], "the in-order run raises alerts"
        for shuffled in (
            delivered(events, random.Random(1), 1.0, 1.0, False),
            reversed_blocks(events, random.Random(1), 1.0),
        ):
            assert shuffled != events and lateness_ok(shuffled)


def test_team_level_events_apply_in_event_time_order_when_their_day_closes():
    """The last by event time wins (ties: the greater event id), not the last delivered."""
    day = 20_454
    t0 = day * DAY_MS + 23 * HOUR_MS
    events = [
        Event("b", "team.updated", t0, None, "t", {"plan": "pro", "mrr": 99.0}),
        Event("a", "team.updated", t0, None, "t", {"plan": "team"}),  # same time: "b" wins
        Event("c", "payment.failed", t0 + 1, None, "t", {"amount": 9.0}),
        Event("d", "payment.succeeded", t0 + 2, None, "t", {"amount": 9.0}),
        Event("e", "team.updated", t0 + 90 * 60_000, None, "t", {"plan": "enterprise"}),
        Event("f", "payment.failed", t0 + 90 * 60_000, None, "t", {"amount": 9.0}),
    ]
    tick = Event("x", "feature.used", t0 + 4 * HOUR_MS, "u", "t", {"feature": "f"})
    for order in (events, events[::-1]):
        engine = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
        for event in [*order, tick]:
            assert engine.process(event) is None
        team = engine.teams["t"]
        assert (team.plan, team.mrr, team.payment_failures) == ("pro", 99.0, 0)
        assert [p[1] for p in team.pending] == ["e", "f"]  # the next day's: not yet
        assert team.first_day == day, "the team starts with its earliest event, in any order"
