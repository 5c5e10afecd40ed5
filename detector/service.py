"""The streaming service: a Faust worker around the engine.

Two stages run in one worker process:

* **ingest** (aiokafka, its own consumer group): reads ``usage-events``, validates each
  message, sends bad input to the dead-letter topic with the original bytes, the reason and
  the source offset, and packs good events into bundles re-keyed by team partition
  (``<app>-bundles``). Source offsets are committed only after the bundles are acknowledged.
  With ``kafka.events_keyed_by_team`` a keyed message is routed by its key, unparsed, and
  the engine validates it (bad input is then dead-lettered in the engine's transaction).
  A Segment message without ``context.groupId`` gets its user's team from their latest
  group call (:mod:`detector.memberships`); ingest shares the memberships it learns through
  a compacted topic (``<app>-memberships``) that every worker reads whole at start and
  follows after.
* **engine** (Faust agent): one :class:`PartitionEngine` per bundle partition, held in
  memory. Each bundle is applied and what it caused (alerts, dead letters) is collected, and
  the engine notes the entities it changed; when Faust commits the partition's transaction
  (every :data:`COMMIT_INTERVAL_S`), all of it goes in at once, followed by the records of
  the changed entities (each once) and one meta record with the offsets that state
  reflects, the state to a compacted changelog topic (``<app>-state-changelog``); Faust
  commits the bundle offsets in the same transaction.
  In live mode ingest waits up to :data:`INGEST_LINGER_S` after a short read, so bundles
  stay large. A partition's new owner first fences the previous one (Faust starts the
  partition's transactional producer), then loads its local snapshot of the changelog
  (RocksDB via rocksdict, :mod:`detector.state_snapshot`; only committed records, written
  after each commit) and reads the changelog from the snapshot's offset (from the
  beginning without one) to its high watermark (:mod:`detector.changelog`). The offsets
  stored with the state make redelivered bundles and events harmless.

Why not a Faust table: a table write is buffered and may reach Kafka after the offsets
commit (lost on ``kill -9``), and Faust's table recovery reads only to the last stable
offset, so a predecessor's unresolved transaction hides committed state; both lost events
in the fault tests (tests/integration/test_worker.py).

Why bundles: measured on the 2-core development machine, every message that crosses
Faust's stream machinery costs ~130 µs (≈7k messages/s, even with ``take_events``), while
raw aiokafka reads ~300k/s. Paying that cost once per bundle of events instead of once per
event is what lets the detector run at the throughput DESIGN.md budgets for.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import itertools
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Container, Iterable, Iterator
from typing import Any, NoReturn, TypeVar

import faust
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
)
from rocksdict import WriteBatch

from . import changelog as state_changelog
from . import health_view, heap, state_snapshot, web
from .bundles import Bundle, Columns, UndecodableBundle, decode_bundle, encode_tick
from .codec import (
    decode_team,
    decode_user,
    dumps_held,
    encode_partition,
    encode_team,
    encode_user,
    restore_partition,
)
from .engine import PartitionEngine
from .events import TEAM_UPDATED, EventFields, Invalid, decode_fields
from .kafka_clients import KafkaUnavailableError, aiokafka_config, ensure_topics
from .memberships import Memberships
from .metrics import ServiceMetrics
from .partitioning import partition_for, partition_for_key
from .pseudonyms import Pseudonyms
from .quarantine import quarantined
from .replay import dead_letter
from .settings import Settings
from .snapshot_store import PartitionSnapshot, SnapshotStore
from .state import TeamState, UserState
from .state_snapshot import ChangelogRead, Pending

log = logging.getLogger("churn_detector")

#: dead-letter reason of a bundle-topic message this release cannot read
UNDECODABLE_BUNDLE = "undecodable_bundle"
#: exit status when the in-memory state can no longer be trusted to match the commits
EXIT_STATE_UNSAFE = 70
#: ingest batches read ahead of the oldest one still waiting for its bundles' acks
INGEST_BATCHES_IN_FLIGHT = 4
#: live mode: how long ingest keeps reading after a short batch before it sends its bundles.
#: Every bundle costs the engine stage a fixed amount (Faust's per-message path, the apply
#: and its records); at 15-30k events/s the source arrives in slices of a few hundred events
#: over 4 partitions, and bundling each slice on its own made ~60-event bundles.
INGEST_LINGER_S = 0.03
#: how long ingest reads the shared memberships at start before it starts without the rest
MEMBERSHIPS_READ_S = 60.0
#: how recently ingest must have read each of its source partitions for idle time to count
INGEST_READING_S = 10.0
#: keyed messages whose key must be their team id before ingest suggests the keyed option
KEYS_TO_CHECK = 10_000
#: how often each partition's transaction commits (see build_app)
COMMIT_INTERVAL_S = 0.5
#: restores of a bundle's partition tried before the worker exits (a restart restores it),
#: the first retry after RESTORE_RETRY_S, each later one after twice the wait before it
RESTORE_ATTEMPTS = 4
RESTORE_RETRY_S = 2.0
_META = b"m:"
#: an entity held by an engine: a team or a user
E = TypeVar("E")
_TEAM = b"t:"
_USER = b"u:"
_SEP = b"\n"  # between the offsets and the engine's partition record in the meta record
#: net new container objects between two young-generation collections (CPython: 700)
GC_YOUNG_THRESHOLD = 30_000
#: longest time the broker may hold a fetch of the engine's consumer with no data for it
#: (Faust sets 1,500 ms; see _fetch_bundles_without_long_polls)
BUNDLE_FETCH_MAX_WAIT_MS = 100


@contextlib.contextmanager
def _without_gc() -> Iterator[None]:
    """Make many objects without the cyclic collector, which would walk every tracked object
    again and again while a million entities are built (measured on the scale benchmark's
    snapshot of 1M users / 100k teams: load and build 12.9 s with it, 4.7 s without)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _fetch_bundles_without_long_polls() -> None:
    """Make the broker answer the engine's fetches within :data:`BUNDLE_FETCH_MAX_WAIT_MS`.

    aiokafka keeps one fetch in flight per broker and leaves out of it the partitions whose
    records are not consumed yet. Once the engine holds bundles of every bundle partition,
    the next fetch asks only for partitions with nothing new (Faust's leader topic, which
    never has data), and the broker holds it for Faust's fixed ``fetch_max_wait_ms`` of
    1,500 ms; bundles that arrive or are consumed meanwhile wait for it. During a catch-up
    the engine then applied a burst and sat idle ~1.4 s in every ~1.6 s (worker_quick,
    consumer instrumented: ``getmany`` 1.0 s empty, then 8 bundles after 0.35 s)."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = AIOKafkaConsumerThread._create_worker_consumer
    if getattr(create, "short_fetch_wait", False):
        return

    def create_worker_consumer(self: Any, transport: Any) -> AIOKafkaConsumer:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = BUNDLE_FETCH_MAX_WAIT_MS  # read when it starts
        return consumer

    create_worker_consumer.short_fetch_wait = True  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]


def _collect_cycles_less_often() -> None:
    """Run the cyclic collector after :data:`GC_YOUNG_THRESHOLD` net new container objects
    instead of CPython's 700. Ingest holds a few batches of records, decoded events and
    bundles at a time (~10 objects per event): with the default they outlived the young
    generations, and the full collections they then triggered took 12 of the worker's 34
    CPU-seconds over 2.1M events (benchmarks/worker_quick.py; 0.4-0.8 s with 10k-100k).
    Garbage is still freed by reference counting at once; only cycles wait for the next
    collection, and there are few (at most ~700 objects found per collection)."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _exit_state_unsafe(message: str, *args: Any) -> NoReturn:
    """Exit at once: the engine holds changes that no record describes any more, or cannot
    apply the bundle in hand, and Faust would go on to commit the offsets of those bundles.
    The open transactions are aborted; a restart restores the committed state."""
    log.critical(message, *args, exc_info=True)
    logging.shutdown()
    os._exit(EXIT_STATE_UNSAFE)


