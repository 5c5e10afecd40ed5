"""The worker's dead letters stay within a producer's request, whatever the input: a record
over it was refused, the worker crashed, and after a restart it met the same message again."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import orjson

from detector.bundles import Columns
from detector.codec import dumps_held
from detector.service import EngineRuntime, Ingest
from detector.settings import build_settings
from detector.state_snapshot import ChangelogRead

#: the largest request aiokafka's and Faust's producers send by default (max_request_size)
PRODUCER_MAX_REQUEST = 1_000_000
HUGE = [b'"' * 900_000, b"\xff" * 900_000]  # 1.8 MB JSON-escaped, 1.2 MB in base64


class SourcePartition(NamedTuple):
    topic: str
    partition: int


class SourceMessage(NamedTuple):
    offset: int
    key: bytes | None
    value: bytes


class Producer:
    """Keeps the values sent; every send is acknowledged at once."""

    def __init__(self) -> None:
        self.values: list[bytes] = []

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[None]:
        self.values.append(value)
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acked.set_result(None)
        return acked


def test_ingest_dead_letters_huge_messages_in_records_a_producer_sends():
    ingest, producer = Ingest(build_settings(environ={}), partitions=4), Producer()
    batch = {
        SourcePartition("usage-events", 0): [
            SourceMessage(i, None, raw) for i, raw in enumerate(HUGE)
        ]
    }

    asyncio.run(ingest._forward(batch, producer))  # type: ignore[arg-type]

    assert ingest.invalid_reasons == {"oversized": 2}
    assert max(map(len, producer.values)) < PRODUCER_MAX_REQUEST
    assert all(orjson.loads(value)["raw_bytes"] == 900_000 for value in producer.values)


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
