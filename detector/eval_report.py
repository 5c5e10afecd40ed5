"""A self-contained HTML evaluation report: inline CSS and SVG plots, no script, no network.

Pure: decoded records in, an HTML string out (the CLI reads and writes the files). Three steps
so that the big events file is read once, by :func:`detector.evaluation.evaluate`:

1. :func:`index_inputs` keeps what the plots need from the truth and the alerts (memory
   O(entities + team alerts));
2. :func:`pick_timelines` chooses a bounded sample of teams to draw (churned teams, caught and
   missed, spread over scenarios; teams with false alarms; healthy teams) and
   :class:`DailyActivity` taps the events stream on its way to ``evaluate`` and counts daily
   activity events and active users of those teams only;
3. :func:`render_html` draws the timelines, the lead-time histograms, precision-recall and
   per-scenario plots (detector next to the inactivity baseline) and the summary tables.

Every text that comes from the input (ids, scenarios, signals) is HTML-escaped.
"""

from __future__ import annotations

import hashlib
import html
import itertools
import math
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .evaluation import (
    DAY_MS,
    DETECTOR,
    NON_ACTIVITY_TYPES,
    EntityKey,
    EvaluationReport,
    _fmt,
    entity_key,
    format_time_ms,
    parse_time_ms,
    read_truth,
    time_or_none,
)

__all__ = [
    "STATE_COLOURS",
    "AlertMark",
    "DailyActivity",
    "ReportInputs",
    "TimelinePick",
    "TruthRow",
    "index_inputs",
    "pick_timelines",
    "render_html",
    "risk_curve",
]

#: Alert states in the order of a decline, each with its marker colour.
STATE_COLOURS: dict[str, str] = {
    "cooling": "#e6a100",
    "at_risk": "#d62728",
    "recovered": "#2ca02c",
    "churned": "#6a3d9a",
}
OTHER_COLOUR = "#888888"
DETECTOR_COLOUR = "#1f5fbf"
BASELINE_COLOUR = "#9a9a9a"
RISK_STATES = frozenset({"cooling", "at_risk"})

# timeline geometry (SVG user units)
TL_WIDTH, TL_LEFT, TL_RIGHT = 1000, 44, 44
TL_TOP, TL_CHART_H, TL_STRIP_H, TL_AXIS_H = 6, 54, 28, 14
TL_PLOT_W = TL_WIDTH - TL_LEFT - TL_RIGHT


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class TruthRow:
    level: str
    entity_id: str
    churned: bool
    churned_at: int | None
    decay_start: int | None
    scenario: str
    team_id: str = ""

    @property
    def censored(self) -> bool:
        """Decline began inside the data but no cancellation yet: left out, as in ``evaluate``."""
        return not self.churned and self.decay_start is not None

    @property
    def left_out(self) -> bool:
        """Censored, or churned without a churned_at: not scored by ``evaluate``."""
        return self.censored or (self.churned and self.churned_at is None)


@dataclass(frozen=True, slots=True)
class AlertMark:
    time_ms: int
    state: str
    signal: str
    risk: float | None


@dataclass(slots=True)
class ReportInputs:
    """Truth rows, every team-level alert, and per entity the highest risk_score of its
    cooling/at_risk alerts that count (before ``churned_at`` for churned entities)."""

    truth: dict[EntityKey, TruthRow] = field(default_factory=dict)
    team_alerts: dict[str, list[AlertMark]] = field(default_factory=dict)
    max_risk: dict[EntityKey, float] = field(default_factory=dict)

    def team(self, team_id: str) -> TruthRow | None:
        """A team's truth row (its key repeats its id, as a user's holds its team)."""
        return self.truth.get(entity_key("team", team_id, team_id))

    def first_at_risk(self, team_id: str) -> int | None:
        """Earliest team at_risk alert that counts (before churned_at), or ``None``."""
        row = self.team(team_id)
        cutoff = row.churned_at if row is not None and row.churned else None
        times = [
            mark.time_ms
            for mark in self.team_alerts.get(team_id, ())
            if mark.state == "at_risk" and (cutoff is None or mark.time_ms < cutoff)
        ]
        return min(times) if times else None


