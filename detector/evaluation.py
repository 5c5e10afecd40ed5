"""Score the detector's alerts against simulator ground truth, next to a naive baseline.

Pure logic: every input is an iterable of already-decoded dicts (``load_jsonl`` is a small
helper for the CLI). Three inputs:

* ``events``: canonical usage events (one streaming pass, memory O(entities + gaps));
* ``alerts``: CloudEvents 1.0 alert objects (only ``data`` matters; bare ``data`` dicts are
  accepted too);
* ``truth``: one record per entity from the simulator (``churned``, ``churned_at``, ``scenario``).

Two methods are scored per level (team, user):

* ``detector``: an entity is flagged by its ``at_risk`` alerts (``data.state == "at_risk"``);
* ``baseline_inactive_{N}d``: the rule "inactive for N days" fires at ``last_activity + N days``
  for every gap of at least N days without user activity, including the trailing gap up to the
  end of the data (the max event timestamp).

A team is keyed by its id, a user by its team and its id (``data.team_id`` of its alerts,
``team_id`` of its events and truth row): the engine keeps a user of two teams as two entities.

Entities whose decline began inside the data but that had not cancelled by its end
(``churned`` false with a ``decay_start``) are right-censored and left out, and so are churned
entities without a ``churned_at`` (nothing to cut their alerts off at); both are counted.
A malformed truth value (``churned`` not a boolean or "true"/"false", a timestamp that does
not parse, a user without ``team_id``, a duplicate row) raises ``ValueError`` naming the file
and line (``JsonlReader.where``) or the record's position; an alert without a usable time is
skipped and counted, as an event without one is. For churned entities only alerts strictly before ``churned_at`` count (neither TP nor FP
otherwise). TP/FN are churned entities flagged/not flagged in time, FP are non-churned entities
flagged. Lead time per TP is ``churned_at - first qualifying alert`` in days. False alarms per
1,000 healthy entity-weeks count every alert (every firing for the baseline) on non-churned
entities over the weeks from each non-churned entity's first event to the end of the data.

A NAB-style early-detection score (Numenta Anomaly Benchmark, "standard" profile) sums, per
level: for each churned entity, the window of ``nab_window_days`` before ``churned_at``; the
earliest alert inside it earns ``A_TP x sigma(y)``, where ``y`` is its position in the window
(-1 at the start, 0 at the cancellation) and ``sigma(y) = 2 / (1 + e^(5y)) - 1``, so an early
alert earns close to 1 and a last-minute one close to 0; a window without an alert costs
``A_FN``. Every alert outside a window (on a healthy entity, or on a churned entity before its
window) costs ``A_FP``. The sum is normalised to 100 for a perfect detector (every window hit
at its start, no other alert) and 0 for one that never alerts.

Example (one team, one user, churned 30 days after an at_risk alert):

>>> DAY = 86_400_000
>>> events = [
...     {"type": "login", "timestamp": 0, "user_id": "u1", "team_id": "t1"},
...     {"type": "login", "timestamp": 40 * DAY, "user_id": "u1", "team_id": "t1"},
... ]
>>> alerts = [{"data": {"entity_type": "team", "entity_id": "t1", "signal": "activity_drop",
...                     "state": "at_risk", "event_time": format_time_ms(10 * DAY)}}]
>>> truth = [{"entity_type": "team", "entity_id": "t1", "team_id": "t1", "churned": True,
...           "churned_at": format_time_ms(40 * DAY), "scenario": "team_decay"}]
>>> report = evaluate(events, alerts, truth)
>>> team = report.levels["team"]
>>> (team.detector.tp, team.detector.lead_median_days)
(1, 30.0)
>>> (team.baseline.tp, team.baseline.lead_median_days)  # fired at day 14 (gap 0 -> 40)
(1, 26.0)
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

__all__ = [
    "LEVELS",
    "NON_ACTIVITY_TYPES",
    "DataSummary",
    "EntityKey",
    "EvaluationReport",
    "JsonlReader",
    "LevelComparison",
    "LevelReport",
    "LowPeriodReport",
    "ScenarioReport",
    "SignalReport",
    "entity_key",
    "evaluate",
    "format_time_ms",
    "load_jsonl",
    "nab_score",
    "parse_time_ms",
    "population_low_days",
    "quantile",
    "read_truth",
    "time_or_none",
    "truth_row",
]

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
LEVELS: tuple[str, ...] = ("team", "user")
#: Event types that are lifecycle/billing facts, not product usage: they never count as activity.
NON_ACTIVITY_TYPES: frozenset[str] = frozenset(
    {
        "subscription.started",
        "subscription.cancelled",
        "payment.failed",
        "payment.succeeded",
        "trial.started",
        "team.updated",
    }
)
DETECTOR = "detector"
UNDEFINED = "—"
#: NAB "standard" application profile weights
NAB_A_TP, NAB_A_FP, NAB_A_FN = 1.0, 0.11, 1.0
NAB_WINDOW_DAYS = 30
#: a UTC day with less than this share of its weekday's median activity is a population-wide
#: low (a holiday, a tracking outage)
LOW_DAY_RATIO = 0.5
#: alerts up to this many days after a population-wide low may still come from it (the
#: detector's longest window is two weeks)
LOW_AFTER_DAYS = 14
#: alert states that count as a warning about an entity
WARNING_STATES = ("cooling", "at_risk")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


# --------------------------------------------------------------------------- helpers


def parse_time_ms(value: str | int | float) -> int:
    """Parse an RFC 3339 timestamp (``Z`` or offset) or epoch milliseconds into epoch ms.

    Naive timestamps are taken as UTC; sub-millisecond digits are truncated.

    >>> parse_time_ms("2026-03-01T09:15:02.123Z")
    1772356502123
    >>> parse_time_ms("2026-03-01T11:15:02.123+02:00")
    1772356502123
    >>> parse_time_ms("2026-03-01T09:15:02.123456789z")
    1772356502123
    >>> parse_time_ms(1772356502123), parse_time_ms("1772356502123"), parse_time_ms(1.5e3)
    (1772356502123, 1772356502123, 1500)
    >>> parse_time_ms("yesterday")
    Traceback (most recent call last):
    ...
    ValueError: invalid timestamp: 'yesterday'
    """
    if isinstance(value, bool):
        raise TypeError(f"invalid timestamp: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"invalid timestamp: {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise TypeError(f"invalid timestamp: {value!r}")
    text = value.strip()
    if text.isdigit() or (text[:1] == "-" and text[1:].isdigit()):
        return int(text)
    if text[-1:] == "z":
        text = text[:-1] + "Z"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"invalid timestamp: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _ONE_MS


def time_or_none(value: object) -> int | None:
    """Epoch ms of a timestamp, ``None`` when it is missing or not one (for skipping).

    >>> time_or_none("2026-13-01T00:00:00Z"), time_or_none(None), time_or_none(1500)
    (None, None, 1500)
    """
    if not isinstance(value, str | int | float):
        return None
    try:
        return parse_time_ms(value)
    except (TypeError, ValueError):
        return None


def format_time_ms(ms: int) -> str:
    """Format epoch milliseconds as RFC 3339 UTC with millisecond precision.

    >>> format_time_ms(1772356502123)
    '2026-03-01T09:15:02.123Z'
    >>> parse_time_ms(format_time_ms(-1))
    -1
    """
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def quantile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0 ≤ q ≤ 1) of ``values`` with linear interpolation between
    order statistics at position ``q * (n - 1)`` (numpy's default, and
    ``statistics.quantiles(method="inclusive")``). ``None`` for no values.

    >>> quantile([4, 1, 3, 2], 0.25)
    1.75
    >>> quantile([1, 2, 3, 4], 0.5)
    2.5
    >>> quantile([7], 0.25), quantile([], 0.5)
    (7.0, None)
    >>> import statistics
    >>> statistics.quantiles([1, 2, 3, 4, 10], n=4, method="inclusive")[0] == quantile(
    ...     [1, 2, 3, 4, 10], 0.25)
    True
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * fraction)


class JsonlReader(Iterator[dict[str, Any]]):
    """Decoded JSON objects of a JSONL file, one per non-blank line, read lazily.

    ``where`` (``path:line`` of the record last yielded) lets :func:`evaluate` name the line of
    a bad value without doing I/O itself. Raises ``ValueError`` naming the file and line on
    malformed JSON or a non-object line.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.line = 0
        self._records = self._read()

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def __next__(self) -> dict[str, Any]:
        return next(self._records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # the generator itself: a ``for`` loop takes its records with no Python call each
        return self._records

    def _read(self) -> Iterator[dict[str, Any]]:
        with open(self.path, "rb") as raw:
            gzipped = raw.peek(2)[:2] == b"\x1f\x8b"  # as replay: gzip whatever its name
            handle: Any = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
            try:
                yield from self._records_of(handle)
            except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
                raise ValueError(f"{self.path}: not a readable gzip file: {exc}") from None

    def _records_of(self, handle: Any) -> Iterator[dict[str, Any]]:
        for number, line in enumerate(handle, start=1):
            self.line = number
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(
                    f"{self.where}: invalid JSON: {exc.msg} at column {exc.colno}"
                ) from None
            if not isinstance(record, dict):
                raise ValueError(f"{self.where}: expected a JSON object")
            yield record


def load_jsonl(path: str | os.PathLike[str]) -> JsonlReader:
    """Yield one decoded JSON object per non-blank line of a JSONL file (lazily).

    Raises ``ValueError`` naming the file and line on malformed JSON or a non-object line.
    """
    return JsonlReader(path)


def _where(source: object, kind: str, index: int) -> str:
    """``path:line`` of the current record of a :class:`JsonlReader`, else its position."""
    where = getattr(source, "where", None)
    return where if isinstance(where, str) else f"{kind} record {index}"


# --------------------------------------------------------------------------- reports


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


@dataclass(frozen=True, slots=True)
class LevelReport:
    """Scores of one method (detector or baseline) at one level (team or user)."""

    method: str
    entities: int  # evaluated entities: in truth and with at least one event
    churned: int
    tp: int
    fp: int
    fn: int
    precision: float | None  # tp / (tp + fp); None when nothing was flagged
    recall: float | None  # tp / (tp + fn); None when nothing churned
    lead_median_days: float | None
    lead_p25_days: float | None
    lead_count: int  # TPs with a lead time (churned_at known)
    alerts: int  # qualifying alerts (at_risk alerts / baseline firings) on evaluated entities
    false_alarms: int  # alerts on non-churned entities
    healthy_weeks: float  # non-churned entity-weeks, first event -> end of data
    false_alarms_per_1000_weeks: float | None
    nab_score: float | None  # NAB-style early-detection score, 100 = perfect, 0 = never alerts
    #: TPs whose first qualifying alert came before truth's decay_start: a hit before the
    #: decline began (the lead counts from the first alert, so such a hit's lead is longer
    #: than the decline itself)
    tp_before_decay_start: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class LevelComparison:
    """The detector and the baseline side by side for one level."""

    level: str
    detector: LevelReport
    baseline: LevelReport

    def to_dict(self) -> dict[str, Any]:
        return {DETECTOR: self.detector.to_dict(), self.baseline.method: self.baseline.to_dict()}


@dataclass(frozen=True, slots=True)
class SignalReport:
    """Detector at_risk alerts of one ``data.signal`` at one level.

    ``tp``/``fp`` count entities whose *first* qualifying at_risk alert had this signal (so they
    sum to the level's TP/FP); ``alerts`` counts every qualifying at_risk alert with this signal
    and ``false_alarms`` those on non-churned entities.
    """

    signal: str
    tp: int
    fp: int
    alerts: int
    false_alarms: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ScenarioReport:
    """Detector and baseline outcomes for the entities of one truth ``scenario`` at one level."""

    scenario: str
    entities: int
    churned: int
    detector_tp: int
    detector_lead_median_days: float | None
    detector_fp: int
    baseline_tp: int
    baseline_lead_median_days: float | None
    baseline_fp: int
    #: signal of the detector's first qualifying at_risk alert -> entities: the TPs for a
    #: scenario with churned entities, the FPs for one without (never both: a scenario can mix
    #: churned and healthy entities, e.g. every row of a truth without ``scenario``). Is each
    #: scenario caught by the signal meant for it?
    detector_signals: dict[str, int] = field(default_factory=dict)
    #: the same for the FPs, whatever the scenario
    detector_fp_signals: dict[str, int] = field(default_factory=dict)

    @property
    def healthy(self) -> int:
        return self.entities - self.churned

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class LowPeriodReport:
    """Warnings on healthy entities during and just after population-wide lows.

    Low days are found in the events themselves (``population_low_days``), so this works on
    real data too. ``alerts`` counts cooling and at_risk alerts on non-churned entities from
    the first low day of a period to ``LOW_AFTER_DAYS`` after its last; ``expected`` is what
    the same entities' alert rate outside those windows gives for as many days, so
    ``alerts - expected`` estimates the alerts the lows caused.
    """

    low_days: list[str]
    window_days: int
    alerts: int
    by_state: dict[str, int]
    expected: float

    @property
    def excess(self) -> float:
        return self.alerts - self.expected

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "excess": self.excess}