def due_idle_ticks(
    last_seen: dict[int, float],
    owned: Container[int],
    now: float,
    every_s: float,
    reading: bool,
) -> list[tuple[int, float]]:
    """The owned partitions idle for ``every_s`` or more, with their idle seconds; their idle
    time starts over at ``now``. While ingest is not ``reading``, none is due and the time
    is dropped.

    >>> seen = {0: 0.0, 1: 8.0, 2: 0.0}
    >>> due_idle_ticks(seen, {0, 1}, 10.0, 5.0, True), seen
    ([(0, 10.0)], {0: 10.0, 1: 8.0, 2: 0.0})
    >>> due_idle_ticks(seen, {0, 1}, 20.0, 5.0, False), seen
    ([], {0: 20.0, 1: 20.0, 2: 0.0})
    """
    due = []
    for partition, last in last_seen.items():
        if partition in owned and now - last >= every_s:
            last_seen[partition] = now
            if reading:
                due.append((partition, now - last))
    return due


def bundle_topic_name(settings: Settings) -> str:
    return f"{settings.service.app_id}-bundles"


def memberships_topic_name(settings: Settings) -> str:
    return f"{settings.service.app_id}-memberships"


class Ingest:
    """Source topic → bundles re-keyed by team partition (+ dead letters). At-least-once."""

    def __init__(
        self, settings: Settings, partitions: int, membership_partitions: int | None = None
    ) -> None:
        self.settings = settings
        self.partitions = partitions
        #: partitions of the memberships topic (an existing topic keeps its own count)
        self.membership_partitions = membership_partitions or partitions
        self.max_bytes = settings.engine.max_event_bytes
        self.consumed = 0
        self.invalid_reasons: dict[str, int] = {}
        #: next offset to read per source partition, and the consumer (for the lag metric)
        self.positions: dict[int, int] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.metrics: ServiceMetrics | None = None
        self.producer: AIOKafkaProducer | None = None
        self._partition_of: dict[bytes, int] = {}
        #: keyed messages left to check before suggesting kafka.events_keyed_by_team
        self.keys_to_check = 0 if settings.kafka.events_keyed_by_team else KEYS_TO_CHECK
        #: users' teams from group calls: this worker's and, through the topic, the others'
        self.memberships = Memberships()
        self.memberships_topic = memberships_topic_name(settings)
        #: memberships this worker shared that have not come back from the topic yet
        self.sharing: dict[str, str] = {}

    @property
    def invalid(self) -> int:
        """Messages sent to the dead-letter topic by ingest."""
        return sum(self.invalid_reasons.values())

    async def run(self) -> None:
        k = self.settings.kafka
        common = aiokafka_config(k)
        consumer = AIOKafkaConsumer(
            k.events_topic,
            group_id=f"{self.settings.service.app_id}-ingest",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 << 20,
            fetch_max_bytes=16 << 20,
            **common,
        )
        producer = AIOKafkaProducer(
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=1 << 20,
            max_request_size=2 << 20,
            **common,
        )
        shared = AIOKafkaConsumer(enable_auto_commit=False, **common)  # no group: all of it
        started: list[Any] = []
        following: asyncio.Future[None] | None = None
        #: commits of batches whose bundles are not yet all acknowledged, oldest first
        settling: collections.deque[asyncio.Future[None]] = collections.deque()
        try:
            for client in (shared, consumer, producer):
                await client.start()
                started.append(client)
            await self._read_memberships(shared)
            following = asyncio.ensure_future(self._follow_memberships(shared))
            self.producer, self.consumer = producer, consumer
            while True:
                batch = await self._read_batch(consumer)
                if batch:
                    sent = await self._forward(batch, producer)
                    read = {tp: msgs[-1].offset + 1 for tp, msgs in batch.items()}
                    self.positions.update((tp.partition, n) for tp, n in read.items())
                    if self.metrics is not None:
                        oldest = min(msgs[0].timestamp for msgs in batch.values())
                        self.metrics.observe("ingest", time.time() - oldest / 1000)
                    # The next batches are read and validated while this one is acknowledged
                    # (with one batch in flight the worker sat idle in between: 47k events/s
                    # wall against 66k per CPU-second); commits stay in order, each waits
                    # for the one before.
                    while len(settling) >= INGEST_BATCHES_IN_FLIGHT:
                        await settling.popleft()
                    previous = settling[-1] if settling else None
                    settling.append(
                        asyncio.ensure_future(
                            self._commit_when_sent(consumer, sent, read, previous)
                        )
                    )
        finally:
            self.producer = self.consumer = None
            # Commits still waiting end before the consumer stops under them (a failure left
            # unread is logged as never retrieved); their batches are read again from the
            # last commit.
            for commit in settling:
                commit.cancel()
            if following is not None:
                following.cancel()
                settling.append(following)
            await asyncio.gather(*settling, return_exceptions=True)
            for client in (consumer, producer, shared):
                if client in started:
                    await client.stop()

    async def _read_memberships(self, shared: AIOKafkaConsumer) -> None:
        """Read the memberships topic from its start to its current end (before any event:
        a message without its team may need a membership learned long ago)."""
        tps = [TopicPartition(self.memberships_topic, p) for p in range(self.membership_partitions)]
        shared.assign(tps)
        await shared.seek_to_beginning(*tps)
        ends = await shared.end_offsets(tps)
        started = time.monotonic()
        told = started
        while True:
            positions = [await shared.position(tp) for tp in tps]
            left = sum(max(0, ends[tp] - at) for at, tp in zip(positions, tps, strict=True))
            if not left:
                break
            now = time.monotonic()
            if now - started >= MEMBERSHIPS_READ_S:
                log.warning(
                    "ingest: %d memberships not read after %.0f s; starting without them (read "
                    "on meanwhile): a call whose user's group call is among them is "
                    "dead-lettered as missing_field:team_id",
                    left,
                    now - started,
                )
                return
            if now - told >= 10.0:
                told = now
                log.info("ingest: reading memberships, %d records left", left)
            self._learn_memberships(await shared.getmany(timeout_ms=500))
        if self.memberships:
            log.info(
                "ingest: %d memberships of users read in %.1f s",
                len(self.memberships),
                time.monotonic() - started,
            )

    async def _follow_memberships(self, shared: AIOKafkaConsumer) -> None:
        """The memberships the other workers learn, as they come."""
        while True:
            try:
                self._learn_memberships(await shared.getmany(timeout_ms=1000))
            except asyncio.CancelledError:
                raise
            except KafkaError as exc:  # the broker is away: the client reconnects
                log.warning("ingest: memberships not read (%r), retrying", exc)
                await asyncio.sleep(1.0)

    def _learn_memberships(self, batch: dict[Any, list[Any]]) -> None:
        """Take the shared memberships; until this worker's latest record of a user comes
        back (a user's records are in order in one partition), what comes before it is older
        than what this worker knows, and is skipped."""
        learn, sharing = self.memberships.learn, self.sharing
        for messages in batch.values():
            for msg in messages:
                try:
                    user = msg.key.decode()
                    team = None if msg.value is None else msg.value.decode()
                except (AttributeError, UnicodeDecodeError):
                    continue  # not a record of ours
                ours = sharing.get(user)
                if ours is None:
                    learn(user, team)
                elif ours == team:
                    del sharing[user]  # ours came back: the next records are newer

    async def _read_batch(self, consumer: AIOKafkaConsumer) -> dict[Any, list[Any]]:
        """Up to ``batch_size`` messages: what is there, and in live mode (a short read) what
        arrives within :data:`INGEST_LINGER_S` after it, so bundles stay large."""
        size = self.settings.service.batch_size
        batch = await consumer.getmany(timeout_ms=200, max_records=size)
        count = sum(len(messages) for messages in batch.values())
        deadline = time.monotonic() + INGEST_LINGER_S
        while 0 < count < size:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            more = await consumer.getmany(timeout_ms=left_ms, max_records=size - count)
            for tp, messages in more.items():
                batch.setdefault(tp, []).extend(messages)
                count += len(messages)
        return batch

    async def _commit_when_sent(
        self,
        consumer: AIOKafkaConsumer,
        sent: list[Any],
        offsets: dict[Any, int],
        previous: asyncio.Future[None] | None,
    ) -> None:
        """Commit source offsets once the bundles and dead letters made from them are stored
        (and the batch before has committed)."""
        if previous is not None:
            await previous
        await asyncio.gather(*sent)
        try:
            await consumer.commit(offsets)
        except (GroupAuthorizationFailedError, TopicAuthorizationFailedError):
            raise  # no later commit can succeed either
        except KafkaError as exc:
            # The source partitions moved to another worker meanwhile (CommitFailedError, or
            # IllegalStateError once they are revoked here), or the broker refused this one
            # commit: their owner reads them again from the last commit, and the engine
            # skips what it has already applied.
            log.info("ingest commit skipped (%r): a later one, or the next owner, covers it", exc)

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Stop the ingest ``task`` and leave its consumer group at once (not after the
        session timeout), so another worker takes the source partitions over quickly."""
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def reading(self) -> bool:
        """Whether the broker answered a fetch of every source partition ingest owns within
        :data:`INGEST_READING_S` (with messages or without). A fetch is not made while read
        messages wait for ingest, so a stalled ingest, or a broker it cannot reach, is not
        reading: an engine partition without bundles then is cut off from its events, not
        idle, and letting its time run would make those events late when they come."""
        consumer = self.consumer
        if consumer is None:
            return False
        oldest = time.time() * 1000 - INGEST_READING_S * 1000
        for tp in consumer.assignment():
            polled = consumer.last_poll_timestamp(tp)
            if polled is None or polled < oldest:
                return False
        return True

    async def send_tick(self, partition: int, elapsed_ms: int) -> None:
        if self.producer is not None:
            await self.producer.send_and_wait(
                bundle_topic_name(self.settings), encode_tick(elapsed_ms), partition=partition
            )

    async def _forward(self, batch: dict[Any, list[Any]], producer: AIOKafkaProducer) -> list[Any]:
        """Queue the batch's bundles and dead letters; returns the futures of their acks."""
        k = self.settings.kafka
        topic = bundle_topic_name(self.settings)
        per_partition: dict[int, Columns] = {}
        #: this batch's teams -> their partition's columns (one look-up per event)
        columns_of: dict[str, Columns] = {}
        #: keyed source: this batch's message keys -> their partition's columns
        columns_by_key: dict[bytes, Columns] = {}
        keyed = k.events_keyed_by_team
        futures = []
        max_bytes = self.max_bytes
        team_of = self.memberships.team_of
        for tp, messages in batch.items():
            source = tp.partition
            for msg in messages:
                raw = msg.value
                if raw is None:
                    raw = b""
                key = msg.key
                # keyed: the engine parses and validates it; one too big to be an event is
                # dead-lettered here (in a bundle alone it could be over a request's size)
                if keyed and key is not None and len(raw) <= max_bytes:
                    columns = columns_by_key.get(key)
                    if columns is None:
                        columns = columns_by_key[key] = self._columns(per_partition, key)
                else:
                    decoded = decode_fields(raw, max_bytes, team_of)
                    if isinstance(decoded, Invalid):
                        reasons = self.invalid_reasons
                        reasons[decoded.reason] = reasons.get(decoded.reason, 0) + 1
                        record = dead_letter(
                            raw,
                            decoded,
                            {"topic": tp.topic, "partition": source, "offset": msg.offset},
                        )
                        futures.append(
                            await producer.send(k.dlq_topic, orjson.dumps(record), key=key)
                        )
                        continue
                    if decoded[1] == TEAM_UPDATED and self.memberships.observe(decoded):
                        user, team = decoded[3], decoded[4]
                        assert user is not None  # observed: a user's group call
                        self.sharing[user] = team
                        futures.append(
                            await producer.send(
                                self.memberships_topic, team.encode(), key=user.encode()
                            )
                        )
                    columns = columns_of.get(decoded[4])
                    if columns is None:
                        columns = self._columns(per_partition, decoded[4].encode())
                        columns_of[decoded[4]] = columns
                    if not keyed:  # a keyed source's bundles carry original bytes only
                        columns.events.append(decoded)
                        if key is not None and self.keys_to_check:
                            self._check_key(key, decoded[4])
                columns.sources.append(source)
                columns.offsets.append(msg.offset)
                columns.raws.append(raw)
            self.consumed += len(messages)
        for target, columns in per_partition.items():
            for bundle in columns.encoded():
                futures.append(await producer.send(topic, bundle, partition=target))
        return futures

    def _check_key(self, key: bytes, team_id: str) -> None:
        """Count a keyed message whose key is its team id; once :data:`KEYS_TO_CHECK` in a
        row are, say (once) that ``kafka.events_keyed_by_team`` would spare parsing them
        here. A key that is not the team id ends the check: nothing to suggest."""
        if key != team_id.encode():
            self.keys_to_check = 0
            return
        self.keys_to_check -= 1
        if not self.keys_to_check:
            log.info(
                "the last %d message keys were all their event's team id: with "
                "DETECTOR_KAFKA_EVENTS_KEYED_BY_TEAM=true ingest routes them without parsing "
                "(about 20%% more events/s per worker), if every producer keys by team id",
                KEYS_TO_CHECK,
            )

    def _columns(self, per_partition: dict[int, Columns], team_key: bytes) -> Columns:
        """The columns of the engine partition of ``team_key`` (a team id, UTF-8), whose
        partition is remembered for up to a million teams."""
        target = self._partition_of.get(team_key, -1)
        if target < 0:
            target = partition_for_key(team_key, self.partitions)
            if len(self._partition_of) < 1_000_000:
                self._partition_of[team_key] = target
        columns = per_partition.get(target)
        if columns is None:
            columns = per_partition[target] = Columns()
        return columns


