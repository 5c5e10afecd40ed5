"""Soak: the worker on a real broker for a bounded time at half its measured maximum rate.

    .venv/bin/python -m benchmarks.run soak                 # 10 minutes (not part of `make bench`)
    .venv/bin/python -m benchmarks.run soak --soak-minutes 2

It starts its own broker (deploy/kafka-local.sh, data in ``.kafka-local/soak``) and one
worker subprocess, then:

1. **maximum**: produces a backlog of simulated events as fast as it can and measures how
   fast the worker applies it (events applied per second between 20% and 90% of the backlog);
2. **soak**: produces the continuation of the same simulation at ``--load`` (default 50%) of
   that rate (or ``--rate``) for a one-minute warm-up and then ``--soak-minutes``, and every ``--every`` seconds samples the
   lag (events produced minus events applied, from ``/healthz``; and the consumer lag gauge
   of ``/metrics``), the worker's resident memory (``/proc/<pid>/status``) and its latency
   histograms (mean per interval of ``churn_detector_processing_latency_seconds``);
3. **drain**: stops producing and waits until every event is applied (events lost = 0).

Verdict, first quarter against last quarter of the samples: the lag's median may not grow by
more than one second of input, memory by more than 10%, and the alert latency by more than
50% (+ 50 ms).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from detector.kafka_clients import aiokafka_config, ensure_topics
from detector.partitioning import partition_for
from detector.settings import Settings, build_settings
from detector.simulator import SimulationConfig, simulate

from .engine_replay import REPO_ROOT

Log = Callable[[str], None]
KAFKA_LOCAL = REPO_ROOT / "deploy" / "kafka-local.sh"
LATENCY = "churn_detector_processing_latency_seconds"
LAG_GAUGE = "churn_detector_consumer_lag"
ENTITIES = "churn_detector_entities"


@dataclass(frozen=True)
class Config:
    minutes: float = 10.0
    load: float = 0.5
    rate: float | None = None  # events/s; None: measure the maximum first
    backlog: int = 300_000
    warmup_s: float = 60.0
    teams: int = 1000
    every_s: float = 10.0
    snapshot: bool = True  # the worker keeps its local RocksDB snapshot (the default)


@dataclass
class Sample:
    t: float
    produced: int
    applied: int
    lag_events: int
    lag_gauge: float
    rss_mb: float
    latency_s: dict[str, float] = field(default_factory=dict)
    #: teams + users the worker tracks (its entities gauge): RSS may grow with them
    entities: float = float("nan")


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _broker_env(data: Path) -> dict[str, str]:
    return {**os.environ, "KAFKA_LOCAL_DATA": str(data)}


def start_broker(data: Path) -> str:
    done = subprocess.run(
        [str(KAFKA_LOCAL), "start"], env=_broker_env(data), capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"broker did not start: {done.stderr[-2000:]}")
    return done.stdout.strip()


def stop_broker(data: Path) -> None:
    subprocess.run([str(KAFKA_LOCAL), "stop"], env=_broker_env(data), capture_output=True)


class WorkerProcess:
    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.service.web_port}"
        config = workdir / "worker.json"
        config.write_text(json.dumps(asdict(settings)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
        self.log = (workdir / "worker.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "detector.cli", "worker", "--config", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def _get(self, path: str) -> bytes | None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}")
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                return bytes(resp.read())
        except OSError:
            return None

    def health(self) -> dict[str, Any] | None:
        body = self._get("/healthz")
        return None if body is None else dict(json.loads(body))

    def metrics(self) -> str:
        return (self._get("/metrics") or b"").decode()

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def handled(health: dict[str, Any] | None) -> int:
    """Events the worker is done with: applied or dead-lettered (ingest or engine)."""
    health = health or {}
    return int(health.get("applied_since_start", 0)) + int(health.get("ingest_invalid", 0))


def _wait(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}")


# --------------------------------------------------------------------------- input


class Source:
    """Simulated events, keyed and partitioned as `churn-detector produce` does."""

    def __init__(self, teams: int, partitions: int) -> None:
        # Three years that end before today: the worker rejects events from the future
        # (beyond its clock skew), and a soak that ran into them measured a burst of dead
        # letters instead of steady load.
        days = 3 * 365
        monday = _dt.date.today() - _dt.timedelta(days=days + 7)
        start = monday - _dt.timedelta(days=monday.weekday())
        sim = simulate(SimulationConfig(teams=teams, days=days, seed=20261127, start=start))
        self._events: Iterator[dict[str, Any]] = sim.events()
        self.partitions = partitions
        self._cache: dict[str, int] = {}

    def take(self, n: int) -> dict[int, list[tuple[bytes, bytes]]]:
        out: dict[int, list[tuple[bytes, bytes]]] = {}
        for _ in range(n):
            event = next(self._events)
            team = event["team_id"]
            part = self._cache.get(team)
            if part is None:
                part = self._cache[team] = partition_for(team, self.partitions)
            out.setdefault(part, []).append((team.encode(), orjson.dumps(event)))
        return out


class Producer:
    def __init__(self, settings: Settings, source: Source) -> None:
        self.settings, self.source = settings, source
        self.sent = 0

    async def send(self, producer: Any, n: int) -> None:
        topic = self.settings.kafka.events_topic
        futures = []
        for part, records in self.source.take(n).items():
            batch = producer.create_batch()
            for key, value in records:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=part))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            futures.append(await producer.send_batch(batch, topic, partition=part))
        await asyncio.gather(*futures)
        self.sent += n

    async def run(self, rate: float | None, total: int | None, seconds: float | None) -> None:
        """Send ``total`` events as fast as possible, or ``rate`` events/s for ``seconds``."""
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            **aiokafka_config(self.settings.kafka),
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=1 << 20,
        )
        await producer.start()
        try:
            if rate is None:
                assert total is not None
                while self.sent < total:
                    await self.send(producer, min(20_000, total - self.sent))
                return
            assert seconds is not None
            started = time.monotonic()
            base = self.sent
            tick = 0.1
            while (elapsed := time.monotonic() - started) < seconds:
                due = int(rate * elapsed) - (self.sent - base)
                if due > 0:
                    await self.send(producer, due)
                await asyncio.sleep(tick)
        finally:
            await producer.stop()


# --------------------------------------------------------------------------- sampling


def _metric_lines(text: str, name: str) -> Iterator[tuple[str, float]]:
    for line in text.splitlines():
        if line.startswith(name):
            head, _, value = line.rpartition(" ")
            yield head, float(value)


def latency_totals(text: str) -> dict[str, tuple[float, float]]:
    """Per stage: (sum of seconds, count) of the latency histogram."""
    out: dict[str, list[float]] = {}
    for head, value in _metric_lines(text, LATENCY):
        stage = head.split('stage="', 1)[1].split('"', 1)[0] if 'stage="' in head else ""
        slot = out.setdefault(stage, [0.0, 0.0])
        if head.startswith(f"{LATENCY}_sum"):
            slot[0] = value
        elif head.startswith(f"{LATENCY}_count"):
            slot[1] = value
    return {stage: (s, c) for stage, (s, c) in out.items()}


def dead_letters(text: str) -> float:
    return sum(v for _, v in _metric_lines(text, "churn_detector_events_invalid_total"))


def labelled_sum(text: str, name: str) -> float:
    """The sum of a labelled gauge's series in a /metrics page."""
    return sum(v for head, v in _metric_lines(text, name) if head.startswith(name + "{"))


