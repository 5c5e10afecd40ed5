"""Prometheus metrics for the detector, read at scrape time from the engines' plain counters.

Nothing is recorded per event: the engine counts in ints (and bucket counts, see
:mod:`detector.buckets`) and :class:`EngineCollector` turns them into metric families when
Prometheus scrapes. Latency histograms are observed once per batch or bundle
(:class:`ServiceMetrics`). The registry is injected, so tests and several engines in one
process never collide. No user or team ids are ever labels: every label takes values from a
small fixed set (reasons, signals, states, partitions, ranks) or is capped (plans).
"""

from __future__ import annotations

import heapq
import statistics
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

from prometheus_client import Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from . import health as hs
from .buckets import RISK_BOUNDS, SWEEP_BOUNDS, BucketCounts
from .engine import PartitionEngine

PREFIX = "churn_detector"
#: at most this many plans get a series of their own; the rest add up under "other"
MAX_PLANS = 20
#: ranks of the top-at-risk gauges
TOP_N = 20
#: latency buckets, seconds: from a busy live stream (ms) to a backlog being caught up (min)
LATENCY_BOUNDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)

Engines = Callable[[], Sequence[tuple[int, PartitionEngine]]]


class IngestCounts(Protocol):
    """What the ingest stage counts (messages read from the source, rejections by reason)."""

    consumed: int
    invalid_reasons: dict[str, int]


class AtRisk(NamedTuple):
    team_id: str
    state: str
    risk: float
    mrr: float
    plan: str | None


def top_at_risk(engines: Iterable[PartitionEngine], n: int = TOP_N) -> list[AtRisk]:
    """Cooling and at-risk teams, highest priority (risk × MRR, then risk) first.

    The same ranking backs the ``churn_detector_top_at_risk_*`` gauges (labelled by rank)
    and the health API's ``/teams`` list (which names the teams). Runs at every scrape, so
    only the ``n`` winners become records.
    """
    risky = (hs.COOLING, hs.AT_RISK)

    def candidates() -> Iterator[tuple[float, float, str, Any, PartitionEngine]]:
        for engine in engines:
            scores = engine.scores
            for team in engine.teams.values():
                if team.health in risky:
                    score = scores.get(team.team_id)
                    risk = score.risk if score is not None else 0.0
                    yield risk * (team.mrr or 0.0), risk, team.team_id, team, engine

    best = heapq.nlargest(n, candidates(), key=lambda c: c[:3])
    return [
        AtRisk(tid, hs.STATE_NAMES[team.health], risk, float(team.mrr or 0.0), team.plan)
        for _, risk, tid, team, _ in best
    ]


def _histogram(name: str, doc: str, counts: BucketCounts) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], [(le, float(n)) for le, n in counts.cumulative()], counts.sum)
    return family


def _capped(values: dict[str, float], limit: int) -> dict[str, float]:
    """The ``limit - 1`` largest entries, the rest summed under ``other``.

    >>> _capped({"a": 3.0, "b": 2.0, "c": 1.0}, 2)
    {'a': 3.0, 'other': 3.0}
    """
    if len(values) <= limit:
        return values
    ranked = sorted(values.items(), key=lambda kv: -kv[1])
    kept = dict(ranked[: limit - 1])
    kept["other"] = kept.get("other", 0.0) + sum(v for _, v in ranked[limit - 1 :])
    return kept


