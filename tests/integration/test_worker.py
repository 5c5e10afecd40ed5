"""The streaming service on the real broker: replay equality, DLQ, kill -9, failover, live silence."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from detector.evaluation import parse_time_ms
from detector.kafka_tools import produce_file
from detector.partitioning import partition_for
from detector.replay import replay_file
from detector.settings import Settings
from detector.simulator import SimulationConfig, simulate
from detector.timemodel import iso_ms
from tests.segment_calls import segment_without_teams

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.5
) -> Any:
    """Poll ``condition`` until it returns something truthy, or fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(every_s)
    pytest.fail(
        f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r}; {condition!r})"
    )


class Worker:
    """``churn-detector worker`` as a real subprocess with its own config file."""

    #: what ``python -m`` runs (tests.poison: the same CLI with an injected engine fault)
    module = "detector.cli"

    def __init__(self, settings: Settings, workdir: Path, name: str) -> None:
        self.port = free_port()
        service = dataclasses.replace(settings.service, web_port=self.port)
        self.settings = dataclasses.replace(settings, service=service)
        self.config = workdir / f"{name}.json"
        self.config.write_text(json.dumps(dataclasses.asdict(self.settings)))
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, "worker", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        wait_until(self.health, 90, f"worker on port {self.port} to answer /healthz")
        return self

    def health(self) -> dict[str, Any] | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(
                f"worker exited with {self.proc.returncode}; log:\n{self.log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as resp:
                return dict(json.load(resp))
        except (OSError, urllib.error.URLError):
            return None

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                return dict(json.load(resp))
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 503):  # 503: partition not assigned or restored yet
                return None
            raise

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


@pytest.fixture
def workers(tmp_path: Path):
    started: list[Worker] = []

    def make(settings: Settings, name: str = "worker") -> Worker:
        worker = Worker(settings, tmp_path, f"{name}-{len(started)}")
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.kill()


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30) -> list[dict[str, Any]]:
    """All committed records of a topic, read to its current end."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        partitions = wait_until(
            lambda: consumer.partitions_for_topic(topic), timeout_s, f"topic {topic}"
        )
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                pytest.fail(f"could not read {topic} to its end")
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(orjson.loads(r.value) for r in records)
        return out
    finally:
        consumer.close()


def make_events(path: Path, teams: int, days: int, seed: int, bad: bool = False) -> dict[str, int]:
    """Simulated events (plus, optionally, bad input); returns expected event counts per team."""
    events = list(simulate(SimulationConfig(teams=teams, days=days, seed=seed)).events())
    lines = [orjson.dumps(e) for e in events]
    if bad:
        late = dict(events[len(events) // 10], event_id="late-copy")
        lines[len(lines) * 9 // 10 : len(lines) * 9 // 10] = [
            b'{"event_id": "broken", ',
            orjson.dumps(
                {
                    "event_id": "x1",
                    "type": "feature.used",
                    "timestamp": "soon",
                    "user_id": "u",
                    "team_id": events[0]["team_id"],
                }
            ),
            orjson.dumps({**events[0], "event_id": "big", "properties": {"blob": "x" * 70_000}}),
            orjson.dumps(late),
        ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return Counter(e["team_id"] for e in events)


def replay_expectation(events: Path, settings: Settings, tmp: Path) -> tuple[set[str], list[str]]:
    replay_file(
        events,
        tmp / "replay-alerts.jsonl",
        tmp / "replay-dlq.jsonl",
        settings.engine,
        show_progress=False,
    )
    alert_ids = [
        orjson.loads(line)["id"] for line in (tmp / "replay-alerts.jsonl").read_bytes().splitlines()
    ]
    reasons = [
        orjson.loads(line)["reason"]
        for line in (tmp / "replay-dlq.jsonl").read_bytes().splitlines()
    ]
    assert len(alert_ids) == len(set(alert_ids))
    return set(alert_ids), sorted(reasons)


class AllTeamsComplete:
    """Condition: every team's event count, as the workers report it, equals what was sent."""

    def __init__(self, worker_list: list[Worker], expected: dict[str, int]) -> None:
        self.workers, self.expected = worker_list, expected
        self.missing: dict[str, Any] = {}

    def __call__(self) -> bool:
        self.missing = {}
        for team_id, count in self.expected.items():
            views = [w.get(f"/teams/{team_id}") for w in self.workers]
            totals = [v["events_total"] for v in views if v is not None]
            if totals != [count]:
                self.missing[team_id] = (count, totals)
        return not self.missing

    def __repr__(self) -> str:
        health = [w.health() for w in self.workers if w.proc and w.proc.poll() is None]
        return f"teams not complete (expected, seen): {self.missing}; health: {health}"


