"""The latency benchmark names the event that caused each alert: checked against the engine."""

from __future__ import annotations

import doctest
from datetime import datetime

import orjson

from benchmarks.broker_latency import PacedRun, alert_latencies, find_triggers
from detector.partitioning import partition_for
from detector.router import PartitionedEngines
from detector.settings import EngineSettings
from detector.simulator import SimulationConfig, simulate
from detector.timemodel import iso_ms


def _lines(teams: int, days: int) -> list[bytes]:
    return [
        orjson.dumps(e) for e in simulate(SimulationConfig(teams=teams, days=days, seed=3)).events()
    ]


def test_trigger_is_the_event_during_which_the_engine_emitted_the_alert() -> None:
    settings = EngineSettings(partitions=3)
    lines = _lines(teams=12, days=70)
    cut = len(lines) // 2
    before, paced = lines[:cut], lines[cut:]
    triggers, routes = find_triggers(
        before, paced, 3, settings.allowed_lateness_s * 1000, settings.sweep_interval_s * 1000
    )
    engines = PartitionedEngines(settings)
    for raw in before:
        engines.process_raw(raw)
    engines.drain_alerts()
    checked = 0
    for i, raw in enumerate(paced):
        engines.process_raw(raw)
        for alert in engines.drain_alerts():
            if alert["data"]["entity_type"] == "user":
                continue  # user alerts wait for the partition's westmost zone: not timed
            team_id = alert["data"]["team_id"]
            partition = partition_for(team_id, 3)
            assert routes[i][0] == partition  # any team of the partition can close its day
            at_ms = int(datetime.fromisoformat(alert["time"]).timestamp() * 1000)
            assert triggers.trigger_of(partition, at_ms) == i, alert["subject"]
            checked += 1
    assert checked >= 10  # the simulated stretch does raise alerts


def test_latency_is_arrival_minus_send_of_the_trigger() -> None:
    settings = EngineSettings(partitions=1)
    lines = _lines(teams=4, days=40)
    cut = len(lines) // 2
    triggers, _ = find_triggers(
        lines[:cut], lines[cut:], 1, settings.allowed_lateness_s * 1000, 3_600_000
    )
    first = triggers.index[0][0]
    reached = triggers.reached[0][0]
    team = orjson.loads(lines[0])["team_id"]
    data = {"team_id": team, "entity_type": "team"}
    alert = {"time": iso_ms(reached), "data": data}
    old = {"time": iso_ms(triggers.start_wm[0]), "data": data}
    user = {"time": iso_ms(reached), "data": {**data, "entity_type": "user"}}
    run = PacedRun(
        sent_counts=[first, first + 1],  # the trigger went out in the second tick
        sent_times=[10.0, 20.0],
        alerts=[(21.5, alert), (30.0, old), (22.0, user)],
    )
    result = alert_latencies(run, triggers, 1)
    assert result.seconds == [1.5]
    assert result.before_phase == 1
    assert result.users == 1  # counted, not timed


def test_doctests() -> None:
    from benchmarks import broker_bench, broker_latency

    for module in (broker_latency, broker_bench):
        assert doctest.testmod(module).failed == 0
