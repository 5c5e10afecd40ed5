"""Pure-engine benchmark (no Kafka): replay throughput, memory per entity, hot-path profile.

Input: a simulated event file (>= 2M events), generated once with the project's simulator
and cached in ``benchmarks/data/`` (the file name carries a hash of the simulator source,
so a changed simulator regenerates it). The raw lines are read into memory first, so file
I/O is never timed.

Throughput (one core: the process is pinned to one CPU): the lines go through
``PartitionedEngines(EngineSettings()).process_lines`` in batches, exactly as
``detector/replay.py`` does minus the file writes; fresh engines for each repetition;
median/min/max of the repetitions. The same repetitions also time ``decode_fields`` (the
engine's decoder) alone and ``orjson.loads`` alone (interleaved with the engine runs), so the
engine's cost over the decoding ceiling is visible. Wall-clock rates are the headline; the
rate per CPU second (``time.process_time``) is shown too, because on a shared machine the
wall clock also counts the time other processes held the core.

Memory: (a) tracemalloc around rebuilding the replayed state (teams, users, then the
engine indexes) from its changelog records, and a synthetic build of 1M users / 100k teams
from those records measured by RSS (/proc/self/statm) and tracemalloc in a fresh
interpreter; (b) the encoded record sizes (what the changelog stores).

Profile: py-spy (sampling, low overhead) over a replay of the first events, in a child
process; cProfile (call counts, high overhead) over a shorter prefix. Kept in
``benchmarks/profiles/``.

Child-process entry points (used by the benchmark itself)::

    python -m benchmarks.engine_replay profile-target EVENTS.jsonl LIMIT
    python -m benchmarks.engine_replay memory-synthetic SAMPLE.pickle USERS TEAMS
"""

from __future__ import annotations

import cProfile
import gc
import hashlib
import io
import itertools
import json
import linecache
import math
import os
import pickle
import pstats
import shutil
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

import detector.simulator as simulator_module
from detector.codec import (
    decode_team,
    decode_user,
    encode_partition,
    encode_team,
    encode_user,
    restore_partition,
)
from detector.engine import PartitionEngine
from detector.events import Invalid, decode_fields
from detector.replay import BATCH_LINES, batches
from detector.router import PartitionedEngines
from detector.settings import EngineSettings
from detector.simulator import SimulationConfig, simulate, write_jsonl
from detector.state import TeamState, UserState

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DATA_DIR = BENCH_DIR / "data"
PROFILE_DIR = BENCH_DIR / "profiles"

TARGET_EVENTS_PER_S = 150_000
TARGET_USER_BYTES = 1024
TARGET_TEAM_BYTES = 4096
MAX_PROFILE_FILE_BYTES = 500_000

Log = Callable[[str], None]


@dataclass(frozen=True)
class Config:
    teams: int = 300
    days: int = 180
    seed: int = 7
    min_events: int = 2_000_000
    reps: int = 3
    profile: bool = True
    pyspy_events: int = 600_000
    pyspy_rate: int = 200
    cprofile_events: int = 200_000
    synth_users: int = 1_000_000
    synth_teams: int = 100_000


# ---------------------------------------------------------------------------- input
def _simulator_tag() -> str:
    source = Path(str(simulator_module.__file__)).read_bytes()
    return hashlib.sha256(source).hexdigest()[:10]


