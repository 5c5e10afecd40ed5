"""The streaming service: a Faust worker around the engine.

Two stages run in one worker process:

* **ingest** (aiokafka, its own consumer group): reads ``usage-events``, validates each
  message, sends bad input to the dead-letter topic with the original bytes, the reason and
  the source offset, and packs good events into bundles re-keyed by team partition
  (``<app>-bundles``). Source offsets are committed only after the bundles are acknowledged.
* **engine** (Faust agent + table): one :class:`PartitionEngine` per bundle partition; each
  bundle is applied, the entities it changed are written once to a RocksDB-backed table
  with a changelog topic, and alerts are published to ``churn-alerts``. With Faust's
  exactly-once guarantee, table writes, alerts and the bundle offset commit are one
  transaction; the source offsets stored with the state make ingest redelivery harmless.

Why bundles: measured on the 2-core development machine, every message that crosses
Faust's stream machinery costs ~130 µs (≈7k messages/s, even with ``take_events``), while
raw aiokafka reads ~300k/s. Paying that cost once per bundle of events instead of once per
event is what lets the detector run at the throughput DESIGN.md budgets for.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from . import faust_store, health_view, web
from .bundles import Item, decode_bundle, encode_bundle, encode_tick
from .codec import (
    decode_team,
    decode_user,
    encode_partition,
    encode_team,
    encode_user,
    restore_partition,
)
from .engine import PartitionEngine
from .events import Invalid, decode_event
from .kafka_clients import aiokafka_config, ensure_topics
from .metrics import ServiceMetrics
from .partitioning import partition_for
from .pseudonyms import Pseudonyms
from .quarantine import process_or_quarantine
from .replay import dead_letter
from .settings import Settings
from .state import TeamState, UserState

log = logging.getLogger("churn_detector")

BUNDLE_MAX_ITEMS = 2000
BUNDLE_MAX_BYTES = 900_000
_META = b"m:"
_TEAM = b"t:"
_USER = b"u:"


def bundle_topic_name(settings: Settings) -> str:
    return f"{settings.service.app_id}-bundles"


class Ingest:
    """Source topic → validated, re-keyed bundles (+ dead letters). At-least-once."""

    def __init__(self, settings: Settings, partitions: int) -> None:
        self.settings = settings
        self.partitions = partitions
        self.max_bytes = settings.engine.max_event_bytes
        self.consumed = 0
        self.invalid = 0
        self.invalid_reasons: dict[str, int] = {}
        #: next offset to read per source partition, and the consumer (for the lag metric)
        self.positions: dict[int, int] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.metrics: ServiceMetrics | None = None
        self.producer: AIOKafkaProducer | None = None
        self._partition_of: dict[str, int] = {}

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
        await consumer.start()
        await producer.start()
        self.producer, self.consumer = producer, consumer
        try:
            while True:
                batch = await consumer.getmany(
                    timeout_ms=200, max_records=self.settings.service.batch_size
                )
                if batch:
                    await self._forward(batch, producer)
                    read = {tp: msgs[-1].offset + 1 for tp, msgs in batch.items()}
                    await consumer.commit(read)
                    self.positions.update((tp.partition, n) for tp, n in read.items())
                    if self.metrics is not None:
                        oldest = min(msgs[0].timestamp for msgs in batch.values())
                        self.metrics.observe("ingest", time.time() - oldest / 1000)
        finally:
            self.producer = self.consumer = None
            await consumer.stop()
            await producer.stop()

    async def send_tick(self, partition: int, elapsed_ms: int) -> None:
        if self.producer is not None:
            await self.producer.send_and_wait(
                bundle_topic_name(self.settings), encode_tick(elapsed_ms), partition=partition
            )

    async def _forward(self, batch: dict[Any, list[Any]], producer: AIOKafkaProducer) -> None:
        k = self.settings.kafka
        topic = bundle_topic_name(self.settings)
        per_partition: dict[int, list[Item]] = {}
        futures = []
        for tp, messages in batch.items():
            for msg in messages:
                self.consumed += 1
                raw = msg.value if msg.value is not None else b""
                decoded = decode_event(raw, self.max_bytes)
                if isinstance(decoded, Invalid):
                    self.invalid += 1
                    reasons = self.invalid_reasons
                    reasons[decoded.reason] = reasons.get(decoded.reason, 0) + 1
                    record = dead_letter(
                        raw,
                        decoded,
                        {"topic": tp.topic, "partition": tp.partition, "offset": msg.offset},
                    )
                    futures.append(
                        await producer.send(k.dlq_topic, orjson.dumps(record), key=msg.key)
                    )
                    continue
                target = self._partition_of.get(decoded.team_id, -1)
                if target < 0:
                    target = partition_for(decoded.team_id, self.partitions)
                    if len(self._partition_of) < 1_000_000:
                        self._partition_of[decoded.team_id] = target
                per_partition.setdefault(target, []).append(Item(tp.partition, msg.offset, raw))
        for target, items in per_partition.items():
            for chunk in _chunks(items):
                futures.append(await producer.send(topic, encode_bundle(chunk), partition=target))
        if futures:
            await asyncio.gather(*futures)


def _chunks(items: list[Item]) -> Iterable[list[Item]]:
    chunk: list[Item] = []
    size = 0
    for item in items:
        if chunk and (len(chunk) >= BUNDLE_MAX_ITEMS or size + len(item.raw) > BUNDLE_MAX_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += len(item.raw) + 24
    if chunk:
        yield chunk


class EngineRuntime:
    """The engines this worker owns, restored from the state table on assignment."""

    def __init__(self, settings: Settings, table: Any) -> None:
        self.settings = settings
        self.table = table
        self.engines: dict[int, PartitionEngine] = {}
        #: per partition: bundle offset applied, and per source partition the offset applied
        self.bundle_offset: dict[int, int] = {}
        self.source_offsets: dict[int, dict[int, int]] = {}
        self.last_seen_wall: dict[int, float] = {}
        self.pseudonyms = Pseudonyms.from_settings(settings.service)

    def drop(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.engines.pop(p, None)
            self.bundle_offset.pop(p, None)
            self.source_offsets.pop(p, None)

    def engine(self, partition: int) -> PartitionEngine:
        engine = self.engines.get(partition)
        if engine is None:
            engine = self._restore(partition)
            self.engines[partition] = engine
        return engine

    def _restore(self, partition: int) -> PartitionEngine:
        n = self.settings.engine.partitions
        engine = PartitionEngine(self.settings.engine)
        engine.track_changes()
        teams: dict[str, TeamState] = {}
        users: dict[str, UserState] = {}
        meta: bytes | None = None
        for key, value in self.table.items():
            if key.startswith(_TEAM):
                team_id = key[2:].decode()
                if partition_for(team_id, n) == partition:
                    teams[team_id] = decode_team(value)
            elif key.startswith(_USER):
                user = decode_user(value)
                if partition_for(user.team_id, n) == partition:
                    users[key[2:].decode()] = user
            elif key == _META + str(partition).encode():
                meta = value
        offsets: dict[str, Any] = {"bundle": -1, "sources": {}}
        if meta is not None:
            head = orjson.loads(meta)
            offsets = head["offsets"]
            restore_partition(engine, orjson.dumps(head["engine"]), teams, users)
        else:
            restore_partition(engine, None, teams, users)
        self.bundle_offset[partition] = int(offsets["bundle"])
        self.source_offsets[partition] = {int(k): v for k, v in offsets["sources"].items()}
        log.info(
            "partition %s: restored %d teams, %d users, bundle offset %s",
            partition,
            len(teams),
            len(users),
            self.bundle_offset[partition],
        )
        return engine

    def apply(
        self, partition: int, offset: int, value: bytes
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Apply one bundle; returns (alerts, dead letters). Already applied input is skipped."""
        engine = self.engine(partition)
        self.last_seen_wall[partition] = time.monotonic()
        if offset <= self.bundle_offset[partition]:
            return [], []
        bundle = decode_bundle(value)
        engine.watermark.limit_ms = (
            int(time.time() * 1000) + self.settings.engine.live_clock_skew_s * 1000
        )
        dead: list[dict[str, Any]] = []
        if bundle.tick_ms:
            engine.advance_idle(bundle.tick_ms)
        else:
            applied = self.source_offsets[partition]
            for item in bundle.items:
                if item.source_offset <= applied.get(item.source_partition, -1):
                    continue
                applied[item.source_partition] = item.source_offset
                rejected = process_or_quarantine(engine.process_raw, item.raw, engine.stats.invalid)
                if rejected is not None:
                    dead.append(
                        dead_letter(
                            item.raw,
                            rejected,
                            {
                                "topic": self.settings.kafka.events_topic,
                                "partition": item.source_partition,
                                "offset": item.source_offset,
                            },
                        )
                    )
        self.bundle_offset[partition] = offset
        return self.pseudonyms.alerts(engine.drain_alerts()), dead

    def team_view(self, team_id: str) -> dict[str, Any] | None:
        for engine in self.engines.values():
            team = engine.teams.get(team_id)
            if team is not None:
                return health_view.team(team, engine)
        return None

    def user_view(self, user_id: str) -> dict[str, Any] | None:
        return health_view.find_user(self.engines.values(), user_id, self.pseudonyms)

    def changes(self, partition: int) -> Iterable[tuple[bytes, bytes]]:
        """Records to write for what changed in ``partition`` since the last call."""
        engine = self.engines[partition]
        teams, users = engine.take_changes()
        for team_id in teams:
            yield _TEAM + team_id.encode(), encode_team(engine.teams[team_id])
        for uid in users:
            yield _USER + uid.encode(), encode_user(engine.users[uid])
        meta = {
            "offsets": {
                "bundle": self.bundle_offset[partition],
                "sources": {str(k): v for k, v in self.source_offsets[partition].items()},
            },
            "engine": orjson.loads(encode_partition(engine, self.bundle_offset[partition])),
        }
        yield _META + str(partition).encode(), orjson.dumps(meta)