class EngineCollector(Collector):
    """Exposes the state of a set of partition engines (and the ingest stage's counts)."""

    def __init__(
        self, engines: Engines, ingest: IngestCounts | None = None, top_n: int = TOP_N
    ) -> None:
        self._engines = engines
        self._ingest = ingest
        self._top_n = top_n

    def collect(self) -> Iterator[Metric]:
        engines = list(self._engines())
        processed = 0
        by_reason: dict[str, int] = {}
        by_alert: dict[tuple[str, str, str], int] = {}
        by_state: dict[tuple[str, str], int] = {}
        by_plan: dict[str, float] = {}
        by_evicted: dict[str, int] = {}
        n_sweeps, sweep_s, gap_days = 0, 0.0, 0
        risk, sweep_duration = BucketCounts(RISK_BOUNDS), BucketCounts(SWEEP_BOUNDS)
        risky = (hs.COOLING, hs.AT_RISK)
        watermark = GaugeMetricFamily(
            f"{PREFIX}_watermark_timestamp_seconds",
            "Event-time watermark per partition",
            labels=["partition"],
        )
        if self._ingest is not None:
            for reason, n in self._ingest.invalid_reasons.items():
                by_reason[reason] = by_reason.get(reason, 0) + n
        for partition, engine in engines:
            st = engine.stats
            processed += st.events_valid
            for reason, n in st.invalid.items():
                by_reason[reason] = by_reason.get(reason, 0) + n
            for key, n in st.alerts.items():
                by_alert[key] = by_alert.get(key, 0) + n
            for kind, n in st.evicted.items():
                by_evicted[kind] = by_evicted.get(kind, 0) + n
            for state_key, n in engine.health_counts().items():
                by_state[state_key] = by_state.get(state_key, 0) + n
            for team in engine.teams.values():
                plan = team.plan or "unknown"
                mrr = (team.mrr or 0.0) if team.health in risky else 0.0
                by_plan[plan] = by_plan.get(plan, 0.0) + mrr
            n_sweeps += st.sweeps
            sweep_s += st.sweep_seconds_total
            gap_days += st.tracking_gap_days
            risk.merge(st.risk)
            sweep_duration.merge(st.sweep_duration)
            wm = engine.watermark.value
            if wm is not None:
                watermark.add_metric([str(partition)], wm / 1000.0)

        if self._ingest is not None:
            consumed = CounterMetricFamily(
                f"{PREFIX}_events_consumed", "Messages read from the source topic by ingest"
            )
            consumed.add_metric([], self._ingest.consumed)
            yield consumed
        yield CounterMetricFamily(
            f"{PREFIX}_events_processed", "Valid events applied to state", value=processed
        )
        invalid = CounterMetricFamily(
            f"{PREFIX}_events_invalid",
            "Events sent to the dead-letter output, by reason (late events: reason=late)",
            labels=["reason"],
        )
        for reason, n in sorted(by_reason.items()):
            invalid.add_metric([reason], n)
        yield invalid
        alerts = CounterMetricFamily(
            f"{PREFIX}_alerts", "Alerts emitted", labels=["entity_type", "signal", "severity"]
        )
        for (signal, severity, entity_type), n in sorted(by_alert.items()):
            alerts.add_metric([entity_type, signal, severity], n)
        yield alerts
        entities = GaugeMetricFamily(
            f"{PREFIX}_entities",
            "Tracked entities by health state",
            labels=["entity_type", "state"],
        )
        for kind in ("team", "user"):
            for state in hs.STATE_NAMES:
                entities.add_metric([kind, state], by_state.get((kind, state), 0))
        yield entities
        evicted = CounterMetricFamily(
            f"{PREFIX}_entities_evicted",
            "Entities dropped from the state after engine.evict_after_days without activity",
            labels=["entity_type"],
        )
        for kind in ("team", "user"):
            evicted.add_metric([kind], by_evicted.get(kind, 0))
        yield evicted
        mrr_at_risk = GaugeMetricFamily(
            f"{PREFIX}_mrr_at_risk", "MRR of teams cooling or at risk, by plan", labels=["plan"]
        )
        for plan, value in sorted(_capped(by_plan, MAX_PLANS).items()):
            mrr_at_risk.add_metric([plan], value)
        yield mrr_at_risk
        yield from self._top(engines)
        yield _histogram(
            f"{PREFIX}_team_risk_score", "Risk score of each scored team-day (0 to 1)", risk
        )
        yield CounterMetricFamily(f"{PREFIX}_sweeps", "Scoring sweeps run", value=n_sweeps)
        yield CounterMetricFamily(
            f"{PREFIX}_sweep_seconds", "Time spent in scoring sweeps", value=sweep_s
        )
        yield _histogram(
            f"{PREFIX}_sweep_duration_seconds", "Duration of each scoring sweep", sweep_duration
        )
        yield watermark
        yield CounterMetricFamily(
            f"{PREFIX}_tracking_gap_team_scores",
            "Team-day scores made while the whole population was far below normal (tracking gap)",
            value=gap_days,
        )

    def _top(self, engines: Sequence[tuple[int, PartitionEngine]]) -> Iterator[Metric]:
        top = top_at_risk((e for _, e in engines), self._top_n)
        risk = GaugeMetricFamily(
            f"{PREFIX}_top_at_risk_risk",
            "Risk of the N highest-priority cooling/at-risk teams (ids: GET /teams?at_risk)",
            labels=["rank"],
        )
        mrr = GaugeMetricFamily(
            f"{PREFIX}_top_at_risk_mrr",
            "MRR of the N highest-priority cooling/at-risk teams (ids: GET /teams?at_risk)",
            labels=["rank"],
        )
        for rank, team in enumerate(top, 1):
            risk.add_metric([f"{rank:02d}"], team.risk)
            mrr.add_metric([f"{rank:02d}"], team.mrr)
        yield risk
        yield mrr