class Sampler:
    def __init__(self, worker: WorkerProcess, producer: Producer) -> None:
        self.worker, self.producer = worker, producer
        self.samples: list[Sample] = []
        self._last: dict[str, tuple[float, float]] = latency_totals(worker.metrics())
        self._t0 = time.monotonic()

    def sample(self) -> Sample:
        text = self.worker.metrics()
        totals = latency_totals(text)
        means = {}
        for stage, (total, count) in totals.items():
            before = self._last.get(stage, (0.0, 0.0))
            if count > before[1]:
                means[stage] = (total - before[0]) / (count - before[1])
        self._last = totals
        applied = handled(self.worker.health())
        produced = self.producer.sent
        sample = Sample(
            t=time.monotonic() - self._t0,
            produced=produced,
            applied=applied,
            lag_events=max(0, produced - applied),
            lag_gauge=labelled_sum(text, LAG_GAUGE),
            rss_mb=self.worker.rss_mb(),
            latency_s=means,
            entities=labelled_sum(text, ENTITIES),
        )
        self.samples.append(sample)
        return sample


# --------------------------------------------------------------------------- phases


def measure_maximum(worker: WorkerProcess, producer: Producer, backlog: int, log: Log) -> float:
    """Events/s the worker applies while the producer sends ``backlog`` events flat out.

    Measured between 20% and 90% of the backlog, with the producer running: on a shared
    machine the producer's own CPU is part of the conditions the soak runs in.
    """
    marks: dict[float, float] = {}

    async def produce_and_watch() -> None:
        produce = asyncio.create_task(producer.run(None, backlog, None))
        while True:
            applied = handled(await asyncio.to_thread(worker.health))
            now = time.monotonic()
            for share in (0.2, 0.9):
                if share not in marks and applied >= share * backlog:
                    marks[share] = now
                    log(f"{applied} applied ({share:.0%} of the backlog)")
            if applied >= backlog:
                break
            await asyncio.sleep(0.5)
        await produce

    asyncio.run(asyncio.wait_for(produce_and_watch(), 1800))
    return 0.7 * backlog / (marks[0.9] - marks[0.2])


