from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from detector.engine import PartitionEngine
from detector.metrics import (
    MAX_PLANS,
    TOP_N,
    Lag,
    ServiceCollector,
    ServiceMetrics,
    _capped,
    register_engines,
    top_at_risk,
)
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


def _engine_with_history() -> PartitionEngine:
    engine = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
    teams = [*healthy_teams(10), TeamSpec("quiet", 5, level=lambda d: 1.0 if d < 40 else 0.0)]
    for ev in stream(teams, days=70):
        engine.process(ev)
    return engine


class _Ingest:
    def __init__(self) -> None:
        self.consumed = 12
        self.invalid_reasons = {"malformed_json": 2}


def test_risk_scores_form_a_histogram_of_scored_team_days_and_ingest_counts_merge():
    engine = _engine_with_history()
    engine.process_raw(b"{not json")
    registry = CollectorRegistry()
    register_engines(registry, lambda: [(3, engine)], _Ingest())
    get = registry.get_sample_value
    count = get("churn_detector_team_risk_score_count")
    assert count == engine.stats.risk.count > 11 * 30  # every team scored most days
    assert get("churn_detector_team_risk_score_bucket", {"le": "+Inf"}) == count
    assert get("churn_detector_team_risk_score_bucket", {"le": "0.05"}) < count  # quiet team
    assert get("churn_detector_sweep_duration_seconds_count") == engine.stats.sweeps > 0
    assert get("churn_detector_events_consumed_total") == 12
    # ingest rejections and the engine's own add up under one reason label
    assert get("churn_detector_events_invalid_total", {"reason": "malformed_json"}) == 3
    assert get("churn_detector_watermark_timestamp_seconds", {"partition": "3"}) > 0


def test_top_at_risk_gauges_are_ranked_without_ids():
    engine = _engine_with_history()
    quiet = engine.teams["quiet"]
    quiet.mrr, quiet.plan = 500.0, "pro"
    assert top_at_risk([engine])[0].team_id == "quiet"
    registry = CollectorRegistry()
    register_engines(registry, lambda: [(0, engine)])
    ranked = [
        s.labels["rank"]
        for m in registry.collect()
        if m.name == "churn_detector_top_at_risk_risk"
        for s in m.samples
    ]
    assert ranked and ranked[0] == "01" and len(ranked) <= TOP_N
    assert registry.get_sample_value("churn_detector_top_at_risk_mrr", {"rank": "01"}) == 500.0
    assert registry.get_sample_value("churn_detector_mrr_at_risk", {"plan": "pro"}) == 500.0
    assert "quiet" not in generate_latest(registry).decode()


def test_plans_are_capped_so_input_cannot_blow_up_label_cardinality():
    plans = {f"p{i}": float(i) for i in range(MAX_PLANS * 3)}
    assert len(_capped(plans, MAX_PLANS)) == MAX_PLANS
    assert sum(_capped(plans, MAX_PLANS).values()) == sum(plans.values())


def test_service_gauges_and_latency_histogram_use_the_injected_registry():
    registry = CollectorRegistry()
    registry.register(
        ServiceCollector(
            lambda: [Lag("engine", 0, 5), Lag("ingest", 1, -1)],
            lambda: True,
            lambda: [0, 1],
            lambda: 1000,
        )
    )
    latency = ServiceMetrics(registry)
    latency.observe("state", 0.2)
    latency.observe("alert", 3.0)
    get = registry.get_sample_value
    assert get("churn_detector_consumer_lag", {"stage": "engine", "partition": "0"}) == 5
    assert get("churn_detector_consumer_lag", {"stage": "ingest", "partition": "1"}) == 0
    assert get("churn_detector_ready") == 1 and get("churn_detector_partitions_assigned") == 2
    assert get("churn_detector_state_bytes") == 1000
    assert get("churn_detector_processing_latency_seconds_count", {"stage": "state"}) == 1
    assert (
        get("churn_detector_processing_latency_seconds_bucket", {"stage": "alert", "le": "2.5"})
        == 0
    )