def index_inputs(truth: Iterable[dict[str, Any]], alerts: Iterable[dict[str, Any]]) -> ReportInputs:
    """Read the truth, then the alerts (de-duplicated by CloudEvents id, bare ``data`` accepted).

    The truth is checked as :func:`detector.evaluation.evaluate` checks it (``ValueError``
    naming the line of a bad value); alerts without a usable time are skipped, as there.
    """
    inputs = ReportInputs()
    for key, checked in read_truth(truth).items():
        inputs.truth[key] = TruthRow(
            level=checked.level,
            entity_id=checked.entity_id,
            churned=checked.churned,
            churned_at=checked.churned_at,
            decay_start=checked.decay_start,
            scenario=checked.scenario,
            team_id=checked.team_id,
        )
    seen: set[str] = set()
    for record in alerts:
        if not isinstance(record, dict):
            continue
        alert_id = record.get("id")
        if isinstance(alert_id, str):
            if alert_id in seen:
                continue
            seen.add(alert_id)
        data = record.get("data")
        if not isinstance(data, dict):
            data = record
        when = time_or_none(data.get("event_time") or record.get("time"))
        if when is None:
            continue
        key = entity_key(
            str(data.get("entity_type")), str(data.get("entity_id")), data.get("team_id")
        )
        state = str(data.get("state"))
        risk = data.get("risk_score")
        risk = float(risk) if isinstance(risk, int | float) and math.isfinite(risk) else None
        if key[0] == "team":
            mark = AlertMark(when, state, str(data.get("signal")), risk)
            inputs.team_alerts.setdefault(key[2], []).append(mark)
        row = inputs.truth.get(key)
        if row is None or row.left_out or risk is None or state not in RISK_STATES:
            continue
        if row.churned and row.churned_at is not None and when >= row.churned_at:
            continue
        inputs.max_risk[key] = max(risk, inputs.max_risk.get(key, -math.inf))
    for marks in inputs.team_alerts.values():
        marks.sort(key=lambda m: (m.time_ms, m.state))
    return inputs


# --------------------------------------------------------------------------- timelines


@dataclass(frozen=True, slots=True)
class TimelinePick:
    team_id: str
    category: str  # "caught", "missed", "false alarm" or "healthy"


def _stable_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def pick_timelines(
    inputs: ReportInputs, limit: int = 40, false_alarms: int = 10, healthy: int = 6
) -> list[TimelinePick]:
    """A deterministic, bounded sample of teams to draw.

    Teams with false alarms (most at_risk alerts first) and healthy teams (a hash-ordered
    sample) get up to their quota; churned teams fill the rest, taken round-robin over
    scenarios with the missed ones first, so every scenario shows up.

    >>> DAY = 86_400_000
    >>> inputs = ReportInputs(truth={
    ...     ("team", "a", "a"): TruthRow("team", "a", True, 9 * DAY, DAY, "drop"),
    ...     ("team", "b", "b"): TruthRow("team", "b", False, None, None, "fine"),
    ...     ("team", "c", "c"): TruthRow("team", "c", False, None, None, "fine")},
    ...     team_alerts={"c": [AlertMark(DAY, "at_risk", "s", 0.9)]})
    >>> [(p.team_id, p.category) for p in pick_timelines(inputs)]
    [('a', 'missed'), ('c', 'false alarm'), ('b', 'healthy')]
    """
    churned: dict[str, list[tuple[bool, str]]] = {}
    alarmed: list[tuple[int, str]] = []
    quiet: list[tuple[bytes, str]] = []
    for (level, _, team_id), row in sorted(inputs.truth.items()):
        if level != "team" or row.left_out:
            continue
        caught = inputs.first_at_risk(team_id) is not None
        if row.churned:
            churned.setdefault(row.scenario, []).append((caught, team_id))
        elif caught:
            n = sum(1 for m in inputs.team_alerts[team_id] if m.state == "at_risk")
            alarmed.append((-n, team_id))
        else:
            quiet.append((_stable_hash(team_id), team_id))
    alarmed.sort()
    quiet.sort()
    picks_alarm = [TimelinePick(t, "false alarm") for _, t in alarmed[:false_alarms]]
    picks_quiet = [TimelinePick(t, "healthy") for _, t in quiet[:healthy]]
    room = max(0, limit - len(picks_alarm) - len(picks_quiet))
    queues = [sorted(teams) for _, teams in sorted(churned.items())]
    picks_churn: list[TimelinePick] = []
    while len(picks_churn) < room and any(queues):
        for queue in queues:
            if queue and len(picks_churn) < room:
                caught, team_id = queue.pop(0)
                picks_churn.append(TimelinePick(team_id, "caught" if caught else "missed"))
    return (picks_churn + picks_alarm + picks_quiet)[:limit]


