"""An online churn-risk model that learns from the cancellations the stream itself carries.

HubSpot-CHI style: the hand rules' signal strengths (and the activity level against the own
baseline) are the features; a River logistic regression learns how much each one is worth from
outcomes, with delayed labels:

* every ``snapshot_every_days`` a team's features are kept (at most ``max_snapshots`` of them);
* when the team cancels, each kept snapshot taken ``label_min_days`` to ``horizon_days`` before
  the cancellation is a positive (the team looked like that that long before it left);
* a snapshot older than ``horizon_days`` whose team has not cancelled is a negative.

One model per partition (population-level), a few dozen floats of state, so it is saved with
the partition's other state. Its probability is calibrated to the stream's own base rate
(unweighted log loss) and its per-feature contributions (weight x value) explain it.
Nothing here runs per event: snapshots and labels happen at team-day close.

>>> model = RiskModel()
>>> for _ in range(200):
...     model.learn({"team_decay": 0.9, "silence": 0.0}, True)
...     model.learn({"team_decay": 0.0, "silence": 0.0}, False)
...     model.learn({"team_decay": 0.1, "silence": 0.0}, False)
>>> model.predict({"team_decay": 0.9}) > 0.7 > 0.2 > model.predict({"team_decay": 0.0})
True
>>> top = model.contributions({"team_decay": 0.9, "silence": 0.0})[0]
>>> top[0], top[1] > 0
('team_decay', True)
>>> clone = RiskModel.from_state(model.state())
>>> clone.predict({"team_decay": 0.5}) == model.predict({"team_decay": 0.5})
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from river import linear_model, optim
from river.utils import VectorDict

#: features, in the order snapshots store them
FEATURES: tuple[str, ...] = (
    "hand_risk",
    "activity_deficit",
    "team_decay",
    "silence",
    "champion_loss",
    "user_decay",
    "key_action_stopped",
    "onboarding",
    "struggle",
    "payment_failure",
)

_LR = 0.2
_INTERCEPT_LR = 0.1
_L2 = 1e-4


#: Prior: before any label, the model is a monotone transform of the hand rules' risk (a rare
#: event, likelier as the hand risk rises); the labels then teach it what each signal is worth.
PRIOR_WEIGHTS = {"hand_risk": 4.0}
PRIOR_INTERCEPT = -3.5


def _new_regression() -> linear_model.LogisticRegression:
    model = linear_model.LogisticRegression(
        optimizer=optim.SGD(_LR), l2=_L2, intercept_lr=_INTERCEPT_LR
    )
    model._weights = VectorDict(dict(PRIOR_WEIGHTS))
    model.intercept = PRIOR_INTERCEPT
    return model


class RiskModel:
    """A River logistic regression over :data:`FEATURES`, with counts of what it learned."""

    __slots__ = ("held_out", "holdout", "model", "negatives", "positives")

    def __init__(self) -> None:
        self.model = _new_regression()
        self.positives = 0
        self.negatives = 0
        #: evaluation only: entities whose labels are scored, never learned
        self.holdout: Callable[[str], bool] | None = None
        self.held_out: list[tuple[bool, float, dict[str, float]]] = []

    def learn(self, x: dict[str, float], y: bool) -> None:
        self.model.learn_one(x, y)
        if y:
            self.positives += 1
        else:
            self.negatives += 1

    def label(self, entity_id: str, x: dict[str, float], y: bool) -> None:
        """A delayed label arrived: learn it, or (held-out entity) score it and keep it."""
        if self.holdout is not None and self.holdout(entity_id):
            self.held_out.append((y, self.predict(x), x))
        else:
            self.learn(x, y)

    def predict(self, x: dict[str, float]) -> float:
        """Probability that an entity with these features cancels within the horizon."""
        return float(self.model.predict_proba_one(x)[True])

    def ready(self, min_positives: int) -> bool:
        return self.positives >= min_positives and self.negatives >= min_positives

    def contributions(self, x: dict[str, float]) -> list[tuple[str, float]]:
        """Per-feature contributions to the log-odds (weight x value), largest first."""
        weights = self.model.weights
        parts = [(name, weights.get(name, 0.0) * value) for name, value in x.items() if value]
        parts.sort(key=lambda item: -item[1])
        return parts

    def state(self) -> dict[str, Any]:
        """Compact, JSON-ready state (weights, intercept, counts)."""
        return {
            "w": {k: v for k, v in self.model.weights.items() if v},
            "b": self.model.intercept,
            "n": [self.positives, self.negatives],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RiskModel:
        model = cls()
        model.model._weights = VectorDict(dict(state["w"]))
        model.model.intercept = float(state["b"])
        model.positives, model.negatives = state["n"]
        return model


def snapshot(day: int, features: dict[str, float]) -> list[float]:
    """A compact, sparse snapshot: the day, then (feature index, value) for non-zero features.

    >>> snapshot(3, {"silence": 0.5, "team_decay": 0.0})
    [3, 3, 0.5]
    """
    out: list[float] = [day]
    for index, name in enumerate(FEATURES):
        value = features.get(name, 0.0)
        if value:
            out += [index, round(value, 4)]
    return out


def features_of(snap: list[float]) -> dict[str, float]:
    """The features of a snapshot (absent ones are zero).

    >>> features_of(snapshot(3, {"silence": 0.5}))
    {'silence': 0.5}
    """
    return {FEATURES[int(snap[i])]: snap[i + 1] for i in range(1, len(snap), 2)}


def roc_auc(labels: list[bool], scores: list[float]) -> float | None:
    """Area under the ROC curve (ties count half); ``None`` without both classes.

    >>> roc_auc([True, False, True, False], [0.9, 0.1, 0.8, 0.3])
    1.0
    >>> roc_auc([True, False], [0.5, 0.5]), roc_auc([True], [0.3])
    (0.5, None)
    """
    pairs = sorted(zip(scores, labels, strict=True))
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    if not n_pos or not n_neg:
        return None
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        mid_rank = (i + j + 1) / 2.0  # ranks are 1-based
        rank_sum += mid_rank * sum(1 for _, y in pairs[i:j] if y)
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


__all__ = ["FEATURES", "RiskModel", "features_of", "roc_auc", "snapshot"]
