"""The online risk model: delayed labels from the stream's cancellations, compact state."""

from __future__ import annotations

from detector.codec import encode_partition, encode_team, restore_partition
from detector.engine import PartitionEngine
from detector.risk_model import FEATURES, RiskModel, features_of, roc_auc, snapshot
from detector.settings import EngineSettings

from .streams import TeamSpec, healthy_teams, stream


def churning_teams(n: int) -> list[TeamSpec]:
    return [
        TeamSpec(
            f"c{i}",
            6,
            level=lambda d, start=40 + 3 * i: 1.0 if d < start else max(0.05, 1 - (d - start) / 25),
            cancel_day=40 + 3 * i + 25,
        )
        for i in range(n)
    ]


def run(settings: EngineSettings, days: int = 130) -> tuple[PartitionEngine, list[dict]]:
    engine = PartitionEngine(settings, clock=lambda: 0.0)
    alerts: list[dict] = []
    for ev in stream([*healthy_teams(20), *churning_teams(8)], days=days):
        engine.process(ev)
        alerts.extend(engine.drain_alerts())
    return engine, alerts


def test_cancellations_teach_positives_and_survivors_negatives():
    engine, _ = run(EngineSettings())
    model = engine.risk
    assert model.positives >= 8, "each cancelled team gives its snapshots of 1-4 weeks before"
    assert model.negatives > model.positives
    weights = model.model.weights
    assert weights["team_decay"] > 0.0 and weights["activity_deficit"] > 0.0
    decaying = {"hand_risk": 0.6, "activity_deficit": 0.5, "team_decay": 0.6}
    assert model.predict(decaying) > 3 * model.predict({})


def test_snapshots_stay_few_and_compact():
    s = EngineSettings()
    engine, _ = run(s)
    longest = max(len(team.snapshots) for team in engine.teams.values())
    assert longest <= s.risk_horizon_days // s.risk_snapshot_days
    assert max(len(encode_team(t)) for t in engine.teams.values()) < 4096
    assert all(team.snapshots == [] for tid, team in engine.teams.items() if tid.startswith("c"))


def test_alerts_carry_the_learned_risk_once_the_model_has_learned():
    _, alerts = run(EngineSettings(risk_min_labels=3))
    learned = [
        reason
        for a in alerts
        if a["data"]["entity_type"] == "team" and a["data"]["state"] in ("cooling", "at_risk")
        for reason in a["data"]["reasons"]
        if reason["code"] == "learned_risk"
    ]
    assert learned, "late decaying teams are explained by the model learned from earlier ones"
    assert all(0.0 <= r["observed"] <= 1.0 and 0.0 < r["baseline"] < 1.0 for r in learned)


def test_model_state_is_saved_with_the_partition():
    engine, _ = run(EngineSettings())
    restored = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
    restore_partition(restored, encode_partition(engine, 0), {}, {})
    assert restored.risk.state() == engine.risk.state()
    x = {"hand_risk": 0.5, "team_decay": 0.5}
    assert restored.risk.predict(x) == engine.risk.predict(x)
    assert len(encode_partition(engine, 0)) < 4096


def test_held_out_labels_are_scored_not_learned():
    model = RiskModel()
    model.holdout = lambda entity: entity == "test"
    before = model.state()
    model.label("test", {"team_decay": 0.9}, True)
    assert model.state() == before and model.held_out[0][0] is True
    model.label("train", {"team_decay": 0.9}, True)
    assert model.positives == 1 and model.state() != before


def test_snapshot_round_trip_and_auc():
    x = {name: 0.1 * i for i, name in enumerate(FEATURES)}
    assert features_of(snapshot(5, x)) == {k: round(v, 4) for k, v in x.items() if v}
    assert roc_auc([False, True, False, True], [0.1, 0.2, 0.3, 0.4]) == 0.75