def committed_alert_ids(settings: Settings, expected: set[str], timeout_s: float = 60) -> list[str]:
    """Alert ids on the topic once the expected ones are committed (state commits every second)."""
    seen: list[str] = []

    def caught_up() -> bool:
        seen[:] = [a["id"] for a in read_topic(settings.kafka.brokers, settings.kafka.alerts_topic)]
        return set(seen) >= expected

    wait_until(caught_up, timeout_s, "the expected alerts to be committed", every_s=1)
    return seen


def all_teams_complete(worker_list: list[Worker], expected: dict[str, int]) -> AllTeamsComplete:
    return AllTeamsComplete(worker_list, expected)


QUIET = {"idle_sweep_s": 3600.0}  # no idle ticks: results must depend on the events only


def test_streamed_file_gives_the_replay_alerts_and_bad_input_lands_in_the_dlq(
    kafka_settings_factory, workers, tmp_path
):
    settings = kafka_settings_factory(service=QUIET)
    events = tmp_path / "events.jsonl"
    expected = make_events(events, teams=14, days=70, seed=41, bad=True)
    alert_ids, dlq_reasons = replay_expectation(events, settings, tmp_path)
    assert {"malformed_json", "invalid_timestamp", "oversized", "late"} <= set(dlq_reasons)

    sent = produce_file(events, settings, progress=False)
    worker = workers(settings).start()
    wait_until(all_teams_complete([worker], expected), 180, "every event applied")
    wait_until(
        lambda: (
            len(read_topic(settings.kafka.brokers, settings.kafka.dlq_topic)) >= len(dlq_reasons)
        ),
        60,
        "dead letters",
    )

    streamed = committed_alert_ids(settings, alert_ids)
    assert len(streamed) == len(set(streamed)), "no alert published twice"
    assert set(streamed) == alert_ids
    dead = read_topic(settings.kafka.brokers, settings.kafka.dlq_topic)
    assert sorted(d["reason"] for d in dead) == dlq_reasons
    assert all("offset" in d and ("raw" in d or "raw_base64" in d) for d in dead)
    assert sent == sum(expected.values()) + 4


def test_a_team_keyed_source_is_validated_by_the_engine_and_a_wrong_key_is_dead_lettered(
    kafka_settings_factory, workers, tmp_path
):
    settings = kafka_settings_factory(service=QUIET, kafka={"events_keyed_by_team": True})
    events = tmp_path / "events.jsonl"
    expected = make_events(events, teams=10, days=60, seed=47, bad=True)
    alert_ids, dlq_reasons = replay_expectation(events, settings, tmp_path)
    first = orjson.loads(events.read_bytes().splitlines()[0])
    team, partitions = first["team_id"], settings.engine.partitions
    other = next(
        t for t in expected if partition_for(t, partitions) != partition_for(team, partitions)
    )

    produce_file(events, settings, progress=False)  # keyed by team; bad input unkeyed
    producer = KafkaProducer(bootstrap_servers=[settings.kafka.brokers], acks="all")
    keyed_bad = {**first, "event_id": "keyed-bad", "timestamp": "soon"}
    moved = {**first, "event_id": "moved"}  # valid, but keyed by a team of another partition
    for key, event in ((team, keyed_bad), (other, moved)):
        producer.send(settings.kafka.events_topic, orjson.dumps(event), key=key.encode())
    producer.flush()
    producer.close()
    worker = workers(settings).start()
    wait_until(all_teams_complete([worker], expected), 180, "every event applied")
    wait_until(
        lambda: (
            len(read_topic(settings.kafka.brokers, settings.kafka.dlq_topic))
            >= len(dlq_reasons) + 2
        ),
        60,
        "dead letters",
    )

    assert set(committed_alert_ids(settings, alert_ids)) == alert_ids
    dead = read_topic(settings.kafka.brokers, settings.kafka.dlq_topic)
    assert sorted(d["reason"] for d in dead) == sorted(
        [*dlq_reasons, "invalid_timestamp", "misrouted"]
    )
    assert {orjson.loads(d["raw"])["event_id"] for d in dead if d["reason"] == "misrouted"} == {
        "moved"
    }
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert 'churn_detector_events_invalid_total{reason="misrouted"} 1.0' in metrics


