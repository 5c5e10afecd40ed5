"""The state changelog: written inside the partition's Kafka transaction, read back to its end.

Every bundle's outcome (alerts, dead letters, the entities it changed and the offsets that
state reflects) is queued in the open transaction of its partition at once, so a commit
never falls between them: a crash leaves either all of it or none. Faust's own
``producer.send(..., transactional_id=...)`` takes the transaction lock per record, and its
table writes are buffered and may be sent after the offsets commit (a ``kill -9`` then loses
them), so the worker sends the records itself under the lock.

A new owner reads a partition's changelog (from its local snapshot's position,
:mod:`detector.state_snapshot`, or from the beginning) with ``read_committed`` up to the high
watermark taken before the read (not to the last stable offset): an open transaction of a fenced
predecessor holds the last stable offset back, and reading only up to it would return an
old state while the predecessor's commit is still being resolved (the shape of KAFKA-10167).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.exceptions import ProducerSendError

from .kafka_clients import aiokafka_config
from .settings import KafkaSettings
from .state_snapshot import ChangelogRead

#: (topic, key, value (None: a tombstone), partition or None)
Record = tuple[str, bytes | None, bytes | None, int | None]


async def send_in_transaction(producer: Any, transactional_id: str, records: list[Record]) -> Any:
    """Queue ``records`` in the open transaction ``transactional_id``, with no commit between
    them; returns the future of the last record's acknowledgement (None if there is none)."""
    sent = None
    async with producer._trn_locks[transactional_id]:
        transaction = producer._transaction_producers.get(transactional_id)
        if transaction is None:
            raise ProducerSendError(f"no transaction producer for {transactional_id}")
        for i, (topic, key, value, partition) in enumerate(records):
            sent = await transaction.send(topic, value, key=key, partition=partition)
            if fault_kill.after and partition is not None:  # test-only fault; off: one check
                await fault_kill.state_record_sent(sent, more=len(records) - i - 1)
    return sent


class FaultKill:
    """TEST ONLY (``service.fault_kill_after_records``): the worker SIGKILLs itself in the
    middle of a bundle's state records (the changelog's, sent to an explicit partition), so
    a test can show that a flush cut short loses and duplicates nothing. Off (0) by default."""

    def __init__(self) -> None:
        self.after = 0
        self.sent = 0

    async def state_record_sent(self, sent: Any, more: int) -> None:
        self.sent += 1
        if self.sent < self.after or not more:
            return
        await sent  # this record is on the broker, in the open transaction
        logging.getLogger(__name__).warning(
            "fault injection: SIGKILL after state record %d, %d more records of the bundle unsent",
            self.sent,
            more,
        )
        os.kill(os.getpid(), signal.SIGKILL)


fault_kill = FaultKill()


async def wait_fenced(producer: Any, transactional_id: str, timeout_s: float) -> None:
    """Wait until this worker owns ``transactional_id`` (its producer initialised, which
    aborts a predecessor's open transaction and fences it from committing later)."""
    deadline = time.monotonic() + timeout_s
    while transactional_id not in producer._transaction_producers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"transactional producer {transactional_id} did not start")
        await asyncio.sleep(0.05)


async def read_partition(
    k: KafkaSettings, topic: str, partition: int, start: int = 0, timeout_s: float = 120
) -> ChangelogRead:
    """The committed records of one changelog partition from ``start`` to its high watermark:
    the latest value of every key (None: deleted), and the first and last record read."""
    tp = TopicPartition(topic, partition)
    common = aiokafka_config(k)
    probe = AIOKafkaConsumer(enable_auto_commit=False, isolation_level="read_uncommitted", **common)
    await probe.start()
    try:
        end = (await probe.end_offsets([tp]))[tp]
        log_start = (await probe.beginning_offsets([tp]))[tp]
    finally:
        await probe.stop()
    read = ChangelogRead(end=end, log_start=log_start)
    start = max(start, log_start)
    if start >= end:
        return read
    reader = AIOKafkaConsumer(
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=32 << 20,
        **common,
    )
    await reader.start()
    latest = read.latest
    try:
        reader.assign([tp])
        reader.seek(tp, start)
        deadline = time.monotonic() + timeout_s
        # The position moves past aborted records and transaction markers too, but not past
        # a transaction that is still open: waiting for ``end`` waits until it is resolved.
        while await reader.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"changelog {tp} not readable to offset {end}")
            for msg in (await reader.getmany(tp, timeout_ms=500)).get(tp, []):
                if msg.key is None:
                    continue
                if read.first is None:
                    read.first = (msg.offset, msg.key, msg.value)
                read.last = (msg.offset, msg.key)
                latest[msg.key] = msg.value
    finally:
        await reader.stop()
    return read
