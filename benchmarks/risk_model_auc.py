"""AUC of the online risk model on held-out teams, next to every single hand rule.

    .venv/bin/python -m benchmarks.risk_model_auc --seed 101 --seed 202 --seed 303

Simulates each seed (default settings: 300 teams x 180 days), replays it through the engines
exactly as ``churn-detector replay`` does, and holds a quarter of the teams out (by a hash of
the team id): their delayed labels are never learned, only scored by the model as it is at that
moment (prequential). Each held-out label is a weekly feature snapshot: positive if the team
cancelled 7-28 days later, negative if it was still there 28 days later. A hand rule's score is
its signal strength in the snapshot; ``hand_risk`` is the engine's noisy-or of all of them.
Prints one markdown table per seed.
"""

from __future__ import annotations

import argparse
import sys
import zlib

import orjson

from detector.risk_model import FEATURES, roc_auc
from detector.router import PartitionedEngines
from detector.settings import EngineSettings
from detector.simulator import SimulationConfig, simulate

HOLDOUT_SHARE = 4  # one team in four is held out


def held_out(team_id: str) -> bool:
    return zlib.crc32(team_id.encode()) % HOLDOUT_SHARE == 0


def evaluate_seed(seed: int, teams: int, days: int) -> str:
    settings = EngineSettings()
    engines = PartitionedEngines(settings)
    for engine in engines.engines:
        engine.risk.holdout = held_out
    dumps = orjson.dumps
    for event in simulate(SimulationConfig(teams=teams, days=days, seed=seed)).events():
        engines.process_raw(dumps(event))
        engines.drain_alerts()
    rows = [row for engine in engines.engines for row in engine.risk.held_out]
    labels = [y for y, _, _ in rows]
    learned = sum(engine.risk.positives for engine in engines.engines)
    scores: dict[str, list[float]] = {"online risk model": [p for _, p, _ in rows]}
    for name in FEATURES:
        scores[name] = [x.get(name, 0.0) for _, _, x in rows]
    lines = [
        f"seed {seed}: {teams} teams x {days} days; held-out labels: {sum(labels)} positive, "
        f"{len(labels) - sum(labels)} negative; positives learned from the other teams: {learned}",
        "",
        "| score | AUC on held-out teams |",
        "|---|---:|",
    ]
    for name, values in scores.items():
        auc = roc_auc(labels, values)
        lines.append(f"| {name} | {'—' if auc is None else f'{auc:.3f}'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, action="append", help="simulation seed (repeatable)")
    parser.add_argument("--teams", type=int, default=300)
    parser.add_argument("--days", type=int, default=180)
    args = parser.parse_args(argv)
    for seed in args.seed or [101]:
        print(evaluate_seed(seed, args.teams, args.days), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
