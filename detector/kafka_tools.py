"""User tools around the Kafka topics: push an events file in, read alerts out.

``churn-detector produce EVENTS`` sends each line of a JSONL (or Parquet) file to the events
topic, keyed by the event's team id, in file order. Partitions are chosen exactly as Kafka's
default partitioner does (murmur2 of the key, see :mod:`detector.partitioning`), so a file
produced and the same file replayed give the same per-partition streams. Lines that do not
decode are sent too (without a key): the worker routes them to the dead-letter topic.

Speed: kafka-python's ``KafkaProducer.send`` costs ~50 µs per message in pure Python
(~18k lines/s measured). This module fills aiokafka ``BatchBuilder`` objects per partition
(its record encoder is compiled) and submits whole batches; with one batch in flight per
partition and idempotence on, per-partition order holds even across retries.

``churn-detector alerts`` prints the alerts topic as compact JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson

from .kafka_clients import (
    KafkaUnavailableError,
    aiokafka_config,
    describe,
    ensure_topics,
    kafka_python_config,
)
from .settings import KafkaSettings, Settings, SettingsError, build_settings

# The engine and the Kafka libraries are imported where they are used, so that registering
# these subcommands keeps `churn-detector --help` fast.

#: producer batch size per partition (bytes) and linger
BATCH_BYTES = 256 * 1024
LINGER_MS = 20
#: a single record larger than this cannot go through a default broker (message.max.bytes
#: is 1 MiB by default, minus batch overhead); such lines are reported and skipped
MAX_RECORD_BYTES = 1_000_000


@dataclass
class ProduceResult:
    topic: str
    partitions: int
    sent: int = 0
    #: lines that did not decode as a valid event (sent without a key)
    unkeyed: int = 0
    #: line numbers too large for Kafka (not sent)
    skipped: tuple[int, ...] = ()
    seconds: float = 0.0


def _err(message: str) -> None:
    print(f"churn-detector: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- produce


def produce_file(
    path: str | Path, settings: Settings, topic: str | None = None, progress: bool = True
) -> int:
    """Send every line of ``path`` to ``topic`` (default: the events topic); returns lines sent.

    The topic is created with ``engine.partitions`` partitions if it does not exist.
    """
    return produce_file_result(path, settings, topic, progress).sent


def produce_file_result(
    path: str | Path, settings: Settings, topic: str | None = None, progress: bool = True
) -> ProduceResult:
    """:func:`produce_file` with the details (unkeyed lines, skipped lines, timing)."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"events file {path} does not exist")
    k = settings.kafka
    topic = topic or k.events_topic
    wanted = settings.engine.partitions
    partitions = ensure_topics(k, {topic: wanted})[topic]
    if partitions != wanted:
        _err(
            f"warning: topic {topic} has {partitions} partitions but engine.partitions is {wanted}; "
            "a replay of this file will not mirror the topic's partitioning"
        )
    from tqdm import tqdm

    from .replay import read_lines

    total = path.stat().st_size if path.suffix != ".parquet" else None
    with tqdm(
        total=total,
        desc=f"produce {topic}",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=None if progress else True,  # None: drawn only when stderr is a terminal
    ) as bar:
        read = [0]

        def count(n: int) -> None:
            read[0] += n

        def show() -> None:
            bar.update(read[0] - bar.n)

        lines = read_lines(path, progress=count)
        start = time.perf_counter()
        result = asyncio.run(_produce(lines, k, topic, partitions, show))
        result.seconds = time.perf_counter() - start
        show()
    return result


