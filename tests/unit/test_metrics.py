from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from detector.engine import PartitionEngine
from detector.metrics import register_engines
from detector.settings import EngineSettings

from .streams import TeamSpec, healthy_teams, stream


def test_metrics_reflect_engine_state_without_ids_in_labels():
    engine = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
    registry = CollectorRegistry()
    register_engines(registry, lambda: [(0, engine)])
    teams = [*healthy_teams(10), TeamSpec("quiet", 5, level=lambda d: 1.0 if d < 40 else 0.0)]
    for ev in stream(teams, days=70):
        engine.process(ev)
    engine.process_raw(b"{not json")
    get = registry.get_sample_value
    assert get("churn_detector_events_processed_total") == engine.stats.events_valid > 0
    assert get("churn_detector_events_invalid_total", {"reason": "malformed_json"}) == 1
    assert get("churn_detector_entities", {"entity_type": "team", "state": "healthy"}) == 10
    critical = [
        s.value
        for m in registry.collect()
        if m.name == "churn_detector_alerts"
        for s in m.samples
        if s.labels.get("entity_type") == "team" and s.labels.get("severity") == "critical"
    ]
    assert sum(critical) >= 1
    exposition = generate_latest(registry).decode()
    assert "quiet" not in exposition and "h0" not in exposition