class DailyActivity:
    """Daily activity events, distinct active users and first/last activity time of a few
    teams, from one streaming pass over the events (memory bounded by the chosen teams x days
    x their users)."""

    def __init__(self, team_ids: Iterable[str]) -> None:
        # team -> UTC day -> ([events, first ms, last ms], active users)
        self._days: dict[str, dict[int, tuple[list[int], set[str]]]] = {
            team_id: {} for team_id in team_ids
        }

    def observe(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        team_id = event.get("team_id")
        if team_id is None:
            return
        days = self._days.get(str(team_id))
        user_id = event.get("user_id")
        if days is None or user_id is None or event.get("type") in NON_ACTIVITY_TYPES:
            return
        ts = time_or_none(event.get("timestamp"))
        if ts is None:
            return
        stats, users = days.setdefault(ts // DAY_MS, ([0, ts, ts], set()))
        stats[0] += 1
        stats[1] = min(stats[1], ts)
        stats[2] = max(stats[2], ts)
        users.add(str(user_id))

    def tap(self, events: Iterable[Any]) -> Iterator[Any]:
        """Yield ``events`` unchanged, observing each on the way."""
        for event in events:
            self.observe(event)
            yield event

    def series(self, team_id: str, first_day: int, n_days: int) -> tuple[list[int], list[int]]:
        """(activity events, active users) per UTC day ``first_day .. first_day + n_days - 1``."""
        events, users = [0] * n_days, [0] * n_days
        for day, (stats, active) in self._days.get(team_id, {}).items():
            if 0 <= day - first_day < n_days:
                events[day - first_day] = stats[0]
                users[day - first_day] = len(active)
        return events, users

    def inactivity_firings(self, team_id: str, window_ms: int, end_ms: int) -> list[int]:
        """When the "inactive for ``window_ms``" rule fires for the team: ``last activity +
        window`` for every gap of at least the window, the trailing one up to ``end_ms``
        included (the baseline of :mod:`detector.evaluation`; a gap of a day or more always
        spans whole days, so first/last activity per day give it exactly).

        >>> DAY = 86_400_000
        >>> activity = DailyActivity(["a"])
        >>> for ms in (0, DAY + 5, 20 * DAY):
        ...     activity.observe({"type": "x", "timestamp": ms, "user_id": "u", "team_id": "a"})
        >>> [ms / DAY for ms in activity.inactivity_firings("a", 14 * DAY, 40 * DAY)]
        [15.00000005787037, 34.0]
        """
        days = [stats for _, (stats, _users) in sorted(self._days.get(team_id, {}).items())]
        firings = [
            before[2] + window_ms
            for before, after in itertools.pairwise(days)
            if after[1] - before[2] >= window_ms
        ]
        if days and end_ms - days[-1][2] >= window_ms:
            firings.append(days[-1][2] + window_ms)
        return firings


# --------------------------------------------------------------------------- svg helpers


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _n(value: float) -> str:
    """A coordinate: at most one decimal, no trailing zeros (deterministic, compact).

    >>> _n(3.0), _n(2.449), _n(-0.04)
    ('3', '2.4', '0')
    """
    text = f"{value:.1f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _svg(width: int, height: int, body: Sequence[str], label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{_e(label)}">'
        + "".join(body)
        + "</svg>"
    )


def _text(x: float, y: float, text: str, anchor: str = "start", cls: str = "t") -> str:
    return f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="{anchor}" class="{cls}">{_e(text)}</text>'


def _line(x1: float, y1: float, x2: float, y2: float, cls: str, stroke: str = "") -> str:
    colour = f' stroke="{stroke}"' if stroke else ""
    return f'<line x1="{_n(x1)}" y1="{_n(y1)}" x2="{_n(x2)}" y2="{_n(y2)}" class="{cls}"{colour}/>'


def _rect(x: float, y: float, w: float, h: float, fill: str, tip: str = "") -> str:
    title = f"<title>{_e(tip)}</title>" if tip else ""
    return (
        f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(w)}" height="{_n(h)}" fill="{fill}">'
        f"{title}</rect>"
    )


def _nice_step(span: float, target: int = 5) -> float:
    """A 1/2/5 x 10^k step giving about ``target`` ticks over ``span``.

    >>> _nice_step(100), _nice_step(7), _nice_step(0)
    (20.0, 2.0, 1.0)
    """
    if span <= 0:
        return 1.0
    raw = span / target
    power = 10 ** math.floor(math.log10(raw))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= raw))


def _y_axis(top: float, bottom: float, left: float, right: float, vmax: float) -> list[str]:
    """Horizontal grid lines with labels from 0 to ``vmax`` (linear)."""
    step = _nice_step(vmax)
    parts = []
    value = 0.0
    while value <= vmax + 1e-9:
        y = bottom - (bottom - top) * value / vmax
        parts.append(_line(left, y, right, y, "grid"))
        parts.append(_text(left - 4, y + 3, f"{value:g}", "end"))
        value += step
    return parts