def ensure_events(cfg: Config, log: Log) -> tuple[Path, int, int]:
    """The cached event file (generated when missing): path, teams used, event count.

    Teams are raised (and the file regenerated) until the file holds ``min_events``."""
    tag = _simulator_tag()
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for stale in DATA_DIR.glob("sim-t*.jsonl"):  # cached files of an older simulator
        if not stale.stem.endswith(tag):
            stale.unlink()
            stale.with_suffix(".count").unlink(missing_ok=True)
    teams = cfg.teams
    for _ in range(4):
        path = DATA_DIR / f"sim-t{teams}-d{cfg.days}-s{cfg.seed}-{tag}.jsonl"
        count_file = path.with_suffix(".count")
        if path.exists() and count_file.exists():
            count = int(count_file.read_text())
        else:
            log(f"generating {path.relative_to(REPO_ROOT)} (once; cached) ...")
            started = time.perf_counter()
            tmp = path.with_suffix(".tmp")
            sim = simulate(SimulationConfig(teams=teams, days=cfg.days, seed=cfg.seed))
            count = write_jsonl(tmp, sim.events())
            tmp.replace(path)
            count_file.write_text(str(count))
            log(f"  {count:,} events in {time.perf_counter() - started:.1f} s")
        if count >= cfg.min_events:
            return path, teams, count
        teams = math.ceil(teams * cfg.min_events * 1.05 / max(count, 1))
        log(f"  {count:,} events < {cfg.min_events:,}: retrying with {teams} teams")
    raise SystemExit(f"could not reach {cfg.min_events:,} events; raise --teams")


def load_lines(path: Path, limit: int | None = None) -> list[bytes]:
    """Raw non-blank lines (as detector.replay.read_lines yields them), all in memory."""
    if limit is None:
        return [line for line in path.read_bytes().splitlines() if line.strip()]
    with path.open("rb") as fh:
        stripped = (line.rstrip(b"\r\n") for line in fh)
        return list(itertools.islice((line for line in stripped if line.strip()), limit))


# ---------------------------------------------------------------------------- timed loops
def replay_loop(
    lines: Sequence[bytes], settings: EngineSettings
) -> tuple[PartitionedEngines, int, int]:
    """detector.replay.replay without the file writes: (engines, alerts, rejected lines)."""
    engines = PartitionedEngines(settings)
    alerts = rejected = 0
    for batch in batches(lines):
        bad: list[tuple[int, Invalid]] = []
        raised: list[dict[str, Any]] = []
        engines.process_lines(batch, bad, raised)
        alerts += len(raised)
        rejected += len(bad)
    return engines, alerts, rejected


def decode_loop(lines: Sequence[bytes], max_bytes: int) -> None:
    decode = decode_fields
    for raw in lines:
        decode(raw, max_bytes)


def orjson_loop(lines: Sequence[bytes]) -> None:
    loads = orjson.loads
    for raw in lines:
        loads(raw)


class _GcTimer:
    """Time spent in the cyclic garbage collector (a gc.callbacks hook)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections += 1


@dataclass
class Timing:
    name: str
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    gc_seconds: list[float] = field(default_factory=list)

    def rates(self, events: int) -> list[float]:
        return [events / s for s in self.seconds]

    def cpu_rates(self, events: int) -> list[float]:
        return [events / s for s in self.cpu_seconds]


def _timed(timing: Timing, fn: Callable[[], Any]) -> Any:
    gc.collect()
    gc_timer = _GcTimer()
    gc.callbacks.append(gc_timer)
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        result = fn()
        timing.seconds.append(time.perf_counter() - started)
        timing.cpu_seconds.append(time.process_time() - cpu_started)
    finally:
        gc.callbacks.remove(gc_timer)
    timing.gc_seconds.append(gc_timer.seconds)
    return result


# ---------------------------------------------------------------------------- memory
def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class StateRecords:
    """The replayed state as changelog records, per partition."""

    teams: list[list[bytes]]
    users: list[list[tuple[bytes, bytes]]]  # (user id as bytes, record)
    metas: list[bytes]

    @classmethod
    def of(cls, engines: PartitionedEngines) -> StateRecords:
        return cls(
            teams=[[encode_team(t) for t in e.teams.values()] for e in engines.engines],
            users=[
                [(uid.encode(), encode_user(u)) for uid, u in e.users.items()]
                for e in engines.engines
            ],
            metas=[encode_partition(e, 0) for e in engines.engines],
        )

    def team_sizes(self) -> list[int]:
        return [len(r) for part in self.teams for r in part]

    def user_sizes(self) -> list[int]:
        return [len(r) for part in self.users for _, r in part]


def live_state_memory(records: StateRecords, settings: EngineSettings) -> dict[str, float]:
    """tracemalloc around rebuilding the engines from their records, step by step.

    Every string (ids included) is allocated inside the measured window; users share their
    team's id string as in the live engine."""
    gc.collect()
    tracemalloc.start()
    try:
        m0 = tracemalloc.get_traced_memory()[0]
        team_dicts: list[dict[str, TeamState]] = []
        for team_part in records.teams:
            decoded = (decode_team(r) for r in team_part)
            team_dicts.append({t.team_id: t for t in decoded})
        m1 = tracemalloc.get_traced_memory()[0]
        user_dicts: list[dict[str, UserState]] = []
        for user_part, teams in zip(records.users, team_dicts, strict=True):
            users = {uid.decode(): decode_user(r) for uid, r in user_part}
            for user in users.values():
                user.team_id = teams[user.team_id].team_id
            user_dicts.append(users)
        m2 = tracemalloc.get_traced_memory()[0]
        rebuilt = []
        for meta, teams, users in zip(records.metas, team_dicts, user_dicts, strict=True):
            engine = PartitionEngine(settings)
            restore_partition(engine, meta, teams, users)
            rebuilt.append(engine)
        m3 = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    n_teams = sum(len(t) for t in team_dicts)
    n_users = sum(len(u) for u in user_dicts)
    return {
        "teams": n_teams,
        "users": n_users,
        "team_bytes": (m1 - m0) / max(n_teams, 1),
        "user_bytes": (m2 - m1) / max(n_users, 1),
        "index_bytes_total": float(m3 - m2),
        "user_bytes_with_indexes": (m3 - m1) / max(n_users, 1),
        "total_bytes": float(m3 - m0),
    }