class RebalancedDuringRestore(Exception):
    """A rebalance began or ended while a partition was restored, or the partition is not
    this worker's: the engine restored is thrown away (another worker may own the partition
    now and move its state on)."""


class EngineRuntime:
    """The engines this worker owns, restored on assignment from the local snapshot (if any)
    and the state changelog after it."""

    def __init__(
        self,
        settings: Settings,
        read_changelog: Callable[[int, int], Awaitable[ChangelogRead]],
        snapshots: SnapshotStore | None = None,
    ) -> None:
        self.settings = settings
        #: committed state records of one partition from an offset to the end
        self.read_changelog = read_changelog
        self.snapshots = snapshots
        self.snapshot_of: dict[int, PartitionSnapshot] = {}
        #: per partition: state records sent, waiting for their commit to reach the snapshot
        self.pending: dict[int, Pending[WriteBatch]] = {}
        self.engines: dict[int, PartitionEngine] = {}
        #: per partition: bundle offset applied, and per source partition the offset applied
        self.bundle_offset: dict[int, int] = {}
        self.source_offsets: dict[int, dict[int, int]] = {}
        self.last_seen_wall: dict[int, float] = {}
        #: partitions whose state moved since their meta record was last queued
        self.meta_due: set[int] = set()
        #: per partition: the teams and users whose records the open transaction carries
        #: (due again if it fails to commit)
        self.sealed: dict[int, tuple[set[str], set[str]]] = {}
        self._restoring = asyncio.Lock()
        #: revokes and assignments so far: a restore that saw one may be of a partition this
        #: worker no longer owns
        self.generation = 0
        #: bundle partitions of the current assignment (None: none made, as without Kafka,
        #: where every partition is this runtime's)
        self.assigned: set[int] | None = None
        self.pseudonyms = Pseudonyms.from_settings(settings.service)
        #: records written and their bytes, per kind (team, user): the mean record size
        self.record_sizes = {_TEAM: [0, 0], _USER: [0, 0]}
        #: work done (records restored and written) since the heap was last released
        self.heap = heap.HeapKeeper()
        #: a misrouted event has been logged (once per process: the DLQ has every one)
        self.misrouted_warned = False

    def drop(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.engines.pop(p, None)
            self.bundle_offset.pop(p, None)
            self.source_offsets.pop(p, None)
            self.last_seen_wall.pop(p, None)
            self.meta_due.discard(p)
            self.sealed.pop(p, None)
            # records not yet known committed are left out: the snapshot stays a committed
            # prefix, and the next owner reads the rest from the changelog
            self.pending.pop(p, None)
            snapshot = self.snapshot_of.pop(p, None)
            if snapshot is not None:
                snapshot.close()

    def revoked(self, partitions: Iterable[int]) -> None:
        """A rebalance takes ``partitions`` away. Their engines stay until the assignment
        (Faust committed their state first); a restore in flight is thrown away."""
        self.generation += 1
        if self.assigned is not None:
            self.assigned.difference_update(partitions)

    def reassigned(self, partitions: Iterable[int]) -> list[int]:
        """The rebalance's assignment: the engines of other partitions are dropped (their
        partitions returned); a restore in flight is thrown away."""
        self.generation += 1
        self.assigned = set(partitions)
        gone = [p for p in self.engines if p not in self.assigned]
        self.drop(gone)
        return gone

    async def ensure(self, partition: int) -> PartitionEngine:
        """The partition's engine, restored if this worker has none yet;
        :class:`RebalancedDuringRestore` if a rebalance overtook the restore."""
        async with self._restoring:
            engine = self.engines.get(partition)
            if engine is None:
                generation = self.generation
                engine = await self._restore(partition)
                if generation != self.generation or (
                    self.assigned is not None and partition not in self.assigned
                ):
                    self.drop([partition])
                    raise RebalancedDuringRestore(
                        f"partition {partition}: a rebalance overtook its restore, thrown away"
                    )
                self.engines[partition] = engine
                self.last_seen_wall[partition] = time.monotonic()
            return engine

    async def ensure_for_bundle(self, partition: int) -> PartitionEngine:
        """:meth:`ensure` before a bundle of the partition is applied, retried with backoff;
        if it still fails (the broker or the disk is gone, or rebalances keep overtaking it),
        the worker exits. Raising is not an option: Faust acks the bundle of an agent that
        raised and restarts the agent, and the bundle's offset would commit with the next
        transaction, the bundle never applied."""
        for attempt in range(RESTORE_ATTEMPTS - 1):
            try:
                return await self.ensure(partition)
            except Exception as exc:
                wait_s = RESTORE_RETRY_S * 2**attempt
                log.warning(
                    "partition %s: restore failed (%r), retrying in %.0f s", partition, exc, wait_s
                )
                await asyncio.sleep(wait_s)
        try:
            return await self.ensure(partition)
        except Exception:
            _exit_state_unsafe(
                "partition %s: restore failed %d times; exiting", partition, RESTORE_ATTEMPTS
            )

    async def _restore(self, partition: int) -> PartitionEngine:
        """The local snapshot (checked against the changelog), then the changelog after it;
        without a usable snapshot the whole changelog partition."""
        snapshot = self.snapshots.open(partition) if self.snapshots is not None else None
        try:
            return await self._restore_with(partition, snapshot)
        except BaseException:
            if snapshot is not None:  # e.g. the broker is down: the retry opens it again
                snapshot.close()
            raise

    async def _restore_with(
        self, partition: int, snapshot: PartitionSnapshot | None
    ) -> PartitionEngine:
        started = time.monotonic()
        loaded = None
        if snapshot is not None:
            try:
                with _without_gc():
                    loaded = snapshot.load()
            except Exception as exc:  # what it holds is unusable and could not be wiped
                self._without_snapshot(partition, snapshot, exc)
                snapshot = None
        position, base = loaded if loaded is not None else (None, {})
        read = await self.read_changelog(partition, state_snapshot.read_from(position))
        engine: PartitionEngine | None = None
        if position is not None:
            if state_snapshot.continues(position, base.get(position.last_key), read):
                try:
                    engine = self._build(partition, state_snapshot.merged(base, read))
                except Exception as exc:  # a record damaged on disk
                    log.warning("partition %s: snapshot does not decode (%r)", partition, exc)
            else:
                log.warning("partition %s: snapshot does not match the changelog", partition)
            if engine is None:
                assert snapshot is not None
                try:
                    snapshot.wipe()
                except Exception as exc:
                    self._without_snapshot(partition, snapshot, exc)
                    snapshot = None
                position, base = None, {}
                read = await self.read_changelog(partition, 0)
        if engine is None:
            engine = self._build(partition, state_snapshot.merged(base, read))
        self.heap.add(len(base) + len(read.latest), time.monotonic())
        if snapshot is not None:
            after = state_snapshot.after_read(position, read)
            try:
                if after is not None:
                    snapshot.write(read.latest.items(), after)
            except Exception as exc:
                self._without_snapshot(partition, snapshot, exc)
            else:
                self.snapshot_of[partition] = snapshot
                self.pending[partition] = Pending[WriteBatch](snapshot.topic, partition)
        log.info(
            "partition %s: restored %d teams, %d users, bundle offset %s, in %.1f s "
            "(snapshot: %s; changelog read from offset %s to %s)",
            partition,
            len(engine.teams),
            len(engine.users),
            self.bundle_offset[partition],
            time.monotonic() - started,
            "none" if position is None else f"{len(base)} records",
            state_snapshot.read_from(position),
            read.end,
        )
        return engine

    @staticmethod
    def _without_snapshot(partition: int, snapshot: PartitionSnapshot, exc: Exception) -> None:
        """A snapshot that cannot be written or wiped (e.g. disk full) fails no restore: the
        changelog has it all. It is closed, unused until the next restore checks it again."""
        log.warning(
            "partition %s: snapshot write failed (%r), restoring without it", partition, exc
        )
        snapshot.close()

    def _build(self, partition: int, records: dict[bytes, bytes]) -> PartitionEngine:
        with _without_gc():
            return self._decode(partition, records)

    def _decode(self, partition: int, records: dict[bytes, bytes]) -> PartitionEngine:
        engine = PartitionEngine(self.settings.engine)
        engine.track_changes()
        teams: dict[str, TeamState] = {}
        users: dict[str, UserState] = {}
        meta = records.get(_META + str(partition).encode())
        for key, value in records.items():
            if key.startswith(_TEAM):
                teams[key[2:].decode()] = decode_team(value, key)
            elif key.startswith(_USER):
                users[key[2:].decode()] = decode_user(value, key)
        offsets: dict[str, Any] = {"bundle": -1, "sources": {}}
        engine_meta: bytes | None = None
        if meta is not None:
            head, _, engine_meta = meta.partition(_SEP)
            offsets = orjson.loads(head)
        restore_partition(engine, engine_meta, teams, users)
        self.bundle_offset[partition] = int(offsets["bundle"])
        self.source_offsets[partition] = {int(k): v for k, v in offsets["sources"].items()}
        return engine

    def queued(self, partition: int, sent: Any) -> None:
        """The bundle's records are in its transaction; ``sent``: the future of the last
        one (the partition's meta record), which gives its changelog offset."""
        pending = self.pending.get(partition)
        if pending is not None:
            pending.sent(sent)

    def save_committed(self, committed: dict[int, int]) -> None:
        """Write the state records of bundles whose transaction has committed (per
        partition, Faust's committed bundle offset) to the partitions' snapshots."""
        for partition, bundle_committed in committed.items():
            pending, snapshot = self.pending.get(partition), self.snapshot_of.get(partition)
            if pending is None or snapshot is None:
                continue
            batches, position = pending.committed(bundle_committed)
            if position is None:
                continue
            try:
                snapshot.commit(batches, position)
            except Exception as exc:  # e.g. disk full: the changelog still has it all
                log.warning("partition %s: snapshot write failed (%r), stopped", partition, exc)
                pending.stop()

    def apply(
        self, partition: int, offset: int, value: bytes
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Apply one bundle (its engine restored); returns (alerts, dead letters).

        Input already applied is skipped."""
        engine = self.engines[partition]
        self.last_seen_wall[partition] = time.monotonic()
        if offset <= self.bundle_offset[partition]:
            return [], []
        try:
            bundle = decode_bundle(value)
        except UndecodableBundle as exc:
            # nothing applied yet: dead-letter it whole and go on (applying it again after
            # a restart would fail again, for ever)
            log.error(
                "partition %s: bundle %s is not readable (%s), dead-lettered",
                partition,
                offset,
                exc,
            )
            invalid = engine.stats.invalid
            invalid[UNDECODABLE_BUNDLE] = invalid.get(UNDECODABLE_BUNDLE, 0) + 1
            self.bundle_offset[partition] = offset
            self.meta_due.add(partition)
            bundle_at = {
                "topic": bundle_topic_name(self.settings),
                "partition": partition,
                "offset": offset,
            }
            return [], [dead_letter(value, Invalid(UNDECODABLE_BUNDLE, str(exc)), bundle_at)]
        engine.watermark.limit_ms = (
            int(time.time() * 1000) + self.settings.engine.live_clock_skew_s * 1000
        )
        dead: list[dict[str, Any]] = []
        if bundle.tick_ms:
            engine.advance_idle(bundle.tick_ms)
        else:
            applied = self.source_offsets[partition]
            process = engine.process
            invalid = engine.stats.invalid
            events: Iterable[EventFields | Invalid] = (
                self._decoded(partition, bundle) if bundle.events is None else bundle.events
            )
            for index, (source, source_offset, event) in enumerate(
                zip(bundle.sources, bundle.offsets, events, strict=True)
            ):
                if source_offset <= applied.get(source, -1):
                    continue
                applied[source] = source_offset
                if isinstance(event, Invalid):
                    rejected: Invalid | None = event
                    invalid[event.reason] = invalid.get(event.reason, 0) + 1
                else:
                    # a poison event is dead-lettered (detector.quarantine), the rest flows
                    try:
                        rejected = process(event)
                    except Exception as exc:
                        rejected = quarantined(exc, invalid)
                if rejected is not None:
                    dead.append(
                        dead_letter(
                            bundle.raw(index),
                            rejected,
                            {
                                "topic": self.settings.kafka.events_topic,
                                "partition": source,
                                "offset": source_offset,
                            },
                        )
                    )
        self.bundle_offset[partition] = offset
        self.meta_due.add(partition)
        self.heap.add(0, time.monotonic())  # the records come at the commit; the work is now
        return self.pseudonyms.alerts(engine.drain_alerts()), dead

    def _decoded(self, partition: int, bundle: Bundle) -> Iterator[EventFields | Invalid]:
        """The fields of a bundle of original bytes (a keyed source: ingest did not parse
        them), or why an event is rejected: invalid, or its team belongs to another
        partition than its message key (``misrouted``: applying it here would split the
        team's state between two engines)."""
        max_bytes = self.settings.engine.max_event_bytes
        partitions = self.settings.engine.partitions
        teams = self.engines[partition].teams
        body = bundle.body
        starts = itertools.accumulate(bundle.lengths, initial=0)
        # all at once, as the fields of a bundle from ingest are: decoded one by one between
        # the applies, the new entities' strings were spread over the heap among each
        # event's short-lived objects (scale benchmark, 1M users: RSS +970 B per user
        # against +682 B)
        everything = [
            decode_fields(body[start : start + length], max_bytes)
            for start, length in zip(starts, bundle.lengths, strict=False)
        ]
        for decoded in everything:
            if isinstance(decoded, Invalid) or decoded[4] in teams:
                yield decoded
                continue
            home = partition_for(decoded[4], partitions)
            if home != partition:
                decoded = Invalid(
                    "misrouted",
                    f"team {decoded[4]!r:.80} belongs to partition {home}, its message key "
                    f"sent it to {partition} (with kafka.events_keyed_by_team the key must be "
                    "the team id)",
                )
                if not self.misrouted_warned:
                    self.misrouted_warned = True
                    log.warning(
                        "an event's message key is not its team id (dead-lettered as "
                        "misrouted); if the producers key events otherwise, set "
                        "DETECTOR_KAFKA_EVENTS_KEYED_BY_TEAM=false"
                    )
            yield decoded

    def team_view(self, team_id: str) -> dict[str, Any] | None:
        for engine in self.engines.values():
            team = engine.teams.get(team_id)
            if team is not None:
                return health_view.team(team, engine)
        return None

    def user_view(self, user_id: str) -> dict[str, Any] | None:
        return health_view.find_user(self.engines.values(), user_id, self.pseudonyms)

    def state_bytes(self) -> int:
        """Estimated bytes of the state held: entities × their mean encoded record size.

        What a new owner of these partitions reads back from the changelog (plus compaction
        slack); kept from running sums so a scrape costs nothing per entity.
        """
        total = 0.0
        for kind, held in (
            (_TEAM, sum(len(e.teams) for e in self.engines.values())),
            (_USER, sum(len(e.users) for e in self.engines.values())),
        ):
            written, size = self.record_sizes[kind]
            if written:
                total += held * size / written
        return int(total)

    def _encoded(
        self, partition: int, teams: Iterable[str], users: Iterable[str]
    ) -> Iterator[tuple[bytes, bytes | None]]:
        """The records of these entities of ``partition``, as they are now; None (a
        tombstone: compaction deletes the key) for one the engine has dropped."""
        engine = self.engines[partition]
        yield from self._records(_TEAM, teams, engine.teams, encode_team)
        yield from self._records(_USER, users, engine.users, encode_user)

    def _records(
        self, prefix: bytes, ids: Iterable[str], held: dict[str, E], encode: Callable[[E], bytes]
    ) -> Iterator[tuple[bytes, bytes | None]]:
        """:meth:`_encoded` for one kind of entity (``prefix`` names it in keys and sizes)."""
        sizes = self.record_sizes[prefix]
        for entity_id in ids:
            key = prefix + entity_id.encode()
            entity = held.get(entity_id)
            if entity is None:
                yield key, None
                continue
            record = encode(entity)
            sizes[0] += 1
            sizes[1] += len(record)
            yield key, record

    def take_meta(self, partition: int) -> tuple[bytes, bytes] | None:
        """The partition's meta record (the offsets its state reflects, and the partition-wide
        engine state), if the state moved since the last one was taken; else None.

        Written once per transaction, after the records of the bundles it commits and not
        with every bundle: it carries the population history and the risk model, and live
        bundles are small. The caller takes it together with those records (see build_app).
        """
        if partition not in self.meta_due or partition not in self.engines:
            return None
        self.meta_due.discard(partition)
        offset = self.bundle_offset[partition]
        offsets = {
            "bundle": offset,
            "sources": {str(k): v for k, v in self.source_offsets[partition].items()},
        }
        engine = self.engines[partition]
        return (
            _META + str(partition).encode(),
            orjson.dumps(offsets) + _SEP + encode_partition(engine, offset),
        )

    def commit_failed(self, partition: int) -> None:
        """The partition's last transaction did not commit: its meta record and the entities
        it carried are due again (encoded anew by the next :meth:`seal`), and the local
        snapshot stops following (behind, never wrong) until a restore."""
        teams, users = self.sealed.pop(partition, (set(), set()))
        engine = self.engines.get(partition)
        if engine is not None:
            self.meta_due.add(partition)
            engine.dirty_teams = teams | (engine.dirty_teams or set())
            engine.dirty_users = users | (engine.dirty_users or set())
        pending = self.pending.get(partition)
        if pending is not None:
            pending.stop()

    def seal(
        self, partition: int, records: list[state_changelog.Record], topic: str
    ) -> list[state_changelog.Record]:
        """A transaction's records: ``records`` (the alerts and dead letters of the applied
        bundles), then the state of every entity changed since the last transaction, each
        once and encoded now, then the partition's meta record; the state among them
        (changelog ``topic``) is held for the local snapshot until Faust has committed the
        bundles it reflects (:meth:`save_committed`).

        Encoded here, at the commit, not after each bundle: during catch-up a transaction
        spans many bundles, and encoding each changed entity after every bundle held one
        record per (bundle, team) until the commit (10^5 records and 60 MB per partition
        in the scale benchmark, worker RSS 2.7 GB at 200k users). Nothing awaits between
        the meta record and the entities, so both describe the same applied bundles.

        The state is staged as a write batch: holding the records themselves until the
        commit grew the worker's RSS by 2.8-3.8 KB per user instead of 1.6 (a day close
        changes every entity: 10^5 records in flight)."""
        meta = self.take_meta(partition)
        if meta is None:
            return records
        first_state = len(records)
        changed = self.sealed[partition] = self.engines[partition].take_changes()
        records.extend(
            (topic, key, value, partition) for key, value in self._encoded(partition, *changed)
        )
        records.append((topic, meta[0], meta[1], partition))
        self.heap.add(len(records) - first_state, time.monotonic())
        pending, snapshot = self.pending.get(partition), self.snapshot_of.get(partition)
        if pending is not None and snapshot is not None and not pending.broken:
            state = [(key, value) for _, key, value, _ in records[first_state:] if key]
            pending.add(self.bundle_offset[partition], snapshot.stage(state), meta[0], len(state))
        return records

    def settled(self, partition: int) -> None:
        """The partition's last sealed transaction has committed."""
        self.sealed.pop(partition, None)


def build_app(settings: Settings) -> faust.App:
    s, k = settings.service, settings.kafka
    partitions = settings.engine.partitions
    changelog = f"{s.app_id}-state-changelog"
    counts = ensure_topics(
        k,
        {
            k.events_topic: partitions,
            k.dlq_topic: partitions,
            k.alerts_topic: partitions,
            bundle_topic_name(settings): partitions,
            changelog: partitions,
            memberships_topic_name(settings): partitions,
        },
        configs={
            # tombstones outlive every snapshot that is still used (older ones are wiped):
            # a snapshot from before a tombstone's removal would bring its entity back
            changelog: {
                "cleanup.policy": "compact",
                "delete.retention.ms": str(state_snapshot.MAX_AGE_MS),
            },
            memberships_topic_name(settings): {"cleanup.policy": "compact"},
        },
    )
    brokers = ";".join(f"kafka://{b.strip()}" for b in k.brokers.split(","))
    app = faust.App(
        s.app_id,
        broker=brokers,
        broker_credentials=_credentials(settings),
        datadir=s.state_dir,
        processing_guarantee="exactly_once",
        topic_partitions=partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        web_host=s.web_host,
        web_bind=s.web_host,  # Faust binds web_bind (default 0.0.0.0), not web_host
        web_port=s.web_port,
        web_in_thread=False,
        producer_acks=-1,
        # a commit's records go in a few large batches: with Faust's 16 KB default, a send
        # waited for the previous batch's round trip every few team records
        producer_max_batch_size=512 << 10,
        # On a rebalance or stop, finish the bundle in hand and commit every open
        # transaction, so a partition that moves is handed over with all its work.
        stream_wait_empty=True,
        # Commits on the clock only (Faust's default count, 10,000 messages, is never reached
        # first): a count-triggered commit runs inside Faust's fetch loop and stops the
        # delivery of bundles while it lasts. The interval bounds the alert latency: alerts
        # are visible to read_committed readers once their transaction commits.
        broker_commit_every=10_000,
        broker_commit_interval=COMMIT_INTERVAL_S,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
    )
    bundles = app.topic(
        bundle_topic_name(settings),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )
    ingest = Ingest(settings, partitions, counts[memberships_topic_name(settings)])

    def transactional_id(partition: int) -> str:
        """Faust's transaction for this bundle partition (it commits the bundle offsets)."""
        group = app.assignor.group_for_topic(bundles.get_topic_name())
        return f"{app.conf.id}-{group}-{partition}"

    async def restore_records(partition: int, start: int) -> ChangelogRead:
        await state_changelog.wait_fenced(app.producer, transactional_id(partition), 60)
        return await state_changelog.read_partition(k, changelog, partition, start)

    snapshots = SnapshotStore(s.state_dir, changelog) if s.state_snapshot else None
    runtime = EngineRuntime(settings, restore_records, snapshots)
    state_changelog.fault_kill.after = s.fault_kill_after_records  # test only; 0: off
    #: per partition: what the applied bundles caused (alerts, dead letters), not yet
    #: queued in the partition's transaction (see write_on_commit)
    unsent: dict[int, list[state_changelog.Record]] = {}

    def write_on_commit(producer: Any) -> None:
        """Make Faust's commit of a partition's transaction first queue in it what the
        partition's applied bundles caused, then the changed entities and the meta record
        describing that state (:meth:`EngineRuntime.seal`).

        The agent only applies bundles and collects their records (no await between the two),
        so at any await the engine's state is exactly what the applied bundles made it:
        taking their records and encoding the changed entities and the meta record at once
        gives a consistent transaction. The agent never waits for Kafka, not even while a
        transaction commits (it used to, for each bundle, on the partition's transaction
        lock), and the meta record, which carries the population history and the risk model,
        is written once per commit instead of once per bundle.
        """
        commit = producer.commit_transactions
        if getattr(commit, "writes_state", False):
            return

        async def commit_one(tid: str, offsets: Any, group_id: str, start_new: bool) -> None:
            suffix = tid.rpartition("-")[2]
            partition = int(suffix) if suffix.isdigit() else -1
            if partition < 0 or transactional_id(partition) != tid:
                await commit({tid: offsets}, group_id, start_new)
                return
            held = unsent.pop(partition, [])
            try:
                records = runtime.seal(partition, list(held), changelog)
            except Exception:
                # the changed entities were taken: committing without them would lose them
                _exit_state_unsafe("partition %s: encoding its state failed; exiting", partition)
            try:
                if records:
                    sent = await state_changelog.send_in_transaction(producer, tid, records)
                    runtime.queued(partition, sent)
                await commit({tid: offsets}, group_id, start_new)
                runtime.settled(partition)
            except BaseException:
                # Not committed (e.g. a rebalance failed the offset commit): what this
                # transaction carried goes into the next one, or the offsets Faust commits
                # later would cover bundles whose state was never written.
                unsent[partition] = held + unsent.get(partition, [])
                runtime.commit_failed(partition)
                raise

        async def commit_transactions(
            tid_to_offset_map: Any, group_id: str, start_new_transaction: bool = True
        ) -> None:
            # The partitions' transactions are independent (a producer each): committing
            # them together keeps the alerts of each waiting one commit, not four.
            await asyncio.gather(
                *(
                    commit_one(tid, offsets, group_id, start_new_transaction)
                    for tid, offsets in tid_to_offset_map.items()
                )
            )

        commit_transactions.writes_state = True  # type: ignore[attr-defined]
        producer.commit_transactions = commit_transactions

    @app.agent(bundles)
    async def process(stream: Any) -> None:
        write_on_commit(app.producer)
        async for event in stream.events():
            if app.should_stop:
                break  # leave the bundle to the next owner rather than half-apply it
            partition, offset = event.message.partition, event.message.offset
            await runtime.ensure_for_bundle(partition)
            # From here to the end of the body nothing awaits (see write_on_commit).
            try:
                alerts, dead = runtime.apply(partition, offset, event.value)
                records = unsent.setdefault(partition, [])
                records.extend((k.dlq_topic, None, dumps_held(r), None) for r in dead)
                records.extend(
                    (k.alerts_topic, a["data"]["entity_id"].encode(), dumps_held(a), None)
                    for a in alerts
                )
            except Exception:
                # A poison event is quarantined inside apply; reaching here is a bug outside
                # any one event (a sweep, an encoder). The engine may hold changes that no
                # record describes any more, and Faust would restart the agent and commit
                # the bundle offsets anyway: state lost without a trace. Exiting leaves the
                # open transactions to be aborted; a restart restores the committed state.
                _exit_state_unsafe("partition %s: bundle %s failed; exiting", partition, offset)
            pages.observe_bundle(event.message.timestamp, len(alerts))

    @app.task
    async def run_ingest() -> None:
        # Faust's logging set-up leaves the Kafka clients' loggers at DEBUG: every record
        # sent would build a log record that is then dropped (~7% of the worker's time).
        for name in ("aiokafka", "kafka"):
            logger = logging.getLogger(name)
            logger.setLevel(max(logger.getEffectiveLevel(), logging.INFO))
        task = asyncio.ensure_future(ingest.run())

        async def stop_ingest(sender: Any, **kwargs: Any) -> None:
            await ingest.stop(task)

        app.on_before_shutdown.connect(stop_ingest)  # type: ignore[arg-type]
        await task

    recovered = {"ready": False}

    @app.timer(interval=1.0)
    async def save_snapshots() -> None:
        """Bundles whose transaction Faust has committed go to the local snapshot (never
        sooner: it must hold committed state only). Faust records offsets as committed even
        when the commit was fenced (it crashes the app, then updates them): hence nothing is
        saved once the app is stopping, nor mid-rebalance."""
        if app.should_stop or app.rebalancing or app.consumer is None:
            return
        # Faust's committed offsets, updated after each commit (no public accessor)
        committed: dict[Any, int | None] = getattr(app.consumer, "_committed_offset", {})
        bundle_topic = bundles.get_topic_name()
        runtime.save_committed(
            {tp.partition: o for tp, o in committed.items() if tp.topic == bundle_topic and o}
        )

    @app.timer(interval=1.0)
    async def release_heap() -> None:
        """After a burst of work (a restore, a day close, a catch-up), the garbage and free
        heap it left go back to the OS (:mod:`detector.heap`)."""
        now = time.monotonic()
        if runtime.heap.due(now):
            records = runtime.heap.records
            took = heap.release()
            runtime.heap.released(now)
            log.info("heap released after %d records in %.2f s", records, took)

    @app.timer(interval=min(1.0, s.idle_sweep_s))
    async def restore_idle_partitions() -> None:
        """Restore engines for assigned partitions that have had no bundle since assignment
        (so live mode sees time pass on them), once Faust has finished the rebalance."""
        if not recovered["ready"] or app.rebalancing:
            return
        for partition in pages.assigned():
            if partition not in runtime.engines:
                try:
                    await runtime.ensure(partition)
                except RebalancedDuringRestore as exc:
                    log.info("%s", exc)  # the next tick restores the new assignment's
                    return
                except Exception as exc:  # e.g. the broker is down: a timer must not crash
                    log.warning("partition %s: restore failed (%r), retrying", partition, exc)
                    return

    @app.timer(interval=s.idle_sweep_s)
    async def idle_ticks() -> None:
        """Live mode: a partition with no new events still lets time pass, so silence is seen.

        Only time during which ingest kept reading counts: after a broker outage or a stall
        of ingest, events stamped in it arrive later, and a watermark moved on by the outage
        would dead-letter them as late. Time that does not count is dropped, not kept for
        later."""
        due = due_idle_ticks(
            runtime.last_seen_wall,
            runtime.engines,
            time.monotonic(),
            s.idle_sweep_s,
            ingest.reading(),
        )
        for partition, idle in due:
            try:
                await ingest.send_tick(partition, int(idle * 1000 * s.idle_clock_scale))
            except Exception as exc:  # the broker is down: a timer must not crash
                log.warning("partition %s: idle tick not sent (%r)", partition, exc)
                return

    async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        recovered["ready"] = False
        runtime.revoked(tp.partition for tp in revoked if tp.topic == bundles.get_topic_name())

    async def on_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        # Faust has committed every transaction before revoking (``stream_wait_empty``),
        # so the engines of partitions this worker keeps are exactly the committed state.
        keep = {tp.partition for tp in assigned if tp.topic == bundles.get_topic_name()}
        for partition in runtime.reassigned(keep):
            unsent.pop(partition, None)  # never committed: the next owner applies them again

    async def on_rebalance_complete(sender: Any, **kwargs: Any) -> None:
        recovered["ready"] = True

    app.on_rebalance_complete.connect(on_rebalance_complete)  # type: ignore[arg-type]
    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]
    pages = web.install(app, runtime, ingest, bundles.get_topic_name(), lambda: recovered["ready"])
    return app


def _credentials(settings: Settings) -> Any:
    k = settings.kafka
    if k.security_protocol == "PLAINTEXT":
        return None
    cfg = aiokafka_config(k)
    ssl_context = cfg.get("ssl_context")
    if k.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=k.sasl_username,
            password=k.sasl_password,
            mechanism=k.sasl_mechanism,
            ssl_context=ssl_context,
        )
    return faust.SSLCredentials(ssl_context)


def run_worker(settings: Settings) -> int:
    """Run the worker until stopped (SIGTERM/SIGINT)."""
    _collect_cycles_less_often()
    _fetch_bundles_without_long_polls()
    # Faust creates its data directory but not the ones above it
    os.makedirs(settings.service.state_dir, exist_ok=True)
    try:
        app = build_app(settings)
    except KafkaUnavailableError as exc:  # one line, as `produce` and `alerts` say it
        print(f"churn-detector: error: {exc}", file=sys.stderr)
        return 1
    worker = faust.Worker(app, loglevel=settings.service.log_level.lower(), quiet=True)
    worker.execute_from_commandline()
    return 0
