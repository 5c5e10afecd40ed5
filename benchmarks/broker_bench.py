"""Through the real broker, side by side in one run: ceiling, textbook Faust peer, the worker.

One local Kafka broker (deploy/kafka-local.sh, stopped at the end) and one topic loaded with
simulated events (the engine benchmark's cached file, sent with ``churn-detector produce``;
the load is timed). The file is split in time order: the first part is loaded up front; the
second is produced while the worker is stopped (lag recovery); the third is sent at a paced
rate while the worker runs live (alert latency). Each measured consumer is its own process,
pinned to one CPU (the broker and this driver get the other one):

1. **ceiling** (:mod:`benchmarks.broker_ceiling`): raw aiokafka consume + ``orjson.loads`` +
   a per-user and a per-team dict increment per event; repeated, median reported;
2. **textbook peer** (:mod:`benchmarks.broker_peer`): a Faust agent updating per-user and
   per-team 1-day tumbling-window tables (RocksDB) per event, run for a bounded time;
3. **churn-detector worker**: whatever ``churn-detector worker`` the venv has installed,
   configured with ``DETECTOR_*`` variables; timed from process start until its /healthz
   reports every loaded event applied; repeated, each run from nothing (its own groups,
   topics and state), median reported. py-spy samples one more run, which is not timed: the
   sampler shares the broker's CPU. The workers run with ``kafka.events_keyed_by_team`` (the
   topic is keyed by team); one more run without it (ingest parses every event) is timed
   for comparison. Then: the last worker stopped, the lag part produced,
   restarted, and timed until it has caught up (lag recovery, including restoring its state
   from the changelog); then the last part is sent at half the measured throughput while the
   alerts topic is read, for end-to-end alert latency (see :mod:`benchmarks.broker_latency`).

What it needs from the worker: the ``DETECTOR_*`` settings it reads and the
``applied_since_start`` (+ ``ingest_invalid``) fields of ``/healthz``; nothing else, so it
measures whatever worker is installed (re-run it after changing the service).
"""

from __future__ import annotations

import asyncio
import linecache
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from detector.settings import EngineSettings

from . import broker_latency, engine_replay
from .broker_procs import (
    Child,
    Pinning,
    cpu_seconds,
    free_port,
    get_json,
    local_broker,
    rss_bytes,
)

REPO_ROOT = engine_replay.REPO_ROOT
RUN_DIR = engine_replay.DATA_DIR / "broker-run"
PROFILE_FILE = engine_replay.PROFILE_DIR / "broker-worker-pyspy.speedscope.json"
PROFILE_TOP = engine_replay.PROFILE_DIR / "broker-worker-pyspy-top.txt"

TARGET_EVENTS_PER_S = 50_000
TARGET_PEER_RATIO = 5.0
TARGET_CEILING_SHARE = 0.25
TARGET_LATENCY_P99_S = 2.0

Log = Callable[[str], None]


@dataclass(frozen=True)
class Config:
    events: engine_replay.Config = field(default_factory=engine_replay.Config)
    partitions: int = 4
    #: shares of the event file: loaded up front / produced while the worker is stopped;
    #: the rest is sent at a paced rate for the latency measurement
    preload_share: float = 0.8
    lag_share: float = 0.1
    ceiling_reps: int = 3
    peer_seconds: float = 30.0
    peer_max_events: int = 1_000_000
    worker_timeout_s: float = 600.0
    #: paced rate for the latency phase, as a share of the worker's measured throughput
    latency_rate_share: float = 0.5
    pin: bool = True
    #: timed runs of the worker over the loaded topic, each from nothing (median reported)
    worker_reps: int = 3
    #: py-spy sampling of one more worker run while it catches up, not timed: the sampler
    #: shares the broker's CPU and slows what it watches (0: off; skipped without py-spy)
    profile_seconds: float = 30.0
    #: one more timed run with kafka.events_keyed_by_team off (the default setting: ingest
    #: parses every event to route it), for comparison
    parse_all_run: bool = True