def _build_teams(
    records: list[bytes], n: int
) -> tuple[dict[str, TeamState], dict[int, dict[str, TeamState]]]:
    teams: dict[str, TeamState] = {}
    groups: dict[int, dict[str, TeamState]] = {}
    for i in range(n):
        team = decode_team(records[i % len(records)])
        tid = f"t-{i:07d}"
        team.team_id = tid
        teams[tid] = team
        groups.setdefault(team.offset_ms, {})[tid] = team
    return teams, groups


def _build_users(
    records: list[bytes], n: int, team_ids: list[str]
) -> tuple[dict[str, UserState], dict[int, list[str]]]:
    users: dict[str, UserState] = {}
    wheel: dict[int, list[str]] = {}
    for i in range(n):
        user = decode_user(records[i % len(records)])
        uid = f"u-{i:07d}"
        user.team_id = team_ids[i % len(team_ids)]
        users[uid] = user
        if user.check_day >= 0:
            wheel.setdefault(user.check_day, []).append(uid)
    return users, wheel


def synthetic_memory(sample: Path, n_users: int, n_teams: int) -> dict[str, float]:
    """Build n_teams teams and n_users users from real records: RSS, then tracemalloc."""
    data = pickle.loads(sample.read_bytes())
    team_records: list[bytes] = data["teams"]
    user_records: list[bytes] = data["users"]
    gc.collect()
    r0 = rss_bytes()
    teams, _groups = _build_teams(team_records, n_teams)
    gc.collect()
    r1 = rss_bytes()
    _users, _wheel = _build_users(user_records, n_users, list(teams))
    gc.collect()
    r2 = rss_bytes()
    tracemalloc.start()
    try:
        m0 = tracemalloc.get_traced_memory()[0]
        teams2, _groups2 = _build_teams(team_records, n_teams)
        m1 = tracemalloc.get_traced_memory()[0]
        _users2, _wheel2 = _build_users(user_records, n_users, list(teams2))
        m2 = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # list(teams2) above is a temporary: freed before m2, so it does not count
    sample_team = next(iter(teams.values()))
    sample_user = next(iter(_users.values()))
    return {
        "users": n_users,
        "teams": n_teams,
        "rss_user_bytes": (r2 - r1) / n_users,
        "rss_team_bytes": (r1 - r0) / n_teams,
        "traced_user_bytes": (m2 - m1) / n_users,
        "traced_team_bytes": (m1 - m0) / n_teams,
        "sizeof_user_object": sys.getsizeof(sample_user),
        "sizeof_team_object": sys.getsizeof(sample_team),
        "sizeof_team_ring": sys.getsizeof(sample_team.ring),
        "sizeof_new_team_ring": sys.getsizeof(TeamState("t", 0, False).ring),
        "sizeof_user_key": sys.getsizeof("u-0000000"),
        "users_dict_per_entry": sys.getsizeof(_users) / n_users,
    }


