"""Bad input through the running worker: every bad message (and every re-delivered event) is
dead-lettered with its reason, every good one is applied once, and the partitions keep
flowing after the bad ones."""

from __future__ import annotations

import base64
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from detector.kafka_tools import produce_file
from tests.unit.fuzz_corpus import Corpus, mixed

from .test_worker import QUIET, read_topic, replay_expectation, wait_until, workers  # noqa: F401

pytestmark = pytest.mark.integration

CORPUS_EVENTS = 3_000
SECOND_WAVE = 500


def events_processed(port: int) -> float:
    """The worker's ``churn_detector_events_processed_total`` (valid events applied)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("churn_detector_events_processed_total "):
                return float(line.split()[1])
    return 0.0


def write_lines(path: Path, pairs: list[tuple[bytes, str | None]]) -> None:
    path.write_bytes(b"".join(raw + b"\n" for raw, _ in pairs))


def test_fuzzed_input_is_dead_lettered_with_its_reason_and_good_input_flows(
    kafka_settings_factory,
    workers,  # noqa: F811 - the fixture imported from test_worker
    tmp_path,
):
    settings = kafka_settings_factory(service=QUIET)
    corpus = Corpus(seed=29)
    first = list(mixed(corpus, CORPUS_EVENTS, bad_share=0.4, warmup=300))
    # client retries: recent good events delivered again are dead-lettered, not counted twice
    first += [(raw, "duplicate") for raw, reason in first[-60:] if reason is None][-20:]
    second = list(mixed(corpus, SECOND_WAVE, bad_share=0.0, warmup=0))
    expected_dead = Counter((raw, reason) for raw, reason in first if reason is not None)
    good = sum(1 for _, reason in first + second if reason is None)

    # the corpus' reasons are what replay gives too (the reference for the worker)
    events = tmp_path / "fuzz.jsonl"
    write_lines(events, first)
    _, replay_reasons = replay_expectation(events, settings, tmp_path)
    assert replay_reasons == sorted(reason for _, reason in expected_dead.elements())

    assert produce_file(events, settings, progress=False) == len(first)
    worker = workers(settings).start()

    def dead_letters() -> Counter[tuple[bytes, str]]:
        out: Counter[tuple[bytes, str]] = Counter()
        for record in read_topic(settings.kafka.brokers, settings.kafka.dlq_topic):
            raw = (
                record["raw"].encode()
                if "raw" in record
                else base64.b64decode(record["raw_base64"])
            )
            out[(raw, record["reason"])] += 1
        return out

    wait_until(
        lambda: sum(dead_letters().values()) >= sum(expected_dead.values()),
        120,
        "every bad message in the dead-letter topic",
        every_s=1,
    )
    assert dead_letters() == expected_dead

    # after all that bad input, good input still flows through every partition
    more = tmp_path / "second-wave.jsonl"
    write_lines(more, second)
    assert produce_file(more, settings, progress=False) == SECOND_WAVE
    wait_until(
        lambda: events_processed(worker.port) == good,
        120,
        f"all {good} good events applied",
    )
    health = worker.health()
    assert health is not None
    assert health["ingested"] == len(first) + SECOND_WAVE
    assert sorted(health["partitions"]) == list(range(settings.engine.partitions))
