"""``produce`` / ``alerts`` tools and topic creation, on the real local broker."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from detector.events import Invalid, decode_event
from detector.kafka_clients import KafkaUnavailableError, ensure_topics
from detector.kafka_tools import follow_alerts, produce_file
from detector.partitioning import partition_for
from detector.settings import KafkaSettings
from detector.simulator import SimulationConfig, simulate, write_jsonl

BAD_LINES = [b'{"event_id":', b"[1]", b'{"type":"session.started","team_id":"t-x"}']


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def read_topic(bootstrap: str, topic: str, timeout_s: float = 60) -> list[Any]:
    """Every record of ``topic``, up to the end offsets seen at the start (no group)."""
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], group_id=None, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic)
        assert parts, f"topic {topic} does not exist"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, f"could not read {topic} to its end in {timeout_s}s"
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes]]:
    """Simulated events (8 teams, 30 days) with 3 bad lines at the start, middle and end."""
    path = tmp_path_factory.mktemp("produce") / "events.jsonl"
    write_jsonl(path, simulate(SimulationConfig(teams=8, days=30, seed=123)).events())
    lines = path.read_bytes().splitlines()
    lines.insert(0, BAD_LINES[0])
    lines.insert(len(lines) // 2, BAD_LINES[1])
    lines.append(BAD_LINES[2])
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, lines


@pytest.mark.parametrize("existing_partitions", [None, 2], ids=["creates-topic", "existing-topic"])
def test_produce_file_keys_orders_and_partitions_like_kafka(
    events_file, kafka_settings_factory, topic_factory, kafka_bootstrap, existing_partitions
):
    path, lines = events_file
    settings = kafka_settings_factory(engine={"partitions": 3})
    if existing_partitions is None:  # produce creates the topic with engine.partitions
        topic, partitions = settings.kafka.events_topic, 3
        sent = produce_file(path, settings, progress=False)
    else:  # an existing topic is used as it is
        topic, partitions = topic_factory(existing_partitions), existing_partitions
        sent = produce_file(path, settings, topic=topic, progress=False)
    assert sent == len(lines)

    records = read_topic(kafka_bootstrap, topic)
    assert {r.partition for r in records} <= set(range(partitions))
    # every line arrived, exactly once
    assert Counter(r.value for r in records) == Counter(lines)
    index = {line: i for i, line in enumerate(lines)}
    assert len(index) == len(lines), "test data must have unique lines"
    by_partition: dict[int, list[int]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = decode_event(r.value)
        if isinstance(event, Invalid):
            assert r.value in BAD_LINES
            assert r.key is None  # sent anyway, without a key: the worker dead-letters it
        else:
            assert r.key == event.team_id.encode()
            assert r.partition == partition_for(event.team_id, partitions)
        by_partition.setdefault(r.partition, []).append(index[r.value])
    # per partition, offsets follow file order
    for part, order in by_partition.items():
        assert order == sorted(order), f"partition {part} is out of file order"
    assert len({r.key for r in records if r.key}) == 8


def test_follow_alerts_reads_back_and_stops_when_caught_up(kafka_settings_factory, kafka_bootstrap):
    settings = kafka_settings_factory()
    topic = settings.kafka.alerts_topic
    assert ensure_topics(settings.kafka, {topic: 2}) == {topic: 2}
    alerts = [
        {
            "specversion": "1.0",
            "id": f"a{i}",
            "type": "churn.alert",
            "data": {"team_id": f"t-{i % 3}"},
        }
        for i in range(5)
    ]
    producer = KafkaProducer(bootstrap_servers=[kafka_bootstrap], acks="all")
    try:

        def send(values: list[bytes]) -> None:
            for value in values:
                producer.send(topic, value=value, key=b"k" + value[-3:])
            producer.flush(timeout=30)

        # pretty-printed on the wire, plus one record that is not JSON (skipped with a warning)
        send([orjson.dumps(a, option=orjson.OPT_INDENT_2) for a in alerts] + [b"not json"])

        out = io.StringIO()
        started = time.monotonic()
        assert (
            follow_alerts(settings, from_beginning=True, follow=False, out=out, timeout_s=60) == 5
        )
        assert time.monotonic() - started < 30, "did not stop when caught up"
        printed = out.getvalue().splitlines()
        assert sorted(printed) == sorted(orjson.dumps(a).decode() for a in alerts)  # compact

        out = io.StringIO()
        assert follow_alerts(settings, from_beginning=False, follow=False, out=out) == 0
        assert out.getvalue() == ""
        out = io.StringIO()
        assert follow_alerts(settings, True, follow=False, out=out, max_messages=2) == 2

        # follow: prints what is there, keeps waiting, prints new alerts as they come
        out = io.StringIO()
        result: list[int] = []
        worker = threading.Thread(
            target=lambda: result.append(
                follow_alerts(settings, True, follow=True, out=out, max_messages=7, timeout_s=60)
            ),
            daemon=True,
        )
        worker.start()
        wait_until(lambda: len(out.getvalue().splitlines()) == 5, 30, "the 5 retained alerts")
        assert worker.is_alive()
        late = [{"id": "late-1"}, {"id": "late-2"}]
        send([orjson.dumps(a) for a in late])
        worker.join(timeout=30)
        assert not worker.is_alive() and result == [7]
        assert out.getvalue().splitlines()[5:] in (
            ['{"id":"late-1"}', '{"id":"late-2"}'],
            ['{"id":"late-2"}', '{"id":"late-1"}'],
        )
    finally:
        producer.close()

    # follow with a deadline returns when it passes
    started = time.monotonic()
    n = follow_alerts(settings, True, follow=True, out=io.StringIO(), timeout_s=2)
    assert n == 7 and 1.5 <= time.monotonic() - started < 20


def test_follow_alerts_without_the_topic_prints_nothing(kafka_settings_factory):
    settings = kafka_settings_factory()
    out = io.StringIO()
    assert follow_alerts(settings, True, follow=False, out=out, timeout_s=30) == 0
    assert out.getvalue() == ""


def test_ensure_topics_creates_missing_and_leaves_existing_alone(
    kafka_settings_factory, topic_factory
):
    settings = kafka_settings_factory()
    existing = topic_factory(2)
    fresh = settings.kafka.dlq_topic
    counts = ensure_topics(settings.kafka, {existing: 5, fresh: 3})
    assert counts == {existing: 2, fresh: 3}
    assert ensure_topics(settings.kafka, {fresh: 6}) == {fresh: 3}


def test_ensure_topics_names_an_unreachable_broker():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    k = KafkaSettings(
        brokers=address,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="bob",
        sasl_password="hunter2",
    )
    with pytest.raises(KafkaUnavailableError, match=address.replace(".", r"\.")) as info:
        ensure_topics(k, {"x": 1}, timeout_s=2)
    assert "hunter2" not in str(info.value)