@dataclass(frozen=True, slots=True)
class DataSummary:
    events: int  # events with a usable timestamp
    first_event: str | None
    last_event: str | None  # = end of data for trailing gaps and healthy weeks
    skipped_events: int  # not a dict or no parseable timestamp
    alerts: int  # alert records read (after de-duplication by CloudEvents id)
    duplicate_alerts: int
    at_risk_alerts: int  # of the alerts with a usable time
    unmatched_alerts: int  # alerts with a usable time whose entity is not in truth at all
    truth_entities: dict[str, int]  # truth rows not left out (see the two counts below)
    evaluated_entities: dict[str, int]  # scored: in truth, not left out, present in the events
    inactivity_days: int
    nab_window_days: int
    skipped_alerts: int = 0  # no parseable event_time (or time): not scored
    left_out_alerts: int = 0  # alerts of truth entities that are left out (the two below)
    #: level -> truth rows left out as right-censored (decline began, no cancellation yet)
    censored_entities: dict[str, int] = field(default_factory=dict)
    #: level -> churned truth rows without a churned_at, left out: no cut-off for the alerts
    churned_without_churned_at: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class LeadContext:
    """What the median leads of one level can be compared with.

    ``bound`` (a historical name): the lead of an oracle that alerts on the day each churned
    entity's decline began (truth's ``decay_start``). It is a reference, not an upper bound:
    the lead counts from the first at_risk alert, and one before the decline began (counted
    per level as ``tp_before_decay_start``) has a longer lead. ``paired``: the leads of both
    methods on the entities both flagged, since each method's median is taken over its own
    hits, and a rule that catches few entities can have a long median on those few.
    """

    bound_median_days: float | None
    bound_count: int  # churned entities with a decay_start
    paired_count: int
    paired_detector_median_days: float | None
    paired_baseline_median_days: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lead_context(
    truths: Sequence[_Truth], detector: Sequence[_Outcome], baseline: Sequence[_Outcome]
) -> LeadContext:
    """The oracle's median lead and both methods' medians on the entities both flagged.

    >>> row = _Truth("team", "t", True, 30 * DAY_MS, "decay", decay_start=5 * DAY_MS)
    >>> lead_context([row], [_Outcome(first_ms=20 * DAY_MS)], [_Outcome(first_ms=25 * DAY_MS)])
    LeadContext(bound_median_days=25.0, bound_count=1, paired_count=1, paired_detector_median_days=10.0, paired_baseline_median_days=5.0)
    """
    bounds = [
        (row.churned_at - row.decay_start) / DAY_MS
        for row in truths
        if row.churned and row.churned_at is not None and row.decay_start is not None
    ]
    flagged_by_both = [
        (row, det, base)
        for row, det, base in zip(truths, detector, baseline, strict=True)
        if det.first_ms is not None and base.first_ms is not None
    ]
    rows = [row for row, _, _ in flagged_by_both]
    paired_detector = _leads(rows, [det for _, det, _ in flagged_by_both])
    paired_baseline = _leads(rows, [base for _, _, base in flagged_by_both])
    return LeadContext(
        bound_median_days=quantile(bounds, 0.5),
        bound_count=len(bounds),
        paired_count=len(paired_detector),
        paired_detector_median_days=quantile(paired_detector, 0.5),
        paired_baseline_median_days=quantile(paired_baseline, 0.5),
    )


