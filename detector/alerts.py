"""Alerts as CloudEvents 1.0 structured-mode JSON (schemas/churn_alert.schema.json).

The id is a hash of what the alert says happened (entity, transition, day), so the same
input always yields the same ids and consumers can de-duplicate redeliveries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from . import __version__
from .scoring import Reason
from .timemodel import DAY_MS, iso_ms

SOURCE = "/churn-detector"
TYPE_PREFIX = "io.churndetector.alert."
SEVERITY = {"cooling": "warning", "at_risk": "critical", "churned": "critical", "recovered": "info"}


def alert_id(entity_type: str, entity_id: str, state: str, day: int) -> str:
    """Deterministic alert id.

    >>> alert_id("team", "t-1", "at_risk", 20500) == alert_id("team", "t-1", "at_risk", 20500)
    True
    >>> len(alert_id("team", "t-1", "at_risk", 20500))
    32
    """
    key = f"{entity_type}\x1f{entity_id}\x1f{state}\x1f{day}".encode()
    return hashlib.blake2b(key, digest_size=16).hexdigest()


def build_alert(
    *,
    entity_type: str,
    entity_id: str,
    team_id: str,
    state: str,
    previous_state: str,
    signal: str,
    risk: float,
    reasons: Sequence[Reason],
    day: int,
    event_time_ms: int,
    window_days: int,
    plan: str | None,
    mrr: float | None,
    key: str | None = None,
) -> dict[str, Any]:
    """One alert as a JSON-ready dict; its id from ``key`` when given, else the entity id."""
    risk = round(min(1.0, max(0.0, risk)), 4)
    return {
        "specversion": "1.0",
        "id": alert_id(entity_type, key or entity_id, state, day),
        "source": SOURCE,
        "type": TYPE_PREFIX + state,
        "subject": f"{entity_type}/{entity_id}",
        "time": iso_ms(event_time_ms),
        "datacontenttype": "application/json",
        "data": {
            "entity_type": entity_type,
            "entity_id": entity_id,
            "team_id": team_id,
            "signal": signal,
            "severity": SEVERITY[state],
            "state": state,
            "previous_state": previous_state,
            "risk_score": risk,
            "priority": round(risk * (mrr or 0.0), 2),
            "reasons": [r.to_dict() for r in reasons],
            "window": {
                "start": iso_ms(event_time_ms - window_days * DAY_MS),
                "end": iso_ms(event_time_ms),
            },
            "plan": plan,
            "mrr": mrr,
            "event_time": iso_ms(event_time_ms),
            "detector_version": __version__,
        },
    }