class Lag(NamedTuple):
    stage: str
    partition: int
    messages: int


class ServiceCollector(Collector):
    """Worker-level gauges read at scrape time: consumer lag, readiness, state size."""

    def __init__(
        self,
        lag: Callable[[], Iterable[Lag]],
        ready: Callable[[], bool],
        assigned: Callable[[], Sequence[int]],
        state_bytes: Callable[[], int],
    ) -> None:
        self._lag, self._ready, self._assigned, self._state_bytes = (
            lag,
            ready,
            assigned,
            state_bytes,
        )

    def collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            f"{PREFIX}_consumer_lag",
            "Messages behind the end of the partition: ingest (source topic) or engine (bundles)",
            labels=["stage", "partition"],
        )
        for item in self._lag():
            lag.add_metric([item.stage, str(item.partition)], max(0, item.messages))
        yield lag
        yield GaugeMetricFamily(
            f"{PREFIX}_ready",
            "1 when partitions are assigned and their state is recovered",
            value=1.0 if self._ready() else 0.0,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_partitions_assigned",
            "Engine partitions assigned to this worker",
            value=len(self._assigned()),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_state_bytes",
            "Estimated size of the partition state held (entities x mean encoded record size)",
            value=self._state_bytes(),
        )


class FaustCollector(Collector):
    """A few of Faust's own sensors that help on-call: rebalances and commit latency."""

    def __init__(self, app: Any) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            f"{PREFIX}_rebalances",
            "Consumer group rebalances this worker took part in",
            value=self._app.rebalancing_count,
        )
        commits = GaugeMetricFamily(
            f"{PREFIX}_commit_latency_seconds",
            "Median time of the recent offset commits (Faust monitor)",
        )
        recent = list(self._app.monitor.commit_latency)
        if recent:
            commits.add_metric([], statistics.median(recent))
        yield commits


class ServiceMetrics:
    """Latency histograms of the worker, observed once per batch or bundle."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            f"{PREFIX}_processing_latency_seconds",
            "Oldest input of a batch to its result, by stage: ingest (source append -> bundle "
            "acknowledged), state (bundle append -> state updated), alert (triggering bundle or "
            "tick -> alert handed to the producer)",
            ["stage"],
            buckets=LATENCY_BOUNDS,
            registry=registry,
        )
        self._stages = {s: self.latency.labels(s) for s in ("ingest", "state", "alert")}

    def observe(self, stage: str, seconds: float) -> None:
        self._stages[stage].observe(max(0.0, seconds))


def register_engines(
    registry: CollectorRegistry, engines: Engines, ingest: IngestCounts | None = None
) -> EngineCollector:
    collector = EngineCollector(lambda: list(engines()), ingest)
    registry.register(collector)
    return collector
