"""Observability on the real broker and a real Prometheus.

Two workers process simulated events (with bad input); the Prometheus started by
deploy/run-integration.sh scrapes both (file_sd: this test writes the targets) and evaluates
the project's rules. Then:

* every expression of the Grafana dashboard and of the rules (each operand of their
  comparisons) returns data from Prometheus's HTTP API;
* ``promtool check metrics`` finds no problem in either worker's exposition;
* the health API answers for every team and every user on *both* workers (so half of the
  answers are routed to the owner) with exactly the view replay computes for the same input.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from detector import health_view
from detector.kafka_tools import produce_file
from detector.replay import read_lines, replay
from detector.router import PartitionedEngines
from detector.settings import Settings

from .conftest import _in_ci
from .test_worker import QUIET, Worker, make_events, wait_until, workers  # noqa: F401

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROM_ENV, TARGETS_ENV = "CHURN_TEST_PROM_URL", "CHURN_TEST_PROM_TARGETS"
RATE_INTERVAL = "1m"  # what $__rate_interval becomes: Prometheus scrapes every second here


# --------------------------------------------------------------------------- expressions


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/churn-detector.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def rule_expressions() -> list[str]:
    out = []
    for path in sorted((ROOT / "deploy/prometheus/rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(" ".join(rule["expr"].split()) for rule in group["rules"])
    return out


_SET_OP = re.compile(r"\s(and|or|unless)(\s+(on|ignoring)\s*\([^)]*\))?\s")
_COMPARISON = re.compile(r"\s(==|!=|>=|<=|>|<)(\s+bool)?\s")
_SCALAR = re.compile(r"^[\d\s.+*/()-]+$")


def _top_level(expr: str, pattern: re.Pattern[str]) -> list[str]:
    """``expr`` split at matches of ``pattern`` outside brackets and quotes.

    >>> _top_level('a{x!="y"} > 3 and on (i) f(b > 1) < 2', _SET_OP)
    ['a{x!="y"} > 3', 'f(b > 1) < 2']
    >>> _top_level('a{x!="y"} > 3', _COMPARISON)
    ['a{x!="y"}', '3']
    """
    depth, quote, cuts = 0, "", []
    masked = []
    for ch in expr:
        if quote:
            quote = "" if ch == quote else quote
            masked.append("_")
            continue
        if ch in ")]}":
            depth -= 1
        masked.append(ch if depth == 0 and ch not in "\"'" else "_")
        if ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
    flat = "".join(masked)
    start = 0
    for match in pattern.finditer(flat):
        cuts.append(expr[start : match.start()].strip())
        start = match.end()
    cuts.append(expr[start:].strip())
    return cuts


def operands(expr: str) -> list[str]:
    """The vector-valued parts of an alert or panel expression that must each return data.

    >>> operands("x > 3 * avg_over_time(x[7d]) and x >= 20")
    ['x', '3 * avg_over_time(x[7d])']
    """
    out: list[str] = []
    for part in _top_level(expr, _SET_OP):
        for side in _top_level(part, _COMPARISON):
            if not _SCALAR.match(side) and side not in out:
                out.append(side)
    return out


# --------------------------------------------------------------------------- Prometheus


def prometheus() -> tuple[str, Path]:
    url, targets = os.environ.get(PROM_ENV, ""), os.environ.get(TARGETS_ENV, "")
    if not url or not targets:
        message = f"no Prometheus for integration tests: {PROM_ENV}/{TARGETS_ENV} not set (run `make integration`)"
        if _in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return url.rstrip("/"), Path(targets)


def query(url: str, expr: str, at: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
    with urllib.request.urlopen(f"{url}/api/v1/query?{params}", timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", (expr, body)
    return list(body["data"]["result"]) if body["data"]["resultType"] == "vector" else [body]


def fetch(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except OSError:  # not listening (yet), or the connection dropped
        return 0, None


# --------------------------------------------------------------------------- the test


def own_state_dir(settings: Settings, path: Path) -> Settings:
    """The same worker settings with a state dir of its own (RocksDB locks its files)."""
    return dataclasses.replace(
        settings, service=dataclasses.replace(settings.service, state_dir=str(path))
    )


def replay_views(events: Path, settings: Settings) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Team and user views as replay computes them, and the count of valid events."""
    engines = PartitionedEngines(settings.engine)
    replay(read_lines(events), settings.engine, io.BytesIO(), io.BytesIO(), engines)
    teams, users = {}, {}
    for engine in engines.engines:
        for team in engine.teams.values():
            teams[team.team_id] = orjson.loads(orjson.dumps(health_view.team(team, engine)))
        for uid, user in engine.users.items():
            users[uid] = orjson.loads(orjson.dumps(health_view.user(uid, user, engine)))
    return teams, users, engines.events_valid


