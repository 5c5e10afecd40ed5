"""Prometheus metrics for the engine, read at scrape time from the engines' plain counters.

Nothing is recorded per event: the engine counts in ints and this collector turns them
into metric families when Prometheus scrapes. The registry is injected, so tests and
several engines in one process never collide. No user or team ids are ever labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from . import health as hs
from .engine import PartitionEngine

PREFIX = "churn_detector"


class EngineCollector(Collector):
    """Exposes the state of a set of partition engines."""

    def __init__(self, engines: Callable[[], Sequence[tuple[int, PartitionEngine]]]):
        self._engines = engines

    def collect(self) -> Iterator[Metric]:
        engines = list(self._engines())
        consumed = CounterMetricFamily(
            f"{PREFIX}_events_processed", "Valid events applied to state"
        )
        invalid = CounterMetricFamily(
            f"{PREFIX}_events_invalid",
            "Events sent to the dead-letter output, by reason",
            labels=["reason"],
        )
        alerts = CounterMetricFamily(
            f"{PREFIX}_alerts", "Alerts emitted", labels=["entity_type", "signal", "severity"]
        )
        entities = GaugeMetricFamily(
            f"{PREFIX}_entities",
            "Tracked entities by health state",
            labels=["entity_type", "state"],
        )
        mrr = GaugeMetricFamily(
            f"{PREFIX}_mrr_at_risk", "MRR of teams cooling or at risk, by plan", labels=["plan"]
        )
        sweeps = CounterMetricFamily(f"{PREFIX}_sweeps", "Scoring sweeps run")
        sweep_seconds = CounterMetricFamily(
            f"{PREFIX}_sweep_seconds", "Time spent in scoring sweeps"
        )
        watermark = GaugeMetricFamily(
            f"{PREFIX}_watermark_timestamp_seconds",
            "Event-time watermark per partition",
            labels=["partition"],
        )
        gap = CounterMetricFamily(
            f"{PREFIX}_tracking_gap_team_days",
            "Team-days scored while the population was far below normal",
        )
        processed = 0
        by_reason: dict[str, int] = {}
        by_alert: dict[tuple[str, str, str], int] = {}
        by_state: dict[tuple[str, str], int] = {}
        by_plan: dict[str, float] = {}
        n_sweeps, sweep_s, gap_days = 0, 0.0, 0
        for partition, engine in engines:
            st = engine.stats
            processed += st.events_valid
            for reason, n in st.invalid.items():
                by_reason[reason] = by_reason.get(reason, 0) + n
            for key, n in st.alerts.items():
                by_alert[key] = by_alert.get(key, 0) + n
            for state_key, n in engine.health_counts().items():
                by_state[state_key] = by_state.get(state_key, 0) + n
            for team in engine.teams.values():
                if team.health in (hs.COOLING, hs.AT_RISK) and team.mrr:
                    plan = team.plan or "unknown"
                    by_plan[plan] = by_plan.get(plan, 0.0) + team.mrr
            n_sweeps += st.sweeps
            sweep_s += st.sweep_seconds_total
            gap_days += st.tracking_gap_days
            wm = engine.watermark.value
            if wm is not None:
                watermark.add_metric([str(partition)], wm / 1000.0)
        consumed.add_metric([], processed)
        for reason, n in sorted(by_reason.items()):
            invalid.add_metric([reason], n)
        for (signal, severity, entity_type), n in sorted(by_alert.items()):
            alerts.add_metric([entity_type, signal, severity], n)
        for kind in ("team", "user"):
            for state in hs.STATE_NAMES:
                entities.add_metric([kind, state], by_state.get((kind, state), 0))
        for plan, value in sorted(by_plan.items()):
            mrr.add_metric([plan], value)
        sweeps.add_metric([], n_sweeps)
        sweep_seconds.add_metric([], sweep_s)
        gap.add_metric([], gap_days)
        yield from (consumed, invalid, alerts, entities, mrr, sweeps, sweep_seconds, watermark, gap)


def register_engines(
    registry: CollectorRegistry, engines: Callable[[], Iterable[tuple[int, PartitionEngine]]]
) -> EngineCollector:
    collector = EngineCollector(lambda: list(engines()))
    registry.register(collector)
    return collector