@dataclass
class Rate:
    events: int
    seconds: float
    cpu_seconds: float = 0.0
    rss_bytes: int = 0

    @property
    def per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def per_cpu_s(self) -> float:
        return self.events / self.cpu_seconds if self.cpu_seconds > 0 else 0.0

    @classmethod
    def of(cls, result: dict[str, Any]) -> Rate:
        return cls(result["events"], result["seconds"], result["cpu_seconds"], result["rss_bytes"])


@dataclass
class WorkerRun:
    expected: int
    applied: int = 0
    from_start_s: float = 0.0
    from_first_s: float = 0.0
    #: CPU seconds of the worker process from its first applied event to the end
    cpu_s: float = 0.0
    rss_bytes: int = 0
    finished: bool = False

    @property
    def rate_from_start(self) -> float:
        return self.applied / self.from_start_s if self.from_start_s else 0.0

    @property
    def rate_from_first(self) -> float:
        return self.applied / self.from_first_s if self.from_first_s else 0.0

    @property
    def per_cpu_s(self) -> float:
        return self.applied / self.cpu_s if self.cpu_s else 0.0


@dataclass
class Live:
    """The live phase: paced events in, alerts out."""

    run: broker_latency.PacedRun
    latencies: broker_latency.Latencies
    #: event time covered by the paced events
    span_ms: int
    #: worker CPU seconds from the first paced event until it had applied the last
    worker_cpu_s: float


# ---------------------------------------------------------------------------- input
def split_events(path: Path, cfg: Config, out_dir: Path) -> tuple[list[Path], list[int]]:
    """The event file split in time (file) order into preload / lag / paced parts."""
    lines = engine_replay.load_lines(path)
    a = int(len(lines) * cfg.preload_share)
    b = a + int(len(lines) * cfg.lag_share)
    parts, counts = [], []
    for name, chunk in (("preload", lines[:a]), ("lag", lines[a:b]), ("paced", lines[b:])):
        target = out_dir / f"{name}.jsonl"
        target.write_bytes(b"\n".join(chunk) + b"\n")
        parts.append(target)
        counts.append(len(chunk))
    return parts, counts


