"""What duplicate detection (detector/dedup.py) costs: time per event, and ids held per team.

Same cached input as the engine benchmark (the first ``events`` lines), one pinned core.
Interleaved repetitions of: the check alone (``RecentIds.seen`` per team over decoded
events), and the engine replay with the check and with it replaced by a no-op, so the
difference is the check's cost inside the engine. On a loaded machine the minimum of the
repetitions is the steadier figure; the median is reported too.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

from detector.dedup import RecentIds
from detector.events import Event, decode_event
from detector.settings import EngineSettings

from .engine_replay import Config, Log, _pin_one_cpu, ensure_events, load_lines, replay_loop


def _check_alone(events: list[Event], span_ms: int) -> float:
    ids: dict[str, RecentIds] = defaultdict(RecentIds)
    started = time.perf_counter()
    for ev in events:
        ids[ev.team_id].seen(ev.event_id, ev.ts_ms, span_ms)
    return (time.perf_counter() - started) / len(events) * 1e6


def run(events: int, reps: int, log: Log) -> str:
    path, _, _ = ensure_events(Config(), log)
    lines = load_lines(path, events)
    decoded = [e for e in map(decode_event, lines) if isinstance(e, Event)]
    pinned = _pin_one_cpu()
    settings = EngineSettings()
    span_ms = max(settings.allowed_lateness_s * 1000, 3_600_000)
    real = RecentIds.seen
    alone: list[float] = []
    engine: dict[str, list[float]] = {"with": [], "without": []}
    held: list[int] = []
    try:
        for rep in range(reps):
            RecentIds.seen = real  # type: ignore[method-assign]
            alone.append(_check_alone(decoded, span_ms))
            for name in ("with", "without"):
                RecentIds.seen = real if name == "with" else _never_seen  # type: ignore[method-assign]
                started = time.perf_counter()
                engines, _, _ = replay_loop(lines, settings)
                engine[name].append((time.perf_counter() - started) / len(lines) * 1e6)
                if name == "with" and rep == 0:
                    held = sorted(
                        len(t.recent_ids) for e in engines.engines for t in e.teams.values()
                    )
            log(
                f"rep {rep + 1}: check {alone[-1]:.2f} us, engine with {engine['with'][-1]:.2f} us,"
                f" without {engine['without'][-1]:.2f} us per event"
            )
    finally:
        RecentIds.seen = real  # type: ignore[method-assign]
    w, wo = engine["with"], engine["without"]

    def row(name: str, values: list[float]) -> str:
        return (
            f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | "
            f"{1e6 / statistics.median(values):,.0f} | {1e6 / min(values):,.0f} |"
        )

    p95 = held[int(0.95 * (len(held) - 1))]
    return "\n".join(
        [
            f"- Input: first {len(lines):,} events of `{path.name}`; {reps} interleaved "
            f"repetitions; {pinned}.",
            "",
            "| measure (µs per event) | median | min | events/s (median) | events/s (best) |",
            "|---|---:|---:|---:|---:|",
            row("duplicate check alone (`RecentIds.seen`, per-team dict lookup included)", alone),
            row("engine replay with the check", w),
            row("engine replay, check replaced by a no-op", wo),
            "",
            f"- Cost of the check in the engine: {100 * (statistics.median(w) / statistics.median(wo) - 1):+.1f}% "
            f"(medians), {100 * (min(w) / min(wo) - 1):+.1f}% (best runs).",
            f"- Ids held per team at the end (2 generations of {span_ms // 3_600_000} h): "
            f"mean {statistics.mean(held):.0f}, p95 {p95}, max {held[-1]} "
            f"(4 bytes each: mean {4 * statistics.mean(held):.0f} B, max {4 * held[-1]} B).",
            "",
        ]
    )


def _never_seen(self: RecentIds, event_id: str, ts_ms: int, span_ms: int) -> bool:
    return False