def soak(worker: WorkerProcess, producer: Producer, rate: float, cfg: Config, log: Log) -> Sampler:
    sampler = Sampler(worker, producer)

    async def both() -> None:
        produce = asyncio.create_task(producer.run(rate, None, cfg.warmup_s + cfg.minutes * 60))
        await asyncio.sleep(cfg.warmup_s)
        await asyncio.to_thread(sampler.sample)
        sampler.samples.clear()  # the warm-up only sets the baseline of the latency means
        while not produce.done():
            await asyncio.sleep(cfg.every_s)
            s = await asyncio.to_thread(sampler.sample)
            log(
                f"t={s.t:5.0f}s lag {s.lag_events} events (gauge {s.lag_gauge:.0f}), "
                f"rss {s.rss_mb:.0f} MB, latency "
                + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in sorted(s.latency_s.items()))
            )
        await produce

    asyncio.run(both())
    return sampler


def _quarter(values: list[float], which: int) -> list[float]:
    n = max(1, len(values) // 4)
    return values[:n] if which == 0 else values[-n:]


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def verdict(samples: list[Sample], rate: float) -> tuple[list[str], bool]:
    """Table rows (first vs last quarter) and whether nothing grew."""
    series: dict[str, list[float]] = {
        "lag (events produced - applied)": [float(s.lag_events) for s in samples],
        "consumer lag gauge (messages)": [s.lag_gauge for s in samples],
        "worker RSS (MB)": [s.rss_mb for s in samples],
        "tracked entities (teams + users)": [s.entities for s in samples],
    }
    for stage in ("ingest", "state", "alert"):
        series[f"latency {stage} (ms, mean per interval)"] = [
            s.latency_s.get(stage, float("nan")) * 1000 for s in samples
        ]
    rows = []
    medians: dict[str, tuple[float, float]] = {}
    for name, values in series.items():
        first, last = _median(_quarter(values, 0)), _median(_quarter(values, 1))
        medians[name] = (first, last)
        top = max((v for v in values if v == v), default=float("nan"))
        rows.append(f"| {name} | {first:.1f} | {last:.1f} | {top:.1f} |")
    lag = medians["lag (events produced - applied)"]
    rss = medians["worker RSS (MB)"]
    alert = medians["latency alert (ms, mean per interval)"]
    ok = (
        lag[1] <= lag[0] + rate
        and rss[1] <= rss[0] * 1.10
        and not (alert[1] > alert[0] * 1.5 + 50)  # NaN (no alerts in a quarter) passes
    )
    return rows, ok


def run(cfg: Config, log: Log) -> str:
    run_dir = REPO_ROOT / ".kafka-local" / "soak"
    workdir = run_dir / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"starting a broker in {run_dir}")
    bootstrap = start_broker(run_dir / "broker")
    worker: WorkerProcess | None = None
    try:
        tag = uuid.uuid4().hex[:8]
        settings = build_settings(
            environ={},
            overrides={
                "kafka": {
                    "brokers": bootstrap,
                    "events_topic": f"soak-events-{tag}",
                    "dlq_topic": f"soak-dlq-{tag}",
                    "alerts_topic": f"soak-alerts-{tag}",
                    "events_keyed_by_team": True,  # Source keys every event by its team id
                },
                "service": {
                    "app_id": f"soak-{tag}",
                    "state_dir": str(workdir / f"state-{tag}"),
                    "web_port": _free_port(),
                    "log_level": "WARNING",
                    "state_snapshot": cfg.snapshot,
                },
            },
        )
        ensure_topics(settings.kafka, {settings.kafka.events_topic: settings.engine.partitions})
        producer = Producer(settings, Source(cfg.teams, settings.engine.partitions))
        worker = WorkerProcess(settings, workdir)
        _wait(lambda: (worker.health() or {}).get("ready"), 120, "the worker to be ready")
        maximum = None
        if cfg.rate is None:
            maximum = measure_maximum(worker, producer, cfg.backlog, log)
            rate = cfg.load * maximum
            log(f"maximum {maximum:.0f} events/s; soaking at {rate:.0f} events/s")
        else:
            rate = cfg.rate
            producer.sent = 0
        sent_before = producer.sent
        sampler = soak(worker, producer, rate, cfg, log)
        soaked = producer.sent - sent_before
        drain_started = time.monotonic()
        _wait(
            lambda: handled(worker.health()) >= producer.sent,
            600,
            "the worker to apply every event",
        )
        drained_s = time.monotonic() - drain_started
        final = worker.health() or {}
        rss_end = worker.rss_mb()
        invalid = int(final.get("ingest_invalid", 0))
        engine_invalid = dead_letters(worker.metrics())
    finally:
        if worker is not None:
            worker.stop()
        stop_broker(run_dir / "broker")
    rows, ok = verdict(sampler.samples, rate)
    lost = producer.sent - handled(final)
    if maximum is not None:
        setup = (
            f"measured maximum **{maximum:.0f} events/s** ({cfg.backlog} events produced flat "
            f"out while the worker applies them, 20% → 90%); soak at **{rate:.0f} events/s** ({rate / maximum:.0%} of it)"
        )
    else:
        setup = f"soak at **{rate:.0f} events/s** (given; maximum not measured)"
    return "\n".join(
        [
            f"- Setup: one worker (subprocess) on its own local broker, {cfg.teams} simulated "
            f"teams, {settings.engine.partitions} partitions; {setup}, for {cfg.minutes:g} min after a {cfg.warmup_s:g} s warm-up",
            f"- Soak input: {soaked} events; {len(sampler.samples)} samples every "
            f"{cfg.every_s:g} s; all {producer.sent} events handled {drained_s:.1f} s after "
            f"the producer stopped; events lost: {lost} (dead letters: {invalid} at ingest, "
            f"{engine_invalid:.0f} in total: late, duplicate, ...); RSS at the end "
            f"{rss_end:.0f} MB",
            "",
            "| medians | first quarter | last quarter | max |",
            "|---|---|---|---|",
            *rows,
            "",
            f"- Verdict: {'**no growth**' if ok else '**GROWTH**'} of lag (≤ one second of "
            "input), memory (≤ +10%) and alert latency (≤ +50% + 50 ms), first vs last quarter.",
            "",
        ]
    )
