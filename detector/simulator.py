"""Deterministic simulator of a collaborative-document SaaS product (teams write and publish).

It is the data source of the demo, the tests and the benchmarks. It is meant to look like a
real product, not to make detection easy: per-user habits and heavy-tailed activity, weekly
rhythm in each team's local time zone, regional public holidays, one company-wide holiday
period, individual vacations, staff turnover, daily noise, a global tracking outage, failed
payments that recover, teams arriving throughout the window as trials, seat growth and plan
upgrades, and nine team scenarios (three healthy, six churn types).

Everything is pure standard library, driven by ``random.Random`` seeded from strings derived
from ``SimulationConfig.seed``: the same config gives byte-identical output. Each team draws
from its own random streams (seed + team number); scenarios are dealt by quota (largest
remainder of ``scenario_mix``, every scenario at least once when there are enough teams).

Window and time: the window is ``days`` *local* calendar days from ``start`` for every team
(its local day 0 begins at local midnight, so Asian teams' first events precede ``start``
00:00Z and American teams' last events follow the UTC end). Timestamps are RFC 3339 UTC with
milliseconds. UTC offsets come from :mod:`zoneinfo` (evaluated at local noon of each day).

Ground truth (:meth:`Simulation.truth`): one record per team and per user. A team is
``churned`` only if its ``subscription.cancelled`` happens inside the window; a churn scenario
whose cancellation would fall after the window keeps its ``scenario`` name with
``churned=False`` and ``churned_at=None`` (``decay_start`` is still given when the decline
began inside the window). See :meth:`Simulation.truth` for the user rules.

>>> sim = simulate(SimulationConfig(teams=3, days=10, seed=1))
>>> events = list(sim.events())
>>> events == list(simulate(SimulationConfig(teams=3, days=10, seed=1)).events())
True
>>> sorted(events[0])
['event_id', 'properties', 'team_id', 'timestamp', 'type', 'user_id']
"""

from __future__ import annotations

import datetime as _dt
import gzip
import math
import random
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO
from zoneinfo import ZoneInfo

import orjson

__all__ = [
    "CHURN_SCENARIOS",
    "DEFAULT_SCENARIO_MIX",
    "EVENT_TYPES",
    "FEATURES",
    "HEALTHY_SCENARIOS",
    "LIFECYCLE_TYPES",
    "SCENARIOS",
    "TASKS",
    "Simulation",
    "SimulationConfig",
    "easter",
    "format_ts",
    "mrr_for",
    "public_holidays",
    "simulate",
    "to_segment",
    "write_jsonl",
]

DAY_MS = 86_400_000
_EPOCH = _dt.date(1970, 1, 1)
_NEVER = 1 << 30  # a day index after any window

HEALTHY_SCENARIOS = ("healthy_stable", "healthy_seasonal", "healthy_growing")
CHURN_SCENARIOS = (
    "gradual_decay",
    "champion_leaves",
    "sudden_drop",
    "trial_never_activates",
    "struggling",
    "involuntary",
)
SCENARIOS = HEALTHY_SCENARIOS + CHURN_SCENARIOS
#: Scenario of a user of any team who left the product for good (staff turnover) while the
#: team carried on; such a user is churned in the truth.
USER_LEFT = "user_left"

#: Default mix: 62% healthy, 38% churn types (weights, normalised).
DEFAULT_SCENARIO_MIX: tuple[tuple[str, float], ...] = (
    ("healthy_stable", 0.34),
    ("healthy_seasonal", 0.12),
    ("healthy_growing", 0.16),
    ("gradual_decay", 0.10),
    ("champion_leaves", 0.06),
    ("sudden_drop", 0.05),
    ("trial_never_activates", 0.08),
    ("struggling", 0.05),
    ("involuntary", 0.04),
)

FEATURES = (
    "editor",
    "comments",
    "search",
    "templates",
    "sharing",
    "export",
    "integrations",
    "dashboards",
    "mentions",
    "history",
    "permissions",
    "api",
)
_FEATURE_POPULARITY = (100, 60, 55, 35, 45, 25, 18, 15, 30, 20, 10, 6)
TASKS = ("import_data", "setup_integration", "publish_document", "invite_member")
#: Median seconds a task takes in a healthy team.
_TASK_NORM_S = {
    "import_data": 95.0,
    "setup_integration": 240.0,
    "publish_document": 35.0,
    "invite_member": 22.0,
}
_TASK_ERRORS = {
    "import_data": ("invalid_file_format", "timeout", "file_too_large", "encoding_error"),
    "setup_integration": ("auth_failed", "timeout", "permission_denied", "rate_limited"),
    "publish_document": ("validation_error", "conflict", "timeout"),
    "invite_member": ("invalid_email", "seat_limit_reached", "timeout"),
}
_OTHER_TASKS = ("import_data", "import_data", "setup_integration", "invite_member", "invite_member")

LIFECYCLE_TYPES = frozenset(
    {
        "trial.started",
        "subscription.started",
        "subscription.cancelled",
        "payment.failed",
        "payment.succeeded",
        "team.updated",
    }
)
EVENT_TYPES = (
    "session.started",
    "session.ended",
    "feature.used",
    "document.published",
    "task.completed",
    "task.failed",
    "trial.started",
    "subscription.started",
    "subscription.cancelled",
    "payment.failed",
    "payment.succeeded",
    "team.updated",
)

PLANS = ("trial", "starter", "pro", "business", "enterprise")
_PLAN_PRICE = {"trial": 0.0, "starter": 8.0, "pro": 15.0, "business": 25.0, "enterprise": 40.0}

#: (IANA zone, weight, region used for public holidays)
_ZONES = (
    ("America/New_York", 14, "us"),
    ("America/Chicago", 7, "us"),
    ("America/Denver", 3, "us"),
    ("America/Los_Angeles", 10, "us"),
    ("America/Toronto", 4, "ca"),
    ("America/Sao_Paulo", 4, "br"),
    ("Europe/London", 10, "uk"),
    ("Europe/Berlin", 8, "eu"),
    ("Europe/Paris", 6, "eu"),
    ("Europe/Madrid", 3, "eu"),
    ("Europe/Amsterdam", 3, "eu"),
    ("Europe/Stockholm", 2, "eu"),
    ("Asia/Tokyo", 4, "jp"),
    ("Asia/Singapore", 3, "sg"),
    ("Asia/Kolkata", 4, "in"),
    ("Australia/Sydney", 4, "au"),
    ("UTC", 3, "none"),
)

# Population weekday rhythm (Mon..Sun) applied on top of each user's habit.
_WEEKDAY = (1.0, 1.0, 0.97, 0.95, 0.82, 1.0, 1.0)
_HISTORY_DAYS = 35  # a team has at least this much history before a (non-trial) decline
_TRIAL_DAYS = 14
_OUTAGE_LOSS = 0.9