async def _produce(
    lines: Iterable[bytes],
    k: KafkaSettings,
    topic: str,
    partitions: int,
    on_batch: Any,
) -> ProduceResult:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    from .events import MAX_EVENT_BYTES, Invalid, decode_fields
    from .memberships import Memberships
    from .partitioning import partition_for

    producer = AIOKafkaProducer(
        **aiokafka_config(k),
        acks="all",
        enable_idempotence=True,
        linger_ms=LINGER_MS,
        max_batch_size=BATCH_BYTES,
        compression_type=None,
    )
    try:
        await producer.start()
    except KafkaError as exc:
        await producer.stop()
        raise KafkaUnavailableError(
            f"cannot reach Kafka at {describe(k)} ({type(exc).__name__})"
        ) from None
    result = ProduceResult(topic=topic, partitions=partitions)
    skipped: list[int] = []
    try:
        known = await producer.partitions_for(topic)
        if len(known) != partitions:  # pragma: no cover - topic changed under our feet
            raise KafkaUnavailableError(
                f"topic {topic} has {len(known)} partitions, expected {partitions}"
            )
        builders: dict[int, Any] = {}
        pending: list[asyncio.Future[Any]] = []
        cache: dict[str, int] = {}
        create = producer.create_batch
        sent = unkeyed = 0
        # a Segment call without its team is keyed by its user's team, as the worker will
        # find it: the user's group call and later calls then stay in order in one partition
        memberships = Memberships()

        async def submit(part: int, batch: Any) -> None:
            # waits while this partition's previous batch is queued (one in flight per
            # partition: order is kept), which is also where the sender gets to run
            pending.append(await producer.send_batch(batch, topic, partition=part))
            if len(pending) >= 64:
                for fut in pending:
                    if fut.done():
                        fut.result()  # raises the delivery error, if any
                pending[:] = [f for f in pending if not f.done()]
            on_batch()

        for lineno, raw in enumerate(lines, 1):
            if len(raw) > MAX_RECORD_BYTES:
                skipped.append(lineno)
                continue
            event = decode_fields(raw, MAX_EVENT_BYTES, memberships.team_of)
            team_id = None
            if not isinstance(event, Invalid):
                memberships.observe(event)
                team_id = event[4]
            if team_id is None:
                key = None
                part = unkeyed % partitions  # Kafka spreads unkeyed records as it likes
                unkeyed += 1
            else:
                key = team_id.encode()
                part = cache.get(team_id, -1)
                if part < 0:
                    part = cache[team_id] = partition_for(team_id, partitions)
            batch = builders.get(part)
            if batch is None:
                batch = builders[part] = create()
            if batch.append(key=key, value=raw, timestamp=None) is None:  # full
                await submit(part, batch)
                batch = builders[part] = create()
                batch.append(key=key, value=raw, timestamp=None)
            sent += 1
        for part, batch in builders.items():
            if batch.record_count():
                await submit(part, batch)
        for fut in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(fut, BaseException):
                raise fut
        result.sent, result.unkeyed = sent, unkeyed
    except KafkaError as exc:
        raise KafkaUnavailableError(
            f"sending to {topic} on {describe(k)} failed: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    finally:
        await producer.stop()
    result.skipped = tuple(skipped)
    return result


# --------------------------------------------------------------------------- alerts


def follow_alerts(
    settings: Settings,
    from_beginning: bool,
    follow: bool,
    out: TextIO | None = None,
    max_messages: int | None = None,
    timeout_s: float | None = None,
) -> int:
    """Print alerts from the alerts topic, one compact JSON object per line; returns the count.

    ``from_beginning``: start at the oldest retained alert, else at the end (only new ones).
    ``follow``: keep waiting for new alerts (until ``max_messages`` or ``timeout_s``); without
    it, stop as soon as the end offsets seen at the start are reached.
    """
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    out = sys.stdout if out is None else out
    k = settings.kafka
    topic = k.alerts_topic
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def remaining_ms(cap: int) -> int:
        if deadline is None:
            return cap
        return max(0, min(cap, int((deadline - time.monotonic()) * 1000)))

    try:
        consumer = KafkaConsumer(
            **kafka_python_config(k),
            group_id=None,
            enable_auto_commit=False,
            allow_auto_create_topics=False,
            bootstrap_timeout_ms=30_000 if timeout_s is None else max(1000, int(timeout_s * 1000)),
        )
    except KafkaError as exc:
        raise KafkaUnavailableError(
            f"cannot reach Kafka at {describe(k)} ({type(exc).__name__}); is the broker running?"
        ) from None
    printed = 0
    try:
        parts = consumer.partitions_for_topic(topic)
        while not parts:
            if not follow or remaining_ms(1) == 0:
                _err(f"topic {topic} does not exist (yet) on {describe(k)}: no alerts")
                return 0
            time.sleep(remaining_ms(1000) / 1000)  # polling metadata for the topic to appear
            parts = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        if from_beginning:
            consumer.seek_to_beginning(*tps)
        else:
            consumer.seek_to_end(*tps)
        end = consumer.end_offsets(tps) if not follow else {}
        if not follow and not from_beginning:
            _err("no new alerts: use --from-beginning for the retained ones or --follow to wait")
        while True:
            if max_messages is not None and printed >= max_messages:
                break
            if not follow and all(consumer.position(tp) >= end[tp] for tp in tps):
                break
            wait = remaining_ms(500)
            if wait == 0 and deadline is not None:
                break
            batches = consumer.poll(
                timeout_ms=wait,
                max_records=None if max_messages is None else max_messages - printed,
            )
            for records in batches.values():
                for record in records:
                    if max_messages is not None and printed >= max_messages:
                        break
                    try:
                        alert = orjson.loads(record.value)
                    except (orjson.JSONDecodeError, TypeError):
                        _err(
                            f"warning: {topic}[{record.partition}]@{record.offset} "
                            "is not JSON, skipped"
                        )
                        continue
                    out.write(orjson.dumps(alert).decode() + "\n")
                    printed += 1
            if follow:
                out.flush()
        out.flush()
    except KafkaError as exc:
        raise KafkaUnavailableError(
            f"reading {topic} from {describe(k)} failed: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    finally:
        consumer.close()
    return printed


# --------------------------------------------------------------------------- command line


def cmd_produce(args: argparse.Namespace) -> int:
    from .replay import InputError

    settings = build_settings(os.environ, args.config)
    try:
        result = produce_file_result(args.events, settings, args.topic, progress=not args.quiet)
    except KafkaUnavailableError as exc:
        _err(f"error: {exc}")
        return 1
    except InputError as exc:  # a gzip file cut short or corrupt: one line, exit 2
        topic = args.topic or settings.kafka.events_topic
        raise SettingsError(f"{exc}; lines before it may have been sent to {topic}") from None
    rate = result.sent / result.seconds if result.seconds else 0.0
    _err(
        f"sent {result.sent:,} lines to {result.topic} ({result.partitions} partitions) on "
        f"{describe(settings.kafka)} in {result.seconds:.1f}s ({rate:,.0f} lines/s); "
        f"{result.unkeyed:,} did not decode and were sent without a key (the worker "
        "dead-letters them)"
    )
    if result.skipped:
        shown = ", ".join(str(n) for n in result.skipped[:10])
        _err(
            f"error: {len(result.skipped)} lines larger than {MAX_RECORD_BYTES:,} bytes were not "
            f"sent (line {shown}{', ...' if len(result.skipped) > 10 else ''})"
        )
        return 1
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    settings = build_settings(os.environ, args.config)
    if args.max is not None and args.max < 1:
        raise SettingsError("--max must be >= 1")
    try:
        follow_alerts(settings, args.from_beginning, args.follow, max_messages=args.max)
    except KafkaUnavailableError as exc:
        _err(f"error: {exc}")
        return 1
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cli_register(subparsers: Any) -> None:
    """Add the ``produce`` and ``alerts`` subcommands to the ``churn-detector`` parser."""
    p = subparsers.add_parser(
        "produce",
        help="send an events file to the Kafka events topic, keyed by team",
        description="Send each line of a JSONL (or .parquet) events file to the events topic "
        "(kafka.events_topic, default usage-events), in file order, keyed by the event's team id "
        "so a team lives in one partition (Kafka's default partitioner). Lines that are not "
        "valid events are sent without a key; the worker sends them to the dead-letter topic. "
        "The topic is created with engine.partitions partitions if missing. Broker address and "
        "security come from DETECTOR_KAFKA_* variables or --config.",
    )
    p.add_argument("events", type=Path, metavar="EVENTS", help="events file (.jsonl or .parquet)")
    p.add_argument("--topic", help="topic to send to (default: kafka.events_topic)")
    p.add_argument("--config", type=Path, help="JSON config file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_produce)

    p = subparsers.add_parser(
        "alerts",
        help="print churn alerts from the Kafka alerts topic as JSON lines",
        description="Print the alerts topic (kafka.alerts_topic, default churn-alerts), one "
        "compact CloudEvents JSON object per line on stdout. Without --follow it stops when "
        "caught up; with --from-beginning it starts at the oldest retained alert, otherwise at "
        "the end (so `alerts` alone prints nothing; use `alerts --from-beginning` for what is "
        "there, `alerts --follow` to wait for new ones). No consumer group, no commits.",
    )
    p.add_argument("--follow", "-f", action="store_true", help="keep waiting for new alerts")
    p.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest retained alert"
    )
    p.add_argument("--max", type=int, metavar="N", help="stop after N alerts")
    p.add_argument("--config", type=Path, help="JSON config file")
    p.set_defaults(func=cmd_alerts)