def run_synthetic_child(records: StateRecords, cfg: Config) -> dict[str, float]:
    sample = DATA_DIR / "state-sample.pickle"
    payload = {
        "teams": [r for part in records.teams for r in part],
        "users": [r for part in records.users for _, r in part],
    }
    sample.write_bytes(pickle.dumps(payload))
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.engine_replay",
        "memory-synthetic",
        str(sample),
        str(cfg.synth_users),
        str(cfg.synth_teams),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, cwd=REPO_ROOT, text=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------- profiles
def _short_path(filename: str) -> str:
    if filename == "<string>":  # collections.namedtuple's generated __new__
        return "namedtuple __new__: Event/Invalid"
    path = Path(filename)
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        parts = path.parts
        if "site-packages" in parts:
            return "/".join(parts[parts.index("site-packages") + 1 :])
        return path.name


@dataclass
class HotSpot:
    name: str
    where: str
    self_share: float
    total_share: float = 0.0
    source: str = ""


@dataclass
class PySpyProfile:
    samples: int
    functions: list[HotSpot]
    lines: list[HotSpot]
    files: list[Path]
    inclusive: dict[str, float] = field(default_factory=dict)


def run_pyspy(events: Path, cfg: Config, log: Log) -> PySpyProfile | None:
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if exe is None:
        log("py-spy not found (pip install py-spy): sampling profile skipped")
        return None
    out = PROFILE_DIR / "engine-pyspy.speedscope.json"
    cmd = [
        exe,
        "record",
        "--format",
        "speedscope",
        "--rate",
        str(cfg.pyspy_rate),
        "--output",
        str(out),
        "--",
        sys.executable,
        "-m",
        "benchmarks.engine_replay",
        "profile-target",
        str(events),
        str(cfg.pyspy_events),
    ]
    done = subprocess.run(cmd, capture_output=True, cwd=REPO_ROOT, text=True)
    if done.returncode != 0 or not out.exists():
        log(f"py-spy failed (rc {done.returncode}): {done.stderr.strip()[-300:]}")
        return None
    profile = summarise_speedscope(out)
    summary = PROFILE_DIR / "engine-pyspy-top.txt"
    summary.write_text(_format_pyspy(profile, cfg))
    profile.files = [out, summary]
    return profile


