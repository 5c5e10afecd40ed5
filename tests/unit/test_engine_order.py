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
from detector.events import EventFields, Invalid, decode_fields
from detector.settings import EngineSettings
from detector.simulator import SimulationConfig, simulate

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


def lateness_ok(events: list[EventFields]) -> bool:
    newest = events[0][2]
    for e in events:
        if e[2] < newest - LATENESS_MS:
            return False
        newest = max(newest, e[2])
    return True


@settings(max_examples=10, deadline=None)
@given(
    seed=st.sampled_from(SEEDS),
    order_seed=st.integers(0, 2**32),
    share=st.sampled_from([0.05, 0.5, 1.0]),
    most=st.sampled_from([0.25, 0.9, 1.0]),
    by_team=st.booleans(),
)
def test_any_order_within_the_lateness_gives_the_in_order_alerts_and_records(
    seed, order_seed, share, most, by_team
):
    events = simulated(seed)
    shuffled = delivered(events, random.Random(order_seed), share, most, by_team)
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
        shuffled = delivered(events, random.Random(1), 1.0, 1.0, False)
        assert shuffled != events and lateness_ok(shuffled)