def _legend(x: float, y: float, items: Sequence[tuple[str, str]]) -> list[str]:
    parts = []
    for label, colour in items:
        parts.append(_rect(x, y - 8, 10, 10, colour))
        parts.append(_text(x + 14, y + 1, label))
        x += 22 + 7 * len(label)
    return parts


# --------------------------------------------------------------------------- plots


def _histogram(report: EvaluationReport, level: str) -> str:
    """Lead times (days from the first qualifying alert to the cancellation) of each method."""
    width, height, left, right, top, bottom = 640, 260, 44, 16, 28, 226
    methods = [DETECTOR, report.baseline_name]
    leads = {m: report.lead_days.get(level, {}).get(m, []) for m in methods}
    longest = max((v for vs in leads.values() for v in vs), default=0.0)
    bin_days = next((b for b in (1, 2, 3, 5, 7, 14, 30, 60) if longest / b <= 26), 90)
    n_bins = max(1, math.floor(longest / bin_days) + 1)
    counts = {m: [0] * n_bins for m in methods}
    for m, values in leads.items():
        for v in values:
            counts[m][min(n_bins - 1, max(0, math.floor(v / bin_days)))] += 1
    cmax = max((c for cs in counts.values() for c in cs), default=0) or 1
    plot_w = width - left - right
    bin_w = plot_w / n_bins
    parts = _y_axis(top, bottom, left, width - right, cmax)
    colours = {DETECTOR: DETECTOR_COLOUR, report.baseline_name: BASELINE_COLOUR}
    for i in range(n_bins):
        x0 = left + i * bin_w
        for j, m in enumerate(methods):
            c = counts[m][i]
            if c:
                h = (bottom - top) * c / cmax
                tip = f"{m}: {c} in {i * bin_days}-{(i + 1) * bin_days} d"
                parts.append(
                    _rect(
                        x0 + 1 + j * (bin_w - 2) / 2,
                        bottom - h,
                        (bin_w - 2) / 2,
                        h,
                        colours[m],
                        tip,
                    )
                )
    label_every = max(1, math.ceil(n_bins / 10))
    for i in range(0, n_bins + 1, label_every):
        parts.append(_text(left + i * bin_w, bottom + 14, f"{i * bin_days}", "middle"))
    parts.append(
        _text(left + plot_w / 2, bottom + 30, "lead time (days before cancellation)", "middle")
    )
    comp = report.levels[level]
    for rep in (comp.detector, comp.baseline):
        if rep.lead_median_days is not None:
            x = left + plot_w * rep.lead_median_days / (n_bins * bin_days)
            parts.append(_line(x, top, x, bottom, "median", colours[rep.method]))
    parts += _legend(left, 14, [(f"{m} (n={len(leads[m])})", colours[m]) for m in methods])
    parts.append(_text(width - right, 14, "dashed: median", "end", "t small muted"))
    return _svg(width, height, parts, f"{level} lead-time histogram")


def risk_curve(
    inputs: ReportInputs,
    level: str,
    churned_total: int,
    scored: Collection[EntityKey] | None = None,
) -> list[tuple[float, float, float]]:
    """(risk threshold, recall, precision) when flagging every entity whose highest cooling or
    at_risk ``risk_score`` (before churned_at) reaches the threshold; one point per distinct
    score, highest first. ``churned_total`` is the recall denominator (evaluated churned), so
    only the entities in ``scored`` (the ones ``evaluate`` scored) count, when it is given:
    a truth entity without events would otherwise push recall above 1.

    >>> DAY = 86_400_000
    >>> inputs = ReportInputs(
    ...     truth={("team", k, k): TruthRow("team", k, k != "h", DAY if k != "h" else None,
    ...                                     None, "s") for k in ("a", "b", "h")},
    ...     max_risk={("team", "a", "a"): 0.9, ("team", "h", "h"): 0.7, ("team", "b", "b"): 0.5})
    >>> risk_curve(inputs, "team", 2)
    [(0.9, 0.5, 1.0), (0.7, 0.5, 0.5), (0.5, 1.0, 0.6666666666666666)]
    >>> risk_curve(inputs, "team", 1, scored={("team", "a", "a"), ("team", "h", "h")})
    [(0.9, 1.0, 1.0), (0.7, 1.0, 0.5)]
    """
    points_in = sorted(
        (
            (risk, inputs.truth[key].churned)
            for key, risk in inputs.max_risk.items()
            if key[0] == level
            and not inputs.truth[key].left_out
            and (scored is None or key in scored)
        ),
        reverse=True,
    )
    points: list[tuple[float, float, float]] = []
    tp = fp = 0
    for i, (risk, churned) in enumerate(points_in):
        tp += churned
        fp += not churned
        if i + 1 == len(points_in) or points_in[i + 1][0] != risk:
            points.append((risk, tp / churned_total if churned_total else 0.0, tp / (tp + fp)))
    return points


