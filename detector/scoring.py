"""Turn an entity's features into signals, reasons and one risk score.

Each signal has a strength in [0, 1]; strengths combine as independent evidence
(noisy-or), so two weak signals together count more than either alone. Strengths are
calibrated against the alert thresholds: ~0.45 is "cooling", ≥ 0.6 is "at risk".
"""

from __future__ import annotations

import math
from typing import NamedTuple


class Reason(NamedTuple):
    code: str
    message: str
    observed: float | None
    baseline: float | None

    def to_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "message": self.message,
            "observed": None if self.observed is None else round(self.observed, 4),
            "baseline": None if self.baseline is None else round(self.baseline, 4),
        }


class Signal(NamedTuple):
    name: str
    strength: float
    reasons: tuple[Reason, ...]


#: Signals that measure the same thing (how much the entity is still active) are one
#: piece of evidence: within this family only the strongest counts.
ACTIVITY_FAMILY = frozenset({"team_decay", "silence", "user_decay", "champion_loss"})


def combine(signals: list[Signal]) -> float:
    """Noisy-or over independent evidence; the activity family counts once (its maximum).

    >>> combine([]), round(combine([Signal("a", 0.5, ()), Signal("b", 0.5, ())]), 2)
    (0.0, 0.75)
    >>> round(combine([Signal("silence", 0.45, ()), Signal("team_decay", 0.3, ())]), 6)
    0.45
    """
    activity = 0.0
    keep = 1.0
    for signal in signals:
        if signal.name in ACTIVITY_FAMILY:
            activity = max(activity, signal.strength)
        else:
            keep *= 1.0 - signal.strength
    return 1.0 - keep * (1.0 - activity)


#: Within the activity family (the keys), the more specific cause first: "the champion left and the
#: team follows" tells customer success what to do, "activity fell" does not.
SPECIFICITY = {"champion_loss": 3, "user_decay": 2, "silence": 1, "team_decay": 0}
#: strength at which a signal is at-risk evidence on its own (see the module docstring)
AT_RISK_STRENGTH = 0.6
#: strength at which a signal is cooling evidence
COOLING_STRENGTH = 0.45


def explain(signals: list[Signal], cause: str | None = None) -> tuple[str, list[Reason]]:
    """The signal to name and every reason, that signal first, then by strength.

    The strongest signal is named, except that an activity signal strong enough to be at
    risk on its own is named before a less specific one of the family (which counts once),
    and that ``cause``, an activity signal the entity's history singles out as what started
    the fall, is named once it is at cooling strength.

    >>> explain([Signal("a", 0.3, (Reason("x", "", 1.0, 2.0),)), Signal("b", 0.6, ())])[0]
    'b'
    >>> explain([Signal("team_decay", 1.0, ()), Signal("champion_loss", 0.6, ())])[0]
    'champion_loss'
    >>> explain([Signal("team_decay", 1.0, ()), Signal("champion_loss", 0.45, ())])[0]
    'team_decay'
    >>> explain([Signal("payment_failure", 0.8, ()), Signal("silence", 0.65, ())])[0]
    'payment_failure'
    >>> explain([Signal("team_decay", 1.0, ()), Signal("champion_loss", 0.45, ())], "champion_loss")[0]
    'champion_loss'
    """
    ordered = sorted(signals, key=lambda sig: -sig.strength)
    if ordered[0].name in SPECIFICITY:
        specific = max(
            (
                sig
                for sig in ordered
                if sig.name in SPECIFICITY
                and (
                    sig.strength >= AT_RISK_STRENGTH
                    or (sig.name == cause and sig.strength >= COOLING_STRENGTH)
                )
            ),
            key=lambda sig: SPECIFICITY[sig.name],
            default=ordered[0],
        )
        if SPECIFICITY.get(specific.name, 0) > SPECIFICITY.get(ordered[0].name, 0):
            ordered.remove(specific)
            ordered.insert(0, specific)
    return ordered[0].name, [reason for sig in ordered for reason in sig.reasons]


