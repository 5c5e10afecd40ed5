"""The worker's dead letters stay within a producer's request, whatever the input: a record
over it was refused, the worker crashed, and after a restart it met the same message again."""

from __future__ import annotations

import asyncio

import orjson

from detector.bundles import Columns
from detector.codec import dumps_held
from detector.service import EngineRuntime, Ingest
from detector.settings import build_settings
from detector.state_snapshot import ChangelogRead

from .test_service import RecordingProducer, SourceMessage, SourcePartition

#: the largest request aiokafka's and Faust's producers send by default (max_request_size)
PRODUCER_MAX_REQUEST = 1_000_000
HUGE = [b'"' * 900_000, b"\xff" * 900_000]  # 1.8 MB JSON-escaped, 1.2 MB in base64


def test_ingest_dead_letters_huge_messages_in_records_a_producer_sends():
    ingest, producer = Ingest(build_settings(environ={}), partitions=4), RecordingProducer()
    batch = {
        SourcePartition("usage-events", 0): [
            SourceMessage(i, None, raw) for i, raw in enumerate(HUGE)
        ]
    }

    asyncio.run(ingest._forward(batch, producer))  # type: ignore[arg-type]

    assert ingest.invalid_reasons == {"oversized": 2}
    values = [value for _, value, _, _ in producer.sent]
    assert max(map(len, values)) < PRODUCER_MAX_REQUEST
    assert all(orjson.loads(value)["raw_bytes"] == 900_000 for value in values)


def test_ingest_dead_letters_a_keyed_message_too_big_to_be_an_event():
    """Keyed, it would go to the engine unparsed, alone in a bundle over a request's size."""
    settings = build_settings(environ={"DETECTOR_KAFKA_EVENTS_KEYED_BY_TEAM": "true"})
    batch = {SourcePartition("usage-events", 0): [SourceMessage(0, b"t-1", HUGE[0])]}
    ingest, producer = Ingest(settings, partitions=3), RecordingProducer()

    asyncio.run(ingest._forward(batch, producer))  # type: ignore[arg-type]

    assert [topic for topic, _, _, _ in producer.sent] == [settings.kafka.dlq_topic]
    assert ingest.invalid_reasons == {"oversized": 1}
    assert len(producer.sent[0][1]) < PRODUCER_MAX_REQUEST


def test_the_engine_dead_letters_a_huge_keyed_message_in_a_record_its_transaction_takes():
    async def empty(partition: int, start: int) -> ChangelogRead:
        return ChangelogRead({}, end=0)

    settings = build_settings(environ={"DETECTOR_KAFKA_EVENTS_KEYED_BY_TEAM": "true"})
    runtime = EngineRuntime(settings, empty)
    asyncio.run(runtime.ensure(0))
    columns = Columns()
    columns.sources, columns.offsets, columns.raws = [0, 0], [7, 8], list(HUGE)

    bundles = enumerate(columns.encoded())  # one each: neither fits beside the other
    dead = [d for offset, bundle in bundles for d in runtime.apply(0, offset, bundle)[1]]

    assert [(d["reason"], d["offset"], d["raw_truncated"]) for d in dead] == [
        ("oversized", 7, True),
        ("oversized", 8, True),
    ]
    assert max(len(dumps_held(d)) for d in dead) < PRODUCER_MAX_REQUEST