def _precision_recall(report: EvaluationReport, inputs: ReportInputs, level: str) -> str:
    size, left, top = 300, 48, 30
    width, height = left + size + 250, top + size + 40

    def xy(recall: float, precision: float) -> tuple[float, float]:
        return left + size * recall, top + size * (1 - precision)

    parts = []
    for tick in range(6):
        v = tick / 5
        x, y = xy(v, v)
        parts += [_line(left, y, left + size, y, "grid"), _line(x, top, x, top + size, "grid")]
        parts += [
            _text(left - 4, y + 3, f"{v:.1f}", "end"),
            _text(x, top + size + 14, f"{v:.1f}", "middle"),
        ]
    parts.append(_text(left + size / 2, top + size + 30, "recall", "middle"))
    parts.append(
        f'<text x="14" y="{_n(top + size / 2)}" text-anchor="middle" class="t" '
        f'transform="rotate(-90 14 {_n(top + size / 2)})">precision</text>'
    )
    comp = report.levels[level]
    curve = risk_curve(inputs, level, comp.detector.churned, report.scored.get(level))
    if curve:
        coords = " ".join(f"{_n(x)},{_n(y)}" for x, y in (xy(r, p) for _, r, p in curve))
        parts.append(f'<polyline points="{coords}" class="curve" stroke="{DETECTOR_COLOUR}"/>')
    legend_x = left + size + 16
    for i, (rep, colour, shape) in enumerate(
        ((comp.detector, DETECTOR_COLOUR, "circle"), (comp.baseline, BASELINE_COLOUR, "square"))
    ):
        label = f"{rep.method}: P {_fmt(rep.precision, 3)} R {_fmt(rep.recall, 3)}"
        if rep.precision is not None and rep.recall is not None:
            x, y = xy(rep.recall, rep.precision)
            parts.append(_marker(shape, x, y, colour, label))
        parts.append(_marker(shape, legend_x + 5, top + 10 + 18 * i, colour, label))
        parts.append(_text(legend_x + 14, top + 14 + 18 * i, label, cls="t small"))
    parts.append(_line(legend_x, top + 46, legend_x + 10, top + 46, "curve-key"))
    parts.append(_text(legend_x + 14, top + 50, "detector, flag if max alert", cls="t small"))
    parts.append(_text(legend_x + 14, top + 62, "risk_score ≥ threshold", cls="t small"))
    return _svg(width, height, parts, f"{level} precision-recall")


def _marker(shape: str, x: float, y: float, colour: str, tip: str) -> str:
    title = f"<title>{_e(tip)}</title>"
    if shape == "circle":
        return (
            f'<circle cx="{_n(x)}" cy="{_n(y)}" r="6" fill="{colour}" class="pt">{title}</circle>'
        )
    return f'<rect x="{_n(x - 5)}" y="{_n(y - 5)}" width="10" height="10" fill="{colour}" class="pt">{title}</rect>'