def build_app(settings: Settings) -> faust.App:
    assert faust_store.ChangelogRocksStore is not None  # registers the churnrocks:// store
    s, k = settings.service, settings.kafka
    partitions = settings.engine.partitions
    ensure_topics(
        k,
        {
            k.events_topic: partitions,
            k.dlq_topic: partitions,
            k.alerts_topic: partitions,
            bundle_topic_name(settings): partitions,
        },
    )
    brokers = ";".join(f"kafka://{b.strip()}" for b in k.brokers.split(","))
    app = faust.App(
        s.app_id,
        broker=brokers,
        broker_credentials=_credentials(settings),
        store="churnrocks://",
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
        stream_wait_empty=False,
        broker_commit_every=100,
        broker_commit_interval=1.0,
        broker_session_timeout=10.0,
        recovery_consistency_check=False,
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
    table = app.Table("state", key_type=bytes, value_type=bytes, partitions=partitions)
    runtime = EngineRuntime(settings, table)
    ingest = Ingest(settings, partitions)

    @app.agent(bundles)
    async def process(stream: Any) -> None:
        async for event in stream.events():
            if app.should_stop:
                break  # leave the bundle to the next owner rather than half-apply it
            partition, offset = event.message.partition, event.message.offset
            alerts, dead = runtime.apply(partition, offset, event.value)
            # Alerts and dead letters go out in the transaction of this bundle's partition,
            # so they are published exactly when the state and offsets that caused them are.
            # They are queued before the (synchronous) table writes: if shutdown interrupts
            # the queueing, the state is not written and the bundle is applied again.
            group = app.assignor.group_for_topic(bundles.get_topic_name())
            tid = f"{app.conf.id}-{group}-{partition}"
            for record in dead:
                await app.producer.send(
                    k.dlq_topic, None, orjson.dumps(record), None, None, None, transactional_id=tid
                )
            for alert in alerts:
                await app.producer.send(
                    k.alerts_topic,
                    alert["data"]["entity_id"].encode(),
                    orjson.dumps(alert),
                    None,
                    None,
                    None,
                    transactional_id=tid,
                )
            for key, value in runtime.changes(partition):
                table[key] = value
            pages.observe_bundle(event.message.timestamp, len(alerts))

    @app.task
    async def run_ingest() -> None:
        await ingest.run()

    def assigned() -> list[int]:
        topic = bundles.get_topic_name()
        return sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == topic)

    recovered = {"ready": False}

    def ensure_engines() -> None:
        """Restore engines for assigned partitions that have had no bundle since assignment.

        Only once Faust says the rebalance is complete (tables recovered, streams resumed):
        before that the table may not yet hold what other workers committed.
        """
        if not recovered["ready"] or app.rebalancing:
            return
        for partition in assigned():
            if partition not in runtime.engines:
                runtime.engine(partition)
                runtime.last_seen_wall[partition] = time.monotonic()

    @app.timer(interval=min(1.0, s.idle_sweep_s))
    async def restore_idle_partitions() -> None:
        ensure_engines()

    @app.timer(interval=s.idle_sweep_s)
    async def idle_ticks() -> None:
        """Live mode: a partition with no new events still lets time pass, so silence is seen."""
        now = time.monotonic()
        for partition, last in list(runtime.last_seen_wall.items()):
            idle = now - last
            if partition in runtime.engines and idle >= s.idle_sweep_s:
                runtime.last_seen_wall[partition] = now
                await ingest.send_tick(partition, int(idle * 1000 * s.idle_clock_scale))

    async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        recovered["ready"] = False
        runtime.drop(tp.partition for tp in revoked if tp.topic == bundles.get_topic_name())

    async def on_rebalance_complete(sender: Any, **kwargs: Any) -> None:
        recovered["ready"] = True

    app.on_rebalance_complete.connect(on_rebalance_complete)  # type: ignore[arg-type]

    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]
    pages = web.install(
        app, runtime, ingest, table, bundles.get_topic_name(), lambda: recovered["ready"]
    )
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


def reset_local_store(state_dir: str) -> None:
    """Drop the local RocksDB copy of the tables; Faust rebuilds it from the changelogs.

    The local store is a cache. After a crash it can hold writes of a transaction that was
    aborted (RocksDB is written before the Kafka transaction commits), while the changelog,
    read with read_committed, holds exactly what was committed together with the offsets.
    Rebuilding from the changelog is what makes a restart equal an uninterrupted run.
    """
    tables = Path(state_dir) / "v1" / "tables"
    if tables.exists():
        shutil.rmtree(tables)


def run_worker(settings: Settings) -> int:
    """Run the worker until stopped (SIGTERM/SIGINT)."""
    reset_local_store(settings.service.state_dir)
    app = build_app(settings)
    worker = faust.Worker(app, loglevel=settings.service.log_level.lower(), quiet=True)
    worker.execute_from_commandline()
    return 0
