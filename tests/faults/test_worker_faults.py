"""Fault tests of the streaming service that do NOT pass yet (issue 3 stays open).

Not part of ``make test``: run them with ``make faults`` against the local broker.
Known failure: after a kill -9 the restarted worker can restore partitions as empty (0
teams, bundle offset -1) although the killed worker had committed progress on them, and then
continues from the committed bundle offsets, so events are missing from state. Likely cause:
the killed worker's open transaction holds the changelog's last stable offset back, so
Faust's recovery (read_committed) sees nothing to recover before its own transactional
producers fence the old one. Next step: fence the previous transactional ids before recovery
(or wait until the last stable offset reaches the high watermark).
"""

from __future__ import annotations

import dataclasses
import signal

import pytest

from tests.integration.test_worker import (
    QUIET,
    all_teams_complete,
    committed_alert_ids,
    make_events,
    produce_file,
    replay_expectation,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_kill_9_in_the_middle_then_restart_equals_an_uninterrupted_run(
    kafka_settings_factory, workers, tmp_path
):
    settings = kafka_settings_factory(service=QUIET)
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