def _scenario_bars(report: EvaluationReport, level: str) -> str:
    """Share of each scenario's entities flagged in time: recall over its churned entities,
    false-positive rate over its healthy ones; a scenario with both gets both rows (a truth
    without ``scenario`` puts every entity under "unknown")."""
    rows = [
        (sc, churns)
        for sc in sorted(report.scenarios.get(level, {}).values(), key=lambda s: s.scenario)
        for churns in (True, False)
        if (sc.churned if churns else sc.healthy) > 0
    ]
    rows.sort(key=lambda row: (not row[1], row[0].scenario))
    longest = max((len(sc.scenario) for sc, _ in rows), default=0) + len(" (false alarm)")
    left, bar_h, gap, top = 12 + 6 * longest, 9, 8, 26
    width = left + 360 + 70
    height = top + len(rows) * (2 * bar_h + gap) + 24
    plot_w = 360
    parts = []
    for tick in range(6):
        x = left + plot_w * tick / 5
        parts += [
            _line(x, top - 4, x, height - 22, "grid"),
            _text(x, height - 8, f"{tick * 20}%", "middle"),
        ]
    for i, (sc, churns) in enumerate(rows):
        y = top + i * (2 * bar_h + gap)
        base = sc.churned if churns else sc.healthy
        kind = "caught" if churns else "false alarm"
        parts.append(
            _text(
                left - 6,
                y + bar_h + 3,
                f"{sc.scenario} ({kind})",
                "end",
                "t" if churns else "t muted",
            )
        )
        for j, (count, colour, name) in enumerate(
            (
                (sc.detector_tp if churns else sc.detector_fp, DETECTOR_COLOUR, DETECTOR),
                (
                    sc.baseline_tp if churns else sc.baseline_fp,
                    BASELINE_COLOUR,
                    report.baseline_name,
                ),
            )
        ):
            share = count / base if base else 0.0
            yy = y + j * bar_h
            parts.append(
                _rect(
                    left, yy, max(plot_w * share, 0.5), bar_h - 1, colour, f"{name}: {count}/{base}"
                )
            )
            parts.append(
                _text(left + plot_w * share + 4, yy + bar_h - 1, f"{count}/{base}", cls="t small")
            )
    parts += _legend(
        left, 12, [(DETECTOR, DETECTOR_COLOUR), (report.baseline_name, BASELINE_COLOUR)]
    )
    return _svg(width, height, parts, f"{level} per-scenario share flagged")


def _timeline(
    pick: TimelinePick,
    inputs: ReportInputs,
    activity: DailyActivity,
    baseline: Sequence[int],
    first_day: int,
    n_days: int,
) -> str:
    """Daily activity events (bars, left scale) and active users (line, right scale), with the
    decay start, the cancellation, the team's alerts and the baseline's firings (marker rows
    below)."""
    events, users = activity.series(pick.team_id, first_day, n_days)
    chart_bottom = TL_TOP + TL_CHART_H
    strip_y = chart_bottom + 9
    height = TL_TOP + TL_CHART_H + TL_STRIP_H + TL_AXIS_H
    day_w = TL_PLOT_W / n_days
    origin = first_day * DAY_MS

    def x_of(ms: int) -> float:
        return TL_LEFT + (ms - origin) / DAY_MS * day_w

    parts = [_rect(TL_LEFT, TL_TOP, TL_PLOT_W, TL_CHART_H, "#fafafa")]
    for day in range(n_days):  # month ticks
        date = format_time_ms((first_day + day) * DAY_MS)
        if date[8:10] == "01":
            x = TL_LEFT + day * day_w
            parts += [
                _line(x, TL_TOP, x, chart_bottom + TL_STRIP_H, "grid"),
                _text(x + 2, height - 2, date[:7], cls="t small muted"),
            ]
    emax, umax = max(events, default=0) or 1, max(users, default=0) or 1
    for day, count in enumerate(events):
        if count:
            h = TL_CHART_H * count / emax
            parts.append(
                f'<rect x="{_n(TL_LEFT + day * day_w)}" y="{_n(chart_bottom - h)}" width="{_n(max(day_w - 0.3, 0.5))}" height="{_n(h)}" class="ev"/>'
            )
    points = " ".join(
        f"{_n(TL_LEFT + (day + 0.5) * day_w)},{_n(chart_bottom - TL_CHART_H * n / umax)}"
        for day, n in enumerate(users)
    )
    parts.append(f'<polyline points="{points}" class="users"/>')
    parts.append(_text(TL_LEFT - 4, TL_TOP + 9, f"{emax}", "end", "t small ev-t"))
    parts.append(_text(TL_WIDTH - TL_RIGHT + 4, TL_TOP + 9, f"{umax}", cls="t small users-t"))
    row = inputs.team(pick.team_id)
    if row is not None and row.decay_start is not None:
        x = x_of(row.decay_start)
        parts.append(_line(x, TL_TOP, x, chart_bottom + TL_STRIP_H, "decay"))
    if row is not None and row.churned_at is not None:
        x = x_of(row.churned_at)
        parts.append(_line(x, TL_TOP, x, chart_bottom + TL_STRIP_H, "cancel"))
    first = inputs.first_at_risk(pick.team_id)
    for mark in inputs.team_alerts.get(pick.team_id, ()):
        state = mark.state if mark.state in STATE_COLOURS else "other"
        colour = STATE_COLOURS.get(state, OTHER_COLOUR)
        highlight = mark.state == "at_risk" and mark.time_ms == first
        tip = f"{mark.state} {format_time_ms(mark.time_ms)} {mark.signal} risk {_fmt(mark.risk, 2)}"
        parts.append(
            f'<circle cx="{_n(x_of(mark.time_ms))}" cy="{_n(strip_y)}" r="{7 if highlight else 4}" '
            f'fill="{colour}" class="alert {state}{" first" if highlight else ""}">'
            f"<title>{_e(tip)}</title></circle>"
        )
    y = strip_y + 13
    for ms in baseline:
        x = x_of(ms)
        parts.append(
            f'<polygon points="{_n(x)},{_n(y - 5)} {_n(x - 5)},{_n(y + 4)} {_n(x + 5)},{_n(y + 4)}" '
            f'class="firing"><title>baseline fires {_e(format_time_ms(ms))}</title></polygon>'
        )
    return _svg(TL_WIDTH, height, parts, f"timeline of team {pick.team_id}")


