from __future__ import annotations

from detector import health as hs

TH = hs.Thresholds(
    cooling=0.4, at_risk=0.6, recovered=0.25, at_risk_days=2, recovery_days=3, cooldown_days=7
)


def run(
    risks: list[float],
    state: int = hs.HEALTHY,
    churn_at: int | None = None,
    th: hs.Thresholds = TH,
) -> tuple[int, list[str]]:
    """The final state and the alerts, one risk per day."""
    state, alerts = _steps(risks, state, churn_at, th)
    return state, [alert for _, alert in alerts]


def first_at_risk(risks: list[float], th: hs.Thresholds) -> int | None:
    return next(
        (day for day, alert in _steps(risks, hs.HEALTHY, None, th)[1] if alert == "at_risk"), None
    )


def _steps(
    risks: list[float], state: int, churn_at: int | None, th: hs.Thresholds
) -> tuple[int, list[tuple[int, str]]]:
    hot = calm = cooldown = 0
    alerts: list[tuple[int, str]] = []
    for day, risk in enumerate(risks):
        s = hs.step(
            state,
            hot,
            calm,
            cooldown,
            day=day,
            risk=risk,
            mature=True,
            churned=churn_at is not None and day >= churn_at,
            active=risk < 0.25,
            th=th,
        )
        state, hot, calm, cooldown = s.state, s.hot_days, s.calm_days, s.cooldown_until
        if s.alert:
            alerts.append((day, s.alert))
    return state, alerts


def test_single_hot_day_only_cools():
    assert run([0.7, 0.1, 0.1, 0.1]) == (hs.HEALTHY, ["cooling", "recovered"])


def test_hysteresis_keeps_at_risk_between_thresholds():
    state, alerts = run([0.7, 0.7, 0.3, 0.3, 0.3, 0.3])
    assert state == hs.AT_RISK and alerts == ["cooling", "at_risk"]


def test_cooldown_suppresses_new_cooling_after_recovery():
    _, alerts = run([0.7, 0.7, 0.1, 0.1, 0.1, 0.45, 0.45, 0.1])
    assert alerts == ["cooling", "at_risk", "recovered"]


def test_churn_is_one_alert_and_final_until_activity_returns():
    state, alerts = run([0.7, 0.7, 0.9, 0.9, 0.9], churn_at=3)
    assert state == hs.CHURNED and alerts == ["cooling", "at_risk", "churned"]


def test_not_enough_data_never_alerts_on_low_risk():
    s = hs.step(
        hs.NOT_ENOUGH_DATA,
        0,
        0,
        0,
        day=1,
        risk=0.1,
        mature=False,
        churned=False,
        active=True,
        th=TH,
    )
    assert s.state == hs.NOT_ENOUGH_DATA and s.alert is None


def test_risk_just_over_the_line_must_last_longer_than_strong_risk():
    th = TH._replace(strong=0.7, moderate_days=3)
    assert first_at_risk([0.9, 0.9, 0.9], th) == 1
    assert first_at_risk([0.65, 0.65, 0.1], th) is None, "a two-day spike just over the line"
    assert first_at_risk([0.65, 0.65, 0.65], th) == 2
    assert first_at_risk([0.65, 0.9], th) == 1, "the strong day's evidence is enough"


def test_confirmed_evidence_escalates_on_its_first_day_from_healthy_or_cooling():
    """Hysteresis guards against noise; a recorded fact (repeated failed payments) needs none."""
    th = TH._replace(strong=0.7, moderate_days=3)

    def one_day(state: int, risk: float, confirmed: bool) -> tuple[int, str | None]:
        s = hs.step(
            state, 0, 0, 0, day=5, risk=risk, mature=True, churned=False, active=True, th=th,
            confirmed=confirmed,
        )  # fmt: skip
        return s.state, s.alert

    for before in (hs.HEALTHY, hs.COOLING):
        assert one_day(before, 0.6, confirmed=True) == (hs.AT_RISK, "at_risk")
    assert one_day(hs.HEALTHY, 0.6, confirmed=False) == (hs.COOLING, "cooling")
    # confirmed skips the wait, not the at-risk threshold
    assert one_day(hs.HEALTHY, 0.5, confirmed=True) == (hs.COOLING, "cooling")