def test_metrics_rules_dashboard_and_health_api_on_two_workers(
    kafka_settings_factory,
    workers,  # noqa: F811 - the fixture imported from test_worker
    tmp_path,
):
    prom_url, targets_file = prometheus()
    settings = kafka_settings_factory(service=QUIET)
    events = tmp_path / "events.jsonl"
    expected = make_events(events, teams=16, days=70, seed=7, bad=True)
    teams, users, valid = replay_views(events, settings)
    states = Counter(v["state"] for v in teams.values())
    assert states["cooling"] + states["at_risk"] > 0, f"no team at risk to rank: {states}"

    pair: list[Worker] = [
        workers(own_state_dir(settings, tmp_path / name), name) for name in ("a", "b")
    ]
    targets_file.write_text(
        json.dumps(
            [
                {
                    "targets": [f"127.0.0.1:{w.port}" for w in pair],
                    "labels": {"job": "churn-detector"},
                }
            ]
        )
    )
    for worker in pair:
        worker.start()

    def settled() -> bool:
        """Both ready, and the ingest group (a consumer group of its own) shared out too."""
        if not all(fetch(f"http://127.0.0.1:{w.port}/readyz")[0] == 200 for w in pair):
            return False
        health = [fetch(f"http://127.0.0.1:{w.port}/healthz")[1] or {} for w in pair]
        ingest = [p for h in health for p in h.get("ingest_assigned", [])]
        return all(h.get("ingest_assigned") for h in health) and sorted(ingest) == list(
            range(settings.engine.partitions)
        )

    wait_until(settled, 120, "both workers ready and both consumer groups settled")
    # events only once the groups are settled: a rebalance in the middle of exactly-once
    # processing is the fault tests' subject (tests/integration/test_worker.py), not this test's
    produce_file(events, settings, progress=False)

    def all_applied() -> bool:
        return all(
            (fetch(f"http://127.0.0.1:{pair[0].port}/teams/{t}")[1] or {}).get("events_total") == n
            for t, n in expected.items()
        )

    wait_until(all_applied, 180, "every event applied (asked through worker a)", every_s=1)

    # ---- Prometheus has scraped the final state of both workers and evaluated the rules on it
    def scraped() -> float | None:
        now = time.time() - 1  # an evaluation time Prometheus has certainly passed
        values = [
            query(prom_url, expr, now)
            for expr in (
                "sum(churn_detector_events_processed_total)",
                'sum(up{job="churn-detector"})',
                "sum(job:churn_detector_consumer_lag:sum)",
            )
        ]
        if not all(values):
            return None
        processed, up = (float(v[0]["value"][1]) for v in values[:2])
        return now if processed == valid and up == 2 else None

    wait_until(scraped, 60, "Prometheus to scrape every processed event", every_s=1)
    expressions = [
        expr.replace("$__rate_interval", RATE_INTERVAL)
        for expr in dashboard_expressions() + rule_expressions()
    ]
    parts = [part for expr in expressions for part in operands(expr)]

    def empty_parts() -> list[str]:
        """Operands without data now. rate() and increase() need two samples of a series,
        and the recording rules a later evaluation, so a fast run waits a scrape or two."""
        at = time.time() - 1
        for expr in expressions:
            query(prom_url, expr, at)  # the whole expression is valid PromQL
        return [
            part
            for part in parts
            # NaN: a quantile of nothing observed
            if not [s["value"][1] for s in query(prom_url, part, at) if s["value"][1] != "NaN"]
        ]

    empty = empty_parts()
    deadline = time.monotonic() + 30
    while empty and time.monotonic() < deadline:
        time.sleep(1)  # one scrape and rule evaluation interval
        empty = empty_parts()
    assert not empty, f"{len(empty)} of {len(parts)} expressions returned no data: {empty}"

    # ---- the exposition passes promtool's lint
    for worker in pair:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=10) as r:
            exposition = r.read()
        lint = subprocess.run(
            ["promtool", "check", "metrics"], input=exposition, capture_output=True, check=False
        )
        assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), (
            lint.stdout.decode() + lint.stderr.decode()
        )

    # ---- the health API: every team and user, from both workers, equals replay's view
    for worker in pair:
        base = f"http://127.0.0.1:{worker.port}"
        for team_id, view in teams.items():
            status, body = fetch(f"{base}/teams/{team_id}")
            assert status == 200 and body == view, (worker.port, team_id, status, body, view)
        for user_id, view in users.items():
            status, body = fetch(f"{base}/users/{user_id}")
            assert status == 200 and body == view, (worker.port, user_id, status, body, view)
        status, body = fetch(f"{base}/teams/no-such-team")
        assert status == 404 and body["error"] == "not_found"
        status, body = fetch(f"{base}/users/no-such-user")
        assert status == 404 and body["error"] == "not_found"
        status, body = fetch(f"{base}/teams?limit=5")
        at_risk = {t for t, v in teams.items() if v["state"] in ("cooling", "at_risk")}
        assert status == 200 and [t["rank"] for t in body["teams"]] == list(
            range(1, min(5, len(at_risk)) + 1)
        )
        assert {t["team_id"] for t in body["teams"]} <= at_risk