def _timeline_heading(pick: TimelinePick, inputs: ReportInputs, baseline: Sequence[int]) -> str:
    row = inputs.team(pick.team_id)
    bits = [pick.category]
    if row is not None:
        bits.insert(0, row.scenario)
    churned_at = row.churned_at if row is not None else None
    first = inputs.first_at_risk(pick.team_id)
    if churned_at is not None:
        if first is not None:
            bits.append(f"first at_risk {(churned_at - first) / DAY_MS:.1f} d before cancellation")
        fired = [ms for ms in baseline if ms < churned_at]
        bits.append(
            f"baseline {(churned_at - min(fired)) / DAY_MS:.1f} d before"
            if fired
            else "baseline missed"
        )
    else:
        n = sum(1 for m in inputs.team_alerts.get(pick.team_id, ()) if m.state == "at_risk")
        bits.append(f"{n} at_risk alert{'s' * (n != 1)}, baseline fired {len(baseline)}x")
    cls = pick.category.replace(" ", "-")
    return f'<h3 class="tl {cls}">team {_e(pick.team_id)} <span>{_e(" · ".join(bits))}</span></h3>'


# --------------------------------------------------------------------------- tables


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        digits = 1 if abs(value) >= 100 else 2 if abs(value) >= 10 else 3
        return f"{value:.{digits}f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def _table(rows: Sequence[dict[str, Any]], caption: str) -> str:
    """Columns from the first row's keys, so new report fields show up without code here."""
    if not rows:
        return f"<p class='muted'>{_e(caption)}: none</p>"
    columns = list(rows[0])
    head = "".join(f"<th>{_e(c.replace('_', ' '))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(_cell(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><caption>{_e(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --------------------------------------------------------------------------- page

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222;max-width:1300px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:14px 0 2px}h3.tl span{font-weight:normal;color:#555}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
caption{text-align:left;font-weight:600;padding:4px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}
.plots{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
.plots figure{margin:0}figcaption{font-weight:600;margin-bottom:4px}
svg{max-width:100%;height:auto}
svg .t{font-size:11px;fill:#333}svg .small{font-size:10px}svg .muted,.muted{fill:#777;color:#777}
svg .grid{stroke:#e4e4e4;stroke-width:1}svg .median{stroke-width:2;stroke-dasharray:5 3}
svg .curve{fill:none;stroke-width:2}svg .curve-key{stroke:#1f5fbf;stroke-width:2}
svg .pt{stroke:#fff;stroke-width:1}
svg .ev{fill:#b7cde8}svg .ev-t{fill:#5b84b8}svg .users{fill:none;stroke:#12365f;stroke-width:0.9;stroke-opacity:0.8}
svg .users-t{fill:#12365f}
svg .decay{stroke:#e6a100;stroke-width:1.5;stroke-dasharray:4 3}svg .cancel{stroke:#000;stroke-width:2}
svg .firing{fill:#9a9a9a}svg .alert{stroke:#fff;stroke-width:0.8}svg .alert.first{stroke:#000;stroke-width:2}
.key span{display:inline-block;margin-right:16px}
.swatch{display:inline-block;width:11px;height:11px;border-radius:6px;vertical-align:-1px;margin-right:4px}
"""


def render_html(
    report: EvaluationReport,
    inputs: ReportInputs,
    picks: Sequence[TimelinePick],
    activity: DailyActivity,
    title: str = "Churn detector evaluation",
) -> str:
    """The whole report as one HTML document (deterministic for the same inputs)."""
    data = report.data
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p>{_e(data.events)} events ({_e(data.first_event or '—')} .. {_e(data.last_event or '—')}), "
        f"{_e(data.alerts)} alerts ({_e(data.at_risk_alerts)} at_risk). Detector: an entity is flagged "
        f"by an at_risk alert before its cancellation; baseline {_e(report.baseline_name)}: fires "
        f"{_e(data.inactivity_days)} days after the last activity, once per gap. Entities whose "
        "decline began but had not cancelled by the end of the data, and churned entities "
        "without a churned_at, are left out. A user is scored once per team.</p>",
        "<h2>Summary</h2>",
    ]
    for level, comp in report.levels.items():
        rows = list(comp.to_dict().values())
        out.append(_table(rows, f"{level} level"))
    out.append(
        _table(
            [
                {
                    "level": level,
                    "oracle_median_days": ctx.bound_median_days,
                    "oracle_count": ctx.bound_count,
                    "detector_tp_before_decay_start": report.levels[
                        level
                    ].detector.tp_before_decay_start,
                    "baseline_tp_before_decay_start": report.levels[
                        level
                    ].baseline.tp_before_decay_start,
                    "paired_count": ctx.paired_count,
                    "paired_detector_median_days": ctx.paired_detector_median_days,
                    "paired_baseline_median_days": ctx.paired_baseline_median_days,
                }
                for level, ctx in report.lead_context.items()
            ],
            "lead context: an oracle alerting the day each decline began (a reference, not a "
            "bound: a first alert before the decline began has a longer lead; such TPs are "
            "counted), and both methods on the entities both flagged",
        )
    )
    out.append(
        _table(
            [{"level": level, **low.to_dict()} for level, low in report.low_periods.items()],
            "warnings on healthy entities in and after population-wide lows (holidays, "
            "outages) vs the number expected from the rest of the data",
        )
    )
    out.append(_table([data.to_dict()], "data"))
    for level in report.levels:
        out += [
            f"<h2>{_e(level.capitalize())} level: detector vs {_e(report.baseline_name)}</h2>",
            '<div class="plots">',
            f"<figure><figcaption>Precision and recall</figcaption>{_precision_recall(report, inputs, level)}</figure>",
            f"<figure><figcaption>Share flagged in time, per scenario</figcaption>{_scenario_bars(report, level)}</figure>",
            f"<figure><figcaption>Lead time of the caught cancellations</figcaption>{_histogram(report, level)}</figure>",
            "</div>",
            _table(
                [s.to_dict() for s in report.scenarios.get(level, {}).values()],
                f"{level} level by scenario",
            ),
            _table(
                [s.to_dict() for s in report.signals.get(level, {}).values()],
                f"{level} level detector signals (at_risk alerts)",
            ),
        ]
    out += _timelines_section(report, inputs, picks, activity)
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _timelines_section(
    report: EvaluationReport,
    inputs: ReportInputs,
    picks: Sequence[TimelinePick],
    activity: DailyActivity,
) -> list[str]:
    churned_teams = sum(
        1 for key, r in inputs.truth.items() if key[0] == "team" and r.churned and not r.left_out
    )
    shown = sum(1 for p in picks if p.category in ("caught", "missed"))
    key = "".join(
        f'<span><i class="swatch" style="background:{colour}"></i>{_e(state)} alert</span>'
        for state, colour in STATE_COLOURS.items()
    )
    out = [
        "<h2>Team timelines</h2>",
        f"<p>{shown} of {churned_teams} churned teams (round-robin over scenarios, missed ones first), "
        "teams with false alarms and a sample of healthy teams. Bars: activity events per day "
        "(scale on the left); line: active users per day (scale on the right); dashed orange: "
        "decay start; black: cancellation. Below each chart: the team's alerts (the first "
        "at_risk alert that counts is large with a black ring) and, on a second row, when the "
        f"baseline {_e(report.baseline_name)} fires (grey triangles).</p>",
        f'<p class="key">{key}</p>',
    ]
    if data_range := _day_range(report):
        first_day, n_days = data_range
        end = parse_time_ms(report.data.last_event or "0")
        window = report.data.inactivity_days * DAY_MS
        for pick in picks:
            baseline = activity.inactivity_firings(pick.team_id, window, end)
            out.append(_timeline_heading(pick, inputs, baseline))
            out.append(_timeline(pick, inputs, activity, baseline, first_day, n_days))
    return out


def _day_range(report: EvaluationReport) -> tuple[int, int] | None:
    """(first UTC day, number of days) of the data, or ``None`` without events."""
    if report.data.first_event is None or report.data.last_event is None:
        return None
    first = parse_time_ms(report.data.first_event) // DAY_MS
    last = parse_time_ms(report.data.last_event) // DAY_MS
    return first, last - first + 1