def summarise_speedscope(path: Path, within: str = "replay_loop") -> PySpyProfile:
    """Self and inclusive shares per function, self share per line, over the samples whose
    stack passes through ``within`` (the replay loop: loading the input is left out)."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    profile = max(data["profiles"], key=lambda p: len(p["samples"]))
    func_self: Counter[tuple[str, str]] = Counter()
    func_total: Counter[tuple[str, str]] = Counter()
    line_self: Counter[tuple[str, str, int]] = Counter()
    kept = 0
    for stack in profile["samples"]:
        names = [frames[i]["name"] for i in stack]
        if within not in names:
            continue
        start = names.index(within)
        inner = [frames[i] for i in stack[start:]]  # root first, leaf last
        kept += 1
        leaf = inner[-1]
        func_self[(leaf["name"], leaf["file"])] += 1
        line_self[(leaf["name"], leaf["file"], leaf.get("line") or 0)] += 1
        for key in {(f["name"], f["file"]) for f in inner}:
            func_total[key] += 1
    n = max(kept, 1)
    functions = [
        HotSpot(name, _short_path(file), count / n, func_total[(name, file)] / n)
        for (name, file), count in func_self.most_common(30)
    ]
    lines = [
        HotSpot(
            name,
            f"{_short_path(file)}:{line}",
            count / n,
            source=linecache.getline(file, line).strip(),
        )
        for (name, file, line), count in line_self.most_common(30)
    ]
    inclusive = {name: count / n for (name, _file), count in func_total.items()}
    return PySpyProfile(kept, functions, lines, [], inclusive)


def _format_pyspy(profile: PySpyProfile, cfg: Config) -> str:
    out = [
        f"py-spy record --rate {cfg.pyspy_rate}: replay of the first {cfg.pyspy_events:,} events "
        f"(benchmarks.engine_replay profile-target), {profile.samples} samples inside replay_loop.",
        "Self time = samples whose innermost Python frame is the function (C calls such as",
        "orjson.loads or datetime.fromisoformat count to the Python line calling them).",
        "",
    ]
    return "\n".join(out + hotspot_lines(profile)) + "\n"


def hotspot_lines(profile: PySpyProfile) -> list[str]:
    """The top functions and lines of a py-spy summary, as text lines."""
    return [
        "Top 30 functions by self time",
        f"{'self%':>6} {'total%':>7}  function (file)",
        *(
            f"{h.self_share:6.1%} {h.total_share:7.1%}  {h.name} ({h.where})"
            for h in profile.functions
        ),
        "",
        "Top 30 lines by self time",
        f"{'self%':>6}  line  source",
        *(f"{h.self_share:6.1%}  {h.where} {h.name}: {h.source}" for h in profile.lines),
    ]


def run_cprofile(lines: Sequence[bytes], settings: EngineSettings) -> Path:
    prof = cProfile.Profile()
    prof.enable()
    replay_loop(lines, settings)
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.strip_dirs().sort_stats("tottime").print_stats(30)
    path = PROFILE_DIR / "engine-cprofile-top.txt"
    header = (
        f"cProfile of replay_loop over the first {len(lines):,} events, top 30 by self time "
        "(tottime).\ncProfile inflates per-call overhead: use it for call counts, py-spy for "
        "shares.\n"
    )
    body = "\n".join(line.rstrip() for line in buf.getvalue().splitlines())
    path.write_text(header + body.strip("\n") + "\n")
    return path


# ---------------------------------------------------------------------------- the benchmark
def _pin_one_cpu() -> str:
    try:
        allowed = sorted(os.sched_getaffinity(0))
        cpu = allowed[-1]
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return "not pinned"


def _rate(x: float) -> str:
    return f"{x / 1000:,.1f}k"


def _pct(sizes: list[int], q: float) -> int:
    ordered = sorted(sizes)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0


def run(cfg: Config, log: Log) -> str:
    """Run the engine benchmark; returns the Markdown body of its results section."""
    started = time.perf_counter()
    events_path, teams_used, events_in_file = ensure_events(cfg, log)
    lines = load_lines(events_path)
    n = len(lines)
    log(f"input: {n:,} lines of {events_path.relative_to(REPO_ROOT)} in memory")
    pinned = _pin_one_cpu()
    settings = EngineSettings()

    engine_t, decode_t, orjson_t = Timing("engine"), Timing("decode"), Timing("orjson")
    alerts_per_rep: list[int] = []
    rejected = 0
    engines: PartitionedEngines | None = None
    for rep in range(1, cfg.reps + 1):
        _timed(orjson_t, lambda: orjson_loop(lines))
        _timed(decode_t, lambda: decode_loop(lines, settings.max_event_bytes))
        engines = None
        engines, alerts, rejected = _timed(engine_t, lambda: replay_loop(lines, settings))
        alerts_per_rep.append(alerts)
        log(
            f"rep {rep}: engine {_rate(n / engine_t.seconds[-1])}/s, decode "
            f"{_rate(n / decode_t.seconds[-1])}/s, orjson {_rate(n / orjson_t.seconds[-1])}/s"
        )
    assert engines is not None
    n_teams = sum(len(e.teams) for e in engines.engines)
    n_users = sum(len(e.users) for e in engines.engines)
    valid = engines.events_valid
    invalid = engines.invalid_counts()

    log("memory: records, tracemalloc rebuild, synthetic 1M users / 100k teams ...")
    records = StateRecords.of(engines)
    del engines
    gc.collect()
    live = live_state_memory(records, settings)
    synth = run_synthetic_child(records, cfg)
    team_sizes, user_sizes = records.team_sizes(), records.user_sizes()

    profile: PySpyProfile | None = None
    cprofile_path: Path | None = None
    if cfg.profile:
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        log(
            f"profile: py-spy over {cfg.pyspy_events:,} events, cProfile over {cfg.cprofile_events:,} ..."
        )
        profile = run_pyspy(events_path, cfg, log)
        cprofile_path = run_cprofile(lines[: cfg.cprofile_events], settings)

    # ------------------------------------------------------------------ report
    med = {t.name: statistics.median(t.rates(n)) for t in (engine_t, decode_t, orjson_t)}
    us = {k: 1e6 / v for k, v in med.items()}
    target_met = med["engine"] >= TARGET_EVENTS_PER_S
    engine_cpu = statistics.median(engine_t.cpu_rates(n))
    rows = []
    for t, label in (
        (engine_t, f"engine: `PartitionedEngines.process_lines` ({BATCH_LINES:,}-line batches)"),
        (decode_t, "decode only: `detector.events.decode_fields`"),
        (orjson_t, "parse only: `orjson.loads`"),
    ):
        rates = t.rates(n)
        rows.append(
            f"| {label} | **{_rate(statistics.median(rates))}** | {_rate(min(rates))} | "
            f"{_rate(max(rates))} | {1e6 / statistics.median(rates):.2f} | "
            f"{_rate(statistics.median(t.cpu_rates(n)))} | "
            f"{statistics.median(t.gc_seconds):.2f} |"
        )
    user_a, team_a = live["user_bytes_with_indexes"], live["team_bytes"]
    user_s, team_s = synth["rss_user_bytes"], synth["rss_team_bytes"]
    worst_user = max(user_a, user_s, synth["traced_user_bytes"])
    worst_team = max(team_a, team_s, synth["traced_team_bytes"])

    def ok(met: bool) -> str:
        return "met" if met else "**NOT met**"

    body = [
        f"- Input: {n:,} events (`simulate(SimulationConfig(teams={teams_used}, days={cfg.days}, "
        f"seed={cfg.seed}))`, {events_in_file:,} in file), {valid:,} valid, rejected "
        f"{rejected:,} ({', '.join(f'{k}: {v}' for k, v in sorted(invalid.items())) or 'none'}); "
        f"after replay {n_teams:,} teams and {n_users:,} users tracked, "
        f"{statistics.median(alerts_per_rep):,.0f} alerts per replay"
        + ("" if len(set(alerts_per_rep)) == 1 else f" (**differs across reps: {alerts_per_rep}**)")
        + ".",
        f"- One core ({pinned}), {cfg.reps} repetitions, fresh engines each, lines pre-read; "
        "stages interleaved per repetition.",
        "",
        "| measure (events/s) | median | min | max | µs/event | per CPU s (median) | GC s |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"- Engine / decode ceiling: {med['engine'] / med['decode']:.0%}; engine / orjson "
        f"ceiling: {med['engine'] / med['orjson']:.0%}. Per event: {us['orjson']:.2f} µs JSON "
        f"parse + {us['decode'] - us['orjson']:.2f} µs validation + "
        f"{us['engine'] - us['decode']:.2f} µs engine (routing, watermark, buckets, sweeps, "
        "drain).",
        f"- Target ≥ {TARGET_EVENTS_PER_S // 1000}k events/s on one core: {ok(target_met)} "
        f"({med['engine'] / TARGET_EVENTS_PER_S:.0%} of target, wall clock); per CPU second "
        f"{_rate(engine_cpu)} ({engine_cpu / TARGET_EVENTS_PER_S:.0%}): the gap between the two "
        "is time the pinned core spent on other processes.",
        "",
        "Memory per tracked entity (budget ≤ 1 KB per user, ≤ 4 KB per team):",
        "",
        "| method | per user | per team |",
        "|---|---:|---:|",
        f"| (a) tracemalloc, rebuild of the replayed state ({live['users']:,} users, "
        f"{live['teams']:,} teams) from its records; user incl. dict entry + key, "
        f"and incl. engine indexes (wheel, groups) | {live['user_bytes']:,.0f} B; "
        f"{user_a:,.0f} B with indexes | {team_a:,.0f} B |",
        f"| (a) synthetic {synth['users']:,.0f} users + {synth['teams']:,.0f} teams from those "
        "records, ids `u-0000000`/`t-0000000`, with dicts, keys, wheel, groups: RSS "
        f"(/proc/self/statm) | {user_s:,.0f} B | {team_s:,.0f} B |",
        f"| (a) same synthetic build, tracemalloc | {synth['traced_user_bytes']:,.0f} B | "
        f"{synth['traced_team_bytes']:,.0f} B |",
        f"| (b) encoded changelog record, `encode_user`/`encode_team`: mean (p95, max) | "
        f"{statistics.mean(user_sizes):,.0f} B ({_pct(user_sizes, 0.95)}, {max(user_sizes)}) | "
        f"{statistics.mean(team_sizes):,.0f} B ({_pct(team_sizes, 0.95)}, {max(team_sizes)}) |",
        "",
        f"- Budgets: users {ok(worst_user <= TARGET_USER_BYTES)} (worst {worst_user:,.0f} B), "
        f"teams {ok(worst_team <= TARGET_TEAM_BYTES)} (worst {worst_team:,.0f} B). "
        f"Object sizes (sys.getsizeof): UserState {synth['sizeof_user_object']:.0f} B, "
        f"TeamState {synth['sizeof_team_object']:.0f} B + ring {synth['sizeof_team_ring']:.0f} B "
        f"decoded ({synth['sizeof_new_team_ring']:.0f} B when built by the engine), "
        f"user key {synth['sizeof_user_key']:.0f} B, users dict {synth['users_dict_per_entry']:.0f} "
        "B per entry.",
    ]
    if profile is not None:
        body += [
            "",
            f"Hot path (py-spy, self time, {profile.samples:,} samples over the first "
            f"{cfg.pyspy_events:,} events; total = inclusive):",
            "",
            "| self | total | function |",
            "|---:|---:|---|",
            *[
                f"| {h.self_share:.1%} | {h.total_share:.1%} | `{h.name}` ({h.where}) |"
                for h in profile.functions[:12]
            ],
            "",
            "Inclusive shares: "
            + ", ".join(
                f"`{name}` {profile.inclusive.get(name, 0.0):.1%}"
                for name in (
                    "decode_fields",
                    "_well_formed",
                    "PartitionEngine.process",
                    "PartitionEngine._sweep",
                    "PartitionEngine._score_team",
                    "PartitionEngine._check_users",
                )
            )
            + ".",
            "",
            "Hottest lines: "
            + "; ".join(
                f"`{h.where}` {h.self_share:.1%} (`{h.source[:60]}`)" for h in profile.lines[:6]
            )
            + ".",
        ]
    files = ([*profile.files] if profile else []) + ([cprofile_path] if cprofile_path else [])
    if files:
        for path in files:
            if path.stat().st_size > MAX_PROFILE_FILE_BYTES:
                log(f"warning: {path.name} is {path.stat().st_size:,} bytes (> 500 KB)")
        body += [
            "",
            "Profiles (latest run): "
            + ", ".join(f"`{p.relative_to(REPO_ROOT)}`" for p in files)
            + ".",
        ]
    body += ["", f"Benchmark wall time: {time.perf_counter() - started:.0f} s."]
    return "\n".join(body) + "\n"


# ---------------------------------------------------------------------------- child entries
def _main(argv: list[str]) -> int:
    if argv[:1] == ["profile-target"] and len(argv) == 3:
        lines = load_lines(Path(argv[1]), int(argv[2]))
        replay_loop(lines, EngineSettings())
        return 0
    if argv[:1] == ["memory-synthetic"] and len(argv) == 4:
        result = synthetic_memory(Path(argv[1]), int(argv[2]), int(argv[3]))
        print(json.dumps(result))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
