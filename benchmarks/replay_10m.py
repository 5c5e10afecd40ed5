"""End-to-end replay of >= 10M events: ``churn-detector replay FILE`` as a user runs it.

Issue 6 asks for a replay of 10M events in <= 60 s with alerts identical to the streaming
path. Input: the project's simulator (seed 7, 180 days, teams raised until the file holds
``min_events``), generated once and cached in ``benchmarks/data/`` like the engine
benchmark's file. Everything the command does is timed: reading and parsing the file,
routing, the engine, writing alerts and dead letters, and (with jobs > 1) merging the jobs'
outputs.

Runs, in one benchmark:

1. the replay with ``--jobs`` (default: the command's own default), timed: wall clock, CPU
   seconds of the process tree and of its busiest process, peak memory of the tree (PSS
   summed over its processes, sampled every 0.2 s from /proc) and RSS of its largest
   process, and how contended the CPUs were meanwhile (/proc/pressure/cpu);
2. the same file in one process (``--jobs 1``), timed the same way: the reference output.
   Its alerts and dead letters must be byte-identical to run 1's (sha256 of both files);
3. (unless ``profile=False``) py-spy over the parallel replay of the first
   ``profile_lines`` lines, every job sampled (``--subprocesses``); kept in
   ``benchmarks/profiles/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import engine_replay
from .engine_replay import DATA_DIR, PROFILE_DIR, REPO_ROOT

TARGET_SECONDS = 60.0
TARGET_EVENTS = 10_000_000

Log = Callable[[str], None]


@dataclass(frozen=True)
class Config:
    teams: int = 1531  # 10.5M events with the simulator of 2026-11-27
    min_events: int = TARGET_EVENTS
    jobs: int | None = None
    check: bool = True
    profile: bool = True
    profile_lines: int = 2_000_000
    pyspy_rate: int = 100


@dataclass
class Run:
    """One timed run of a command and what its process tree used."""

    command: list[str]
    seconds: float
    cpu_seconds: float
    busiest_cpu_seconds: float
    peak_tree_pss: int
    peak_process_rss: int
    processes: int
    stderr: str
    cpu_pressure: float  # share of the wall time some runnable task waited for a CPU (PSI)

    def rate(self, events: int) -> float:
        return events / self.seconds


# ---------------------------------------------------------------------------- measuring
@dataclass
class _Proc:
    ppid: int
    rss: int
    cpu_ticks: int


def _processes() -> dict[int, _Proc]:
    """Every process: parent, resident bytes, user + system clock ticks (/proc/*/stat)."""
    page = os.sysconf("SC_PAGE_SIZE")
    out: dict[int, _Proc] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        f = stat[stat.rindex(b")") + 2 :].split()  # the fields after "pid (comm) "
        out[int(entry.name)] = _Proc(int(f[1]), int(f[21]) * page, int(f[11]) + int(f[12]))
    return out


def _tree(root: int) -> dict[int, _Proc]:
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, p in procs.items():
        children.setdefault(p.ppid, []).append(pid)
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            tree[pid] = procs[pid]
            todo.extend(children.get(pid, ()))
    return tree


def _pss(pid: int) -> int:
    """Proportional set size: shared pages (a fork's) split among the processes sharing them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cpu_stall_us() -> int:
    """Microseconds some runnable task waited for a CPU since boot (Linux PSI), 0 if unknown."""
    try:
        with open("/proc/pressure/cpu") as fh:
            some = fh.readline().split()
    except OSError:
        return 0
    return int(some[-1].partition("=")[2])


def timed(command: list[str], env: dict[str, str] | None = None) -> Run:
    """Run ``command`` (stdout discarded), sampling its process tree every 0.2 s: memory
    (PSS summed over the tree, RSS of the largest process) and CPU time per process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    stall_before = _cpu_stall_us()
    started = time.perf_counter()
    peak_tree = peak_one = 0
    ticks: dict[int, int] = {}
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err
        )
        while proc.poll() is None:
            tree = _tree(proc.pid)
            for pid, p in tree.items():
                ticks[pid] = max(ticks.get(pid, 0), p.cpu_ticks)
                peak_one = max(peak_one, p.rss)
            peak_tree = max(peak_tree, sum(_pss(pid) for pid in tree))
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.2)
        seconds = time.perf_counter() - started
        stall = (_cpu_stall_us() - stall_before) / 1e6
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{stderr[-2000:]}")
    busiest = max(ticks.values(), default=0) / os.sysconf("SC_CLK_TCK")
    return Run(
        command, seconds, cpu, busiest, peak_tree, peak_one, len(ticks), stderr, stall / seconds
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def replay_command(events: Path, out: Path, jobs: int | None) -> list[str]:
    """The command, its paths relative to the repository (the runs' working directory)."""
    cli = Path(sys.executable).with_name("churn-detector")
    cmd: list[str | Path] = [
        cli,
        "replay",
        events,
        "--alerts",
        out / "alerts.jsonl",
        "--dlq",
        out / "dlq.jsonl",
    ]
    cmd += ["--quiet", *([] if jobs is None else ["--jobs", str(jobs)])]
    return _shown(cmd)


def _prefix(events: Path, lines: int) -> Path:
    # named like the cached file, simulator tag last: removed with it when the simulator changes
    head, _, tag = events.stem.rpartition("-")
    path = events.with_name(f"{head}-first{lines}-{tag}.jsonl")
    if not path.exists():
        with events.open("rb") as src, path.with_suffix(".tmp").open("wb") as dst:
            dst.writelines(itertools.islice(src, lines))
        path.with_suffix(".tmp").replace(path)
    return path


def profile(events: Path, cfg: Config, log: Log) -> list[Path]:
    """py-spy over a parallel replay of the file's first lines; speedscope + top lines."""
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if exe is None:
        log("py-spy not found (pip install py-spy): profile skipped")
        return []
    prefix = _prefix(events, cfg.profile_lines)
    out_dir = DATA_DIR / "replay-run" / "profile"
    out_dir.mkdir(parents=True, exist_ok=True)
    speedscope = PROFILE_DIR / "replay-pyspy.speedscope.json"
    cmd = [exe, "record", "--subprocesses", "--rate", str(cfg.pyspy_rate), "--format"]
    cmd += ["speedscope", "--output", str(speedscope), "--"]
    log(f"profile: py-spy over a replay of the first {cfg.profile_lines:,} lines ...")
    done = subprocess.run(
        cmd + replay_command(prefix, out_dir, cfg.jobs),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    if done.returncode != 0 or not speedscope.exists():
        log(f"py-spy failed (rc {done.returncode}): {done.stderr.strip()[-300:]}")
        return []
    header = (
        f"py-spy record --subprocesses --rate {cfg.pyspy_rate}: `churn-detector replay` of the "
        f"first {cfg.profile_lines:,} lines of {events.name}"
    )
    return [speedscope, write_top(speedscope, PROFILE_DIR / "replay-pyspy-top.txt", header)]


def write_top(speedscope: Path, top: Path, header: str) -> Path:
    """Top functions and lines of the busiest process's replay (a job's, if any)."""
    summary = engine_replay.summarise_speedscope(speedscope, within="_replay_job")
    if not summary.samples:  # one process (--jobs 1)
        summary = engine_replay.summarise_speedscope(speedscope, within="replay")
    text = [
        f"{header}; the busiest process, {summary.samples} samples inside its replay.",
        "Self time = samples whose innermost Python frame is the function.",
        "",
        *engine_replay.hotspot_lines(summary),
    ]
    top.write_text("\n".join(text) + "\n")
    return top


# ---------------------------------------------------------------------------- the benchmark
def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def run(cfg: Config, log: Log) -> str:
    """Run the replay benchmark; returns the Markdown body of its results section."""
    started = time.perf_counter()
    events, teams, count = engine_replay.ensure_events(
        engine_replay.Config(teams=cfg.teams, min_events=cfg.min_events), log
    )
    size = events.stat().st_size
    out = DATA_DIR / "replay-run"
    parallel_out, serial_out = out / "parallel", out / "serial"
    for d in (parallel_out, serial_out):
        d.mkdir(parents=True, exist_ok=True)
    log(f"input: {count:,} events, {size / 1e9:.2f} GB ({events.relative_to(REPO_ROOT)})")

    log(f"replay, jobs {cfg.jobs or 'default'} ...")
    parallel = timed(replay_command(events, parallel_out, cfg.jobs))
    log(f"  {parallel.seconds:.1f} s, {parallel.rate(count) / 1e3:,.1f}k events/s")
    serial: Run | None = None
    same = ""
    if cfg.check:
        log("reference: the same file in one process (--jobs 1) ...")
        serial = timed(replay_command(events, serial_out, 1))
        log(f"  {serial.seconds:.1f} s, {serial.rate(count) / 1e3:,.1f}k events/s")
        hashes = {
            name: (_sha256(parallel_out / name), _sha256(serial_out / name))
            for name in ("alerts.jsonl", "dlq.jsonl")
        }
        equal = all(a == b for a, b in hashes.values())
        alerts_hash = hashes["alerts.jsonl"][0]
        same = (
            f"byte-identical to one process (alerts sha256 `{alerts_hash[:12]}…`, "
            f"{(parallel_out / 'alerts.jsonl').stat().st_size:,} bytes; dead letters "
            f"`{hashes['dlq.jsonl'][0][:12]}…`)"
            if equal
            else f"**DIFFER from one process**: {hashes}"
        )
    files = profile(events, cfg, log) if cfg.profile else []

    summary = parallel.stderr.strip().splitlines()[-1] if parallel.stderr.strip() else ""
    per_10m = parallel.seconds * TARGET_EVENTS / count
    met = per_10m <= TARGET_SECONDS
    rows = [("parallel" if cfg.jobs != 1 else "one process", parallel)]
    if serial is not None:
        rows.append(("one process (`--jobs 1`), reference", serial))
    body = [
        f"- Input: {count:,} events, {size / 1e9:.2f} GB JSONL (`simulate(SimulationConfig("
        f"teams={teams}, days=180, seed=7))`, cached in `{events.relative_to(REPO_ROOT)}`); "
        f"the command's summary: `{summary}`.",
        f"- Replay command: `{' '.join(parallel.command)}`; end to end (read, parse, "
        "route, engine, write, merge); the page cache holds the file (read before).",
        "",
        "| run | wall s | events/s | CPU s, all processes | CPU s, busiest process | "
        "processes | peak memory, all processes (PSS) | peak RSS, largest process | "
        "CPU contention |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | **{r.seconds:.1f}** | {r.rate(count) / 1e3:,.1f}k | "
            f"{r.cpu_seconds:.1f} | {r.busiest_cpu_seconds:.1f} | {r.processes} | "
            f"{_mb(r.peak_tree_pss)} | {_mb(r.peak_process_rss)} | {r.cpu_pressure:.0%} |"
            for name, r in rows
        ),
        "",
        "The busiest process's CPU time is about the wall time the run would take with a "
        "core of its own per process (samples every 0.2 s; the processes are the command "
        "and its jobs). CPU contention: the share of the run's wall time during which some "
        "runnable task on the machine waited for a CPU (`/proc/pressure/cpu`, some); near 0 "
        "on a quiet machine.",
        "",
        f"- Target: 10M events in ≤ {TARGET_SECONDS:.0f} s: {'met' if met else '**NOT met**'} "
        f"by the wall clock ({per_10m:.1f} s per 10M events at this rate); with a free core "
        f"per job, {parallel.busiest_cpu_seconds * TARGET_EVENTS / count:.1f} s per 10M events "
        "(the busiest process's CPU time).",
    ]
    if serial is not None:
        body.append(
            f"- Speed-up over one process: {serial.seconds / parallel.seconds:.2f}× wall clock; "
            f"output {same}."
        )
    if files:
        body.append(
            "- Profile (py-spy, separate run): "
            + ", ".join(f"`{p.relative_to(REPO_ROOT)}`" for p in files)
            + "."
        )
    body += ["", f"Benchmark wall time: {time.perf_counter() - started:.0f} s."]
    return "\n".join(body) + "\n"


def _shown(command: list[str | Path]) -> list[str]:
    out = []
    for part in command:
        try:
            out.append(str(Path(part).relative_to(REPO_ROOT)))
        except ValueError:
            out.append(str(part))
    return out
