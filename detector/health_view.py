"""JSON views of one team's or user's state, for the health query API."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import health as hs
from .engine import LatestScore, PartitionEngine
from .pseudonyms import Pseudonyms
from .scoring import explain
from .state import (
    ACTIVE_USERS,
    EVENTS,
    FEATURES,
    KEY_ACTIONS,
    RING_DAYS,
    TASK_FAILURES,
    TeamState,
    UserState,
)
from .timemodel import DAY_MS, iso_ms


def _day(day: int) -> str:
    return iso_ms(day * DAY_MS)[:10]


def _risk(score: LatestScore | None) -> dict[str, Any] | None:
    """The latest score: risk, strongest signal and every reason (None before the first)."""
    if score is None:
        return None
    signal, reasons = explain(score.signals) if score.signals else (None, [])
    return {
        "day": _day(score.day),
        "score": round(score.risk, 6),
        "signal": signal,
        "reasons": [r.to_dict() for r in reasons],
    }


def _features(team: TeamState) -> dict[str, Any]:
    """Activity per day over the last 1, 7 and 14 days (compare with "baseline")."""
    out: dict[str, Any] = {}
    windows = team.windows(team.ring_day, (1, 7, 14))
    for days, sums in windows.items():
        out[f"last_{days}d"] = {
            "events_per_day": round(sums[EVENTS] / days, 3),
            "active_users_per_day": round(sums[ACTIVE_USERS] / days, 3),
            "key_actions_per_day": round(sums[KEY_ACTIONS] / days, 3),
            "features_used": int(sums[FEATURES]),
            "task_failures": int(sums[TASK_FAILURES]),
        }
    return out


def team(team: TeamState, engine: PartitionEngine) -> dict[str, Any]:
    """Current state, latest risk and reasons, features, baselines and recent daily activity."""
    recent = []
    for day in range(team.ring_day - RING_DAYS + 1, team.ring_day + 1):
        if day < team.first_day:
            continue
        bucket = team.window(day, 1)
        recent.append(
            {
                "day": _day(day),
                "events": int(bucket[EVENTS]),
                "active_users": int(bucket[ACTIVE_USERS]),
                "key_actions": int(bucket[KEY_ACTIONS]),
            }
        )
    return {
        "entity_type": "team",
        "team_id": team.team_id,
        "state": hs.STATE_NAMES[team.health],
        "plan": team.plan,
        "mrr": team.mrr,
        "seats": team.seats,
        "timezone": team.tz,
        "events_total": team.events_total,
        "active_days": team.active_days,
        "first_day": _day(team.first_day),
        "last_active_day": _day(team.last_active_day) if team.active_days else None,
        "baseline": {
            "active_users_per_day": round(team.base_active, 3),
            "events_per_day": round(team.base_events, 3),
            "key_actions_per_day": round(team.base_key, 3),
            "features_per_week": round(team.base_breadth, 3),
            "days_between_activity": round(team.gap, 3),
        },
        "risk": _risk(engine.scores.get(team.team_id)),
        "features": _features(team),
        "users_at_risk": team.users_at_risk,
        "payment_failures": team.payment_failures,
        "cancelled": team.cancelled,
        "recent_days": recent,
    }


def user(user_id: str, user: UserState, engine: PartitionEngine) -> dict[str, Any]:
    return {
        "entity_type": "user",
        "user_id": user_id,
        "team_id": user.team_id,
        "state": hs.STATE_NAMES[user.health],
        "events_total": user.events_total,
        "active_days": user.active_days,
        "first_day": _day(user.first_day),
        "last_active_day": _day(user.last_day) if user.active_days else None,
        "active_days_per_week": {
            "recent": round(user.fast * 7, 3),
            "usual": round(user.slow * 7, 3),
        },
        "days_between_activity": round(user.gap, 3),
        # users are scored on check days; without a current signal their risk is 0
        "risk": _risk(engine.user_scores.get(user_id))
        or {"day": None, "score": 0.0, "signal": None, "reasons": []},
    }


def find_user(
    engines: Iterable[PartitionEngine], wanted: str, pseudonyms: Pseudonyms
) -> dict[str, Any] | None:
    """The view of the user ``wanted`` names (a pseudonym when pseudonyms are enabled)."""
    for engine in engines:
        uid = pseudonyms.find(engine.users, wanted)
        state = engine.users.get(uid) if uid is not None else None
        if uid is not None and state is not None:
            return {**user(uid, state, engine), "user_id": pseudonyms.user(uid)}
    return None