@dataclass(frozen=True)
class EvaluationReport:
    levels: dict[str, LevelComparison]
    signals: dict[str, dict[str, SignalReport]]  # level -> signal -> report
    scenarios: dict[str, dict[str, ScenarioReport]]  # level -> scenario -> report
    data: DataSummary
    #: level -> method -> lead time in days of each TP (for plots; not part of ``to_dict``)
    lead_days: dict[str, dict[str, list[float]]] = field(default_factory=dict, compare=False)
    #: level -> warnings on healthy entities in and after population-wide lows
    low_periods: dict[str, LowPeriodReport] = field(default_factory=dict)
    #: level -> the oracle's lead and the leads on the entities both methods flagged
    lead_context: dict[str, LeadContext] = field(default_factory=dict)
    #: level -> keys of the scored entities, so that plots count the same entities (not part
    #: of ``to_dict``)
    scored: dict[str, frozenset[EntityKey]] = field(default_factory=dict, compare=False)

    @property
    def baseline_name(self) -> str:
        return _baseline_name(self.data.inactivity_days)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (only str keys, str/int/float/None/bool values)."""
        return {
            "levels": {level: comp.to_dict() for level, comp in self.levels.items()},
            "signals": {
                level: {name: sig.to_dict() for name, sig in by_signal.items()}
                for level, by_signal in self.signals.items()
            },
            "scenarios": {
                level: {name: sc.to_dict() for name, sc in by_scenario.items()}
                for level, by_scenario in self.scenarios.items()
            },
            "data": self.data.to_dict(),
            "low_periods": {level: low.to_dict() for level, low in self.low_periods.items()},
            "lead_context": {level: ctx.to_dict() for level, ctx in self.lead_context.items()},
        }

    def to_text(self) -> str:
        """A plain-text report with aligned tables; ``—`` marks undefined values."""
        data = self.data
        lines = [
            "Churn detector evaluation",
            f"events: {data.events} ({data.first_event or UNDEFINED} .. "
            f"{data.last_event or UNDEFINED}), skipped: {data.skipped_events}; "
            f"alerts: {data.alerts} ({data.at_risk_alerts} at_risk, "
            f"{data.unmatched_alerts} not in truth, {data.left_out_alerts} on left-out "
            f"entities), skipped (no valid time): {data.skipped_alerts}",
            "left out: censored (decline began, not cancelled by the end) "
            f"{_per_level(data.censored_entities)}; churned without churned_at "
            f"{_per_level(data.churned_without_churned_at)}",
            f"{self.baseline_name}: fires {data.inactivity_days} days after the last "
            "activity, once per gap; flagged = at_risk alert (detector) / firing (baseline) "
            "before churned_at",
        ]
        for level, comp in self.levels.items():
            det = comp.detector
            lines += [
                "",
                f"{level.upper()} level: {det.entities} entities, {det.churned} churned, "
                f"{_fmt(det.healthy_weeks, 1)} healthy entity-weeks",
            ]
            rows = [
                [
                    rep.method,
                    _fmt(rep.precision, 3),
                    _fmt(rep.recall, 3),
                    str(rep.tp),
                    str(rep.fp),
                    str(rep.fn),
                    _fmt(rep.lead_median_days, 1),
                    _fmt(rep.lead_p25_days, 1),
                    str(rep.false_alarms),
                    _fmt(rep.false_alarms_per_1000_weeks, 2),
                    _fmt(rep.nab_score, 1),
                ]
                for rep in (comp.detector, comp.baseline)
            ]
            header = [
                "method",
                "precision",
                "recall",
                "TP",
                "FP",
                "FN",
                "lead median (d)",
                "lead p25 (d)",
                "false alarms",
                "FA/1k healthy wk",
                f"NAB ({data.nab_window_days} d)",
            ]
            lines += _table(header, rows)
            ctx = self.lead_context.get(level)
            if ctx is not None:
                lines += [
                    f"lead context: an oracle alerting the day each decline began has a median "
                    f"lead of {_fmt(ctx.bound_median_days, 1)} d ({ctx.bound_count} churned); on "
                    f"the {ctx.paired_count} entities both flagged: detector "
                    f"{_fmt(ctx.paired_detector_median_days, 1)} d, baseline "
                    f"{_fmt(ctx.paired_baseline_median_days, 1)} d"
                ]
            lines += [
                "first alert before the decline began (decay_start; a longer lead than the "
                f"oracle's): detector {det.tp_before_decay_start} of {det.tp} TPs, baseline "
                f"{comp.baseline.tp_before_decay_start} of {comp.baseline.tp} TPs"
            ]
        for level, low in self.low_periods.items():
            lines += [
                "",
                f"{level.upper()} level, population-wide lows ({', '.join(low.low_days) or 'none'})"
                f" and {LOW_AFTER_DAYS} days after: {low.alerts} warnings on healthy entities "
                f"({', '.join(f'{k} {n}' for k, n in low.by_state.items()) or 'none'}) vs "
                f"{low.expected:.1f} expected from the rest of the data",
            ]
        for level, by_scenario in self.scenarios.items():
            lines += ["", f"{level.upper()} level by scenario"]
            header = [
                "scenario",
                "entities",
                "churned",
                "detector TP",
                "detector lead (d)",
                "detector FP",
                "baseline TP",
                "baseline lead (d)",
                "baseline FP",
                "detector signals (first at_risk)",
            ]
            rows = [
                [
                    sc.scenario,
                    str(sc.entities),
                    str(sc.churned),
                    str(sc.detector_tp),
                    _fmt(sc.detector_lead_median_days, 1),
                    str(sc.detector_fp),
                    str(sc.baseline_tp),
                    _fmt(sc.baseline_lead_median_days, 1),
                    str(sc.baseline_fp),
                    _signals_cell(sc),
                ]
                for sc in by_scenario.values()
            ]
            lines += _table(header, rows) if rows else ["  (no entities)"]
        for level, by_signal in self.signals.items():
            lines += ["", f"{level.upper()} level detector signals (at_risk alerts)"]
            header = ["signal", "TP (first alert)", "FP (first alert)", "alerts", "false alarms"]
            rows = [
                [s.signal, str(s.tp), str(s.fp), str(s.alerts), str(s.false_alarms)]
                for s in by_signal.values()
            ]
            lines += _table(header, rows) if rows else ["  (no at_risk alerts)"]
        return "\n".join(lines) + "\n"


def _fmt(value: float | None, digits: int) -> str:
    return UNDEFINED if value is None else f"{value:.{digits}f}"


def _per_level(counts: dict[str, int]) -> str:
    return ", ".join(f"{level} {n}" for level, n in counts.items()) or UNDEFINED


def _signals_cell(sc: ScenarioReport) -> str:
    """First-alert signals of the TPs and of the FPs, labelled, never added up."""
    parts = []
    groups = ((sc.detector_signals, "TP"),) if sc.churned else ()
    for signals, label in (*groups, (sc.detector_fp_signals, "FP")):
        if signals:
            parts.append(f"{label} " + ", ".join(f"{name} {n}" for name, n in signals.items()))
    return "; ".join(parts) or UNDEFINED


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """First column left-aligned, the others right-aligned, two spaces between columns.

    >>> print("\\n".join(_table(["name", "n"], [["a", "1"], ["long name", "100"]])))
      name         n
      a            1
      long name  100
    """
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def render(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  " + "  ".join(cells).rstrip()

    return [render(header)] + [render(row) for row in rows]


def _baseline_name(days: int) -> str:
    return f"baseline_inactive_{days}d"


# --------------------------------------------------------------------------- evaluation


#: (level, team id, entity id): a team by its id, a user by its team and its id, since the
#: engine keeps a user who works in two teams as two entities (its alerts carry the same
#: ``entity_id`` with a different ``data.team_id``)
EntityKey = tuple[str, str, str]
#: why a truth row is left out of the scores
CENSORED = "censored"
NO_CHURNED_AT = "churned_without_churned_at"


def entity_key(level: str, entity_id: str, team_id: object) -> EntityKey:
    """The key of an entity in the truth, the alerts and the events.

    >>> entity_key("team", "t1", None), entity_key("user", "u1", "t2")
    (('team', 't1', 't1'), ('user', 't2', 'u1'))
    """
    if level == "team":
        return (level, entity_id, entity_id)
    return (level, "" if team_id is None else str(team_id), entity_id)


@dataclass(slots=True)
class _Truth:
    level: str
    entity_id: str
    churned: bool
    churned_at: int | None
    scenario: str
    decay_start: int | None = None
    team_id: str = ""

    @property
    def left_out(self) -> str | None:
        """Why the row is not scored, or ``None``.

        Censored: the decline began inside the data but the cancellation (if any) comes after
        it, so it is neither a churn to catch nor a healthy entity. Churned without a
        ``churned_at``: no cut-off for the alerts that count, so alerts after the cancellation
        would score as hits.
        """
        if not self.churned and self.decay_start is not None:
            return CENSORED
        if self.churned and self.churned_at is None:
            return NO_CHURNED_AT
        return None


def _truth_bool(value: object, name: str, where: str) -> bool:
    """A JSON boolean or the string "true"/"false": ``bool("false")`` would be True."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{where}: {name} must be true or false, got {value!r}")