# ---------------------------------------------------------------------------- phases
class Bench:
    """State shared by the phases of one run."""

    def __init__(self, cfg: Config, bootstrap: str, run_dir: Path, pinning: Pinning, log: Log):
        self.cfg = cfg
        self.bootstrap = bootstrap
        self.run_dir = run_dir
        self.pinning = pinning
        self.log = log
        tag = uuid.uuid4().hex[:8]
        self.topic = f"bench-events-{tag}"
        self.app_id = ""
        self.new_worker()
        self.python = sys.executable
        self.cli = str(Path(sys.executable).with_name("churn-detector"))
        self.web_port = free_port()
        self.profiler: subprocess.Popen[bytes] | None = None
        #: the workers run with kafka.events_keyed_by_team (the topic is keyed by team)
        self.keyed_by_team = True

    def new_worker(self) -> None:
        """The next worker starts from nothing: its own consumer groups, bundle, changelog
        and alert topics, and state directory (the events topic stays)."""
        self.app_id = f"bench-detector-{uuid.uuid4().hex[:8]}"

    @property
    def alerts_topic(self) -> str:
        return f"{self.app_id}-alerts"

    def detector_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
        env.update(
            DETECTOR_KAFKA_BROKERS=self.bootstrap,
            DETECTOR_KAFKA_EVENTS_TOPIC=self.topic,
            DETECTOR_KAFKA_DLQ_TOPIC=f"{self.app_id}-dlq",
            DETECTOR_KAFKA_ALERTS_TOPIC=self.alerts_topic,
            # `churn-detector produce` keys every event by its team id
            DETECTOR_KAFKA_EVENTS_KEYED_BY_TEAM=str(self.keyed_by_team).lower(),
            DETECTOR_ENGINE_PARTITIONS=str(self.cfg.partitions),
            DETECTOR_SERVICE_APP_ID=self.app_id,
            DETECTOR_SERVICE_STATE_DIR=str(self.run_dir / "worker-state" / self.app_id),
            DETECTOR_SERVICE_WEB_PORT=str(self.web_port),
            DETECTOR_SERVICE_LOG_LEVEL="WARNING",
        )
        return env

    def produce(self, path: Path, n: int) -> Rate:
        """`churn-detector produce` of one file of ``n`` events (on the driver's CPU), timed."""
        started = time.perf_counter()
        subprocess.run(
            [*self.pinning.prefix(False), self.cli, "produce", str(path), "--quiet"],
            env=self.detector_env(),
            check=True,
            cwd=REPO_ROOT,
        )
        return Rate(n, time.perf_counter() - started)

    def ceiling(self, rep: int) -> Rate:
        out = self.run_dir / f"ceiling-{rep}.json"
        child = Child(
            [
                *self.pinning.prefix(True),
                self.python,
                "-m",
                "benchmarks.broker_ceiling",
                self.bootstrap,
                self.topic,
                str(out),
            ],
            self.run_dir / "ceiling.log",
        )
        code = child.wait(300)
        child.stop()
        if code != 0:
            raise RuntimeError(f"ceiling run failed ({code}):\n{child.tail()}")
        return Rate.of(orjson.loads(out.read_bytes()))

    def peer(self) -> Rate:
        out = self.run_dir / "peer.json"
        child = Child(
            [
                *self.pinning.prefix(True),
                self.python,
                "-m",
                "benchmarks.broker_peer",
                self.bootstrap,
                self.topic,
                str(self.cfg.partitions),
                str(self.run_dir / "peer-state"),
                str(out),
                str(self.cfg.peer_seconds),
                str(self.cfg.peer_max_events),
            ],
            self.run_dir / "peer.log",
        )
        deadline = time.monotonic() + self.cfg.peer_seconds + 180
        try:
            while not out.exists() and child.alive() and time.monotonic() < deadline:
                time.sleep(0.5)  # polling for the child's result file
            if not out.exists():
                raise RuntimeError(f"textbook peer gave no result:\n{child.tail()}")
        finally:
            child.stop(20)
        return Rate.of(orjson.loads(out.read_bytes()))

    def worker_run(
        self, expected: int, name: str, on_first: Callable[[int], None] | None = None
    ) -> WorkerRun:
        """A new worker over the loaded topic, until it has applied ``expected`` events."""
        self.new_worker()
        worker = self.start_worker(name)
        try:
            run = self.wait_applied(worker, expected, name, on_first)
        finally:
            worker.stop()
        self.log(f"  {run.applied:,} events, {_k(run.rate_from_first)} events/s from the first")
        return run

    def start_worker(self, name: str) -> Child:
        self.web_port = free_port()
        return Child(
            [*self.pinning.prefix(True), self.cli, "worker"],
            self.run_dir / f"{name}.log",
            env=self.detector_env(),
        )

    def health(self) -> dict[str, Any] | None:
        return get_json(f"http://127.0.0.1:{self.web_port}/healthz")

    def wait_applied(
        self,
        child: Child,
        expected: int,
        label: str,
        on_first: Callable[[int], None] | None = None,
    ) -> WorkerRun:
        """Poll /healthz until ``expected`` events are applied since the worker started;
        ``on_first(pid)`` is called once the first event is applied."""
        run = WorkerRun(expected)
        first: float | None = None
        cpu_first = 0.0
        shown = time.perf_counter()
        deadline = child.started + self.cfg.worker_timeout_s
        while True:
            now = time.perf_counter()
            health = self.health()
            if health is not None:
                run.applied = _applied(health)
                if first is None and run.applied > 0:
                    first, cpu_first = now, cpu_seconds(child.pid)
                    if on_first is not None:
                        on_first(child.pid)
                if run.applied >= expected:
                    run.finished = True
                    break
            if not child.alive():
                raise RuntimeError(f"{label}: worker exited:\n{child.tail()}")
            if now > deadline:
                self.log(f"  {label}: timed out after {self.cfg.worker_timeout_s:.0f} s")
                break
            if now - shown >= 5:
                shown = now
                self.log(f"  {label}: {run.applied:,}/{expected:,} applied")
            time.sleep(0.25)  # polling /healthz
        run.from_start_s = now - child.started
        run.from_first_s = now - first if first is not None else 0.0
        run.rss_bytes = rss_bytes(child.pid)
        run.cpu_s = cpu_seconds(child.pid) - cpu_first
        return run

    def start_profile(self, pid: int) -> None:
        """py-spy (if installed) samples the worker for ``cfg.profile_seconds``."""
        exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
            "py-spy"
        )
        if exe is None or not self.cfg.profile_seconds:
            self.log("  py-spy not found (pip install py-spy) or disabled: no worker profile")
            return
        PROFILE_FILE.unlink(missing_ok=True)
        self.log(f"  profiling the worker with py-spy for {self.cfg.profile_seconds:.0f} s")
        self.profiler = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "100",
                "--duration",
                str(int(self.cfg.profile_seconds)),
                "--nonblocking",  # never pauses the worker
                "--format",
                "speedscope",
                "--output",
                str(PROFILE_FILE),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def finish_profile(self) -> engine_replay.PySpyProfile | None:
        if self.profiler is None:
            return None
        try:
            self.profiler.wait(self.cfg.profile_seconds + 30)
        except subprocess.TimeoutExpired:
            self.profiler.kill()
            self.profiler.wait(10)
        if not PROFILE_FILE.exists():
            self.log("  py-spy wrote no profile")
            return None
        profile = summarise_threads(PROFILE_FILE)
        lines = [
            f"py-spy record --rate 100 --nonblocking --pid <churn-detector worker>, "
            f"{self.cfg.profile_seconds:.0f} s from its first applied event while catching up "
            f"(benchmarks.broker_bench), {profile.samples} samples, all threads.",
            "",
            f"{'self%':>6} {'total%':>7}  function (file)",
            *(
                f"{h.self_share:6.1%} {h.total_share:7.1%}  {h.name} ({h.where})"
                for h in profile.functions
            ),
            "",
            f"{'self%':>6}  line  source",
            *(f"{h.self_share:6.1%}  {h.where} {h.name}: {h.source}" for h in profile.lines),
        ]
        PROFILE_TOP.write_text("\n".join(lines) + "\n")
        profile.files = [PROFILE_FILE, PROFILE_TOP]
        return profile

    def latency(
        self, child: Child, before: list[Path], paced: Path, rate: float, already: int
    ) -> Live:
        settings = EngineSettings()
        lines = engine_replay.load_lines(paced)
        earlier = (line for path in before for line in engine_replay.load_lines(path))
        triggers, routes = broker_latency.find_triggers(
            earlier,
            lines,
            self.cfg.partitions,
            settings.allowed_lateness_s * 1000,
            settings.sweep_interval_s * 1000,
        )
        expected = already + len(lines)

        async def drained() -> None:
            deadline = time.monotonic() + self.cfg.worker_timeout_s
            while time.monotonic() < deadline and child.alive():
                health = await asyncio.to_thread(self.health)
                if health and _applied(health) >= expected:
                    return
                await asyncio.sleep(0.25)  # polling /healthz
            raise RuntimeError(f"worker did not apply the paced events:\n{child.tail()}")

        cpu_started = cpu_seconds(child.pid)
        run = asyncio.run(
            broker_latency.paced_run(
                self.bootstrap,
                self.topic,
                self.alerts_topic,
                lines,
                routes,
                rate,
                drained,
            )
        )
        return Live(
            run,
            broker_latency.alert_latencies(run, triggers, self.cfg.partitions),
            triggers.paced_span_ms,
            cpu_seconds(child.pid) - cpu_started,
        )


