"""The alert state machine: healthy → cooling → at_risk → churned, and recovered.

Hysteresis: escalation to ``at_risk`` needs the risk above its threshold on several
consecutive scored days (more when it is only just above); recovery needs it below a lower
threshold for several days. After a recovery a cooldown suppresses new cooling alerts. Each
transition is one alert.
"""

from __future__ import annotations

from typing import NamedTuple

NOT_ENOUGH_DATA = 0
HEALTHY = 1
COOLING = 2
AT_RISK = 3
CHURNED = 4

STATE_NAMES = ("not_enough_data", "healthy", "cooling", "at_risk", "churned")
RECOVERED = "recovered"


class Thresholds(NamedTuple):
    cooling: float
    at_risk: float
    recovered: float
    at_risk_days: int
    recovery_days: int
    cooldown_days: int
    #: a risk this high escalates after ``at_risk_days``; a risk between ``at_risk`` and it
    #: (evidence just over the line) has to last ``moderate_days``
    strong: float = 0.0
    moderate_days: int = 0

    def escalates(self, hot_days: int, risk: float, confirmed: bool = False) -> bool:
        """Enough consecutive days at risk: fewer when the evidence is strong, one when it is
        a recorded fact rather than a measurement (``confirmed``).

        >>> th = Thresholds(0.4, 0.6, 0.25, 2, 5, 7, strong=0.7, moderate_days=3)
        >>> th.escalates(2, 0.8), th.escalates(2, 0.65), th.escalates(3, 0.65)
        (True, False, True)
        >>> th.escalates(1, 0.65), th.escalates(1, 0.65, confirmed=True)
        (False, True)
        """
        if confirmed and hot_days >= 1:
            return True
        if hot_days < self.at_risk_days:
            return False
        return risk >= self.strong or hot_days >= self.moderate_days


class Step(NamedTuple):
    state: int
    hot_days: int
    calm_days: int
    cooldown_until: int
    #: the alert to emit: a state name, "recovered", or None
    alert: str | None


def step(
    state: int,
    hot_days: int,
    calm_days: int,
    cooldown_until: int,
    *,
    day: int,
    risk: float,
    mature: bool,
    churned: bool,
    active: bool,
    th: Thresholds,
    confirmed: bool = False,
) -> Step:
    """Advance one scored day.

    Hysteresis is there because activity measurements are noisy: a quiet week can be chance.
    ``confirmed`` says the at-risk evidence is a recorded fact instead (repeated failed
    payments): waiting for more days of it only costs the time to act.

    >>> th = Thresholds(0.4, 0.6, 0.25, 2, 3, 7)
    >>> s = step(HEALTHY, 0, 0, 0, day=1, risk=0.7, mature=True, churned=False, active=True, th=th)
    >>> STATE_NAMES[s.state], s.alert
    ('cooling', 'cooling')
    >>> s = step(s.state, s.hot_days, s.calm_days, s.cooldown_until, day=2, risk=0.7,
    ...          mature=True, churned=False, active=True, th=th)
    >>> STATE_NAMES[s.state], s.alert
    ('at_risk', 'at_risk')
    >>> for d in (3, 4, 5):
    ...     s = step(s.state, s.hot_days, s.calm_days, s.cooldown_until, day=d, risk=0.1,
    ...              mature=True, churned=False, active=True, th=th)
    >>> STATE_NAMES[s.state], s.alert, s.cooldown_until
    ('healthy', 'recovered', 12)
    """
    hot_days = hot_days + 1 if risk >= th.at_risk else 0
    calm_days = calm_days + 1 if risk < th.recovered else 0

    if churned:
        if state != CHURNED:
            return Step(CHURNED, 0, 0, cooldown_until, STATE_NAMES[CHURNED])
        return Step(CHURNED, 0, 0, cooldown_until, None)
    if state == CHURNED:
        # Reactivation: activity came back after a churn.
        if active and calm_days >= th.recovery_days:
            return Step(HEALTHY, 0, 0, day + th.cooldown_days, RECOVERED)
        return Step(CHURNED, hot_days, calm_days, cooldown_until, None)

    if state in (NOT_ENOUGH_DATA, HEALTHY):
        base = HEALTHY if mature else NOT_ENOUGH_DATA
        if th.escalates(hot_days, risk, confirmed):
            return Step(AT_RISK, hot_days, 0, cooldown_until, STATE_NAMES[AT_RISK])
        if risk >= th.cooling and day >= cooldown_until:
            return Step(COOLING, hot_days, 0, cooldown_until, STATE_NAMES[COOLING])
        return Step(base, hot_days, calm_days, cooldown_until, None)

    if state == COOLING and th.escalates(hot_days, risk, confirmed):
        return Step(AT_RISK, hot_days, 0, cooldown_until, STATE_NAMES[AT_RISK])
    if calm_days >= th.recovery_days:
        next_state = HEALTHY if mature else NOT_ENOUGH_DATA
        return Step(next_state, 0, 0, day + th.cooldown_days, RECOVERED)
    return Step(state, hot_days, calm_days, cooldown_until, None)
