"""Quick end-to-end worker throughput on a real broker (one worker process, state and scoring).

Simulates an event file (cached under benchmarks/data), sends it to a fresh events topic
with ``produce``, then starts ``churn-detector worker`` and times it from process start
(and from the first applied event) until ``/healthz`` reports every event applied. On a
shared machine the worker's own CPU time (all threads) is reported too: events per CPU
second is what one worker process does with a core to itself.

    BOOTSTRAP=$(deploy/kafka-local.sh start)
    .venv/bin/python -m benchmarks.worker_quick --bootstrap $BOOTSTRAP --teams 300 --days 120
    deploy/kafka-local.sh stop
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from detector.kafka_tools import produce_file
from detector.settings import build_settings
from detector.simulator import SimulationConfig, simulate, write_jsonl

from .broker_procs import cpu_seconds, rss_bytes

DATA_DIR = Path(__file__).resolve().parent / "data"


def events_file(teams: int, days: int, seed: int) -> tuple[Path, int]:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    path = DATA_DIR / f"worker-t{teams}-d{days}-s{seed}.jsonl"
    count_file = path.with_suffix(".count")
    if not (path.exists() and count_file.exists()):
        count = write_jsonl(
            path, simulate(SimulationConfig(teams=teams, days=days, seed=seed)).events()
        )
        count_file.write_text(str(count))
    return path, int(count_file.read_text())


def health(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return dict(json.load(resp))
    except OSError:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--teams", type=int, default=300)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--port", type=int, default=0, help="web port (default: a free one)")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--profile", help="write a cProfile of the worker's main thread here")
    parser.add_argument(
        "--parse-all",
        action="store_true",
        help="leave kafka.events_keyed_by_team off: ingest parses every event to route it "
        "(the topic is keyed by team either way)",
    )
    args = parser.parse_args()

    path, total = events_file(args.teams, args.days, args.seed)
    if not args.port:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            args.port = int(sock.getsockname()[1])
    run = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix="worker-quick-"))
    settings = build_settings(
        environ={},
        overrides={
            "kafka": {
                "brokers": args.bootstrap,
                "events_topic": f"bench-events-{run}",
                "dlq_topic": f"bench-dlq-{run}",
                "alerts_topic": f"bench-alerts-{run}",
                "events_keyed_by_team": not args.parse_all,
            },
            "service": {
                "app_id": f"bench-{run}",
                "state_dir": str(workdir / "state"),
                "web_port": args.port,
                "idle_sweep_s": 3600.0,
                "log_level": "WARNING",
            },
        },
    )
    started = time.perf_counter()
    sent = produce_file(path, settings, progress=False)
    produce_s = time.perf_counter() - started
    config = workdir / "worker.json"
    config.write_text(json.dumps(dataclasses.asdict(settings)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    log = (workdir / "worker.log").open("wb")
    cmd = [sys.executable, "-m", "detector.cli", "worker", "--config", str(config)]
    if args.profile:
        cmd[1:1] = ["-m", "cProfile", "-o", args.profile]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    first: float | None = None
    cpu_first = cpu_done = rss_done = 0.0
    applied = 0
    try:
        while time.perf_counter() - t0 < args.timeout:
            if proc.poll() is not None:
                raise SystemExit(f"worker exited {proc.returncode}; log in {workdir}")
            h = health(args.port) or {}
            applied = int(h.get("applied_since_start", 0))
            if applied and first is None:
                first, cpu_first = time.perf_counter(), cpu_seconds(proc.pid)
            if applied >= sent:
                cpu_done = cpu_seconds(proc.pid)
                rss_done = round(rss_bytes(proc.pid) / 2**20, 1)
                break
            time.sleep(0.2)
        done = time.perf_counter()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    if applied < sent:
        raise SystemExit(f"only {applied:,} of {sent:,} applied after {args.timeout:.0f}s")
    assert first is not None
    print(
        json.dumps(
            {
                "events": sent,
                "file_events": total,
                "produce_s": round(produce_s, 2),
                "start_to_done_s": round(done - t0, 2),
                "first_to_done_s": round(done - first, 2),
                "events_per_s_from_start": round(sent / (done - t0)),
                "events_per_s_from_first": round(sent / (done - first)),
                "worker_cpu_s_from_first": round(cpu_done - cpu_first, 2),
                "events_per_worker_cpu_s": round(sent / (cpu_done - cpu_first)),
                "worker_rss_mb_at_done": rss_done,
                "load_average_1m": os.getloadavg()[0],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