def summarise_threads(path: Path) -> engine_replay.PySpyProfile:
    """Self and inclusive shares per function and self share per line, over the samples of
    every thread (Faust runs its Kafka consumer in a thread of its own)."""
    data = orjson.loads(path.read_bytes())
    frames = data["shared"]["frames"]
    func_self: Counter[tuple[str, str]] = Counter()
    func_total: Counter[tuple[str, str]] = Counter()
    line_self: Counter[tuple[str, str, int]] = Counter()
    samples = 0
    for thread in data["profiles"]:
        for stack in thread["samples"]:
            if not stack:
                continue
            samples += 1
            leaf = frames[stack[-1]]
            func_self[(leaf["name"], leaf["file"])] += 1
            line_self[(leaf["name"], leaf["file"], leaf.get("line") or 0)] += 1
            for key in {(frames[i]["name"], frames[i]["file"]) for i in stack}:
                func_total[key] += 1
    n = max(samples, 1)
    short = engine_replay._short_path
    functions = [
        engine_replay.HotSpot(name, short(file), count / n, func_total[(name, file)] / n)
        for (name, file), count in func_self.most_common(30)
    ]
    lines = [
        engine_replay.HotSpot(
            name, f"{short(file)}:{line}", count / n, source=linecache.getline(file, line).strip()
        )
        for (name, file, line), count in line_self.most_common(30)
    ]
    return engine_replay.PySpyProfile(samples, functions, lines, [])


