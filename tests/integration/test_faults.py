"""Faults on the real broker: broker restart, poison events, a lost state directory, a worker
killed in the middle of a state flush.

Each test compares the stream with a replay of the same file (the uninterrupted result):
same alert ids, none twice, and every team's event count equal to what was produced.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from detector.quarantine import PROCESSING_ERROR
from detector.service import EXIT_STATE_UNSAFE, bundle_topic_name
from tests.integration import test_worker
from tests.integration.test_worker import (
    QUIET,
    Worker,
    all_teams_complete,
    committed_alert_ids,
    make_events,
    produce_file,
    read_topic,
    replay_expectation,
    wait_until,
)
from tests.poison import poison_copies, poisoned_process

pytestmark = pytest.mark.integration
workers = test_worker.workers  # the fixture

KAFKA_LOCAL = Path(__file__).resolve().parents[2] / "deploy" / "kafka-local.sh"


class LocalBroker:
    """A broker of the test's own (deploy/kafka-local.sh), which the test may stop."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.bootstrap = ""

    def _run(self, command: str, keep_data: bool = False) -> str:
        env = {**os.environ, "KAFKA_LOCAL_DATA": str(self.data)}
        if keep_data:
            env["KEEP_DATA"] = "1"
        done = subprocess.run(
            [str(KAFKA_LOCAL), command], env=env, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, f"kafka-local.sh {command} failed:\n{done.stderr[-3000:]}"
        return done.stdout.strip()

    def start(self, keep_data: bool = False) -> str:
        """``keep_data``: restart on the storage and ports a ``stop(keep_data=True)`` kept."""
        self.bootstrap = self._run("start", keep_data)
        return self.bootstrap

    def stop(self, keep_data: bool = False) -> None:
        self._run("stop", keep_data)


@pytest.fixture
def own_broker(kafka_bootstrap: str, tmp_path: Path) -> Iterator[LocalBroker]:
    """A second broker, always stopped (and its data removed) at teardown."""
    broker = LocalBroker(tmp_path / "broker")
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


def events_applied(worker: Worker) -> int:
    return int((worker.health() or {}).get("applied_since_start", 0))


class Halves(NamedTuple):
    """A simulated stream in two files (file order, so per-team order is kept)."""

    expected: dict[str, int]  # events per team, both halves
    alert_ids: set[str]  # what a replay of the whole stream publishes
    first: Path
    second: Path
    first_events: int


def simulated_halves(settings, tmp_path: Path, teams: int, days: int, seed: int) -> Halves:
    events = tmp_path / "events.jsonl"
    expected = make_events(events, teams=teams, days=days, seed=seed)
    alert_ids, _ = replay_expectation(events, settings, tmp_path)
    lines = events.read_bytes().splitlines(keepends=True)
    first, second = events.with_suffix(".1.jsonl"), events.with_suffix(".2.jsonl")
    first.write_bytes(b"".join(lines[: len(lines) // 2]))
    second.write_bytes(b"".join(lines[len(lines) // 2 :]))
    return Halves(expected, alert_ids, first, second, len(lines) // 2)


def assert_alerts_equal_replay(settings, alert_ids: set[str]) -> None:
    streamed = committed_alert_ids(settings, alert_ids)
    assert len(streamed) == len(set(streamed)), "an alert was published twice"
    assert set(streamed) == alert_ids


def test_the_worker_reconnects_after_a_broker_restart_and_loses_nothing(
    own_broker, kafka_settings_factory, workers, tmp_path
):
    settings = kafka_settings_factory(service=QUIET, kafka={"brokers": own_broker.bootstrap})
    stream = simulated_halves(settings, tmp_path, teams=14, days=70, seed=61)

    produce_file(stream.first, settings, progress=False)
    worker = workers(settings).start()
    third = stream.first_events // 3
    wait_until(lambda: events_applied(worker) >= third, 180, "a third of the first half applied")

    logged = worker.log.stat().st_size
    own_broker.stop(keep_data=True)
    lost = re.compile(rb"Unable connect|KafkaConnectionError")
    wait_until(lambda: lost.search(worker.log.read_bytes()[logged:]), 60, "the worker to notice")
    assert worker.health() is not None, "the worker keeps running without its broker"
    assert own_broker.start(keep_data=True) == settings.kafka.brokers  # same storage, same port
    produce_file(stream.second, settings, progress=False)

    wait_until(all_teams_complete([worker], stream.expected), 240, "every event applied")
    assert_alerts_equal_replay(settings, stream.alert_ids)
    assert worker.proc is not None and worker.proc.poll() is None, "the same process reconnected"


def test_a_poison_event_is_quarantined_and_the_partition_keeps_flowing(
    kafka_settings_factory, workers, tmp_path, monkeypatch
):
    settings = kafka_settings_factory(service=QUIET)
    clean = tmp_path / "clean.jsonl"
    expected = make_events(clean, teams=12, days=60, seed=71)
    lines = [orjson.loads(line) for line in clean.read_bytes().splitlines()]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in poison_copies(lines, 2000)))
    poison = len(events.read_bytes().splitlines()) - len(lines)
    monkeypatch.setattr("detector.engine.PartitionEngine.process", poisoned_process)
    alert_ids, reasons = replay_expectation(events, settings, tmp_path)
    assert reasons.count(PROCESSING_ERROR) == poison > 0

    produce_file(events, settings, progress=False)
    worker = workers(settings)
    worker.module = "tests.poison"  # the real worker, with the engine fault injected
    worker.start()

    wait_until(all_teams_complete([worker], expected), 180, "every good event applied")
    assert_alerts_equal_replay(settings, alert_ids)

    def quarantined() -> list[dict] | None:
        dlq = read_topic(settings.kafka.brokers, settings.kafka.dlq_topic)
        dead = [d for d in dlq if d["reason"] == PROCESSING_ERROR]
        return dead if len(dead) >= poison else None

    dead = wait_until(quarantined, 60, "the poison events in the dead-letter topic")
    assert len(dead) == poison
    assert all(d["detail"].startswith("PoisonError: ") for d in dead)
    assert all(orjson.loads(d["raw"])["event_id"].startswith("poison-") for d in dead)
    url = f"http://127.0.0.1:{worker.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        metrics = resp.read().decode()
    counter = f'churn_detector_events_invalid_total{{reason="{PROCESSING_ERROR}"}} {poison}.0'
    assert counter in metrics


def _bundles_committed(admin, settings) -> bool:
    """The worker's consumer group has committed every bundle (its state is in the changelog)."""
    topic = bundle_topic_name(settings)
    group = settings.service.app_id
    committed = admin.list_group_offsets(group).get(group, {})
    mine = {tp: meta.offset for tp, meta in committed.items() if tp.topic == topic}
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.brokers)
    try:
        ends = consumer.end_offsets(list(mine)) if mine else {}
    finally:
        consumer.close()
    return bool(mine) and all(mine[tp] >= end for tp, end in ends.items())


def _first_half_committed(settings, stream: Halves, workers, kafka_admin) -> None:
    """A worker applies the stream's first half, Faust commits all of it, the worker stops."""
    produce_file(stream.first, settings, progress=False)
    first = workers(settings, "first").start()
    wait_until(lambda: events_applied(first) >= stream.first_events, 180, "the first half applied")
    wait_until(lambda: _bundles_committed(kafka_admin, settings), 60, "the first half committed")
    first.stop()


def _changelog(settings, isolation_level: str = "read_committed") -> Iterator[Any]:
    """Every record of the state changelog, as a consumer with ``isolation_level`` reads it."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka.brokers,
        isolation_level=isolation_level,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    topic = f"{settings.service.app_id}-state-changelog"
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=500).values():
                yield from records
    finally:
        consumer.close()


def _changelog_bundle_offsets(settings) -> dict[int, int]:
    """Per bundle partition: the bundle offset in the last committed state record (meta)."""
    latest: dict[int, int] = {}
    for r in _changelog(settings):
        if r.key and r.key.startswith(b"m:") and r.value:
            offsets, _, _ = r.value.partition(b"\n")  # then the engine record
            latest[int(r.key[2:])] = orjson.loads(offsets)["bundle"]
    return latest


def test_a_deleted_state_directory_is_rebuilt_from_the_changelog(
    kafka_settings_factory, kafka_admin, workers, tmp_path
):
    settings = kafka_settings_factory(service=QUIET)
    stream = simulated_halves(settings, tmp_path, teams=16, days=80, seed=67)

    produce_file(stream.first, settings, progress=False)
    first = workers(settings, "first").start()
    half = stream.first_events
    wait_until(lambda: events_applied(first) >= half, 180, "the first half applied")
    wait_until(lambda: _bundles_committed(kafka_admin, settings), 60, "the state committed")
    first.stop()
    group = settings.service.app_id
    committed = {
        tp.partition: meta.offset
        for tp, meta in kafka_admin.list_group_offsets(group).get(group, {}).items()
        if tp.topic == bundle_topic_name(settings)
    }
    in_changelog = _changelog_bundle_offsets(settings)
    assert {p: o + 1 for p, o in in_changelog.items()} == committed, (
        "bundle offsets committed by the worker vs the state committed in the changelog"
    )
    state_dir = Path(settings.service.state_dir)
    assert any(state_dir.iterdir()), "the worker kept local state"
    shutil.rmtree(state_dir)

    # the first half is now only in the changelog: the counts must come back from there
    produce_file(stream.second, settings, progress=False)
    second = workers(settings, "second").start()
    wait_until(
        all_teams_complete([second], stream.expected), 240, "every event counted after the loss"
    )
    assert_alerts_equal_replay(settings, stream.alert_ids)


def test_a_worker_killed_in_the_middle_of_a_state_flush_loses_and_duplicates_nothing(
    kafka_settings_factory, kafka_admin, workers, tmp_path
):
    """The worker kills itself (SIGKILL, a test-only hook in detector/changelog.py) after some
    of a bundle's state records are on the broker inside its open transaction and before the
    rest are sent and the transaction commits. A restarted worker fences that transaction
    (aborted) and redoes the bundle from the committed state and offsets."""
    settings = kafka_settings_factory(service=QUIET)
    stream = simulated_halves(settings, tmp_path, teams=14, days=70, seed=73)

    _first_half_committed(settings, stream, workers, kafka_admin)
    committed_before = sum(1 for _ in _changelog(settings))

    faulty_service = dataclasses.replace(settings.service, fault_kill_after_records=25)
    faulty = workers(dataclasses.replace(settings, service=faulty_service), "faulty").start()
    produce_file(stream.second, settings, progress=False)
    assert faulty.proc is not None
    assert faulty.proc.wait(timeout=180) == -signal.SIGKILL
    killed = re.search(
        rb"fault injection: SIGKILL after state record (\d+), (\d+) more records of the bundle",
        faulty.log.read_bytes(),
    )
    assert killed, "the worker died elsewhere than in the fault hook"
    assert int(killed[1]) >= 25 and int(killed[2]) > 0, "killed in the middle of a bundle"

    second = workers(settings, "second").start()  # same state dir and app id, no fault
    wait_until(
        all_teams_complete([second], stream.expected), 240, "every event counted after the kill"
    )
    assert_alerts_equal_replay(settings, stream.alert_ids)
    # the records the killed worker had sent are in the log but were never committed
    uncommitted = sum(1 for _ in _changelog(settings, "read_uncommitted"))
    committed = sum(1 for _ in _changelog(settings))
    assert committed > committed_before
    assert uncommitted > committed, "the cut flush's records are in the log, aborted"


def test_a_bundle_that_fails_outside_the_quarantine_stops_the_worker_and_loses_nothing(
    kafka_settings_factory, kafka_admin, workers, tmp_path
):
    """A bug outside any one event (tests/bundle_fault.py: a bundle raises after its events
    are in the engine) leaves the engine with changes no record describes. The worker exits
    with EXIT_STATE_UNSAFE instead of letting Faust commit that bundle's offset; a restarted
    worker restores the committed state and redoes the bundle: nothing lost, nothing twice."""
    settings = kafka_settings_factory(service=QUIET)
    stream = simulated_halves(settings, tmp_path, teams=14, days=70, seed=79)

    _first_half_committed(settings, stream, workers, kafka_admin)

    faulty = workers(settings, "faulty")
    faulty.module = "tests.bundle_fault"  # the real worker, with the fault injected
    faulty.start()
    produce_file(stream.second, settings, progress=False)
    assert faulty.proc is not None
    assert faulty.proc.wait(timeout=180) == EXIT_STATE_UNSAFE
    log = faulty.log.read_bytes()
    assert b"BundleFault: injected fault after bundle" in log
    assert re.search(rb"partition \d+: bundle \d+ failed; exiting", log)

    second = workers(settings, "second").start()  # same state dir and app id, no fault
    wait_until(
        all_teams_complete([second], stream.expected), 240, "every event counted after the exit"
    )
    assert_alerts_equal_replay(settings, stream.alert_ids)
