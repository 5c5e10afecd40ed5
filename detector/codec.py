"""Compact byte encodings of engine state, for the state changelog topic and restores.

Records are small (an orjson list of slot values, plus the raw bucket ring for teams)
rather than pickles: smaller, safe to load, and readable from any language.
"""

from __future__ import annotations

from array import array
from operator import attrgetter
from typing import Any

import orjson

from .dedup import RecentIds
from .engine import NEVER, PartitionEngine
from .risk_model import RiskModel
from .state import FIELDS, NOTHING, RING_DAYS, TeamState, UserState

_SEP = b"\x00"  # never appears raw in JSON output
_TEAM_FIELDS = tuple(s for s in TeamState.__slots__ if s not in ("ring", "recent_ids"))
_RING_BYTES = 8 * RING_DAYS * FIELDS
_USER_FIELDS = UserState.__slots__
# fields added since the first release, per release, with what an older record implies for
# them: no risk-model snapshots awaiting a label (a new list per team: a shared one would be
# appended to by every team), no open days (their activity was already taken in; the user's
# settled up to its last day), no pending team-level events or open tasks (they were applied
# on arrival)
_TEAM_ADDED: tuple[dict[str, Any], ...] = (
    {"snapshots": []},
    {"open_days": 0, "open_days_early": 0},
    {"open_tasks": NOTHING, "pending": NOTHING},
    {"champion_left_first": False},
)
_USER_ADDED = ("open_days", "settled_day")  # 0 and the user's last_day (decode_user)
_USER_FIELDS_V1 = tuple(s for s in _USER_FIELDS if s not in _USER_ADDED)
#: a record's field values as one tuple, read in C: a getattr per field made writing the
#: records ~3% of the worker's time; orjson writes the tuple as the same JSON array
_team_values = attrgetter(*_TEAM_FIELDS)
_user_values = attrgetter(*_USER_FIELDS)


def _team_layouts() -> dict[int, tuple[tuple[str, ...], dict[str, Any]]]:
    """Record length -> (the fields it holds, the defaults of those it lacks)."""
    layouts = {}
    for release in range(len(_TEAM_ADDED) + 1):
        missing = {k: v for added in _TEAM_ADDED[release:] for k, v in added.items()}
        names = tuple(s for s in _TEAM_FIELDS if s not in missing)
        layouts[len(names)] = (names, missing)
    return layouts


_TEAM_LAYOUTS = _team_layouts()


class UndecodableRecord(ValueError):
    """A state record that does not decode. It names the record's key and what is wrong, so
    the log of a restore that fails on it says which record to look at."""

    def __init__(self, kind: str, key: bytes | str | None, problem: str) -> None:
        if isinstance(key, bytes):
            key = key.decode("utf-8", "backslashreplace")
        super().__init__(f"{kind} record {key if key is not None else '(key unknown)'}: {problem}")


def _values(data: bytes, kind: str, key: bytes | str | None) -> list[Any]:
    try:
        values = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UndecodableRecord(kind, key, f"not JSON ({exc})") from None
    if not isinstance(values, list):
        raise UndecodableRecord(kind, key, f"not a JSON array but {type(values).__name__}")
    return values


def encode_team(team: TeamState) -> bytes:
    """
    >>> t = TeamState("t-1", 100, True); t.ring[3] = 2.0; t.plan = "pro"
    >>> u = decode_team(encode_team(t)); (u.team_id, u.plan, u.ring[3], u.first_day)
    ('t-1', 'pro', 2.0, 100)
    """
    return (
        orjson.dumps(_team_values(team)) + _SEP + team.ring.tobytes() + team.recent_ids.to_bytes()
    )


def decode_team(data: bytes, key: bytes | str | None = None) -> TeamState:
    """A team record (``key``: its key, named if it does not decode: UndecodableRecord)."""
    head, _, ring = data.partition(_SEP)
    team = TeamState.__new__(TeamState)
    values = _values(head, "team", key)
    layout = _TEAM_LAYOUTS.get(len(values))
    if layout is None:
        known = ", ".join(map(str, sorted(_TEAM_LAYOUTS)))
        raise UndecodableRecord("team", key, f"{len(values)} fields, expected one of {known}")
    names, missing = layout
    for name, default in missing.items():
        setattr(team, name, default.copy() if isinstance(default, list) else default)
    for name, value in zip(names, values, strict=True):
        setattr(team, name, value)
    if not team.pending:
        team.pending = NOTHING  # shared, not an empty list per team
    if not team.open_tasks:
        team.open_tasks = NOTHING
    # a damaged ring would decode and fail later, while scoring: past the point where a
    # restore can still drop its snapshot and read the changelog instead
    if len(ring) < _RING_BYTES:
        raise UndecodableRecord("team", key, f"{len(ring)} bytes of ring, expected {_RING_BYTES}")
    team.ring = array("d")
    team.ring.frombytes(ring[:_RING_BYTES])
    try:
        team.recent_ids = RecentIds.from_bytes(ring[_RING_BYTES:])
    except ValueError as exc:
        raise UndecodableRecord("team", key, str(exc)) from None
    return team


def encode_user(user: UserState) -> bytes:
    """
    >>> u = UserState("t-1", 5); u.gap = 1.5
    >>> v = decode_user(encode_user(u)); (v.team_id, v.gap, v.first_day)
    ('t-1', 1.5, 5)
    """
    return dumps_held(_user_values(user))