# --------------------------------------------------------------------------- public helpers


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. Every field has a default; the defaults are the demo.

    ``holiday_start_day``/``outage_day`` of ``None`` mean automatic placement (see
    :func:`simulate`); ``new_team_fraction`` is the approximate share of teams arriving after
    day 0; ``user_turnover`` is the share of users of established teams who leave the product
    during the window (a replacement usually takes the seat).
    """

    teams: int = 300
    days: int = 180
    seed: int = 7
    start: _dt.date = _dt.date(2026, 1, 5)  # a Monday
    scenario_mix: tuple[tuple[str, float], ...] = DEFAULT_SCENARIO_MIX
    new_team_fraction: float = 0.25
    user_turnover: float = 0.04
    holiday: bool = True
    holiday_start_day: int | None = None
    outage: bool = True
    outage_day: int | None = None
    regional_holidays: bool = True


def format_ts(epoch_ms: int) -> str:
    """RFC 3339 UTC timestamp with milliseconds.

    >>> format_ts(0)
    '1970-01-01T00:00:00.000Z'
    >>> format_ts(1772356502123)
    '2026-03-01T09:15:02.123Z'
    """
    day, rest = divmod(epoch_ms, DAY_MS)
    date = _EPOCH + _dt.timedelta(days=day)
    sec, ms = divmod(rest, 1000)
    h, sec = divmod(sec, 3600)
    m, s = divmod(sec, 60)
    return f"{date.isoformat()}T{h:02d}:{m:02d}:{s:02d}.{ms:03d}Z"


def easter(year: int) -> _dt.date:
    """Gregorian Easter Sunday (anonymous Gregorian algorithm).

    >>> easter(2026), easter(2027)
    (datetime.date(2026, 4, 5), datetime.date(2027, 3, 28))
    """
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month, day = divmod(h + l_ - 7 * m + 114, 31)
    return _dt.date(year, month, day + 1)


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> _dt.date:
    """n-th (1-based; -1 = last) given weekday (Mon=0) of a month.

    >>> _nth_weekday(2026, 5, 0, -1), _nth_weekday(2026, 11, 3, 4)
    (datetime.date(2026, 5, 25), datetime.date(2026, 11, 26))
    """
    if n > 0:
        first = _dt.date(year, month, 1)
        return first + _dt.timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
    nxt = _dt.date(year + month // 12, month % 12 + 1, 1)
    last = nxt - _dt.timedelta(days=1)
    return last - _dt.timedelta(days=(last.weekday() - weekday) % 7)


@lru_cache(maxsize=256)
def public_holidays(region: str, year: int) -> frozenset[_dt.date]:
    """Main public holidays of a region (approximate; weekend shifting ignored).

    Regions: us, ca, br, uk, eu, jp, sg, in, au, none.

    >>> _dt.date(2026, 7, 4) in public_holidays("us", 2026)
    True
    >>> sorted(d.isoformat() for d in public_holidays("eu", 2026) if d.month == 4)
    ['2026-04-03', '2026-04-06']
    >>> public_holidays("none", 2026)
    frozenset()
    """
    d = _dt.date
    e = easter(year)
    td = _dt.timedelta
    days: list[_dt.date] = []
    if region == "us":
        days = [
            d(year, 1, 1),
            _nth_weekday(year, 1, 0, 3),
            _nth_weekday(year, 2, 0, 3),
            _nth_weekday(year, 5, 0, -1),
            d(year, 6, 19),
            d(year, 7, 4),
            _nth_weekday(year, 9, 0, 1),
            _nth_weekday(year, 11, 3, 4),
            _nth_weekday(year, 11, 3, 4) + td(days=1),
            d(year, 12, 25),
        ]
    elif region == "ca":
        victoria = d(year, 5, 24) - td(days=d(year, 5, 24).weekday())
        days = [
            d(year, 1, 1),
            e - td(days=2),
            victoria,
            d(year, 7, 1),
            _nth_weekday(year, 9, 0, 1),
            _nth_weekday(year, 10, 0, 2),
            d(year, 12, 25),
            d(year, 12, 26),
        ]
    elif region == "br":
        days = [
            d(year, 1, 1),
            e - td(days=48),
            e - td(days=47),
            e - td(days=2),
            d(year, 4, 21),
            d(year, 5, 1),
            d(year, 9, 7),
            d(year, 10, 12),
            d(year, 11, 2),
            d(year, 11, 15),
            d(year, 12, 25),
        ]
    elif region == "uk":
        days = [
            d(year, 1, 1),
            e - td(days=2),
            e + td(days=1),
            _nth_weekday(year, 5, 0, 1),
            _nth_weekday(year, 5, 0, -1),
            _nth_weekday(year, 8, 0, -1),
            d(year, 12, 25),
            d(year, 12, 26),
        ]
    elif region == "eu":
        days = [
            d(year, 1, 1),
            e - td(days=2),
            e + td(days=1),
            d(year, 5, 1),
            e + td(days=39),
            e + td(days=50),
            d(year, 12, 25),
            d(year, 12, 26),
        ]
    elif region == "jp":
        days = [
            d(year, 1, 1),
            d(year, 1, 2),
            d(year, 1, 3),
            _nth_weekday(year, 1, 0, 2),
            d(year, 2, 11),
            d(year, 4, 29),
            d(year, 5, 3),
            d(year, 5, 4),
            d(year, 5, 5),
            _nth_weekday(year, 7, 0, 3),
            d(year, 8, 11),
            d(year, 11, 3),
            d(year, 11, 23),
        ]
    elif region == "sg":
        days = [d(year, 1, 1), e - td(days=2), d(year, 5, 1), d(year, 8, 9), d(year, 12, 25)]
    elif region == "in":
        days = [d(year, 1, 26), d(year, 8, 15), d(year, 10, 2), d(year, 12, 25)]
    elif region == "au":
        days = [
            d(year, 1, 1),
            d(year, 1, 26),
            e - td(days=2),
            e + td(days=1),
            d(year, 4, 25),
            _nth_weekday(year, 6, 0, 2),
            d(year, 12, 25),
            d(year, 12, 26),
        ]
    return frozenset(days)


def mrr_for(plan: str, seats: int, price_factor: float = 1.0) -> float:
    """Monthly recurring revenue of a plan: seats x per-seat price, volume discount, rounded.

    >>> mrr_for("pro", 10), mrr_for("enterprise", 300, 0.9), mrr_for("trial", 4)
    (150.0, 8640.0, 0.0)
    """
    discount = 0.8 if seats > 200 else 0.9 if seats > 50 else 1.0
    return round(seats * _PLAN_PRICE[plan] * discount * price_factor, 2)


def to_segment(event: dict) -> dict:
    """Canonical event -> Segment spec message (``track``, or ``group`` for ``team.updated``).

    >>> to_segment({"event_id": "e1", "type": "feature.used", "timestamp": "T", "user_id": "u-1",
    ...             "team_id": "t-1", "properties": {"feature": "editor"}})
    ... # doctest: +NORMALIZE_WHITESPACE
    {'type': 'track', 'messageId': 'e1', 'event': 'feature.used', 'userId': 'u-1',
     'timestamp': 'T', 'context': {'groupId': 't-1'}, 'properties': {'feature': 'editor'}}
    >>> to_segment({"event_id": "e2", "type": "payment.failed", "timestamp": "T", "user_id": None,
    ...             "team_id": "t-1", "properties": {"amount": 1.0}})["anonymousId"]
    't-1'
    >>> to_segment({"event_id": "e3", "type": "team.updated", "timestamp": "T", "user_id": "u-1",
    ...             "team_id": "t-1", "properties": {"plan": "pro", "mrr": 15.0, "seats": 1,
    ...             "timezone": "UTC"}})  # doctest: +NORMALIZE_WHITESPACE
    {'type': 'group', 'messageId': 'e3', 'groupId': 't-1', 'userId': 'u-1', 'timestamp': 'T',
     'traits': {'plan': 'pro', 'mrr': 15.0, 'seats': 1, 'timezone': 'UTC'}}
    """
    user_id = event.get("user_id")
    if event["type"] == "team.updated":
        msg: dict[str, Any] = {
            "type": "group",
            "messageId": event["event_id"],
            "groupId": event["team_id"],
        }
        if user_id is not None:
            msg["userId"] = user_id
        else:
            msg["anonymousId"] = event["team_id"]
        msg["timestamp"] = event["timestamp"]
        msg["traits"] = dict(event["properties"])
        return msg
    msg = {"type": "track", "messageId": event["event_id"], "event": event["type"]}
    if user_id is not None:
        msg["userId"] = user_id
    else:
        msg["anonymousId"] = event["team_id"]
    msg["timestamp"] = event["timestamp"]
    msg["context"] = {"groupId": event["team_id"]}
    msg["properties"] = event["properties"]
    return msg


def write_jsonl(
    path: str | Path,
    records: Iterable[dict],
    progress: Callable[[int], object] | None = None,
    name: str | Path | None = None,
) -> int:
    """Write records as JSON lines (orjson); ``-`` is stdout, ``*.gz`` is gzip. Returns count.

    ``progress`` (optional) is called with the running count every 10,000 records.
    ``name``: the file's final name when ``path`` is a temporary file to be renamed to it;
    gzip's header records it (what ``gunzip -N`` restores) instead of the temporary name.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x.jsonl")
    >>> write_jsonl(p, [{"a": 1}, {"b": None}])
    2
    >>> open(p, "rb").read()
    b'{"a":1}\\n{"b":null}\\n'
    """
    fh: BinaryIO
    if str(path) == "-":
        return _write_lines(sys.stdout.buffer, records, progress)
    if str(path).endswith(".gz"):
        header = Path(name if name is not None else path).name
        with (
            open(path, "wb") as raw,
            gzip.GzipFile(filename=header, mode="wb", compresslevel=5, fileobj=raw) as zipped,
        ):
            return _write_lines(zipped, records, progress)  # type: ignore[arg-type]
    with open(path, "wb") as fh:
        return _write_lines(fh, records, progress)


def _write_lines(
    fh: BinaryIO, records: Iterable[dict], progress: Callable[[int], object] | None
) -> int:
    dumps = orjson.dumps
    opt = orjson.OPT_APPEND_NEWLINE
    buf: list[bytes] = []
    add = buf.append
    n = 0
    for rec in records:
        add(dumps(rec, option=opt))
        n += 1
        if not n % 10_000:
            fh.write(b"".join(buf))
            buf.clear()
            if progress is not None:
                progress(n)
    if buf:
        fh.write(b"".join(buf))
    fh.flush()
    if progress is not None:
        progress(n)
    return n


def _clip(x: float, lo: float, hi: float) -> float:
    """Clamp.

    >>> _clip(2.0, 0.0, 1.0), _clip(-1.0, 0.0, 1.0), _clip(0.5, 0.0, 1.0)
    (1.0, 0.0, 0.5)
    """
    return lo if x < lo else hi if x > hi else x


def _mix_counts(mix: tuple[tuple[str, float], ...], teams: int) -> dict[str, int]:
    """Scenario counts by largest remainder, each positive-weight scenario at least once
    when there are enough teams.

    >>> _mix_counts((("a", 0.5), ("b", 0.3), ("c", 0.2)), 10)
    {'a': 5, 'b': 3, 'c': 2}
    >>> _mix_counts((("a", 0.98), ("b", 0.01), ("c", 0.01)), 5)
    {'a': 3, 'b': 1, 'c': 1}
    """
    total = sum(w for _, w in mix if w > 0)
    if total <= 0:
        raise ValueError("scenario_mix needs a positive weight")
    exact = [(name, teams * w / total) for name, w in mix if w > 0]
    counts = {name: int(x) for name, x in exact}
    rest = teams - sum(counts.values())
    for name, _ in sorted(exact, key=lambda nx: (-(nx[1] - int(nx[1])), nx[0]))[:rest]:
        counts[name] += 1
    if teams >= len(counts):
        for name in counts:
            if counts[name] == 0:
                donor = max(counts, key=lambda k: (counts[k], k))
                counts[donor] -= 1
                counts[name] = 1
    return counts


# --------------------------------------------------------------------------- plan


class _User:
    __slots__ = (
        "champion",
        "feats",
        "join",
        "k",
        "leave",
        "more",
        "quit",
        "replacement_of",
        "role",
        "sess_med",
        "spa",
        "span_s",
        "start_s",
        "uid",
        "vac",
        "wp",
        "writer",
    )

    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.role = "regular"
        self.wp: tuple[float, ...] = (0.0,) * 7
        self.more = 0.2
        self.sess_med = 600.0
        self.spa = 70.0
        self.writer = 1.0
        self.start_s = 9 * 3600
        self.span_s = 8 * 3600
        self.feats: tuple[str, ...] = ("editor",)
        self.k = 1
        self.join = 0
        self.leave = _NEVER
        self.vac: frozenset[int] = frozenset()
        self.quit = 2.0  # decline progress at which the user stops (churn scenarios)
        self.champion = False
        self.replacement_of: str | None = None


class _Team:
    __slots__ = (
        "admin",
        "arrival",
        "cancel_rel",
        "champion",
        "dc",
        "decay_rel",
        "dip",
        "drop_days",
        "drop_level",
        "ds",
        "end_day",
        "end_rel",
        "fail_rate",
        "features",
        "forced",
        "hol_days",
        "hol_level",
        "idx",
        "mrr",
        "offsets",
        "plan",
        "pub_rate",
        "region",
        "scenario",
        "sched",
        "seats",
        "struggle_fail",
        "struggle_mult",
        "task_rate",
        "tid",
        "trend",
        "tz",
        "users",
    )

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.tid = f"t-{idx:05d}"
        self.scenario = "healthy_stable"
        self.tz = "UTC"
        self.region = "none"
        self.offsets: list[int] = []
        self.arrival = 0
        self.end_day = _NEVER  # local day of cancellation (no events after end_rel)
        self.end_rel = _NEVER * DAY_MS
        self.users: list[_User] = []
        self.admin: _User | None = None
        self.champion: _User | None = None
        self.features: tuple[str, ...] = ()
        self.pub_rate = 0.03
        self.task_rate = 0.02
        self.fail_rate = 0.04
        self.trend = 0.0
        self.hol_level = 0.3
        self.dip: tuple[int, int, float] | None = None
        self.ds = _NEVER  # decline start day (churn scenarios)
        self.dc = _NEVER  # planned cancellation day (may be beyond the window)
        self.cancel_rel: int | None = None
        self.decay_rel: int | None = None
        self.sched: dict[int, list[tuple[int, str, str | None, dict]]] = {}
        self.forced: dict[int, list[tuple[_User, int, float]]] = {}
        self.hol_days: frozenset[int] = frozenset()
        self.drop_level = 0.15
        self.drop_days = 2
        self.struggle_mult = 3.0
        self.struggle_fail = 0.4
        self.seats = 1
        self.plan = "pro"
        self.mrr = 0.0


def _weighted(r: random.Random, items: tuple, weights: tuple) -> Any:
    return r.choices(items, weights)[0]


def _seats(r: random.Random) -> int:
    """Heavy-tailed seats: most 2-20, a few 100+, capped at 500."""
    if r.random() < 0.07:
        return 1
    return min(500, max(2, int(1.2 + 2.2 * r.paretovariate(1.05))))


def _plan_for(r: random.Random, seats: int) -> str:
    if seats <= 5:
        return _weighted(r, ("starter", "pro", "business"), (55, 40, 5))
    if seats <= 30:
        return _weighted(r, ("starter", "pro", "business", "enterprise"), (20, 50, 25, 5))
    if seats <= 100:
        return _weighted(r, ("pro", "business", "enterprise"), (25, 50, 25))
    return _weighted(r, ("business", "enterprise"), (30, 70))


_ROLES = ("power", "regular", "occasional", "dormant")
#: role -> (p_active lo, hi; P(another session); median session s; s per action; writer; breadth)
_ROLE_PARAMS: dict[str, tuple[float, float, float, float, float, float, float]] = {
    "champion": (0.93, 0.93, 0.5, 1300.0, 100.0, 1.7, 1.0),
    "power": (0.72, 0.9, 0.45, 1100.0, 120.0, 1.2, 0.9),
    "regular": (0.35, 0.7, 0.3, 700.0, 150.0, 1.0, 0.7),
    "occasional": (0.06, 0.25, 0.12, 420.0, 180.0, 0.6, 0.5),
    "dormant": (0.0, 0.02, 0.05, 240.0, 200.0, 0.3, 0.3),
}


def _make_user(r: random.Random, uid: str, role: str, team: _Team) -> _User:
    u = _User(uid)
    u.role = role
    # base probability of being active on a preferred working day, sessions, session length
    # (p_lo, p_hi, more sessions, median session s, s per action, writer, feature breadth)
    p_lo, p_hi, u.more, med, u.spa, u.writer, breadth = _ROLE_PARAMS[role]
    p = r.uniform(p_lo, p_hi)
    u.sess_med = med * r.uniform(0.6, 1.5)
    u.writer *= r.uniform(0.3, 1.7)
    habit = r.random()
    if habit < 0.6:  # Mon-Fri regular
        wk = [1.0] * 5 + [r.uniform(0.02, 0.1)] * 2
    elif habit < 0.9:  # 2-3 fixed days a week
        days = r.sample(range(5), r.choice((2, 3)))
        wk = [1.0 if i in days else 0.2 for i in range(5)] + [r.uniform(0.02, 0.06)] * 2
        p = min(0.97, p * 1.3)
    else:  # irregular, also on weekends
        wk = [0.65] * 5 + [r.uniform(0.15, 0.35)] * 2
    u.wp = tuple(min(0.97, p * wk[i] * _WEEKDAY[i]) for i in range(7))
    u.start_s = int(r.uniform(7.5, 10.5) * 3600)
    u.span_s = int(r.uniform(6.5, 10.0) * 3600)
    k = max(1, min(len(team.features), round(len(team.features) * breadth * r.uniform(0.7, 1.15))))
    u.k = k
    u.feats = team.features
    return u


def _vacations(r: random.Random, days: int) -> frozenset[int]:
    per_year = r.choice((1, 2, 3))
    expect = per_year * (days + 15) / 365.0
    n = int(expect) + (1 if r.random() < expect - int(expect) else 0)
    out: set[int] = set()
    for _ in range(n):
        length = r.randint(5, 15)
        s = r.randint(-15, max(-14, days - 1))
        out.update(range(s, s + length))
    return frozenset(x for x in out if 0 <= x < days)


class _Planner:
    """Builds the static plan of every team (who, when, which scenario) from the config."""

    def __init__(self, cfg: SimulationConfig) -> None:
        self.cfg = cfg
        self.D = cfg.days
        self.start = cfg.start
        self._offset_cache: dict[str, list[int]] = {}
        self.user_counter = 0
        self.holiday_days = self._holiday_days()
        self.outage_day = self._outage_day()

    # -- calendar
    def _holiday_days(self) -> frozenset[int]:
        cfg, D = self.cfg, self.D
        if not cfg.holiday or D <= 0:
            return frozenset()
        days = set()
        for i in range(D):
            date = cfg.start + _dt.timedelta(days=i)
            if (date.month == 12 and date.day >= 24) or (date.month == 1 and date.day == 1):
                days.add(i)
        if days:
            return frozenset(days)
        s = cfg.holiday_start_day
        if s is None:
            s = min(112, round(D * 0.62))
        return frozenset(i for i in range(s, s + 7) if 0 <= i < D)

    def _outage_day(self) -> int | None:
        cfg, D = self.cfg, self.D
        if not cfg.outage or D < 3:
            return None
        if cfg.outage_day is not None:
            return cfg.outage_day
        d = min(75, round(D * 0.42))
        start_dow = cfg.start.weekday()
        while d > 1 and (d in self.holiday_days or (start_dow + d) % 7 >= 5):
            d -= 1  # a working day, so that the loss is visible
        return d

    def offsets(self, tz: str) -> list[int]:
        """UTC offset (ms) at local noon for local days -1..D (index d+1)."""
        got = self._offset_cache.get(tz)
        if got is None:
            zone = ZoneInfo(tz)
            got = []
            for i in range(-1, self.D + 2):
                date = self.start + _dt.timedelta(days=i)
                off = _dt.datetime(date.year, date.month, date.day, 12, tzinfo=zone).utcoffset()
                got.append(int(off.total_seconds() * 1000) if off is not None else 0)
            self._offset_cache[tz] = got
        return got

    def new_uid(self) -> str:
        self.user_counter += 1
        return f"u-{self.user_counter:07d}"

    # -- teams
    def plan(self) -> list[_Team]:
        cfg = self.cfg
        counts = _mix_counts(cfg.scenario_mix, cfg.teams)
        scen: list[str] = []
        for name, _ in cfg.scenario_mix:
            scen += [name] * counts.get(name, 0)
        random.Random(f"{cfg.seed}:scenarios").shuffle(scen)
        unknown = set(scen) - set(SCENARIOS)
        if unknown:
            raise ValueError(f"unknown scenarios in scenario_mix: {sorted(unknown)}")
        # share of healthy teams arriving late so that ~new_team_fraction of all are new
        n = max(1, cfg.teams)
        trials = counts.get("trial_never_activates", 0)
        churners = sum(counts.get(s, 0) for s in CHURN_SCENARIOS) - trials
        healthy = sum(counts.get(s, 0) for s in HEALTHY_SCENARIOS)
        need = cfg.new_team_fraction * n - trials - 0.1 * churners
        p_new_healthy = _clip(need / healthy, 0.0, 0.9) if healthy else 0.0
        return [self._team(i + 1, s, p_new_healthy) for i, s in enumerate(scen)]

    def rel(self, t: _Team, day: int, local_s: float) -> int:
        """Relative ms (from UTC midnight of start-1) of a local time on a local day."""
        offs = t.offsets
        return (day + 1) * DAY_MS - offs[min(max(day + 1, 0), len(offs) - 1)] + int(local_s * 1000)

    def _team(self, idx: int, scenario: str, p_new_healthy: float) -> _Team:
        cfg, D = self.cfg, self.D
        r = random.Random(f"{cfg.seed}:plan:{idx}")
        t = _Team(idx)
        t.scenario = scenario
        zi = r.choices(range(len(_ZONES)), [z[1] for z in _ZONES])[0]
        t.tz, _, t.region = _ZONES[zi]
        t.offsets = self.offsets(t.tz)
        if cfg.regional_holidays:
            years = {(cfg.start + _dt.timedelta(days=i)).year for i in (0, max(0, D - 1))}
            hol: set[_dt.date] = set()
            for y in range(min(years), max(years) + 1):
                hol |= public_holidays(t.region, y)
            t.hol_days = frozenset(
                (h - cfg.start).days for h in hol if 0 <= (h - cfg.start).days < D
            )

        # arrival
        trial_never = scenario == "trial_never_activates"
        if trial_never:
            t.arrival = (
                r.randint(1, max(1, D - _TRIAL_DAYS - 2))
                if r.random() < 0.9
                else r.randint(max(1, D - _TRIAL_DAYS), max(1, D - 1))
            )
        elif scenario in HEALTHY_SCENARIOS:
            t.arrival = r.randint(1, max(1, D - 10)) if r.random() < p_new_healthy else 0
        else:
            t.arrival = r.randint(1, max(1, int(0.3 * D))) if r.random() < 0.1 else 0
        is_new = t.arrival > 0

        # size, plan, product culture
        seats = r.randint(1, 3) if trial_never else _seats(r)
        if scenario not in HEALTHY_SCENARIOS and seats > 100 and r.random() < 0.6:
            seats = _seats(r)  # big accounts churn less often
        if scenario == "champion_leaves" and seats < 3:
            seats = r.randint(3, 8)
        plan = _plan_for(r, seats)
        price_factor = r.uniform(0.85, 1.05)
        order = list(FEATURES[1:])
        weights = list(_FEATURE_POPULARITY[1:])
        feats = ["editor"]
        while order:
            j = r.choices(range(len(order)), weights)[0]
            feats.append(order.pop(j))
            weights.pop(j)
        breadth = 3 + int(9 * r.random() ** 1.4)
        t.features = tuple(feats[:breadth])
        t.pub_rate = r.uniform(0.012, 0.05)
        t.task_rate = r.uniform(0.01, 0.03)
        t.fail_rate = r.uniform(0.02, 0.07)
        t.trend = r.uniform(-0.15, 0.12)
        t.hol_level = r.uniform(0.25, 0.45)

        # users
        big = seats >= 50
        role_w = (8, 30, 40, 22) if big else (15, 45, 28, 12)
        users: list[_User] = []
        champ_i = 0 if seats == 1 else r.randrange(seats)
        if scenario == "champion_leaves":
            champ_i = r.randrange(1, seats)
        for i in range(seats):
            role = "champion" if i == champ_i else _weighted(r, _ROLES, role_w)
            if trial_never:
                role = "occasional"
            users.append(_make_user(r, self.new_uid(), role, t))
        t.users = users
        t.admin = users[0]
        t.champion = users[champ_i]
        users[champ_i].champion = True
        if is_new:  # the admin starts, the others are invited during the first days
            for u in users[1:]:
                u.join = t.arrival + 1 + min(int(r.expovariate(1 / 3.0)), 20)
            users[0].join = t.arrival
        for u in users:
            u.vac = _vacations(r, D)

        # seat/plan timeline: (day, kind, value) with kind "plan", "add" (seats) or "scale"
        first_plan = "trial" if is_new else plan
        timeline: list[tuple[int, str, Any]] = []
        convert_day = t.arrival + _TRIAL_DAYS if is_new else None
        if convert_day is not None and not trial_never:
            timeline.append((convert_day, "plan", plan))

        if scenario == "healthy_growing":
            extra = max(1, round(seats * r.uniform(0.3, 1.2)))
            extra = min(extra, 500 - seats)
            lo = t.arrival + (_TRIAL_DAYS + 3 if is_new else 7)
            joins = sorted(r.randint(lo, D - 1) for _ in range(extra)) if lo < D else []
            if joins and r.random() < 0.4 and plan != "enterprise":
                timeline.append((joins[len(joins) // 2], "plan", PLANS[PLANS.index(plan) + 1]))
            for day in joins:
                role = _weighted(r, _ROLES, role_w)
                u = _make_user(r, self.new_uid(), role, t)
                u.join = day
                u.vac = _vacations(r, D)
                users.append(u)
                timeline.append((day, "add", 1))

        # scenario timing
        self._scenario_timing(r, t)

        # turnover: some users leave for good, most are replaced
        if scenario != "trial_never_activates":
            for u in list(users):
                if r.random() >= cfg.user_turnover or u.join > 0:
                    continue
                day = r.randint(30, max(30, D - 1))
                if day >= min(D, t.ds) or (u.champion and scenario == "champion_leaves"):
                    continue
                u.leave = day
                if r.random() < 0.8 and day + 3 < D:
                    repl = _make_user(r, self.new_uid(), _weighted(r, _ROLES, role_w), t)
                    repl.join = day + r.randint(3, 30)
                    repl.vac = _vacations(r, D)
                    repl.replacement_of = u.uid
                    if repl.join < D:
                        users.append(repl)
                else:
                    timeline.append((day, "add", -1))  # the seat is removed

        if scenario == "gradual_decay" and t.ds < D and r.random() < 0.4:
            # a seat reduction before cancelling
            day = t.ds + int((t.dc - t.ds) * r.uniform(0.4, 0.8))
            timeline.append((day, "scale", r.uniform(0.5, 0.8)))
        t.users = [u for u in users if u.join < D]

        # decline: which users drop out at which progress
        if scenario in ("gradual_decay", "champion_leaves"):
            for u in t.users:
                u.quit = r.uniform(0.1, 1.3)
        elif scenario == "struggling":
            for u in t.users:
                u.quit = r.uniform(0.35, 1.6)

        self._lifecycle(r, t, (t.arrival, seats, first_plan), timeline, price_factor, convert_day)
        return t

    def _scenario_timing(self, r: random.Random, t: _Team) -> None:
        D = self.D
        s = t.scenario
        if s == "healthy_seasonal":
            length = r.randint(14, 21)
            summer = [
                i
                for i in range(max(t.arrival + 21, 14), D - length)
                if (self.start + _dt.timedelta(days=i)).month in (6, 7, 8)
            ]
            lo, hi = max(t.arrival + 21, int(0.3 * D)), int(0.85 * D) - length
            if summer:
                begin = r.choice(summer)
            elif lo < hi:
                begin = r.randint(lo, hi)
            else:
                begin = -1
            if begin >= 0:
                t.dip = (begin, begin + length, r.uniform(0.5, 0.6))
            return
        if s in HEALTHY_SCENARIOS:
            return
        if s == "trial_never_activates":
            t.ds = t.arrival
            t.dc = t.arrival + _TRIAL_DAYS
            return
        if s == "involuntary":
            return  # planned with the billing calendar in _lifecycle
        lo_hi = {
            "gradual_decay": (14, 70),
            "champion_leaves": (21, 56),
            "sudden_drop": (14, 28),
            "struggling": (21, 56),
        }[s]
        dur = r.randint(*lo_hi)
        dc = int(r.triangular(0.3 * D, 1.15 * D, 0.8 * D))
        ds = dc - dur
        if ds < t.arrival + _HISTORY_DAYS:
            ds = t.arrival + _HISTORY_DAYS
            dc = ds + dur
        t.ds, t.dc = ds, dc
        if s == "sudden_drop":
            t.drop_level = r.uniform(0.1, 0.2)
            t.drop_days = r.randint(1, 4)
        elif s == "struggling":
            t.struggle_mult = r.uniform(2.0, 5.0)
            t.struggle_fail = r.uniform(0.3, 0.55)

    def _lifecycle(
        self,
        r: random.Random,
        t: _Team,
        first: tuple[int, int, str],
        timeline: list[tuple[int, str, Any]],
        price_factor: float,
        convert_day: int | None,
    ) -> None:
        D = self.D
        admin = t.admin
        assert admin is not None
        aid = admin.uid
        sched = t.sched

        def add(day: int, local_s: float, typ: str, uid: str | None, props: dict) -> int:
            rel = self.rel(t, day, local_s)
            if 0 <= day < D:
                sched.setdefault(day, []).append((rel, typ, uid, props))
            return rel

        def work_time() -> float:
            return r.uniform(9.0, 17.5) * 3600

        # trial / first appearance
        if t.arrival > 0:
            t0 = work_time()
            trial_rel = add(t.arrival, t0, "trial.started", aid, {"plan": "trial"})
            first_local = t0 + 0.001
            t.forced.setdefault(t.arrival, []).append((admin, int(t0 + r.uniform(20, 180)), -1.0))
        else:
            trial_rel = 0
            first_local = r.uniform(0, 60)

        # the seat/plan timeline -> team.updated (one per day, last state of the day wins)
        day0, seats, plan = first
        per_day: dict[int, tuple[int, str]] = {day0: (seats, plan)}
        for day, kind, value in sorted(timeline, key=lambda x: x[0]):
            if kind == "plan":
                plan = value
            elif kind == "add":
                seats = min(500, max(1, seats + value))
            else:
                seats = max(1, round(seats * value))
            per_day[day] = (seats, plan)
        mrr_at: list[tuple[int, float, int, str]] = []
        for day in sorted(per_day):
            s2, p2 = per_day[day]
            mrr = mrr_for(p2, s2, price_factor)
            mrr_at.append((day, mrr, s2, p2))
        t.seats, t.plan, t.mrr = mrr_at[0][2], mrr_at[0][3], mrr_at[0][1]

        cancel_day = t.dc
        # involuntary: payment failures at a billing date, retries, then cancellation
        billing_day = (
            min(28, (self.start + _dt.timedelta(days=max(0, convert_day or 0))).day)
            if convert_day
            else r.randint(1, 28)
        )
        paid_from = convert_day if convert_day is not None else 0
        bill_days = [
            i
            for i in range(paid_from, D + 62)
            if (self.start + _dt.timedelta(days=i)).day == billing_day
        ]
        fail_days: list[int] = []
        if t.scenario == "involuntary":
            span = r.randint(7, 21)
            target = int(r.triangular(0.3 * D, 1.15 * D, 0.8 * D)) - span
            cands = [b for b in bill_days if b >= t.arrival + _HISTORY_DAYS] or [bill_days[-1]]
            ds = min(cands, key=lambda b: (abs(b - target), b))
            fail_days = [ds]
            while fail_days[-1] - ds < span:
                fail_days.append(fail_days[-1] + r.randint(2, 5))
            t.ds = ds
            t.dc = cancel_day = fail_days[-1]

        if t.scenario == "trial_never_activates":
            cancel_day = t.arrival + _TRIAL_DAYS

        if (
            convert_day is not None
            and t.scenario != "trial_never_activates"
            and convert_day < D
            and convert_day < cancel_day
        ):
            _, mrr, s2, p2 = next(x for x in reversed(mrr_at) if x[0] <= convert_day)
            add(
                convert_day,
                work_time(),
                "subscription.started",
                aid,
                {"plan": p2, "mrr": mrr, "seats": s2},
            )

        for day, mrr, s2, p2 in mrr_at:
            if day > cancel_day or day >= D:
                continue
            local = first_local if day == t.arrival else work_time()
            add(
                day,
                local,
                "team.updated",
                aid,
                {"plan": p2, "mrr": mrr, "seats": s2, "timezone": t.tz},
            )

        def mrr_on(day: int) -> float:
            return next((x[1] for x in reversed(mrr_at) if x[0] <= day), mrr_at[0][1])

        # monthly payments (nightly billing run, local 03:00-05:00); occasional recovered failure
        for b in bill_days:
            if b >= D or b >= cancel_day or (fail_days and b >= fail_days[0]):
                continue
            amount = mrr_on(b)
            if amount <= 0:
                continue
            when = r.uniform(3.0, 5.0) * 3600
            if b == convert_day:
                when = 23.5 * 3600  # first charge right after conversion
            if r.random() < 0.06 and b > 0:
                add(
                    b,
                    when,
                    "payment.failed",
                    None,
                    {
                        "amount": amount,
                        "reason": _weighted(
                            r, ("card_expired", "insufficient_funds", "card_declined"), (3, 4, 3)
                        ),
                    },
                )
                retry = b + r.randint(1, 3)
                if retry < min(D, cancel_day):
                    add(retry, when, "payment.succeeded", None, {"amount": amount})
            else:
                add(b, when, "payment.succeeded", None, {"amount": amount})
        if fail_days:
            reason = _weighted(
                r, ("card_expired", "insufficient_funds", "card_declined"), (6, 2, 2)
            )
            when = r.uniform(3.0, 5.0) * 3600
            amount = mrr_on(fail_days[0])
            last = 0
            for fd in fail_days:
                last = add(fd, when, "payment.failed", None, {"amount": amount, "reason": reason})
            t.decay_rel = self.rel(t, fail_days[0], when)
            t.cancel_rel = last + 3_600_000
            add(
                fail_days[-1],
                when + 3600,
                "subscription.cancelled",
                None,
                {"reason": "payment_failed"},
            )
        elif t.scenario == "trial_never_activates":
            t.decay_rel = trial_rel
            t.cancel_rel = trial_rel + _TRIAL_DAYS * DAY_MS
            if cancel_day < D:
                sched.setdefault(cancel_day, []).append(
                    (t.cancel_rel, "subscription.cancelled", None, {"reason": "trial_expired"})
                )
        elif t.scenario not in HEALTHY_SCENARIOS:
            t.decay_rel = self.rel(t, t.ds, 0)
            reasons = {
                "gradual_decay": (
                    ("not_using_enough", 5),
                    ("too_expensive", 3),
                    ("switched_to_competitor", 2),
                    ("other", 1),
                ),
                "champion_leaves": (
                    ("team_disbanded", 3),
                    ("not_using_enough", 4),
                    ("switched_to_competitor", 2),
                    ("other", 1),
                ),
                "sudden_drop": (
                    ("switched_to_competitor", 5),
                    ("budget_cuts", 3),
                    ("team_disbanded", 2),
                ),
                "struggling": (("too_difficult", 5), ("missing_features", 4), ("other", 1)),
            }[t.scenario]
            reason = r.choices([x[0] for x in reasons], [x[1] for x in reasons])[0]
            canceller = admin if not admin.champion or t.scenario != "champion_leaves" else None
            t.cancel_rel = add(
                cancel_day,
                work_time(),
                "subscription.cancelled",
                canceller.uid if canceller else None,
                {"reason": reason},
            )
        if t.cancel_rel is not None and 0 <= cancel_day < D:
            t.end_day = cancel_day
            t.end_rel = t.cancel_rel
        if t.scenario == "trial_never_activates":
            self._trial_sessions(r, t)

    def _trial_sessions(self, r: random.Random, t: _Team) -> None:
        """A trial that never activates: a few short sessions, under 2 active days in 10."""
        a = t.arrival
        admin = t.admin
        assert admin is not None
        first = t.forced[a][0]
        dur = r.uniform(35, 115) if r.random() < 0.7 else r.uniform(150, 600)
        t.forced[a][0] = (admin, first[1], dur)
        if r.random() < 0.5:  # a second look the same day
            t.forced[a].append((admin, first[1] + int(r.uniform(1800, 14000)), r.uniform(60, 400)))
        for u in t.users[1:]:
            u.join = a
            if r.random() < 0.4:  # an invited colleague takes a quick look the same day
                t.forced[a].append((u, first[1] + int(r.uniform(600, 20000)), r.uniform(40, 300)))
        if r.random() < 0.35:  # one late visit before the trial ends
            day = a + r.randint(10, _TRIAL_DAYS - 1)
            t.forced.setdefault(day, []).append(
                (admin, int(r.uniform(9, 17) * 3600), r.uniform(40, 500))
            )


# --------------------------------------------------------------------------- simulation


@lru_cache(maxsize=1)
def _hms_table() -> tuple[str, ...]:
    return tuple(
        f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)
    )


_MS_TABLE = tuple(f".{i:03d}Z" for i in range(1000))


@dataclass
class Simulation:
    """A planned simulation. :meth:`events` streams; :meth:`truth` is computed from the plan."""

    config: SimulationConfig
    _teams: list[_Team] = field(repr=False)
    holiday_dates: tuple[_dt.date, ...] = ()
    outage_date: _dt.date | None = None
    _truth: list[dict] | None = field(default=None, repr=False)

    @property
    def base_ms(self) -> int:
        """Epoch ms of UTC midnight of the day before ``start`` (origin of internal times)."""
        return ((self.config.start - _EPOCH).days - 1) * DAY_MS

    # -- truth
    def truth(self) -> list[dict]:
        """One record per entity: every team, then its users, in team order.

        Team: ``churned`` iff its cancellation falls inside the window; ``decay_start`` is when
        the decline began (first payment failure for ``involuntary``, trial start for
        ``trial_never_activates``), given whenever that is inside the window; ``churned_at`` is
        the ``subscription.cancelled`` time (None when not churned).

        User: every user of a churned team is churned with the team's times; the departed
        champion of ``champion_leaves`` is churned at the moment it went silent (the local
        midnight that starts its first silent day, = the team's ``decay_start``). A user who
        left an otherwise unaffected team (staff turnover) is churned with scenario
        ``user_left`` and ``decay_start == churned_at`` = the start of its first silent day.
        Users of healthy teams (vacations included) are not churned.
        """
        if self._truth is None:
            self._truth = self._build_truth()
        return list(self._truth)

    def _build_truth(self) -> list[dict]:
        base, D = self.base_ms, self.config.days
        out: list[dict] = []

        def ts(rel: int | None) -> str | None:
            return None if rel is None else format_ts(base + rel)

        for t in self._teams:
            churned = t.cancel_rel is not None and t.end_day < D
            decay = t.decay_rel if t.decay_rel is not None and t.ds < D else None
            team_rec = {
                "entity_type": "team",
                "entity_id": t.tid,
                "team_id": t.tid,
                "churned": churned,
                "decay_start": ts(decay),
                "churned_at": ts(t.cancel_rel) if churned else None,
                "scenario": t.scenario,
            }
            out.append(team_rec)
            for u in t.users:
                rec = dict(team_rec, entity_type="user", entity_id=u.uid)
                if t.scenario == "champion_leaves" and u.champion and decay is not None:
                    rec.update(churned=True, decay_start=ts(decay), churned_at=ts(decay))
                elif u.leave < D and (not churned or u.leave < t.end_day):
                    left = ts((u.leave + 1) * DAY_MS - t.offsets[u.leave + 1])
                    rec.update(churned=True, decay_start=left, churned_at=left, scenario=USER_LEFT)
                out.append(rec)
        return out

    # -- events
    def events(self) -> Iterator[dict]:
        """Canonical events in timestamp order (ties: generation order). Streams day by day."""
        cfg = self.config
        seed = cfg.seed
        D = cfg.days
        hms = _hms_table()
        mst = _MS_TABLE
        start_dow = cfg.start.weekday()
        teams = self._teams
        rngs = [random.Random(f"{seed}:events:{t.idx}") for t in teams]
        ar = [0.0] * len(teams)
        holidays = frozenset((d - cfg.start).days for d in self.holiday_dates)
        orng = random.Random(f"{seed}:outage")
        if self.outage_date is not None:
            od = (self.outage_date - cfg.start).days
            o_lo, o_hi = ((od + 1) * DAY_MS) << 32, ((od + 2) * DAY_MS) << 32
        else:
            o_lo = o_hi = -1
        lifecycle = LIFECYCLE_TYPES
        id_prefix = f"{seed}-"
        pending: list[tuple] = []
        n = 0
        seq = 0

        base_date = cfg.start - _dt.timedelta(days=1)
        key0 = itemgetter(0)
        for d in range(D + 1):
            if d < D:
                dow = (start_dow + d) % 7
                hol = d in holidays
                for i, t in enumerate(teams):
                    if d < t.arrival or d > t.end_day:
                        continue
                    seq = _team_day(t, d, dow, hol, rngs[i], ar, pending, seq)
                pending.sort(key=key0)
                # local day d+1 of any team begins after UTC midnight of start+d
                cut = _bisect_key(pending, ((d + 1) * DAY_MS) << 32)
            else:
                pending.sort(key=key0)
                cut = len(pending)
            if not cut:
                continue
            chunk = pending[:cut]
            del pending[:cut]
            day_lo = day_hi = -1
            pfx = ""
            for key, typ, uid, tid, props in chunk:
                if o_lo <= key < o_hi and typ not in lifecycle and orng.random() < _OUTAGE_LOSS:
                    continue
                rel = key >> 32
                if rel >= day_hi:
                    day = rel // DAY_MS
                    day_lo = day * DAY_MS
                    day_hi = day_lo + DAY_MS
                    pfx = (base_date + _dt.timedelta(days=day)).isoformat() + "T"
                rest = rel - day_lo
                n += 1
                yield {
                    "event_id": f"{id_prefix}{n:x}",
                    "type": typ,
                    "timestamp": f"{pfx}{hms[rest // 1000]}{mst[rest % 1000]}",
                    "user_id": uid,
                    "team_id": tid,
                    "properties": props,
                }


def _bisect_key(items: list[tuple], key: int) -> int:
    lo, hi = 0, len(items)
    while lo < hi:
        mid = (lo + hi) // 2
        if items[mid][0] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _team_day(
    t: _Team,
    d: int,
    dow: int,
    company_holiday: bool,
    r: random.Random,
    ar: list[float],
    out: list[tuple],
    seq: int,
) -> int:
    """Append one team's events for its local day ``d``; returns the next sequence number."""
    tid = t.tid
    end_rel = t.end_rel
    emit = out.append
    for rel, typ, uid, props in t.sched.get(d, ()):
        emit(((rel << 32) | seq, typ, uid, tid, dict(props)))
        seq += 1
    day0 = (d + 1) * DAY_MS - t.offsets[d + 1]  # rel ms of local midnight
    rnd = r.random
    scen = t.scenario

    # team-level activity factor for the day
    x = ar[t.idx - 1] = 0.6 * ar[t.idx - 1] + r.gauss(0.0, 0.13)
    f = math.exp(x) * (1.0 + t.trend * d / 180.0)
    if company_holiday:
        f *= t.hol_level
    if d in t.hol_days:
        f *= 0.12
    if t.dip is not None and t.dip[0] <= d < t.dip[1]:
        edge = min(d - t.dip[0] + 1, t.dip[1] - d, 3) / 3.0
        f *= 1.0 - (1.0 - t.dip[2]) * edge
    if t.arrival > 0 and d - t.arrival < 21:
        f *= 0.6 + 0.4 * (d - t.arrival) / 21.0
    if scen == "healthy_growing":
        f *= 1.0 + 0.15 * d / 180.0
    prog = -1.0  # decline progress 0..1 (churn scenarios), -1 before the decline
    breadth = 1.0
    pub_f = 1.0
    dur_f = 1.0
    task_f = 1.0
    fail = t.fail_rate
    mult = 1.0
    instr = 0.3  # share of publishes instrumented as a task
    if d >= t.ds and scen != "involuntary" and scen != "trial_never_activates":
        prog = min(1.0, (d - t.ds) / max(1, t.dc - t.ds))
        if scen == "gradual_decay":
            f *= 1.0 - 0.7 * prog
            breadth = 1.0 - 0.7 * prog
            pub_f = max(0.05, 1.0 - 1.3 * prog)
            dur_f = 1.0 - 0.4 * prog
        elif scen == "champion_leaves":
            f *= 0.95 - 0.65 * prog
            breadth = 1.0 - 0.5 * prog
            pub_f = max(0.1, 0.8 - 0.7 * prog)
            dur_f = 1.0 - 0.3 * prog
        elif scen == "sudden_drop":
            k = min(1.0, (d - t.ds + 1) / t.drop_days)
            prog = k
            f *= 1.0 - (1.0 - t.drop_level * 1.6) * k
            breadth = 1.0 - 0.5 * k
            pub_f = 1.0 - 0.8 * k
            dur_f = 1.0 - 0.2 * k
        elif scen == "struggling":
            ramp = min(1.0, (d - t.ds) / 14.0)
            f *= 1.0 - 0.55 * prog
            mult = 1.0 + (t.struggle_mult - 1.0) * ramp
            fail = t.fail_rate + (t.struggle_fail - t.fail_rate) * min(1.0, (d - t.ds) / 10.0)
            task_f = 1.0 + 2.0 * ramp
            instr = 0.3 + 0.5 * ramp
            breadth = 1.0 - 0.3 * prog
    pub_p = t.pub_rate * pub_f
    task_p = t.task_rate * task_f
    can_publish = scen != "trial_never_activates"
    retry_p = 0.8 if mult > 1.0 else 0.45

    def session(u: _User, start_local: int, dur_s: float, seq: int) -> int:
        uid = u.uid
        s_rel = day0 + start_local * 1000 + int(rnd() * 1000)
        if s_rel >= end_rel:
            return seq
        dur_ms = int(dur_s * 1000)
        emit(((s_rel << 32) | seq, "session.started", uid, tid, {}))
        seq += 1
        n_act = int(dur_s / u.spa * (0.5 + rnd()))
        if n_act > 80:
            n_act = 80
        feats = u.feats
        k = max(1, round(u.k * breadth))
        step = dur_ms / (n_act + 1)
        wp = pub_p * u.writer
        wt = wp + task_p
        last = s_rel
        for j in range(1, n_act + 1):
            at = s_rel + int(step * (j + 0.3 * rnd()))
            if at >= end_rel:
                return seq
            x = rnd()
            if x >= wt:
                emit(
                    (
                        (at << 32) | seq,
                        "feature.used",
                        uid,
                        tid,
                        {"feature": feats[int(rnd() ** 1.6 * k)]},
                    )
                )
                seq += 1
                continue
            if x < wp:
                task = "publish_document"
                if can_publish and rnd() >= instr:
                    emit(((at << 32) | seq, "document.published", uid, tid, {}))
                    seq += 1
                    continue
            else:
                task = _OTHER_TASKS[int(rnd() * 5)]
            # an instrumented task: attempts until success or the user gives up
            norm = _TASK_NORM_S[task]
            for _attempt in range(5):
                took = norm * mult * math.exp(r.gauss(0.0, 0.45))
                at += int(took * 1000)
                if at >= end_rel:
                    return seq
                if at > last:
                    last = at
                if rnd() < fail or not (can_publish or task != "publish_document"):
                    errs = _TASK_ERRORS[task]
                    emit(
                        (
                            (at << 32) | seq,
                            "task.failed",
                            uid,
                            tid,
                            {"task": task, "error": errs[int(rnd() * len(errs))]},
                        )
                    )
                    seq += 1
                    if rnd() >= retry_p:
                        break
                    at += int(rnd() * 20000)
                else:
                    emit(
                        (
                            (at << 32) | seq,
                            "task.completed",
                            uid,
                            tid,
                            {"task": task, "duration_s": round(took, 3)},
                        )
                    )
                    seq += 1
                    if task == "publish_document":
                        emit((((at + 1) << 32) | seq, "document.published", uid, tid, {}))
                        seq += 1
                    break
        e_rel = s_rel + dur_ms
        if last >= e_rel:  # a long task kept the user busy beyond the planned end
            e_rel = last + 1000 + int(rnd() * 30000)
            dur_s = (e_rel - s_rel) / 1000.0
        if e_rel < end_rel:
            emit(((e_rel << 32) | seq, "session.ended", uid, tid, {"duration_s": round(dur_s, 3)}))
            seq += 1
        return seq

    for u, local_s, dur in t.forced.get(d, ()):
        if dur < 0:
            dur = u.sess_med * math.exp(r.gauss(0.0, 0.6))
        seq = session(u, local_s, dur, seq)
    if scen == "trial_never_activates" or d == t.arrival > 0:
        return seq  # a new team's first day: only the admin's first session(s)

    champion_gone = scen == "champion_leaves" and d >= t.ds
    weekend = dow >= 5
    for u in t.users:
        if d < u.join or d >= u.leave:
            continue
        if prog >= u.quit or (champion_gone and u.champion):
            continue
        p = u.wp[dow] * f
        if d in u.vac:
            p *= 0.03
        if d - u.join < 14 and u.join > 0:
            p *= 0.5 + (d - u.join) / 28.0
        if p > 0.97:
            p = 0.97
        if rnd() >= p:
            continue
        n_sess = 1
        more = u.more * (f if f < 1.0 else 1.0)
        while n_sess < 6 and rnd() < more:
            n_sess += 1
        prev_end = 0
        starts = []
        for _ in range(n_sess):
            if weekend:
                st = int((9.0 + 11.0 * rnd()) * 3600)
            elif rnd() < 0.06:
                st = int((19.0 + 4.0 * rnd()) * 3600)
            else:
                st = u.start_s + int(u.span_s * rnd())
            starts.append(st)
        starts.sort()
        for st in starts:
            dur = u.sess_med * dur_f * math.exp(r.gauss(0.0, 0.75))
            if dur < 15.0:
                dur = 15.0 + 30.0 * rnd()
            elif dur > 14400.0:
                dur = 14400.0
            if st < prev_end:
                st = prev_end + int(300 + 3000 * rnd())
            if st >= 86_399:
                break
            seq = session(u, st, dur, seq)
            prev_end = st + int(dur)
    return seq


def simulate(config: SimulationConfig | None = None) -> Simulation:
    """Plan a simulation (cheap: teams and users only; events are generated on demand).

    Calendar: the company-wide holiday is Dec 24-Jan 1 when that falls in the window, else
    7 days from day ``min(112, 0.62*days)`` (``holiday_start_day`` overrides); the tracking
    outage loses 90% of the product events (lifecycle/billing events are server-side and kept)
    on UTC day ``min(75, 0.42*days)``, moved back to a working day (``outage_day`` overrides).

    >>> sim = simulate(SimulationConfig(teams=4, days=180))
    >>> [d.isoformat() for d in sim.holiday_dates][:2], sim.outage_date.isoformat()
    (['2026-04-27', '2026-04-28'], '2026-03-20')
    """
    cfg = config or SimulationConfig()
    if cfg.teams < 0 or cfg.days < 0:
        raise ValueError("teams and days must be >= 0")
    planner = _Planner(cfg)
    teams = planner.plan() if cfg.teams else []
    start = cfg.start
    return Simulation(
        config=cfg,
        _teams=teams,
        holiday_dates=tuple(start + _dt.timedelta(days=i) for i in sorted(planner.holiday_days)),
        outage_date=None
        if planner.outage_day is None
        else start + _dt.timedelta(days=planner.outage_day),
    )


def _main(argv: list[str] | None = None) -> int:  # pragma: no cover - benchmarking helper
    import argparse
    import time

    ap = argparse.ArgumentParser(description="write simulated events (JSONL) and time it")
    ap.add_argument("--teams", type=int, default=300)
    ap.add_argument("--days", type=int, default=180)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--segment", action="store_true")
    ap.add_argument("--truth")
    ap.add_argument("out")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    sim = simulate(SimulationConfig(teams=a.teams, days=a.days, seed=a.seed))
    evs: Iterable[dict] = sim.events()
    if a.segment:
        evs = (to_segment(e) for e in evs)
    n = write_jsonl(a.out, evs)
    dt = time.perf_counter() - t0
    if a.truth:
        write_jsonl(a.truth, sim.truth())
    print(f"{n} events in {dt:.1f}s = {n / dt:,.0f} events/s", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
