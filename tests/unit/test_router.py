from __future__ import annotations

import orjson

from detector.router import PartitionedEngines
from detector.settings import EngineSettings

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
