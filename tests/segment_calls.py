"""A simulated product as Segment calls whose track calls do not name their team (no
``context.groupId``): each user's group call comes before their first track call, as a
Segment source that calls ``analytics.group`` at sign-in sends them."""

from __future__ import annotations

import orjson

from detector.simulator import SimulationConfig, simulate, to_segment


def segment_without_teams(teams: int, days: int, seed: int) -> tuple[list[bytes], list[str]]:
    """The lines, and the team each line belongs to."""
    lines: list[bytes] = []
    teams_of_lines: list[str] = []
    grouped: set[str] = set()
    for ev in simulate(SimulationConfig(teams=teams, days=days, seed=seed)).events():
        msg = to_segment(ev)
        user = msg.get("userId")
        if msg["type"] == "track" and user is not None:
            if user not in grouped:
                grouped.add(user)
                call = {"type": "group", "messageId": f"g-{user}", "userId": user}
                call |= {"groupId": ev["team_id"], "timestamp": msg["timestamp"], "traits": {}}
                lines.append(orjson.dumps(call))
                teams_of_lines.append(ev["team_id"])
            del msg["context"]
        lines.append(orjson.dumps(msg))
        teams_of_lines.append(ev["team_id"])
    return lines, teams_of_lines
