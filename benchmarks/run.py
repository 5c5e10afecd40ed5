"""Run the benchmarks and append their results to ``benchmarks/RESULTS.md``.

    .venv/bin/python -m benchmarks.run            # all benchmarks (``make bench``)
    .venv/bin/python -m benchmarks.run engine     # the pure-engine replay benchmark
    .venv/bin/python -m benchmarks.run broker     # ceiling / Faust peer / worker via Kafka
    .venv/bin/python -m benchmarks.run soak       # >= 10 min on a local broker (not in `all`)
    .venv/bin/python -m benchmarks.run replay10m  # `churn-detector replay` of 10M events (not in `all`)
    .venv/bin/python -m benchmarks.run scale      # 1M users / 100k teams through one worker:
                                                  # memory, recovery after kill -9 (not in `all`)

The same summary that is appended to RESULTS.md is printed to stdout; progress goes to
stderr.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from . import broker_bench, broker_scale, dedup_cost, engine_replay, replay_10m, soak

RESULTS = engine_replay.BENCH_DIR / "RESULTS.md"
REPO_ROOT = engine_replay.REPO_ROOT

_HEADER = """# Benchmark results

One section per run, newest last, appended by `make bench` / `python -m benchmarks.run`.
Numbers from different machines or loads are not comparable: check the machine line.
"""


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=REPO_ROOT, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return ""
    return done.stdout.strip()


def machine_facts() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    head = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = (
        " + uncommitted changes in detector/" if _git("status", "--porcelain", "detector") else ""
    )
    return (
        f"- Machine: nproc {os.cpu_count()} ({len(os.sched_getaffinity(0))} usable), "
        f"{_cpu_model()}, {platform.python_implementation()} {platform.python_version()}, "
        f"load average at start {load}; code at {head}{dirty}."
    )


def _command(argv: list[str]) -> str:
    exe = Path(sys.executable)
    try:
        shown = str(exe.relative_to(Path.cwd()))
    except ValueError:
        shown = str(exe)
    return shlex.join([shown, "-m", "benchmarks.run", *argv])


def _engine(args: argparse.Namespace) -> str:
    cfg = engine_replay.Config(
        teams=args.teams,
        reps=args.reps,
        profile=not args.no_profile,
        synth_users=args.synth_users,
        synth_teams=args.synth_users // 10,
    )
    return engine_replay.run(cfg, _log)


def _broker(args: argparse.Namespace) -> str:
    cfg = broker_bench.Config(
        events=engine_replay.Config(teams=args.teams),
        ceiling_reps=args.reps,
        worker_reps=args.reps,
        peer_seconds=args.peer_seconds,
        worker_timeout_s=args.worker_timeout,
        pin=not args.no_pin,
        profile_seconds=0.0 if args.no_profile else 30.0,
    )
    return broker_bench.run(cfg, _log)


def _dedup(args: argparse.Namespace) -> str:
    return dedup_cost.run(500_000, max(args.reps, 5), _log)


def _soak(args: argparse.Namespace) -> str:
    cfg = soak.Config(
        minutes=args.soak_minutes,
        load=args.load,
        rate=args.rate,
        backlog=args.backlog,
        snapshot=not args.no_snapshot,
    )
    return soak.run(cfg, _log)


def _replay10m(args: argparse.Namespace) -> str:
    cfg = replay_10m.Config(jobs=args.jobs, check=not args.no_check, profile=not args.no_profile)
    return replay_10m.run(cfg, _log)


def _scale(args: argparse.Namespace) -> str:
    users = args.scale_users
    cfg = broker_scale.Config(
        users=users, teams=users // 10, pin=not args.no_pin, snapshot=not args.no_snapshot
    )
    return broker_scale.run(cfg, _log)


BENCHMARKS: dict[str, tuple[str, Callable[[argparse.Namespace], str]]] = {
    "engine": ("Pure engine replay (no Kafka)", _engine),
    "dedup": ("Cost of duplicate detection (engine, no Kafka)", _dedup),
    "broker": ("Ceiling vs textbook Faust peer vs churn-detector worker, real broker", _broker),
    "soak": ("Soak: worker on a local broker at a fraction of its maximum rate", _soak),
    "replay10m": ("`churn-detector replay` of 10M events, end to end", _replay10m),
    "scale": ("Worker at 1M users / 100k teams: memory, recovery after kill -9", _scale),
}
#: run when no name is given (`make bench`); the soak and scale runs take over ten minutes,
#: replay10m a few minutes and 1.7 GB of disk: ask for them
DEFAULT = ["engine", "dedup", "broker"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    ap.add_argument(
        "names", nargs="*", help=f"benchmarks to run: {list(BENCHMARKS)} (default: {DEFAULT})"
    )
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (median reported)")
    ap.add_argument(
        "--teams", type=int, default=300, help="simulated teams (raised until ≥ 2M events)"
    )
    ap.add_argument(
        "--synth-users", type=int, default=1_000_000, help="synthetic users (teams: a tenth)"
    )
    ap.add_argument("--no-profile", action="store_true", help="skip py-spy and cProfile")
    ap.add_argument(
        "--peer-seconds", type=float, default=30.0, help="broker: textbook peer run time"
    )
    ap.add_argument(
        "--worker-timeout", type=float, default=600.0, help="broker: give up on the worker after"
    )
    ap.add_argument("--no-pin", action="store_true", help="broker: do not pin processes to CPUs")
    ap.add_argument("--soak-minutes", type=float, default=10.0, help="soak: minutes at load")
    ap.add_argument("--load", type=float, default=0.5, help="soak: share of the maximum rate")
    ap.add_argument("--rate", type=float, help="soak: events/s (skips measuring the maximum)")
    ap.add_argument("--backlog", type=int, default=300_000, help="soak: events to measure max")
    ap.add_argument("--jobs", type=int, help="replay10m: --jobs of the replay (default: its own)")
    ap.add_argument(
        "--no-check", action="store_true", help="replay10m: skip the one-process reference run"
    )
    ap.add_argument(
        "--scale-users", type=int, default=1_000_000, help="scale: users (teams: a tenth)"
    )
    ap.add_argument(
        "--no-snapshot", action="store_true", help="scale, soak: the worker keeps no local snapshot"
    )
    ap.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; available: {list(BENCHMARKS)}")
    if args.reps < 3:
        _log("note: fewer than 3 repetitions; the median is less robust")
    names = args.names or DEFAULT

    facts = machine_facts()  # load average before the benchmark loads the machine
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    sections = []
    cpus = os.sched_getaffinity(0)
    for name in names:
        title, fn = BENCHMARKS[name]
        # each benchmark starts on every usable CPU: the engine's pins this process to one,
        # and the broker's would then find a single CPU and pin nothing
        os.sched_setaffinity(0, cpus)
        body = fn(args)
        sections.append(
            f"## {stamp} — {name}: {title}\n\n- Command: `{_command(argv)}`\n{facts}\n{body}"
        )
    text = "\n".join(sections)
    print(text, end="")
    if not args.no_record:
        existing = RESULTS.read_text() if RESULTS.exists() else _HEADER
        RESULTS.write_text(existing.rstrip("\n") + "\n\n" + text)
        _log(f"appended to {RESULTS.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