def _applied(health: dict[str, Any]) -> int:
    """Events the worker has dealt with since it started: applied to an engine (valid or
    rejected there), or dead-lettered at ingest."""
    return int(health["applied_since_start"]) + int(health.get("ingest_invalid", 0))


# ---------------------------------------------------------------------------- run
def run(cfg: Config, log: Log) -> str:
    wall = time.perf_counter()
    pinning = Pinning.choose(cfg.pin)
    if pinning.others is not None:
        os.sched_setaffinity(0, {pinning.others})
    path, _, total = engine_replay.ensure_events(cfg.events, log)
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    RUN_DIR.mkdir(parents=True)
    (preload, lag, paced), (n_pre, n_lag, n_paced) = split_events(path, cfg, RUN_DIR)
    log(f"events: {total:,} = {n_pre:,} preload + {n_lag:,} lag + {n_paced:,} paced")
    with local_broker(RUN_DIR / "kafka", cfg.partitions, pinning, log) as bootstrap:
        bench = Bench(cfg, bootstrap, RUN_DIR, pinning, log)
        log(f"loading {n_pre:,} events into {bench.topic} (churn-detector produce) ...")
        load = bench.produce(preload, n_pre)
        log(f"  {load.per_s:,.0f} events/s ({load.seconds:.1f} s)")

        ceilings = []
        for rep in range(cfg.ceiling_reps):
            log(f"ceiling {rep + 1}/{cfg.ceiling_reps} ...")
            ceilings.append(bench.ceiling(rep))
            log(f"  {ceilings[-1].per_s:,.0f} events/s")

        log(f"textbook Faust peer (bounded: {cfg.peer_seconds:.0f} s) ...")
        peer = bench.peer()
        log(f"  {peer.events:,} events in {peer.seconds:.1f} s: {peer.per_s:,.0f} events/s")

        runs: list[WorkerRun] = []
        for rep in range(cfg.worker_reps):
            log(f"churn-detector worker over the loaded topic {rep + 1}/{cfg.worker_reps} ...")
            runs.append(bench.worker_run(n_pre, f"worker-{rep}"))
        profile: engine_replay.PySpyProfile | None = None
        profiled: WorkerRun | None = None
        if cfg.profile_seconds:
            log("churn-detector worker once more, sampled by py-spy (not timed) ...")
            profiled = bench.worker_run(n_pre, "worker-profiled", bench.start_profile)
            profile = bench.finish_profile()
        parse_all: WorkerRun | None = None
        if cfg.parse_all_run:
            log("churn-detector worker once more, parsing every event in ingest ...")
            bench.keyed_by_team = False
            parse_all = bench.worker_run(n_pre, "worker-parse-all")
            bench.keyed_by_team = True
        full = _median_run(runs)

        log(f"worker stopped; producing {n_lag:,} events (lag) ...")
        lag_load = bench.produce(lag, n_lag)
        log("restarting the worker: lag recovery ...")
        worker = bench.start_worker("worker-restart")
        live: Live | None = None
        try:
            recovery = bench.wait_applied(worker, n_lag, "recovery")
            log(f"  caught up in {recovery.from_start_s:.1f} s")
            if recovery.finished and full.finished:
                rate = cfg.latency_rate_share * full.rate_from_first
                log(f"live: {n_paced:,} events at {rate:,.0f} events/s, reading alerts ...")
                live = bench.latency(worker, [preload, lag], paced, rate, n_lag)
                log(f"  {len(live.run.alerts):,} alerts read")
        finally:
            worker.stop()
    for part in (preload, lag, paced):
        part.unlink()  # copies of the cached event file; the logs stay for a look afterwards
    body = _report(
        cfg, pinning, path, total, (n_pre, n_lag, n_paced), load, lag_load, ceilings, peer, runs,
        recovery, live, profile, profiled, parse_all,
    )  # fmt: skip
    return body + f"\nBenchmark wall time: {time.perf_counter() - wall:.0f} s.\n"


