"""No user or team id ever becomes a Prometheus label (cardinality, and ids are personal)."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, generate_latest

from detector.metrics import register_engines
from detector.router import PartitionedEngines
from detector.settings import EngineSettings

from .streams import TeamSpec, healthy_teams, stream

LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
ALLOWED_LABELS = {
    "reason",
    "entity_type",
    "signal",
    "severity",
    "state",
    "plan",
    "partition",
    "rank",
    "le",
}


def test_the_exposition_holds_no_entity_id_after_alerts_and_bad_input():
    teams = [
        *healthy_teams(4, prefix="team-id-"),
        TeamSpec("team-id-decaying", 5, level=lambda d: 1.0 if d < 30 else 0.1),
        TeamSpec("team-id-paying", 3, payment_failures=(20, 21, 22)),
    ]
    engines = PartitionedEngines(EngineSettings(partitions=2))
    user_ids, team_ids = set(), set()
    for ev in stream(teams, days=60):
        ev = ev._replace(user_id=ev.user_id and f"user-id-{ev.user_id}")
        user_ids.add(ev.user_id)
        team_ids.add(ev.team_id)
        engines.process(ev)
    # bad input naming ids, too: reasons must stay codes, never echo the input
    for raw in (b'{"event_id": "e", "type": "x", "team_id": "team-id-bad"}', b"[1]", b"{"):
        assert engines.process_raw(raw) is not None
    team_ids.add("team-id-bad")
    assert sum(sum(e.stats.alerts.values()) for e in engines.engines) > 0, "alerts were raised"

    registry = CollectorRegistry()
    register_engines(registry, lambda: list(enumerate(engines.engines)))
    text = generate_latest(registry).decode()
    labels = LABEL.findall(text)
    assert labels, "the exposition has labelled series"
    assert {name for name, _ in labels} <= ALLOWED_LABELS
    values = {value for _, value in labels}
    leaked = {i for i in (user_ids | team_ids) - {None} if i in text}
    assert not leaked, f"ids in the exposition: {sorted(leaked)[:5]}"
    assert not [v for v in values if "-id-" in v]