def _truth_time(value: object, name: str, where: str) -> int | None:
    if value is None or value == "":
        return None
    ms = time_or_none(value)
    if ms is None:
        raise ValueError(f"{where}: {name} is not a timestamp: {value!r}")
    return ms


def truth_row(record: object, where: str) -> _Truth | None:
    """One truth record, checked; ``None`` for an entity type other than team and user.

    Raises ``ValueError`` naming ``where`` for a value that would otherwise be read wrongly or
    crash the evaluation later.

    >>> truth_row({"entity_type": "team", "entity_id": "t", "churned": "soon"}, "t.jsonl:3")
    Traceback (most recent call last):
    ...
    ValueError: t.jsonl:3: churned must be true or false, got 'soon'
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object")
    level = record.get("entity_type")
    if level not in LEVELS:
        return None
    entity_id = record.get("entity_id")
    if entity_id is None or entity_id == "":
        raise ValueError(f"{where}: {level} row without entity_id")
    team_id = record.get("team_id")
    if level == "user" and (team_id is None or team_id == ""):
        raise ValueError(f"{where}: user row without team_id (a user is scored per team)")
    churned = _truth_bool(record.get("churned"), "churned", where)
    churned_at = _truth_time(record.get("churned_at"), "churned_at", where)
    decay_start = _truth_time(record.get("decay_start"), "decay_start", where)
    key = entity_key(level, str(entity_id), team_id)
    return _Truth(
        level=level,
        entity_id=key[2],
        churned=churned,
        churned_at=churned_at if churned else None,
        scenario=str(record.get("scenario") or "unknown"),
        decay_start=decay_start,
        team_id=key[1],
    )


class _Activity:
    """Per-entity event state: first event, first/last activity and the inactivity gaps.

    Events may arrive out of order: gaps are kept as ``[start, end)`` pairs of activity times and
    an activity landing inside a recorded gap splits it, so the result is order-independent
    with memory O(gaps).
    """

    __slots__ = ("first_act", "first_event", "gaps", "last_act")

    def __init__(self) -> None:
        self.first_event: int | None = None
        self.first_act: int | None = None
        self.last_act: int | None = None
        self.gaps: list[tuple[int, int]] | None = None

    def see(self, ts: int) -> None:
        if self.first_event is None or ts < self.first_event:
            self.first_event = ts

    def activity(self, ts: int, window: int) -> None:
        last = self.last_act
        if last is None:
            self.first_act = self.last_act = ts
        elif ts >= last:
            if ts - last >= window:
                self._add_gap(last, ts)
            self.last_act = ts
        else:
            first = self.first_act
            assert first is not None
            if ts < first:
                if first - ts >= window:
                    self._add_gap(ts, first)
                self.first_act = ts
            elif self.gaps:
                for index, (start, end) in enumerate(self.gaps):
                    if start < ts < end:
                        pieces = [(a, b) for a, b in ((start, ts), (ts, end)) if b - a >= window]
                        self.gaps[index : index + 1] = pieces
                        break

    def _add_gap(self, start: int, end: int) -> None:
        if self.gaps is None:
            self.gaps = []
        self.gaps.append((start, end))

    def firings(self, window: int, end_of_data: int) -> list[int]:
        """Baseline firing times: ``gap start + window`` per gap, including the trailing one."""
        times = [start + window for start, _ in self.gaps or ()]
        if self.last_act is not None and end_of_data - self.last_act >= window:
            times.append(self.last_act + window)
        times.sort()
        return times


@dataclass(slots=True)
class _Outcome:
    """Qualifying alerts of one method on one entity."""

    first_ms: int | None = None
    first_signal: str | None = None
    count: int = 0
    by_signal: dict[str, int] = field(default_factory=dict)
    times: list[int] = field(default_factory=list)


def read_truth(truth: Iterable[dict[str, Any]]) -> dict[EntityKey, _Truth]:
    """Every team and user row of the truth by key, left-out rows included (they are
    counted); ``ValueError`` naming the line of a malformed or duplicate row."""
    table: dict[EntityKey, _Truth] = {}
    for index, record in enumerate(truth, start=1):
        row = truth_row(record, _where(truth, "truth", index))
        if row is None:
            continue
        key = (row.level, row.team_id, row.entity_id)
        if key in table:
            where = _where(truth, "truth", index)
            team = f" of team {row.team_id!r}" if row.level == "user" else ""
            raise ValueError(f"{where}: a second truth row for {row.level} {row.entity_id!r}{team}")
        table[key] = row
    return table


def evaluate(
    events: Iterable[dict[str, Any]],
    alerts: Iterable[dict[str, Any]],
    truth: Iterable[dict[str, Any]],
    inactivity_days: int = 14,
    nab_window_days: int = NAB_WINDOW_DAYS,
) -> EvaluationReport:
    """Score the detector's at_risk alerts and the "inactive for N days" rule against truth.

    Consumes ``truth`` first, then ``alerts``, then ``events`` in a single pass.
    """
    if inactivity_days <= 0:
        raise ValueError("inactivity_days must be positive")
    if nab_window_days <= 0:
        raise ValueError("nab_window_days must be positive")
    window = inactivity_days * DAY_MS
    table = read_truth(truth)

    # ---- alerts: keep the at_risk alerts of scored truth entities (alerts are few)
    at_risk: dict[EntityKey, list[tuple[int, str]]] = {}
    #: level -> (time, state) of the warnings on non-churned truth entities
    warnings: dict[str, list[tuple[int, str]]] = {level: [] for level in LEVELS}
    seen_ids: set[str] = set()
    n_alerts = duplicates = n_at_risk = unmatched = left_out_alerts = bad_alerts = 0
    for record in alerts:
        if not isinstance(record, dict):
            n_alerts += 1
            bad_alerts += 1
            continue
        alert_id = record.get("id")
        if isinstance(alert_id, str):
            if alert_id in seen_ids:
                duplicates += 1
                continue
            seen_ids.add(alert_id)
        n_alerts += 1
        data = record.get("data")
        if not isinstance(data, dict):
            data = record  # accept a bare alert payload
        ts = time_or_none(data.get("event_time") or record.get("time"))
        if ts is None:
            bad_alerts += 1  # no usable time: cannot be placed before or after a cancellation
            continue
        level = str(data.get("entity_type"))
        key = entity_key(level, str(data.get("entity_id")), data.get("team_id"))
        state = data.get("state")
        n_at_risk += state == "at_risk"
        row = table.get(key)
        if row is None:
            unmatched += 1
            continue
        if row.left_out is not None:
            left_out_alerts += 1
            continue
        if state not in WARNING_STATES:
            continue
        if not row.churned:
            warnings[row.level].append((ts, str(state)))
        if state == "at_risk":
            at_risk.setdefault(key, []).append((ts, str(data.get("signal"))))

    # ---- events: one pass, state only for the scored truth entities
    states: dict[EntityKey, _Activity] = {
        key: _Activity() for key, row in table.items() if row.left_out is None
    }
    n_events = skipped = 0
    day_counts: dict[int, int] = {}  # UTC day -> activity events
    first_ms: int | None = None
    last_ms: int | None = None
    for event in events:
        try:
            ts = parse_time_ms(event["timestamp"])
        except (KeyError, TypeError, ValueError):
            skipped += 1
            continue
        n_events += 1
        if first_ms is None or ts < first_ms:
            first_ms = ts
        if last_ms is None or ts > last_ms:
            last_ms = ts
        user_id = event.get("user_id")
        team_id = event.get("team_id")
        is_activity = user_id is not None and event.get("type") not in NON_ACTIVITY_TYPES
        if is_activity:
            day_counts[ts // DAY_MS] = day_counts.get(ts // DAY_MS, 0) + 1
        if team_id is None:
            continue
        team_id = str(team_id)
        keys = [("team", team_id, team_id)]
        if user_id is not None:
            keys.append(("user", team_id, str(user_id)))
        for key in keys:
            activity = states.get(key)
            if activity is not None:
                activity.see(ts)
                if is_activity:
                    activity.activity(ts, window)

    end = last_ms if last_ms is not None else 0
    baseline = _baseline_name(inactivity_days)
    levels: dict[str, LevelComparison] = {}
    signals: dict[str, dict[str, SignalReport]] = {}
    scenarios: dict[str, dict[str, ScenarioReport]] = {}
    evaluated_counts: dict[str, int] = {}
    lead_days: dict[str, dict[str, list[float]]] = {}
    contexts: dict[str, LeadContext] = {}
    scored: dict[str, frozenset[EntityKey]] = {}
    for level in LEVELS:
        evaluated = sorted(
            (
                (key, activity)
                for key, activity in states.items()
                if key[0] == level and activity.first_event is not None
            ),
            key=lambda pair: pair[0],
        )
        evaluated_counts[level] = len(evaluated)
        scored[level] = frozenset(key for key, _ in evaluated)
        truths = [table[key] for key, _ in evaluated]
        detector_outcomes: list[_Outcome] = []
        baseline_outcomes: list[_Outcome] = []
        for (key, state), row in zip(evaluated, truths, strict=True):
            cutoff = row.churned_at if row.churned else None
            detector_outcomes.append(_outcome(at_risk.get(key, []), cutoff))
            firings = [(t, baseline) for t in state.firings(window, end)]
            baseline_outcomes.append(_outcome(firings, cutoff))
        healthy_ms = sum(
            end - state.first_event
            for (_, state), row in zip(evaluated, truths, strict=True)
            if not row.churned and state.first_event is not None
        )
        healthy_weeks = healthy_ms / WEEK_MS
        levels[level] = LevelComparison(
            level=level,
            detector=_score(DETECTOR, truths, detector_outcomes, healthy_weeks, nab_window_days),
            baseline=_score(baseline, truths, baseline_outcomes, healthy_weeks, nab_window_days),
        )
        signals[level] = _signals(truths, detector_outcomes)
        scenarios[level] = _scenarios(truths, detector_outcomes, baseline_outcomes)
        contexts[level] = lead_context(truths, detector_outcomes, baseline_outcomes)
        lead_days[level] = {
            DETECTOR: _leads(truths, detector_outcomes),
            baseline: _leads(truths, baseline_outcomes),
        }

    truth_counts = {
        level: sum(1 for row in table.values() if row.level == level and row.left_out is None)
        for level in LEVELS
    }
    left_out = {
        reason: {
            level: sum(1 for row in table.values() if row.level == level and row.left_out == reason)
            for level in LEVELS
        }
        for reason in (CENSORED, NO_CHURNED_AT)
    }
    data = DataSummary(
        events=n_events,
        first_event=format_time_ms(first_ms) if first_ms is not None else None,
        last_event=format_time_ms(last_ms) if last_ms is not None else None,
        skipped_events=skipped,
        alerts=n_alerts,
        duplicate_alerts=duplicates,
        at_risk_alerts=n_at_risk,
        unmatched_alerts=unmatched,
        truth_entities=truth_counts,
        evaluated_entities=evaluated_counts,
        inactivity_days=inactivity_days,
        nab_window_days=nab_window_days,
        skipped_alerts=bad_alerts,
        left_out_alerts=left_out_alerts,
        censored_entities=left_out[CENSORED],
        churned_without_churned_at=left_out[NO_CHURNED_AT],
    )
    low_days = population_low_days(day_counts)
    low_periods = {
        level: _low_period_report(low_days, warnings[level], first_ms, last_ms) for level in LEVELS
    }
    return EvaluationReport(
        levels=levels,
        signals=signals,
        scenarios=scenarios,
        data=data,
        lead_days=lead_days,
        low_periods=low_periods,
        lead_context=contexts,
        scored=scored,
    )


def population_low_days(day_counts: dict[int, int], ratio: float = LOW_DAY_RATIO) -> list[int]:
    """UTC days (not the first or last, which are partial) with less than ``ratio`` of the
    median activity of the same weekday: a holiday or an outage that lowered everyone.

    >>> counts = {d: (100 if d % 7 < 5 else 30) for d in range(28)}
    >>> counts[10], counts[11] = 20, 60  # a working day at 20%, one at 60%
    >>> population_low_days(counts)
    [10]
    """
    if len(day_counts) < 3:
        return []
    first, last = min(day_counts), max(day_counts)
    days = range(first + 1, last)
    by_weekday: dict[int, list[float]] = {}
    for d in days:
        by_weekday.setdefault(d % 7, []).append(day_counts.get(d, 0))
    medians = {wd: quantile(sorted(v), 0.5) or 0.0 for wd, v in by_weekday.items()}
    return [d for d in days if day_counts.get(d, 0) < ratio * medians[d % 7]]


def _low_period_report(
    low_days: list[int],
    warnings: list[tuple[int, str]],
    first_ms: int | None,
    last_ms: int | None,
) -> LowPeriodReport:
    """Warnings from each low day to LOW_AFTER_DAYS after it, against the rate elsewhere."""
    covered: set[int] = set()
    for d in low_days:
        covered.update(range(d, d + LOW_AFTER_DAYS + 1))
    if first_ms is not None and last_ms is not None:
        all_days = set(range(first_ms // DAY_MS, last_ms // DAY_MS + 1))
    else:
        all_days = set()
    covered &= all_days
    inside = [state for ts, state in warnings if ts // DAY_MS in covered]
    outside_days = len(all_days) - len(covered)
    rate = (len(warnings) - len(inside)) / outside_days if outside_days > 0 else 0.0
    by_state = {state: inside.count(state) for state in WARNING_STATES if state in inside}
    return LowPeriodReport(
        low_days=[format_time_ms(d * DAY_MS)[:10] for d in low_days],
        window_days=len(covered),
        alerts=len(inside),
        by_state=by_state,
        expected=rate * len(covered),
    )


def _outcome(alerts: Iterable[tuple[int, str]], cutoff: int | None) -> _Outcome:
    """Keep alerts strictly before ``cutoff`` (churned_at); first = earliest (ties: input order)."""
    outcome = _Outcome()
    for ts, signal in alerts:
        if cutoff is not None and ts >= cutoff:
            continue
        outcome.count += 1
        outcome.times.append(ts)
        outcome.by_signal[signal] = outcome.by_signal.get(signal, 0) + 1
        if outcome.first_ms is None or ts < outcome.first_ms:
            outcome.first_ms, outcome.first_signal = ts, signal
    return outcome


def _leads(truths: Sequence[_Truth], outcomes: Sequence[_Outcome]) -> list[float]:
    return [
        (row.churned_at - out.first_ms) / DAY_MS
        for row, out in zip(truths, outcomes, strict=True)
        if row.churned and out.first_ms is not None and row.churned_at is not None
    ]


def nab_sigmoid(y: float) -> float:
    """NAB's scaled sigmoid of the relative position ``y`` of a detection in its window.

    >>> round(nab_sigmoid(-1.0), 3), nab_sigmoid(0.0), round(nab_sigmoid(-0.5), 3)
    (0.987, 0.0, 0.848)
    """
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def nab_score(
    windows: Sequence[tuple[int, Sequence[int]]],
    false_alarms: int,
    window_ms: int,
) -> float | None:
    """Normalised NAB score from ``(churned_at, alert times)`` per churned entity and the count
    of alerts outside every window; ``None`` without windows.

    Alert times must already exclude alerts at or after ``churned_at``; alerts before the
    window count as false alarms here (the caller's ``false_alarms`` holds the others).

    >>> DAY = 86_400_000
    >>> nab_score([(30 * DAY, [0])], 0, 30 * DAY)  # alerted at the window start
    100.0
    >>> nab_score([(30 * DAY, [])], 0, 30 * DAY), nab_score([], 3, 30 * DAY)
    (0.0, None)
    >>> round(nab_score([(30 * DAY, [15 * DAY])], 1, 30 * DAY), 1)  # halfway, one false alarm
    87.5
    """
    if not windows:
        return None
    raw = -NAB_A_FP * false_alarms
    for churned_at, times in windows:
        start = churned_at - window_ms
        inside = [t for t in times if t >= start]
        raw -= NAB_A_FP * (len(times) - len(inside))
        if inside:
            raw += NAB_A_TP * nab_sigmoid((min(inside) - churned_at) / window_ms)
        else:
            raw -= NAB_A_FN
    null = -NAB_A_FN * len(windows)
    perfect = NAB_A_TP * nab_sigmoid(-1.0) * len(windows)
    return round(100.0 * (raw - null) / (perfect - null), 6)


def _score(
    method: str,
    truths: Sequence[_Truth],
    outcomes: Sequence[_Outcome],
    healthy_weeks: float,
    nab_window_days: int = NAB_WINDOW_DAYS,
) -> LevelReport:
    tp = fp = fn = alerts = false_alarms = 0
    for row, out in zip(truths, outcomes, strict=True):
        flagged = out.first_ms is not None
        alerts += out.count
        if row.churned:
            tp += flagged
            fn += not flagged
        else:
            fp += flagged
            false_alarms += out.count
    leads = _leads(truths, outcomes)
    windows = [
        (row.churned_at, out.times)
        for row, out in zip(truths, outcomes, strict=True)
        if row.churned and row.churned_at is not None
    ]
    return LevelReport(
        method=method,
        entities=len(truths),
        churned=sum(1 for row in truths if row.churned),
        tp=tp,
        fp=fp,
        fn=fn,
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        lead_median_days=quantile(leads, 0.5),
        lead_p25_days=quantile(leads, 0.25),
        lead_count=len(leads),
        alerts=alerts,
        false_alarms=false_alarms,
        healthy_weeks=healthy_weeks,
        false_alarms_per_1000_weeks=(
            false_alarms / healthy_weeks * 1000 if healthy_weeks > 0 else None
        ),
        nab_score=nab_score(windows, false_alarms, nab_window_days * DAY_MS),
        tp_before_decay_start=sum(
            1
            for row, out in zip(truths, outcomes, strict=True)
            if row.churned
            and out.first_ms is not None
            and row.decay_start is not None
            and out.first_ms < row.decay_start
        ),
    )


def _signals(truths: Sequence[_Truth], outcomes: Sequence[_Outcome]) -> dict[str, SignalReport]:
    counts: dict[str, list[int]] = {}  # signal -> [tp, fp, alerts, false_alarms]
    for row, out in zip(truths, outcomes, strict=True):
        for signal, n in out.by_signal.items():
            entry = counts.setdefault(signal, [0, 0, 0, 0])
            entry[2] += n
            if not row.churned:
                entry[3] += n
        if out.first_signal is not None:
            counts[out.first_signal][0 if row.churned else 1] += 1
    return {
        signal: SignalReport(signal, tp, fp, alerts, false_alarms)
        for signal, (tp, fp, alerts, false_alarms) in sorted(counts.items())
    }


def _scenarios(
    truths: Sequence[_Truth], detector: Sequence[_Outcome], baseline: Sequence[_Outcome]
) -> dict[str, ScenarioReport]:
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(truths):
        groups.setdefault(row.scenario, []).append(index)
    reports: dict[str, ScenarioReport] = {}
    for scenario, indexes in sorted(groups.items()):
        rows = [truths[i] for i in indexes]
        det = [detector[i] for i in indexes]
        base = [baseline[i] for i in indexes]
        reports[scenario] = ScenarioReport(
            scenario=scenario,
            entities=len(rows),
            churned=sum(1 for row in rows if row.churned),
            detector_tp=_count(rows, det, churned=True),
            detector_lead_median_days=quantile(_leads(rows, det), 0.5),
            detector_fp=_count(rows, det, churned=False),
            baseline_tp=_count(rows, base, churned=True),
            baseline_lead_median_days=quantile(_leads(rows, base), 0.5),
            baseline_fp=_count(rows, base, churned=False),
            detector_signals=_first_signals(rows, det, churned=any(row.churned for row in rows)),
            detector_fp_signals=_first_signals(rows, det, churned=False),
        )
    return reports


def _first_signals(
    rows: Sequence[_Truth], outcomes: Sequence[_Outcome], *, churned: bool
) -> dict[str, int]:
    """How many churned (TPs) or healthy (FPs) entities' first qualifying alert had each
    signal, most frequent first."""
    counts: dict[str, int] = {}
    for row, out in zip(rows, outcomes, strict=True):
        if row.churned == churned and out.first_signal is not None:
            counts[out.first_signal] = counts.get(out.first_signal, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _count(rows: Sequence[_Truth], outcomes: Sequence[_Outcome], *, churned: bool) -> int:
    return sum(
        1
        for row, out in zip(rows, outcomes, strict=True)
        if row.churned == churned and out.first_ms is not None
    )