def _median_run(runs: list[WorkerRun]) -> WorkerRun:
    """The run with the median rate from its first applied event (the lower middle one of
    an even count)."""
    return sorted(runs, key=lambda r: r.rate_from_first)[(len(runs) - 1) // 2]


def _k(rate: float) -> str:
    """Events per second, short.

    >>> _k(12_345.0), _k(950.0)
    ('12.3k', '950')
    """
    return f"{rate / 1000:,.1f}k" if rate >= 1000 else f"{rate:,.0f}"


def _ratio(a: float, b: float) -> str:
    if not b:
        return "n/a"
    return f"{a / b:.1f}×" if a >= b else f"{a / b:.0%}"


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def _report(
    cfg: Config,
    pinning: Pinning,
    path: Path,
    total: int,
    counts: tuple[int, int, int],
    load: Rate,
    lag_load: Rate,
    ceilings: list[Rate],
    peer: Rate,
    runs: list[WorkerRun],
    recovery: WorkerRun,
    live: Live | None,
    profile: engine_replay.PySpyProfile | None,
    profiled: WorkerRun | None,
    parse_all: WorkerRun | None,
) -> str:
    n_pre, n_lag, n_paced = counts
    e = cfg.events
    ceiling = statistics.median(c.per_s for c in ceilings)
    full = _median_run(runs)
    worker = full.rate_from_first
    out = [
        f"- Input: {total:,} simulated events (`simulate(SimulationConfig(teams={e.teams}, "
        f"days={e.days}, seed={e.seed}))`, `{path.name}`), split in time order: "
        f"{n_pre:,} loaded up front, {n_lag:,} produced while the worker was stopped, "
        f"{n_paced:,} sent at a paced rate; topic with {cfg.partitions} partitions, keyed by "
        "team; the worker runs with `DETECTOR_KAFKA_EVENTS_KEYED_BY_TEAM=true` (ingest routes "
        "each event by its key, the engine parses it) unless said otherwise.",
        f"- Broker: local Apache Kafka from `deploy/kafka-local.sh` (single node, KRaft); "
        f"{pinning.describe()}. The machine is shared with other work: absolute rates are "
        "noisy, the ratios within this run are what to compare.",
        f"- Loading with `churn-detector produce`: {n_pre:,} events in {load.seconds:.1f} s "
        f"({_k(load.per_s)} events/s); the lag part {n_lag:,} in {lag_load.seconds:.1f} s.",
        "",
        "| consumer (one process each) | events/s | events per CPU-s | events | seconds | "
        "RSS at end |",
        "|---|---:|---:|---:|---:|---:|",
        f"| ceiling: aiokafka + `orjson.loads` + 2 dict increments (median of "
        f"{len(ceilings)}: {', '.join(_k(c.per_s) for c in ceilings)}) | **{_k(ceiling)}** | "
        f"{_k(statistics.median(c.per_cpu_s for c in ceilings))} | {ceilings[0].events:,} | "
        f"{statistics.median(c.seconds for c in ceilings):.1f} | {_mb(ceilings[0].rss_bytes)} |",
        f"| textbook peer: Faust agent, 2 tumbling 1-day tables (RocksDB) updated per event, "
        f"first {cfg.peer_seconds:.0f} s | **{_k(peer.per_s)}** | {_k(peer.per_cpu_s)} | "
        f"{peer.events:,} | {peer.seconds:.1f} | {_mb(peer.rss_bytes)} |",
        f"| churn-detector worker, from its first applied event (median run of {len(runs)}: "
        f"{', '.join(_k(r.rate_from_first) for r in runs)}) | **{_k(worker)}** | "
        f"{_k(full.per_cpu_s)} | {full.applied:,} | {full.from_first_s:.1f} | "
        f"{_mb(full.rss_bytes)} |",
        f"| churn-detector worker, from process start (incl. startup, rebalance) | "
        f"{_k(full.rate_from_start)} | | {full.applied:,} | {full.from_start_s:.1f} | |",
        "",
        "Events per CPU-second: the process's user + system CPU time over the same stretch "
        "(all its threads); on a shared machine this is less sensitive to other load than "
        "wall-clock rates. Each worker run starts from nothing (new consumer groups, bundle, "
        "state and alert topics, state directory) over the same loaded topic.",
        "",
    ]
    if profiled is not None:
        out.append(
            f"- One more worker run, sampled by py-spy for the profile below and not timed: "
            f"{_k(profiled.rate_from_first)} events/s ({_k(profiled.per_cpu_s)} per CPU-second)."
        )
    if parse_all is not None:
        out.append(
            f"- One more worker run with `DETECTOR_KAFKA_EVENTS_KEYED_BY_TEAM=false` (the "
            f"default: ingest parses every event to find its team, the engine gets the fields): "
            f"{_k(parse_all.rate_from_first)} events/s ({_k(parse_all.per_cpu_s)} per "
            f"CPU-second), {_ratio(parse_all.rate_from_first, ceiling)} of the ceiling."
        )
    if not full.finished:
        out.append(
            f"- **The worker did not apply all {n_pre:,} events within "
            f"{cfg.worker_timeout_s:.0f} s**; its rate is over the {full.applied:,} it applied."
        )
    peer_ratio = worker / peer.per_s if peer.per_s else float("inf")
    share = worker / ceiling if ceiling else 0.0
    out.append(
        f"- Ratios (one run): detector / textbook peer **{peer_ratio:.1f}×** (target ≥ "
        f"{TARGET_PEER_RATIO:.0f}×: {'met' if peer_ratio >= TARGET_PEER_RATIO else 'NOT met'}); "
        f"detector / ceiling **{share:.0%}** (target ≥ {TARGET_CEILING_SHARE:.0%}: "
        f"{'met' if share >= TARGET_CEILING_SHARE else 'NOT met'}); per worker process "
        f"{_k(worker)} events/s (target ≥ {_k(TARGET_EVENTS_PER_S)}: "
        f"{'met' if worker >= TARGET_EVENTS_PER_S else 'NOT met'}). Per CPU-second: "
        f"detector / peer {_ratio(full.per_cpu_s, peer.per_cpu_s)}, detector / ceiling "
        f"{_ratio(full.per_cpu_s, statistics.median(c.per_cpu_s for c in ceilings))}."
    )
    out.append(
        f"- The peer ran for a bounded time ({cfg.peer_seconds:.0f} s or "
        f"{cfg.peer_max_events:,} events, from its first event); its rate is extrapolated to "
        f"the whole topic ({n_pre:,} events ≈ {n_pre / peer.per_s:,.0f} s at that rate)."
        if peer.per_s
        else "- The peer processed no events."
    )
    out.append(
        f"- Lag recovery: worker stopped (SIGTERM), {n_lag:,} events produced, worker "
        f"restarted: caught up {recovery.from_start_s:.1f} s after its start "
        f"({'finished' if recovery.finished else 'NOT finished'}; includes process start, "
        "group join and the state restore from the changelog, "
        f"{recovery.from_first_s:.1f} s from its first applied event)."
    )
    if live is None:
        out.append("- Alert latency: not measured (the worker did not catch up in time).")
    else:
        paced, latencies, span_ms = live.run, live.latencies, live.span_ms
        lat = latencies.seconds
        rate = paced.sent / paced.seconds if paced.seconds else 0.0
        live_rate = paced.sent / (paced.seconds + paced.caught_up_s) if paced.seconds else 0.0
        if lat:
            p50 = broker_latency.percentile(lat, 0.5)
            p99 = broker_latency.percentile(lat, 0.99)
            verdict = "met" if p99 <= TARGET_LATENCY_P99_S else "NOT met"
            text = (
                f"p50 **{p50:.2f} s**, p99 **{p99:.2f} s**, max {lat[-1]:.2f} s over "
                f"{len(lat):,} alerts (target p99 ≤ {TARGET_LATENCY_P99_S:.0f} s: {verdict})"
            )
        else:
            text = "no alert was caused by a paced event"
        out.append(
            f"- Alert latency (live): {paced.sent:,} events sent at {_k(rate)} events/s "
            f"({cfg.latency_rate_share:.0%} of the worker's rate) while reading the alerts topic "
            f"(read_committed; the worker had applied every paced event {paced.caught_up_s:.1f} s "
            f"after the last was sent, i.e. it applied {_k(live_rate)} events/s live, "
            f"{_k(paced.sent / live.worker_cpu_s if live.worker_cpu_s else 0.0)} per CPU-second"
            f"): {text}. Latency = arrival of the alert at the reader − the "
            "moment the event that moved its partition's watermark past the alert's sweep was "
            f"handed to the producer (team alerts; {latencies.users:,} user alerts not timed). "
            f"{latencies.before_phase:,} alerts came from events "
            f"before the paced part, {latencies.unmatched:,} matched no event, "
            f"{latencies.early:,} arrived before their computed trigger. Event time ran "
            f"{span_ms / 86_400_000:.1f} days in {paced.seconds:.0f} s of wall time, so a day "
            "closed (and every team of a partition was scored) every "
            f"{paced.seconds / max(span_ms / 86_400_000, 1e-9):.1f} s instead of once a day: "
            "pessimistic for live traffic."
        )
    if profile is not None:
        out += [
            "",
            f"Worker hot path while catching up (py-spy, {profile.samples:,} samples over all "
            "threads, idle excluded; self time, total = inclusive):",
            "",
            "| self | total | function |",
            "|---:|---:|---|",
            *(
                f"| {h.self_share:.1%} | {h.total_share:.1%} | `{h.name}` ({h.where}) |"
                for h in profile.functions[:15]
            ),
            "",
            "Profiles (latest run): "
            + ", ".join(f"`{p.relative_to(REPO_ROOT)}`" for p in profile.files)
            + ".",
            "",
        ]
    out.append(
        "- Memory per user/team and recovery at 1M users / 100k teams through the worker: "
        "`python -m benchmarks.run scale` (not part of this run); not measured: 10M-event replay."
    )
    return "\n".join(out) + "\n"
