from __future__ import annotations

import collections

import orjson

from detector.partitioning import partition_for
from detector.router import PartitionedEngines
from detector.settings import EngineSettings
from tests.segment_calls import segment_without_teams

from .streams import TeamSpec, healthy_teams, stream


def test_each_team_lives_in_exactly_one_partition():
    engines = PartitionedEngines(EngineSettings(partitions=3))
    for ev in stream(healthy_teams(12), days=20):
        engines.process(ev)
    owners = [{t for t in e.teams} for e in engines.engines]
    assert sum(len(o) for o in owners) == 12
    assert all(owners), "twelve teams over three partitions: none empty"
    for p, owned in enumerate(owners):
        assert all(engines.partition(t) == p for t in owned)


def test_raw_bad_input_is_counted_by_reason():
    engines = PartitionedEngines(EngineSettings(partitions=2))
    assert engines.process_raw(b"[]").reason == "not_an_object"
    assert engines.process_raw(orjson.dumps({"event_id": "x"})).reason == "missing_field:type"
    assert engines.invalid_counts() == {"not_an_object": 1, "missing_field:type": 1}


def test_a_batch_gives_what_line_by_line_gives():
    """process_lines: same alerts in the same order, same rejections, same counters."""
    fading = TeamSpec("fading", users=5, level=lambda day: 1.0 if day < 45 else 0.0)
    evs = list(stream([*healthy_teams(6), fading], days=80))
    lines = [orjson.dumps(ev._asdict() | {"timestamp": ev.ts_ms}) for ev in evs]
    mid = len(lines) // 2
    lines[mid:mid] = [b"{not json", lines[5], orjson.dumps({"event_id": "x"})]  # bad, late, bad
    one, many = (PartitionedEngines(EngineSettings(partitions=3)) for _ in range(2))
    alerts_one, rejected_one = [], []
    for i, raw in enumerate(lines):
        why = one.process_raw(raw)
        if why is not None:
            rejected_one.append((i, why))
        alerts_one.extend(one.drain_alerts())
    alerts_many: list = []
    rejected_many: list = []
    assert many.process_lines(lines, rejected_many, alerts_many) == len(lines)
    assert alerts_many and alerts_many == alerts_one
    assert [(i, why.reason) for i, why in rejected_many] == [
        (mid, "malformed_json"),
        (mid + 1, "late"),
        (mid + 2, "missing_field:type"),
    ]
    assert rejected_many == rejected_one
    assert many.invalid_counts() == one.invalid_counts()
    assert many.events_valid == one.events_valid


def test_segment_calls_without_their_team_get_the_team_of_their_users_group_call():
    lines, teams_of_lines = segment_without_teams(teams=8, days=40, seed=9)
    per_team = collections.Counter(teams_of_lines)
    lines.insert(
        0,
        orjson.dumps(
            {
                "type": "track",
                "messageId": "m",
                "userId": "new",
                "event": "Report Viewed",
                "timestamp": 1772356502123,
            }
        ),
    )
    serial = PartitionedEngines(EngineSettings(partitions=4))
    rejected: list = []
    alerts: list = []
    serial.process_lines(lines, rejected, alerts)
    assert [(i, why.reason) for i, why in rejected] == [(0, "missing_field:team_id")]
    teams = {t: s.events_total for e in serial.engines for t, s in e.teams.items()}
    assert teams == dict(per_team)  # every call reached its user's team
    # parallel replay: each of two jobs learns every membership, so routes as one process
    merged_rejected, merged_alerts = [], []
    for job in (0, 1):
        engines = PartitionedEngines(EngineSettings(partitions=4))
        engines.process_owned_lines(lines, 0, job, 2, merged_rejected, merged_alerts)
    assert sorted(i for i, _ in merged_rejected) == [0]
    assert [a for _, a in sorted(merged_alerts, key=lambda x: x[0])] == alerts


def test_every_job_learns_a_membership_from_a_track_call_named_team_updated():
    """Such a call validates to team.updated: the job owning its team learns from it, and so
    must the others, or a later call without its team goes elsewhere in another job."""
    settings = EngineSettings(partitions=4)
    by_job: dict[int, str] = {}
    for i in range(100):
        by_job.setdefault(partition_for(f"t{i}", 4) % 2, f"t{i}")
    first, second = by_job[0], by_job[1]
    ts = 1772356502123
    calls = [
        {"type": "group", "userId": "u1", "groupId": first, "traits": {}},
        {"type": "track", "userId": "u1", "event": "Team Updated", "context": {"groupId": second}},
        {"type": "track", "userId": "u1", "event": "Report Viewed"},
    ]
    lines = [
        orjson.dumps({**call, "messageId": f"m{n}", "timestamp": ts + n})
        for n, call in enumerate(calls)
    ]
    one = PartitionedEngines(settings)
    one.process_lines(lines, [], [])
    counts = {t: s.events_total for e in one.engines for t, s in e.teams.items()}
    assert counts == {first: 1, second: 2}
    merged: dict[str, int] = {}
    for job in (0, 1):
        engines = PartitionedEngines(settings)
        engines.process_owned_lines(lines, 0, job, 2, [], [])
        for engine in engines.engines:
            for team, state in engine.teams.items():
                merged[team] = merged.get(team, 0) + state.events_total
    assert merged == counts
