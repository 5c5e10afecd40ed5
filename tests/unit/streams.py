"""Small hand-made event streams for engine tests (no simulator, fully controlled)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from detector.events import Event
from detector.timemodel import DAY_MS, HOUR_MS

START_DAY = 20_454  # 2026-01-01 (a Thursday), UTC day number


@dataclass
class TeamSpec:
    team_id: str
    users: int
    #: day index -> activity multiplier in [0, 1] (1 = usual)
    level: Callable[[int], float] = lambda day: 1.0
    events_per_user_day: int = 6
    key_every: int = 3
    cancel_day: int | None = None
    payment_failures: tuple[int, ...] = ()


def stream(teams: list[TeamSpec], days: int, seed: int = 1) -> Iterator[Event]:
    """Events of all teams, in time order: weekday-heavy, each user with own habits."""
    rng = random.Random(seed)
    counter = 0
    habits = {(t.team_id, u): 0.75 + 0.2 * rng.random() for t in teams for u in range(t.users)}
    for day in range(days):
        todays: list[Event] = []
        weekday = (START_DAY + day + 3) % 7  # 0 = Monday
        for t in teams:
            if t.cancel_day is not None and day > t.cancel_day:
                continue
            base_ts = (START_DAY + day) * DAY_MS
            if day in t.payment_failures:
                counter += 1
                todays.append(
                    Event(
                        f"e{counter}",
                        "payment.failed",
                        base_ts + 8 * HOUR_MS,
                        None,
                        t.team_id,
                        {"amount": 10.0},
                    )
                )
            if t.cancel_day == day:
                counter += 1
                todays.append(
                    Event(
                        f"e{counter}",
                        "subscription.cancelled",
                        base_ts + 20 * HOUR_MS,
                        None,
                        t.team_id,
                        {},
                    )
                )
            level = t.level(day) * (1.0 if weekday < 5 else 0.15)
            for u in range(t.users):
                if rng.random() >= habits[(t.team_id, u)] * level:
                    continue
                for k in range(t.events_per_user_day):
                    counter += 1
                    ts = base_ts + 9 * HOUR_MS + rng.randrange(8 * HOUR_MS)
                    etype = "document.published" if k % t.key_every == 0 else "feature.used"
                    todays.append(
                        Event(
                            f"e{counter}",
                            etype,
                            ts,
                            f"{t.team_id}-u{u}",
                            t.team_id,
                            {"feature": f"f{k % 5}"},
                        )
                    )
        todays.sort(key=lambda e: e.ts_ms)
        yield from todays


def healthy_teams(n: int, users: int = 6, prefix: str = "h") -> list[TeamSpec]:
    return [TeamSpec(f"{prefix}{i}", users) for i in range(n)]