def dumps_held(value: Any) -> bytes:
    """``orjson.dumps(value)`` for bytes that are kept a while (until a commit sends them).

    orjson returns its output in the buffer it wrote it to, at least 4 KB (it sets the
    length, never shrinks it): a ~100-byte user record held ~4 KB until it was sent, and a
    day close encodes every user of a partition at once (the worker's RSS reached 2.7 GB at
    200k users in the scale benchmark). This copies it out, at ~0.1 µs.

    >>> dumps_held([1, "a"])
    b'[1,"a"]'
    """
    return memoryview(orjson.dumps(value)).tobytes()


def decode_user(data: bytes, key: bytes | str | None = None) -> UserState:
    """A user record (``key``: its key, named if it does not decode: UndecodableRecord)."""
    user = UserState.__new__(UserState)
    values = _values(data, "user", key)
    old = len(values) != len(_USER_FIELDS)
    if old and len(values) != len(_USER_FIELDS_V1):
        expected = f"{len(_USER_FIELDS_V1)} or {len(_USER_FIELDS)}"
        raise UndecodableRecord("user", key, f"{len(values)} fields, expected {expected}")
    for name, value in zip(_USER_FIELDS_V1 if old else _USER_FIELDS, values, strict=True):
        setattr(user, name, value)
    if old:
        user.open_days, user.settled_day = 0, user.last_day
    return user


def encode_partition(engine: PartitionEngine, source_offset: int) -> bytes:
    """Partition-wide state: watermark, population, sweep position and the source offset
    this state reflects (events at or below it are already applied)."""
    wm, pop = engine.watermark, engine.population
    meta: dict[str, Any] = {
        "offset": source_offset,
        "wm": [wm.max_seen, wm.pending, wm.newest_candidate],
        "pop": [
            {str(k): v for k, v in pop.counts.items()},
            pop.weekday,
            {str(k): v for k, v in pop.factors.items()},
            pop.first_day,
            pop.closed_day,
            pop.task_log_norm,
            {str(k): v for k, v in pop.team_counts.items()},
            pop.weekday_teams,
            {str(k): v for k, v in pop.task_days.items()},
        ],
        "group_closed": {str(k): v for k, v in engine.group_closed.items()},
        "user_day_closed": engine.user_day_closed,
        "first_day": engine.first_day,
        "next_sweep_ms": engine.next_sweep_ms,
        "feature_bits": engine.feature_bits,
        # with the types it is about: a restart with other key action types starts over
        "key_action_since": [engine.key_action_since, sorted(engine.key_types)],
        "risk": engine.risk.state(),
    }
    # sorted keys: the same state gives the same bytes, however its dicts were filled
    return orjson.dumps(meta, option=orjson.OPT_SORT_KEYS)


def restore_partition(
    engine: PartitionEngine,
    meta: bytes | None,
    teams: dict[str, TeamState],
    users: dict[str, UserState],
) -> int:
    """Rebuild an engine from stored records; returns the source offset they reflect (-1: none)."""
    engine.teams = teams
    engine.users = users
    engine.reconcile_users()
    engine.groups = {}
    for team in teams.values():
        engine.groups.setdefault(team.offset_ms, {})[team.team_id] = team
    offset = -1
    if meta is not None:
        offset = _restore_meta(engine, meta)
        # what a local snapshot older than the changelog's tombstones brought back
        engine.evict_again()
    engine.wheel = {}
    engine.unsettled = {}
    for uid, user in engine.users.items():
        if user.check_day >= 0:
            engine.wheel.setdefault(user.check_day, []).append(uid)
        if user.open_days:
            group = engine.teams[user.team_id].offset_ms
            engine.unsettled.setdefault(group, []).append(uid)
    return offset


def _restore_meta(engine: PartitionEngine, meta: bytes) -> int:
    """The partition-wide state (:func:`encode_partition`); returns its source offset."""
    m = orjson.loads(meta)
    wm, pop = engine.watermark, engine.population
    wm.max_seen, wm.pending = m["wm"][:2]
    # the newest jump candidate: in records before it was kept, the newest team's earliest
    wm.newest_candidate = m["wm"][2] if len(m["wm"]) > 2 else max(wm.pending.values(), default=0)
    saved = m["pop"]
    counts, weekday, factors, first_day, closed_day, tasks, team_counts, weekday_teams = saved[:8]
    # a record written before task durations were kept per day has none pending
    pop.task_days = {int(k): v for k, v in saved[8].items()} if len(saved) > 8 else {}
    pop.counts = {int(k): v for k, v in counts.items()}
    pop.team_counts = {int(k): v for k, v in team_counts.items()}
    pop.weekday_teams = weekday_teams
    pop.weekday = weekday
    pop.factors = {int(k): v for k, v in factors.items()}
    pop.first_day, pop.closed_day, pop.task_log_norm = first_day, closed_day, tasks
    engine.group_closed = {int(k): v for k, v in m["group_closed"].items()}
    engine.user_day_closed = m["user_day_closed"]
    engine.first_day = m["first_day"]
    engine.next_sweep_ms = m["next_sweep_ms"]
    engine.feature_bits = m["feature_bits"]
    if "key_action_since" in m:
        since, types = m["key_action_since"]
        engine.key_action_since = since if set(types) == engine.key_types else NEVER
    else:  # written before it was kept: seen if some team has performed one
        engine.key_action_since = 0 if any(t.key_total for t in engine.teams.values()) else NEVER
    if "risk" in m:  # state written before the risk model existed has none
        engine.risk = RiskModel.from_state(m["risk"])
    return int(m["offset"])
