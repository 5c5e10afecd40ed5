"""The worker at scale through the broker: memory per user and per team, and recovery after
``kill -9`` with and without the local state snapshot (issue 6).

One local broker (deploy/kafka-local.sh, stopped at the end), one ``churn-detector worker``
process pinned to one CPU (broker, producer and this driver on the other), as in
:mod:`benchmarks.broker_bench`, whose processes and worker handling it reuses.

Input: synthetic events, written to a file and sent with ``churn-detector produce``:
``teams`` teams (``team.updated`` with plan, MRR and seats), then ``users`` users (ten a
team), each active on ``days`` consecutive days (one ``feature.used`` a day), in time order
with the users of a day interleaved (a user permutation per day), so every bundle touches
many teams, as live traffic does.

Memory: the worker's resident set size (``/proc/<pid>/statm``) once it is ready on an empty
topic (its baseline: interpreter, Faust, clients), after every team event is applied (teams,
no users yet), and after every user event is applied, each time after :data:`SETTLE_S` idle
(the worker gives the heap of a burst back once its work has paused for 2 s,
:mod:`detector.heap`); and the highest RSS sampled while the users are applied. Per team =
(after teams − baseline) / teams; per user = (after users − after teams) / users. RSS also
holds what the process keeps around the state (allocator free lists, client buffers, the
partition cache of ingest, RocksDB memtables of the snapshot), so these are upper bounds of
what the state costs.

Recovery: the worker is killed (SIGKILL) and restarted on the same state directory (the
snapshot is used), then killed again and restarted with the state directory deleted (the
whole changelog is read). A probe event for one team is produced as each restart begins;
"back to live" = /readyz answers ready (every partition restored) and the probe is applied
(the team's ``events_total`` has grown by one).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import broker_bench, engine_replay
from .broker_procs import Child, Pinning, get_json, local_broker, rss_bytes

RUN_DIR = engine_replay.DATA_DIR / "scale-run"
TARGET_USER_BYTES = 1024
TARGET_TEAM_BYTES = 4096
TARGET_RECOVERY_S = 60.0
DAY_MS = 86_400_000
#: idle seconds before the RSS of a phase is taken
SETTLE_S = 8.0

Log = Callable[[str], None]


@dataclass(frozen=True)
class Config:
    users: int = 1_000_000
    teams: int = 100_000
    days: int = 3
    partitions: int = 4
    pin: bool = True
    #: the worker keeps its local snapshot (DETECTOR_SERVICE_STATE_SNAPSHOT)
    snapshot: bool = True
    #: give up waiting for the worker after (per phase)
    timeout_s: float = 1800.0


def write_events(cfg: Config, out_dir: Path) -> tuple[Path, int, Path, int, int]:
    """The team file, its count, the user file, its count, and the first event's time (ms)."""
    start = (int(time.time() * 1000) // DAY_MS - cfg.days - 2) * DAY_MS
    per_team = cfg.users // cfg.teams
    teams = out_dir / "teams.jsonl"
    with teams.open("w") as fh:
        for t in range(cfg.teams):
            fh.write(
                f'{{"event_id":"tu-{t}","type":"team.updated","timestamp":{start + t},'
                f'"team_id":"t-{t:06d}","properties":{{"plan":"pro","mrr":{100 + t % 900},'
                f'"seats":{per_team}}}}}\n'
            )
    users = out_dir / "users.jsonl"
    step = _coprime_step(cfg.users)
    spacing = (DAY_MS - 3_600_000) / cfg.users
    with users.open("w") as fh:
        for day in range(cfg.days):
            base = start + (day + 1) * DAY_MS
            lines = []
            for j in range(cfg.users):
                u = (j * step + day) % cfg.users
                lines.append(
                    f'{{"event_id":"e-{day}-{u}","type":"feature.used",'
                    f'"timestamp":{base + int(j * spacing)},"user_id":"u-{u:07d}",'
                    f'"team_id":"t-{u // per_team:06d}","properties":{{"feature":"f{u % 7}"}}}}\n'
                )
            fh.write("".join(lines))
    return teams, cfg.teams, users, cfg.users * cfg.days, start


def _coprime_step(n: int) -> int:
    """A step that visits every index mod ``n`` once, far from 1 (a shuffled order).

    >>> sorted((j * _coprime_step(10)) % 10 for j in range(10)) == list(range(10))
    True
    """
    import math

    step = int(n * 0.618) | 1
    while math.gcd(step, n) != 1:
        step += 2
    return step


class ScaleBench(broker_bench.Bench):
    """broker_bench's worker handling, with the worker's INFO log (restore lines)."""

    snapshot = True

    def detector_env(self) -> dict[str, str]:
        return {
            **super().detector_env(),
            "DETECTOR_SERVICE_LOG_LEVEL": "INFO",
            "DETECTOR_SERVICE_STATE_SNAPSHOT": str(self.snapshot).lower(),
        }

    @property
    def state_dir(self) -> Path:
        return self.run_dir / "worker-state"

    def changelog(self) -> str:
        return f"{self.app_id}-state-changelog"

    def get(self, path: str) -> dict[str, Any] | None:
        return get_json(f"http://127.0.0.1:{self.web_port}{path}")

    def wait(self, child: Child, what: str, condition: Callable[[], Any]) -> float:
        """Seconds from the child's start until ``condition()`` holds (polled every 0.1 s)."""
        deadline = time.perf_counter() + self.cfg.worker_timeout_s
        while not condition():
            if not child.alive():
                raise RuntimeError(f"worker exited while waiting for {what}:\n{child.tail()}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"timed out waiting for {what}:\n{child.tail()}")
            time.sleep(0.1)  # polling the worker's web pages
        return time.perf_counter() - child.started


@dataclass
class Recovery:
    label: str
    ready_s: float
    live_s: float
    #: the restarted worker's RSS once live: the restored state without the stream's churn
    rss_bytes: int
    restore_lines: list[str]


def _dir_bytes(root: Path, name_prefix: str = "") -> int:
    total = 0
    for d in root.rglob(f"{name_prefix}*") if name_prefix else [root]:
        if d.is_dir():
            total += sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    return total


def _restore_lines(log_file: Path, since: int) -> list[str]:
    text = log_file.read_bytes()[since:].decode(errors="replace")
    return [m.group(0) for m in re.finditer(r"partition \d+: restored [^\n]*", text)]


def recover(bench: ScaleBench, label: str, probe_team: str, events_before: int) -> Recovery:
    """Restart the worker, produce the probe event, time until ready and live."""
    log_file = bench.run_dir / f"worker-{label}.log"
    since = log_file.stat().st_size if log_file.exists() else 0
    child = bench.start_worker(f"worker-{label}")
    probe = bench.run_dir / f"probe-{label}.jsonl"
    now = int(time.time() * 1000) - 60_000
    probe.write_text(
        f'{{"event_id":"probe-{label}","type":"feature.used","timestamp":{now},'
        f'"user_id":"u-probe","team_id":"{probe_team}","properties":{{"feature":"probe"}}}}\n'
    )
    bench.produce(probe, 1)
    try:
        ready_s = bench.wait(child, "/readyz", lambda: bench.get("/readyz") is not None)
        live_s = bench.wait(
            child,
            "the probe event",
            lambda: (
                ((bench.get(f"/teams/{probe_team}") or {}).get("events_total", 0)) > events_before
            ),
        )
        team = bench.get(f"/teams/{probe_team}") or {}
        rss = rss_bytes(child.pid)
    finally:
        child.proc.send_signal(signal.SIGKILL)
        child.stop()
    assert team.get("events_total") == events_before + 1, team
    return Recovery(label, ready_s, live_s, rss, _restore_lines(log_file, since))


class PeakRss:
    """The highest RSS of a process, sampled every 0.2 s while in the ``with`` block."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.2):  # sampling period, not synchronisation
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def run(cfg: Config, log: Log) -> str:
    wall = time.perf_counter()
    pinning = Pinning.choose(cfg.pin)
    if pinning.others is not None:
        os.sched_setaffinity(0, {pinning.others})
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    RUN_DIR.mkdir(parents=True)
    log(f"writing {cfg.teams:,} team and {cfg.users * cfg.days:,} user events ...")
    teams_file, n_teams, users_file, n_users, _ = write_events(cfg, RUN_DIR)
    bcfg = broker_bench.Config(partitions=cfg.partitions, worker_timeout_s=cfg.timeout_s)
    with local_broker(RUN_DIR / "kafka", cfg.partitions, pinning, log) as bootstrap:
        bench = ScaleBench(bcfg, bootstrap, RUN_DIR, pinning, log)
        bench.snapshot = cfg.snapshot
        worker = bench.start_worker("worker")
        try:
            bench.wait(worker, "/readyz", lambda: bench.get("/readyz") is not None)
            time.sleep(3)  # settle: the first rebalance's allocations
            rss_base = rss_bytes(worker.pid)
            log(f"  ready, RSS {rss_base / 2**20:,.0f} MB; producing the team events ...")
            bench.produce(teams_file, n_teams)
            bench.wait_applied(worker, n_teams, "teams")
            time.sleep(SETTLE_S)
            rss_teams = rss_bytes(worker.pid)
            log(f"  teams applied, RSS {rss_teams / 2**20:,.0f} MB; producing user events ...")
            with PeakRss(worker.pid) as peak:
                load = bench.produce(users_file, n_users)
                log(f"  produced in {load.seconds:.0f} s")
                applied = bench.wait_applied(worker, n_teams + n_users, "users")
            if not applied.finished:
                raise RuntimeError(f"the worker did not apply every event:\n{worker.tail()}")
            time.sleep(SETTLE_S)  # the last commits, their snapshot writes, the heap release
            rss_users = rss_bytes(worker.pid)
            log(f"  all applied ({applied.rate_from_first:,.0f} events/s), RSS "
                f"{rss_users / 2**20:,.0f} MB, peak {peak.peak / 2**20:,.0f} MB")  # fmt: skip
            probe_team = "t-000000"
            before = int((bench.get(f"/teams/{probe_team}") or {}).get("events_total", 0))
        finally:
            worker.proc.send_signal(signal.SIGKILL)
            worker.stop()
        log("killed (SIGKILL); sizes ...")
        # under the worker's own state directory (<state_dir>/<app id>/snapshots)
        snapshot_bytes = _dir_bytes(bench.state_dir, "snapshots")
        changelog_bytes = _dir_bytes(RUN_DIR / "kafka", bench.changelog())
        log("restart with the snapshot ...")
        warm = recover(bench, "with-snapshot", probe_team, before)
        log(f"  ready {warm.ready_s:.1f} s, live {warm.live_s:.1f} s")
        shutil.rmtree(bench.state_dir)
        log("restart without it (state dir deleted) ...")
        cold = recover(bench, "without-snapshot", probe_team, before + 1)
        log(f"  ready {cold.ready_s:.1f} s, live {cold.live_s:.1f} s")
    per_team = (rss_teams - rss_base) / cfg.teams
    per_user = (rss_users - rss_teams) / cfg.users
    return _report(
        cfg, pinning, applied, (rss_base, rss_teams, rss_users, peak.peak), per_user, per_team,
        snapshot_bytes, changelog_bytes, (warm, cold),
    ) + f"\nBenchmark wall time: {time.perf_counter() - wall:.0f} s.\n"  # fmt: skip


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def _report(
    cfg: Config,
    pinning: Pinning,
    applied: broker_bench.WorkerRun,
    rss: tuple[int, int, int, int],
    per_user: float,
    per_team: float,
    snapshot_bytes: int,
    changelog_bytes: int,
    recoveries: tuple[Recovery, Recovery],
) -> str:
    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    out = [
        f"- Input: synthetic, {cfg.teams:,} teams (`team.updated`), then {cfg.users:,} users "
        f"(ten a team), each active on {cfg.days} consecutive days (one `feature.used` a day), "
        "time order, the users of a day interleaved; "
        f"{cfg.teams + cfg.users * cfg.days:,} events, topic of {cfg.partitions} partitions. "
        f"One `churn-detector worker` process; {pinning.describe()}.",
        f"- Worker applied {applied.applied:,} events at {applied.rate_from_first:,.0f} events/s "
        f"(from its first applied event, {applied.from_first_s:.0f} s).",
        "",
        "| worker RSS | |",
        "|---|---:|",
        f"| ready, no state | {_mb(rss[0])} |",
        f"| + {cfg.teams:,} teams | {_mb(rss[1])} |",
        f"| + {cfg.users:,} users | {_mb(rss[2])} |",
        f"| highest while the users were applied | {_mb(rss[3])} |",
        *(
            f"| restarted, {r.label.replace('-', ' ')}, live | {_mb(r.rss_bytes)} |"
            for r in recoveries
        ),
        "",
        f"- Memory: **{per_user:,.0f} B per user** (target ≤ {TARGET_USER_BYTES} B: "
        f"{met(per_user <= TARGET_USER_BYTES)}), **{per_team:,.0f} B per team** (target ≤ "
        f"{TARGET_TEAM_BYTES} B: {met(per_team <= TARGET_TEAM_BYTES)}). Method: RSS deltas "
        "of the worker process between the phases (after each phase was applied and "
        f"{SETTLE_S:.0f} s idle; the worker releases a burst's heap once its work has paused "
        "for 2 s); they include what the process keeps besides the state (allocator free "
        "lists, client buffers, ingest's team→partition cache, RocksDB memtables), so they "
        "are upper bounds. The restarted workers' RSS, taken as soon as the probe is "
        "applied, also holds the restore's transient copies and the probe's day close, "
        "which re-encodes every entity for the changelog.",
        f"- Local snapshot on disk "
        f"{_mb(snapshot_bytes)}; changelog topic on the broker's disk {_mb(changelog_bytes)} "
        "(uncompacted: every transaction writes each entity it changed).",
        "",
        "| restart after `kill -9` | /readyz ready | back to live (probe applied) | target |",
        "|---|---:|---:|---|",
    ]
    for r in recoveries:
        out.append(
            f"| {r.label.replace('-', ' ')} | {r.ready_s:.1f} s | **{r.live_s:.1f} s** | "
            f"≤ {TARGET_RECOVERY_S:.0f} s: {met(r.live_s <= TARGET_RECOVERY_S)} |"
        )
    out.append("")
    out.append("Restore log lines of the worker (per partition):")
    out.append("")
    for r in recoveries:
        out.append(f"- {r.label}:")
        out.extend(f"  - `{line}`" for line in r.restore_lines)
    return "\n".join(out) + "\n"
