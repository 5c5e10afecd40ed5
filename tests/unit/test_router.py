from __future__ import annotations

import orjson

from detector.router import PartitionedEngines
from detector.settings import EngineSettings

from .streams import healthy_teams, stream


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