def test_a_team_gone_silent_is_flagged_by_the_wall_clock_without_new_events(
    kafka_settings_factory, workers, tmp_path
):
    # One wall-clock second lets a day of event time pass, so weeks of silence take seconds.
    settings = kafka_settings_factory(
        service={"idle_sweep_s": 0.5, "idle_clock_scale": 86_400 * 2.0}
    )
    events = tmp_path / "events.jsonl"
    expected = make_events(events, teams=4, days=45, seed=53)
    replay_ids, _ = replay_expectation(events, settings, tmp_path)

    produce_file(events, settings, progress=False)
    worker = workers(settings).start()
    wait_until(all_teams_complete([worker], expected), 180, "history applied")

    def silence_alerts() -> list[dict[str, Any]]:
        alerts = read_topic(settings.kafka.brokers, settings.kafka.alerts_topic)
        return [
            a
            for a in alerts
            if a["id"] not in replay_ids
            and a["data"]["entity_type"] == "team"
            and a["data"]["state"] in ("at_risk", "churned")
            and a["data"]["signal"] == "silence"
        ]

    flagged = wait_until(silence_alerts, 120, "a silence alert from the idle clock", every_s=2)
    assert {a["data"]["entity_id"] for a in flagged} <= set(expected)


def test_segment_calls_without_their_team_join_their_users_group_call_also_after_a_restart(
    kafka_settings_factory, workers, tmp_path
):
    settings = kafka_settings_factory(service=QUIET)
    lines, teams_of_lines = segment_without_teams(teams=10, days=60, seed=47)
    events = tmp_path / "segment.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    alert_ids, dlq_reasons = replay_expectation(events, settings, tmp_path)
    assert alert_ids and not dlq_reasons  # replay finds every call's team

    produce_file(events, settings, progress=False)  # keyed by the team it finds, as ingest
    first = workers(settings, "first").start()
    wait_until(
        lambda: (first.health() or {}).get("applied_since_start", 0) >= len(lines) // 2,
        180,
        "half of the calls applied",
    )
    first.stop()  # what it learned from the group calls it read is in the topic only
    second = workers(settings, "second")
    second.config = first.config  # same settings, same state dir
    second.port = first.port
    second.start()
    wait_until(all_teams_complete([second], Counter(teams_of_lines)), 180, "every call applied")
    assert re.search(rb"ingest: [1-9][0-9]* memberships of users read", second.log.read_bytes())
    assert read_topic(settings.kafka.brokers, settings.kafka.dlq_topic) == []
    assert set(committed_alert_ids(settings, alert_ids)) == alert_ids


@pytest.mark.parametrize("keyed", [False, True], ids=["parsed-by-ingest", "keyed-by-team"])
def test_kill_9_in_the_middle_then_restart_equals_an_uninterrupted_run(
    kafka_settings_factory, workers, tmp_path, keyed
):
    settings = kafka_settings_factory(service=QUIET, kafka={"events_keyed_by_team": keyed})
    events = tmp_path / "events.jsonl"
    expected = make_events(events, teams=24, days=90, seed=43)
    alert_ids, _ = replay_expectation(events, settings, tmp_path)
    total = sum(expected.values())

    produce_file(events, settings, progress=False)
    first = workers(settings, "first").start()
    wait_until(
        lambda: (first.health() or {}).get("applied_since_start", 0) >= total // 3,
        180,
        "a third of the stream applied",
    )
    first.kill(signal.SIGKILL)

    second = workers(settings, "second")
    second.config = first.config  # same settings, same state dir
    second.port = first.port
    second.start()
    wait_until(all_teams_complete([second], expected), 240, "every event applied after the restart")

    streamed = committed_alert_ids(settings, alert_ids)
    assert len(streamed) == len(set(streamed)), "no alert id duplicated across the crash"
    assert set(streamed) == alert_ids