def clip01(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


def poisson_cdf(k: float, lam: float) -> float:
    """P(X <= k) for X ~ Poisson(lam); normal approximation for large lam.

    >>> round(poisson_cdf(0, 2.0), 4), round(poisson_cdf(2, 2.0), 4)
    (0.1353, 0.6767)
    >>> poisson_cdf(5, 0.0)
    1.0
    """
    if lam <= 0.0:
        return 1.0
    k = math.floor(k)
    if k < 0:
        return 0.0
    if lam > 60.0:
        z = (k + 0.5 - lam) / math.sqrt(lam)
        return 0.5 * math.erfc(-z / math.sqrt(2.0))
    term = math.exp(-lam)
    total = term
    for i in range(1, int(k) + 1):
        term *= lam / i
        total += term
        if total >= 1.0:
            return 1.0
    return total


def decay_strength(normalised_ratio: float, p_value: float, alpha: float) -> float:
    """Strength of "activity fell below the own baseline", gated by significance.

    A drop to half the baseline is at-risk level; a drop that chance explains as well
    (small teams, few events) is capped below the alert thresholds.

    >>> decay_strength(0.5, 0.001, 0.01), decay_strength(0.5, 0.2, 0.01)
    (0.6, 0.3)
    >>> decay_strength(0.9, 0.001, 0.01)
    0.0
    """
    strength = clip01((0.8 - normalised_ratio) / 0.5)
    if p_value > 0.05:
        return min(strength, 0.3)
    if p_value > alpha:
        return min(strength, 0.55)
    return round(strength, 6)


def sharp_drop_strength(normalised_ratio: float, p_value: float, alpha: float) -> float:
    """Strength of "the last few days are a small fraction of usual", gated by significance.

    Stricter than :func:`decay_strength` (a few days are noisier than a week): at risk only
    below about a third of the usual activity, and only when chance cannot explain it.

    >>> sharp_drop_strength(0.2, 1e-5, 1e-3), sharp_drop_strength(0.2, 0.01, 1e-3)
    (1.0, 0.0)
    >>> sharp_drop_strength(0.35, 1e-5, 1e-3), sharp_drop_strength(0.6, 1e-5, 1e-3)
    (0.5, 0.0)
    """
    if p_value > alpha:
        return 0.0
    return round(clip01((0.5 - normalised_ratio) / 0.3), 6)


def silence_strength(effective_days: float, threshold_days: float) -> float:
    """Strength of an absence measured against the entity's own cadence.

    >>> silence_strength(3, 10), silence_strength(6, 10), silence_strength(10, 10), silence_strength(20, 10)
    (0.0, 0.45, 0.65, 0.85)
    """
    if effective_days >= 2.0 * threshold_days:
        return 0.85
    if effective_days >= threshold_days:
        return 0.65
    if effective_days >= 0.6 * threshold_days:
        return 0.45
    return 0.0


def payment_strength(failures: int) -> float:
    """Involuntary churn risk from consecutive failed payments.

    One failure that a retry fixes is common; repeated failures are not.

    >>> payment_strength(0), payment_strength(1), payment_strength(2), payment_strength(4)
    (0.0, 0.35, 0.6, 0.8)
    """
    return (0.0, 0.35, 0.6)[failures] if failures < 3 else 0.8


#: Activity is clustered (a user away is away for days; teams share holidays), so counts
#: vary more than a Poisson model says. Scaling both sides by this dispersion keeps a
#: one-person team's vacation week from looking significant.
DISPERSION = 1.5


def low_activity_p_value(observed: float, expected: float) -> float:
    """One-sided p-value of seeing ``observed`` or less when ``expected`` is usual.

    >>> round(low_activity_p_value(0, 4.0), 3), low_activity_p_value(0, 60.0) < 1e-6
    (0.069, True)
    """
    return poisson_cdf(observed / DISPERSION, expected / DISPERSION)
