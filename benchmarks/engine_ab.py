"""Engine throughput A/B: the working tree's engine against a git revision's, same events.

    .venv/bin/python -m benchmarks.engine_ab --base 49e163e [--events ev.jsonl] [--reps 3]

Each run is a fresh process pinned to one CPU that reads the event lines into memory, then
replays them through ``PartitionedEngines(EngineSettings()).process_raw`` (alerts drained
after every line, as replay does) and reports events per CPU-second (``time.process_time``):
on a shared, loaded machine wall-clock rates swing far more than the difference measured.
Base and working tree alternate; medians and their ratio are printed. Without ``--events``
the default simulation (300 teams x 180 days, seed 7) is written to a temporary file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _child(root: str, events: str, cpu: int) -> None:
    sys.path.insert(0, root)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    from detector.router import PartitionedEngines
    from detector.settings import EngineSettings

    with open(events, "rb") as fh:
        lines = [line.rstrip(b"\n") for line in fh if line.strip()]
    engines = PartitionedEngines(EngineSettings())
    process_raw = engines.process_raw
    started = time.process_time()
    for raw in lines:
        process_raw(raw)
        for engine in engines.engines:
            if engine.outbox:
                engine.drain_alerts()
    print(len(lines) / (time.process_time() - started))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--events", type=Path, help="events JSONL (default: simulate seed 7)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base_root = Path(tmp) / "base"
        base_root.mkdir()
        archive = subprocess.run(
            ["git", "archive", args.base, "detector"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
        )
        subprocess.run(["tar", "-x", "-C", str(base_root)], input=archive.stdout, check=True)
        events = args.events
        if events is None:
            from detector.simulator import SimulationConfig, simulate, write_jsonl

            events = Path(tmp) / "events.jsonl"
            write_jsonl(events, simulate(SimulationConfig()).events())
        roots = {"base": str(base_root), "tree": str(REPO_ROOT)}
        rates: dict[str, list[float]] = {"base": [], "tree": []}
        for rep in range(args.reps):
            for name, root in roots.items():
                done = subprocess.run(
                    [sys.executable, __file__, "--child", root, str(events), str(args.cpu)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                rates[name].append(float(done.stdout))
                print(f"{name} rep {rep + 1}: {rates[name][-1]:,.0f} events/CPU-s", flush=True)
    base, tree = statistics.median(rates["base"]), statistics.median(rates["tree"])
    print(
        f"median base {base:,.0f}, working tree {tree:,.0f} events/CPU-s; ratio {tree / base:.3f}"
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        sys.exit(0)
    sys.exit(main())