def test_dropped_entities_are_deleted_from_the_changelog_and_stay_gone_after_a_restore(
    kafka_settings_factory, workers, tmp_path
):
    settings = kafka_settings_factory(engine={"evict_after_days": 90}, service=QUIET)
    events = tmp_path / "events.jsonl"
    expected = make_events(events, teams=16, days=150, seed=61)
    # a team that used the product in its first days only: silent for 140 days at the end
    lines = events.read_bytes().splitlines()
    start = orjson.loads(lines[0])["timestamp"]
    early = [
        {
            "event_id": f"early-{day}-{n}",
            "type": "session.started",
            "timestamp": iso_ms(parse_time_ms(start) + day * 86_400_000 + n * 60_000),
            "user_id": f"early-user-{n}",
            "team_id": "t-early-leaver",
        }
        for day in range(5)
        for n in range(3)
    ]
    events.write_bytes(b"\n".join([*map(orjson.dumps, early), *lines]) + b"\n")
    expected = Counter({**expected, "t-early-leaver": len(early)})
    alert_ids, _ = replay_expectation(events, settings, tmp_path)
    produce_file(events, settings, progress=False)
    first = workers(settings, "first").start()
    total = sum(expected.values())
    wait_until(
        lambda: (first.health() or {}).get("applied_since_start", 0) >= total, 180, "all applied"
    )
    assert set(committed_alert_ids(settings, alert_ids)) == alert_ids
    users = {e["user_id"] for e in map(orjson.loads, events.read_bytes().splitlines())}
    users.discard(None)

    def held_by(worker: Worker) -> tuple[set[str], set[str]]:
        teams = {t for t in expected if worker.get(f"/teams/{t}") is not None}
        return teams, {u for u in users if worker.get(f"/users/{u}") is not None}

    held = held_by(first)
    assert held[0] == set(expected) - {"t-early-leaver"}, "the team silent for 90 days is dropped"
    assert not {u for u in held[1] if u.startswith("early-user-")}
    assert 0 < len(held[1]) < len(users), "some users, silent for 90 days, were dropped"
    first.kill(signal.SIGKILL)

    # a new machine: no local snapshot, the state comes from the changelog alone
    fresh = dataclasses.replace(settings.service, state_dir=str(tmp_path / "fresh-state"))
    second = workers(dataclasses.replace(settings, service=fresh), "second").start()
    wait_until(lambda: (second.health() or {}).get("ready"), 120, "the state restored")
    assert held_by(second) == held


def test_two_workers_split_partitions_and_one_takes_over(kafka_settings_factory, workers, tmp_path):
    base = kafka_settings_factory(service=QUIET)
    events = tmp_path / "events.jsonl"
    expected = make_events(events, teams=20, days=80, seed=47)
    alert_ids, _ = replay_expectation(events, base, tmp_path)

    a = workers(base, "a").start()
    b_settings = dataclasses.replace(
        base, service=dataclasses.replace(base.service, state_dir=str(tmp_path / "state-b"))
    )
    b = workers(b_settings, "b").start()
    wait_until(
        lambda: (a.health() or {}).get("assigned") and (b.health() or {}).get("assigned"),
        120,
        "both workers own partitions",
        every_s=1,
    )
    produce_file(events, base, progress=False)
    wait_until(
        lambda: sum((w.health() or {}).get("applied_since_start", 0) for w in (a, b)) > 0,
        120,
        "processing on both",
    )
    a.stop()
    wait_until(
        lambda: (b.health() or {}).get("partitions") == [0, 1, 2, 3], 120, "b owns every partition"
    )
    wait_until(all_teams_complete([b], expected), 240, "every event applied by the survivor")

    streamed = committed_alert_ids(base, alert_ids)
    assert set(streamed) == alert_ids
    assert len(streamed) == len(set(streamed))
