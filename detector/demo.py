"""The embedded demo: the product simulator feeding the engine in-process, no Kafka.

It serves Prometheus metrics on 127.0.0.1 while it runs, writes events, truth and alerts
as JSONL, and ends with a readable summary and the evaluation against the truth.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from prometheus_client import CollectorRegistry, start_http_server
from tqdm import tqdm

from .evaluation import evaluate, load_jsonl
from .metrics import register_engines
from .replay import replay
from .router import PartitionedEngines
from .settings import EngineSettings
from .simulator import SimulationConfig, simulate


@dataclass(frozen=True)
class DemoOptions:
    out_dir: Path
    simulation: SimulationConfig
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    examples: int = 3


def _tee_events(sim_events: Iterator[dict[str, Any]], fh: IO[bytes], bar: tqdm) -> Iterator[bytes]:
    dumps = orjson.dumps
    pending = 0
    for event in sim_events:
        raw = dumps(event)
        fh.write(raw + b"\n")
        pending += 1
        if pending == 20_000:
            bar.update(pending)
            pending = 0
        yield raw
    bar.update(pending)


def run_demo(options: DemoOptions, settings: EngineSettings) -> str:
    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    events_path, truth_path = out / "events.jsonl", out / "truth.jsonl"
    alerts_path, dlq_path = out / "alerts.jsonl", out / "dlq.jsonl"

    engines = PartitionedEngines(settings)
    registry = CollectorRegistry()
    register_engines(registry, lambda: list(enumerate(engines.engines)))
    metrics_note = "metrics off"
    if options.metrics_port:
        try:
            start_http_server(options.metrics_port, addr=options.metrics_host, registry=registry)
            metrics_note = (
                f"metrics on http://{options.metrics_host}:{options.metrics_port}/metrics"
            )
        except OSError as exc:
            metrics_note = f"metrics not served ({exc.strerror}); pass --metrics-port 0 to silence"
    print(
        f"churn-detector demo: {options.simulation.teams} teams, {options.simulation.days} days, "
        f"seed {options.simulation.seed}, {settings.partitions} partitions; {metrics_note}",
        flush=True,
    )

    started = time.perf_counter()
    sim = simulate(options.simulation)
    with (
        tqdm(desc="simulate+detect", unit=" events", unit_scale=True, disable=None) as bar,
        events_path.open("wb") as ev_fh,
        alerts_path.open("wb") as al_fh,
        dlq_path.open("wb") as dlq_fh,
    ):
        result = replay(_tee_events(sim.events(), ev_fh, bar), settings, al_fh, dlq_fh, engines)
    with truth_path.open("wb") as fh:
        for record in sim.truth():
            fh.write(orjson.dumps(record) + b"\n")
    elapsed = time.perf_counter() - started

    report = evaluate(load_jsonl(events_path), load_jsonl(alerts_path), load_jsonl(truth_path))
    alerts = list(load_jsonl(alerts_path))
    lines = [
        "",
        f"Processed {result.lines:,} events in {elapsed:.1f} s ({result.lines / max(elapsed, 1e-9):,.0f} events/s, "
        "simulation included)",
        f"Dead letters: {sum(result.invalid.values())}  Alerts: {result.alerts}  "
        f"by state: {dict(sorted(result.alerts_by_state.items()))}",
        "",
        "Alerts by level and signal:",
    ]
    by_signal = Counter(
        (a["data"]["entity_type"], a["data"]["state"], a["data"]["signal"]) for a in alerts
    )
    for (level, state, signal), n in sorted(by_signal.items()):
        lines.append(f"  {level:5} {state:10} {signal:20} {n:6}")
    lines += ["", report.to_text(), "", "Example at-risk team alerts:"]
    examples = [
        a for a in alerts if a["data"]["entity_type"] == "team" and a["data"]["state"] == "at_risk"
    ]
    for alert in examples[: options.examples]:
        d = alert["data"]
        lines.append(
            f"  {d['event_time'][:10]} team {d['entity_id']} ({d['plan']}, MRR {d['mrr']}) "
            f"signal={d['signal']} risk={d['risk_score']}"
        )
        for reason in d["reasons"][:4]:
            lines.append(f"      - {reason['code']}: {reason['message']}")
    lines += ["", f"Files: {events_path}, {truth_path}, {alerts_path}, {dlq_path}"]
    return "\n".join(lines)
