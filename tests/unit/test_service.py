"""EngineRuntime without Kafka: bundles in, changelog records out, and a restore from them."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import faust
import orjson
import pytest
from aiokafka.errors import (
    CommitFailedError,
    GroupAuthorizationFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaTimeoutError,
    UnknownError,
)

from detector import service
from detector.bundles import Columns, Item, decode_bundle, encode_bundle
from detector.engine import PartitionEngine
from detector.events import decode_fields
from detector.kafka_clients import KafkaUnavailableError
from detector.partitioning import partition_for
from detector.service import (
    BUNDLE_FETCH_MAX_WAIT_MS,
    GC_YOUNG_THRESHOLD,
    INGEST_READING_S,
    EngineRuntime,
    Ingest,
    RebalancedDuringRestore,
    _collect_cycles_less_often,
    _fetch_bundles_without_long_polls,
    bundle_topic_name,
    run_worker,
)
from detector.settings import build_settings
from detector.simulator import SimulationConfig, simulate
from detector.snapshot_store import PartitionSnapshot, SnapshotStore
from detector.state_snapshot import ChangelogRead, Position


def bundles_for(partition: int, partitions: int, size: int) -> list[bytes]:
    """The simulated events of one partition, as ingest would bundle them (source = partition)."""
    items = []
    for offset, event in enumerate(EVENTS):
        if partition_for(event["team_id"], partitions) != partition:
            continue
        raw = orjson.dumps(event)
        fields = decode_fields(raw)
        assert isinstance(fields, tuple)
        items.append(Item(partition, offset, raw, fields))
    return [encode_bundle(items[i : i + size]) for i in range(0, len(items), size)]


EVENTS = list(simulate(SimulationConfig(teams=6, days=30, seed=5)).events())


def commit(runtime: EngineRuntime, partition: int, changelog: dict[bytes, bytes]) -> None:
    """What the worker queues when a partition's transaction commits: the changed entities,
    then the meta record."""
    records = runtime.seal(partition, [], "cl")
    assert records and records[-1][1] == f"m:{partition}".encode()
    changelog.update((key, value) for _, key, value, _ in records if key)
    assert runtime.take_meta(partition) is None  # once per transaction


def runtime_over(records: dict[bytes, bytes]) -> EngineRuntime:
    async def read(partition: int, start: int) -> ChangelogRead:
        return ChangelogRead(dict(records), end=len(records))

    return EngineRuntime(build_settings(environ={}), read)


def test_a_runtime_restored_from_the_changelog_continues_like_one_that_never_stopped():
    partitions = 4
    partition = partition_for(EVENTS[0]["team_id"], partitions)
    bundles = bundles_for(partition, partitions, size=200)
    assert len(bundles) > 4
    half = len(bundles) // 2

    straight = runtime_over({})
    asyncio.run(straight.ensure(partition))
    for offset, bundle in enumerate(bundles):
        straight.apply(partition, offset, bundle)

    changelog: dict[bytes, bytes] = {}
    first = runtime_over({})
    asyncio.run(first.ensure(partition))
    for offset, bundle in enumerate(bundles[:half]):
        first.apply(partition, offset, bundle)
        if offset % 3 == 2 or offset == half - 1:
            commit(first, partition, changelog)
    # what the first runtime applied after its last commit is lost with it
    for offset, bundle in enumerate(bundles[half:], half):
        first.apply(partition, offset, bundle)

    second = runtime_over(changelog)
    asyncio.run(second.ensure(partition))
    assert second.bundle_offset[partition] == half - 1
    # redelivered bundles (before the committed offset) and events are skipped, not re-counted
    for offset, bundle in enumerate(bundles):
        second.apply(partition, offset, bundle)

    def counts(runtime: EngineRuntime) -> dict[str, int]:
        engine = runtime.engines[partition]
        return {team_id: team.events_total for team_id, team in engine.teams.items()}

    assert counts(second) == counts(straight)
    assert sum(counts(straight).values()) > 0


def test_state_bytes_estimates_what_a_new_owner_reads_back_from_the_changelog():
    partitions = 4
    partition = partition_for(EVENTS[0]["team_id"], partitions)
    runtime = runtime_over({})
    asyncio.run(runtime.ensure(partition))
    assert runtime.state_bytes() == 0  # nothing written yet, nothing to estimate from
    changelog: dict[bytes, bytes] = {}
    for offset, bundle in enumerate(bundles_for(partition, partitions, size=200)):
        runtime.apply(partition, offset, bundle)
        commit(runtime, partition, changelog)
    entity_bytes = sum(len(v) for k, v in changelog.items() if k[:2] in (b"t:", b"u:"))
    assert entity_bytes > 0
    assert abs(runtime.state_bytes() - entity_bytes) <= 0.25 * entity_bytes


def test_the_meta_record_is_due_once_the_state_moves_and_not_for_redelivered_bundles():
    partitions = 4
    partition = partition_for(EVENTS[0]["team_id"], partitions)
    bundles = bundles_for(partition, partitions, size=200)
    runtime = runtime_over({})
    asyncio.run(runtime.ensure(partition))
    assert runtime.take_meta(partition) is None  # restored state: nothing to write
    runtime.apply(partition, 0, bundles[0])
    key, value = runtime.take_meta(partition) or (b"", b"")
    assert key == f"m:{partition}".encode()
    assert orjson.loads(value.partition(b"\n")[0])["bundle"] == 0
    runtime.apply(partition, 0, bundles[0])  # redelivered: skipped, the state did not move
    assert runtime.take_meta(partition) is None
    runtime.drop([partition])
    assert runtime.take_meta(partition) is None


@pytest.mark.parametrize(
    "value",
    [b"not a bundle", b'{"p":[0],"o":["7"],"n":[2]}\x00{}', b'{"p":[0],"o":[7],"n":[9]}\x00{}'],
    ids=["not-json", "offset-not-int", "lengths-past-body"],
)
def test_an_unreadable_bundle_is_dead_lettered_whole_and_the_next_one_applies(value: bytes):
    runtime, partition, bundles = restored_fresh(size=200)
    alerts, dead = runtime.apply(partition, 0, value)
    engine = runtime.engines[partition]
    assert alerts == [] and engine.stats.events_valid == 0  # nothing of it was applied
    assert [(d["reason"], d["topic"], d["partition"], d["offset"]) for d in dead] == [
        ("undecodable_bundle", bundle_topic_name(runtime.settings), partition, 0)
    ]
    assert dead[0]["raw"] == value.decode()
    assert engine.stats.invalid == {"undecodable_bundle": 1}
    _, record = runtime.take_meta(partition) or (b"", b"")
    assert orjson.loads(record.partition(b"\n")[0])["bundle"] == 0  # not read again
    runtime.apply(partition, 1, bundles[0])
    assert engine.stats.events_valid > 0


def restored_fresh(size: int) -> tuple[EngineRuntime, int, list[bytes]]:
    """A runtime with no state yet, its partition (of 4) and that partition's bundles."""
    partition = partition_for(EVENTS[0]["team_id"], 4)
    runtime = runtime_over({})
    asyncio.run(runtime.ensure(partition))
    return runtime, partition, bundles_for(partition, 4, size)


def test_a_transaction_carries_each_changed_entity_once_as_it_is_at_the_commit():
    runtime, partition, bundles = restored_fresh(size=50)
    for offset, bundle in enumerate(bundles[:3]):
        runtime.apply(partition, offset, bundle)
    records = runtime.seal(partition, [], "cl")
    keys = [key for _, key, _, _ in records]
    assert len(keys) == len(set(keys)) and keys[-1] == f"m:{partition}".encode()
    engine = runtime.engines[partition]
    assert {k for k in keys if k and k.startswith(b"t:")} == {
        b"t:" + t.encode() for t in engine.teams
    }
    # entity records match the state now, the meta record the last bundle applied
    again = runtime_over(dict((key, value) for _, key, value, _ in records if key))
    asyncio.run(again.ensure(partition))
    assert again.bundle_offset[partition] == 2
    restored = again.engines[partition]
    assert {t: team.events_total for t, team in restored.teams.items()} == {
        t: team.events_total for t, team in engine.teams.items()
    }
    assert runtime.seal(partition, [], "cl") == []  # nothing moved since


def test_dropped_entities_leave_the_changelog_as_tombstones_and_stay_gone_after_a_restore():
    settings = build_settings(environ={})
    # below the allowed minimum, so that 30 simulated days drop some entities
    settings = dataclasses.replace(
        settings, engine=dataclasses.replace(settings.engine, evict_after_days=7)
    )
    partition = partition_for(EVENTS[0]["team_id"], 4)
    changelog: dict[bytes, bytes | None] = {}
    runtime = EngineRuntime(settings, lambda p, start: _read(changelog))
    asyncio.run(runtime.ensure(partition))
    for offset, bundle in enumerate(bundles_for(partition, 4, size=200)):
        runtime.apply(partition, offset, bundle)
        commit(runtime, partition, changelog)  # type: ignore[arg-type]

    engine = runtime.engines[partition]
    deleted = {key for key, value in changelog.items() if value is None}
    assert deleted and engine.stats.evicted["user"] > 0
    assert not {
        k for k in deleted if k[2:].decode() in engine.users or k[2:].decode() in engine.teams
    }
    again = EngineRuntime(settings, lambda p, start: _read(changelog))
    asyncio.run(again.ensure(partition))
    restored = again.engines[partition]
    assert (set(restored.teams), set(restored.users)) == (set(engine.teams), set(engine.users))

    def team_counts(e: PartitionEngine) -> dict[str, tuple[Any, ...]]:
        return {
            t: (team.users_regular, team.users_at_risk, team.champion)
            for t, team in e.teams.items()
        }

    assert team_counts(restored) == team_counts(engine)


async def _read(records: dict[bytes, bytes | None]) -> ChangelogRead:
    return ChangelogRead(dict(records), end=len(records))


def test_entities_of_a_transaction_that_failed_to_commit_go_into_the_next_one():
    runtime, partition, bundles = restored_fresh(size=50)
    runtime.apply(partition, 0, bundles[0])
    failed = {key for _, key, _, _ in runtime.seal(partition, [], "cl")}
    runtime.commit_failed(partition)
    runtime.apply(partition, 1, bundles[1])
    retried = {key for _, key, _, _ in runtime.seal(partition, [], "cl")}
    assert failed <= retried
    runtime.settled(partition)
    runtime.commit_failed(partition)  # a later transaction with no entities in it fails
    assert [key for _, key, _, _ in runtime.seal(partition, [], "cl")] == [
        f"m:{partition}".encode()
    ]


def changelog_of(
    records: list[tuple[bytes, bytes | None]],
) -> Callable[[int, int], Awaitable[ChangelogRead]]:
    """A changelog partition holding ``records`` at offsets 0, 1, ..., read as
    :func:`detector.changelog.read_partition` reads it."""

    async def read(partition: int, start: int) -> ChangelogRead:
        read = ChangelogRead(end=len(records))
        for offset, (key, value) in enumerate(records[start:], start):
            read.first = read.first or (offset, key, value)
            read.last = (offset, key)
            read.latest[key] = value
        return read

    return read


def committed_changelog(bundles: int) -> tuple[list[tuple[bytes, bytes | None]], int]:
    """The changelog of a partition after its first ``bundles`` bundles (a transaction
    each), and the partition."""
    runtime, partition, all_bundles = restored_fresh(size=50)
    records: list[tuple[bytes, bytes | None]] = []
    for offset, bundle in enumerate(all_bundles[:bundles]):
        runtime.apply(partition, offset, bundle)
        records += [(key, value) for _, key, value, _ in runtime.seal(partition, [], "cl") if key]
    return records, partition


class ExitStateUnsafe(Exception):
    """What the worker's exit with status 70 is in these tests."""


def test_a_bundle_s_partition_that_fails_to_restore_is_retried_then_the_worker_exits(
    monkeypatch: pytest.MonkeyPatch,
):
    def exit_state_unsafe(message: str, *args: Any) -> None:
        raise ExitStateUnsafe(message % args)

    monkeypatch.setattr(service, "_exit_state_unsafe", exit_state_unsafe)
    monkeypatch.setattr(service, "RESTORE_RETRY_S", 0.0)
    records, partition = committed_changelog(bundles=2)
    read = changelog_of(records)
    failures: list[Exception] = [TimeoutError("changelog not readable"), KafkaConnectionError()]

    async def broker_back_after_two_failures(p: int, start: int) -> ChangelogRead:
        if failures:
            raise failures.pop(0)
        return await read(p, start)

    runtime = EngineRuntime(build_settings(environ={}), broker_back_after_two_failures)
    asyncio.run(runtime.ensure_for_bundle(partition))
    assert runtime.bundle_offset[partition] == 1  # restored: the bundle is applied after it

    attempts: list[int] = []

    async def broker_gone(p: int, start: int) -> ChangelogRead:
        attempts.append(start)
        raise TimeoutError("changelog not readable")

    runtime = EngineRuntime(build_settings(environ={}), broker_gone)
    with pytest.raises(ExitStateUnsafe, match="restore failed 4 times"):
        asyncio.run(runtime.ensure_for_bundle(partition))
    assert len(attempts) == service.RESTORE_ATTEMPTS == 4
    assert partition not in runtime.engines


@pytest.mark.parametrize("snapshot_held", ["nothing", "another changelog's state"])
def test_a_snapshot_that_cannot_be_written_does_not_fail_the_restore(
    tmp_path, monkeypatch: pytest.MonkeyPatch, snapshot_held: str
):
    records, partition = committed_changelog(bundles=3)
    store = SnapshotStore(tmp_path, "cl")
    if snapshot_held != "nothing":  # does not match this changelog: wiped, read from 0
        stale = store.open(partition)
        assert stale is not None
        stale.write([(f"m:{partition}".encode(), b"{}")], Position(2, 1, f"m:{partition}".encode()))
        stale.close()

    def disk_full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PartitionSnapshot, "write", disk_full)
    monkeypatch.setattr(PartitionSnapshot, "wipe", disk_full)
    runtime = EngineRuntime(build_settings(environ={}), changelog_of(records), store)
    engine = asyncio.run(runtime.ensure(partition))
    assert runtime.bundle_offset[partition] == 2 and engine.teams
    # the snapshot is closed and left out; the next restore checks it again
    assert partition not in runtime.snapshot_of and partition not in runtime.pending
    monkeypatch.undo()
    again = EngineRuntime(build_settings(environ={}), changelog_of(records), store)
    asyncio.run(again.ensure(partition))
    assert again.bundle_offset[partition] == 2 and partition in again.snapshot_of


@pytest.mark.parametrize(
    "rebalance", ["partition moved away", "partition assigned again", "partition never assigned"]
)
def test_a_restore_overtaken_by_a_rebalance_is_thrown_away(tmp_path, rebalance: str):
    records, partition = committed_changelog(bundles=2)
    other = (partition + 1) % 4
    read, reading = changelog_of(records), asyncio.Event()
    gate = asyncio.Event()

    async def slow(p: int, start: int) -> ChangelogRead:
        reading.set()
        await gate.wait()
        return await read(p, start)

    runtime = EngineRuntime(build_settings(environ={}), slow, SnapshotStore(tmp_path, "cl"))

    async def restore_racing_the_rebalance() -> None:
        runtime.reassigned([other] if rebalance == "partition never assigned" else [partition])
        restoring = asyncio.ensure_future(runtime.ensure(partition))  # the idle-partition timer
        await reading.wait()
        if rebalance != "partition never assigned":
            runtime.revoked([partition])
            runtime.reassigned([other] if rebalance == "partition moved away" else [partition])
        gate.set()
        with pytest.raises(RebalancedDuringRestore):
            await restoring

    asyncio.run(restore_racing_the_rebalance())
    assert partition not in runtime.engines and partition not in runtime.last_seen_wall
    assert partition not in runtime.bundle_offset and partition not in runtime.snapshot_of
    if rebalance == "partition assigned again":  # restored anew, its snapshot released
        asyncio.run(runtime.ensure(partition))
        assert runtime.bundle_offset[partition] == 1 and partition in runtime.snapshot_of


def test_an_assignment_drops_the_engines_of_the_partitions_it_leaves_out():
    runtime = runtime_over({})
    runtime.reassigned([0, 1, 2])
    for partition in (0, 1, 2):
        asyncio.run(runtime.ensure(partition))
    runtime.revoked([0, 1, 2])
    assert set(runtime.engines) == {0, 1, 2}  # committed state: kept for the assignment
    assert runtime.reassigned([1, 3]) == [0, 2]
    assert set(runtime.engines) == {1}


class SlicedSource:
    """A consumer whose ``getmany`` hands out prepared slices, one per call (then nothing)."""

    def __init__(self, slices: list[dict[str, list[int]]]) -> None:
        self.slices = slices
        self.asked: list[int] = []

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[str, list[int]]:
        self.asked.append(max_records)
        if self.slices:
            return self.slices.pop(0)
        await asyncio.sleep(timeout_ms / 1000)
        return {}


def test_ingest_gathers_small_reads_into_one_batch_in_source_order():
    source = SlicedSource([{"a": [1, 2]}, {"b": [7]}, {"a": [3]}])
    ingest = Ingest(build_settings(environ={}), partitions=4)
    batch = asyncio.run(ingest._read_batch(source))
    assert batch == {"a": [1, 2, 3], "b": [7]}
    size = ingest.settings.service.batch_size
    assert source.asked[:3] == [size, size - 2, size - 3]  # never more than a batch in all


def test_ingest_does_not_wait_for_more_once_a_read_fills_the_batch():
    settings = build_settings(environ={"DETECTOR_SERVICE_BATCH_SIZE": "3"})
    source = SlicedSource([{"a": [1, 2, 3]}, {"a": [4]}])
    batch = asyncio.run(Ingest(settings, partitions=4)._read_batch(source))
    assert batch == {"a": [1, 2, 3]}
    assert source.slices == [{"a": [4]}]  # left for the next batch


def test_ingest_with_nothing_to_read_returns_an_empty_batch():
    source = SlicedSource([])
    assert asyncio.run(Ingest(build_settings(environ={}), 4)._read_batch(source)) == {}
    assert len(source.asked) == 1  # no lingering on an empty read


class PolledSource:
    """A consumer as ``Ingest.reading`` sees it: its partitions and when each was last fetched."""

    def __init__(self, polled_s_ago: dict[str, float | None]) -> None:
        now_ms = time.time() * 1000
        self.polled = {
            tp: None if ago is None else now_ms - ago * 1000 for tp, ago in polled_s_ago.items()
        }

    def assignment(self) -> set[str]:
        return set(self.polled)

    def last_poll_timestamp(self, tp: str) -> float | None:
        return self.polled[tp]


@pytest.mark.parametrize(
    ("polled_s_ago", "reading"),
    [
        ({"a": 0.5, "b": 2.0}, True),
        ({}, True),  # no source partitions here: nothing this ingest could be cut off from
        ({"a": 0.5, "b": INGEST_READING_S + 5}, False),  # a stall, or the broker is away
        ({"a": 0.5, "b": None}, False),  # not fetched yet since it was assigned
    ],
)
def test_idle_time_counts_only_while_ingest_reads_every_source_partition(
    polled_s_ago: dict[str, float | None], reading: bool
):
    ingest = Ingest(build_settings(environ={}), partitions=4)
    assert not ingest.reading()  # not started
    ingest.consumer = PolledSource(polled_s_ago)  # type: ignore[assignment]
    assert ingest.reading() is reading


class SourcePartition(NamedTuple):
    topic: str
    partition: int


class SourceMessage(NamedTuple):
    offset: int
    key: bytes | None
    value: bytes | None


class RecordingProducer:
    """Keeps what ingest sends; every send is acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, int | None]] = []

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None
    ) -> asyncio.Future[None]:
        self.sent.append((topic, value, key, partition))
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acked.set_result(None)
        return acked


def test_ingest_forwards_each_valid_event_once_to_its_teams_partition_and_bad_ones_to_the_dlq():
    settings = build_settings(environ={})
    raws = [orjson.dumps(event) for event in EVENTS[:3000]]
    raws[5], raws[2000] = b'{"event_id":', None  # malformed, and a tombstone (no value)
    batch: dict[Any, list[Any]] = {
        SourcePartition("events", source): [
            SourceMessage(offset, b"k", raw)
            for offset, raw in enumerate(raws)
            if offset % 2 == source
        ]
        for source in (0, 1)
    }
    ingest = Ingest(settings, partitions=3)
    producer = RecordingProducer()

    acks = asyncio.run(ingest._forward(batch, producer))  # type: ignore[arg-type]

    assert len(acks) == len(producer.sent)
    bundles = [
        (p, decode_bundle(v)) for t, v, _, p in producer.sent if t == bundle_topic_name(settings)
    ]
    forwarded = sorted(
        (offset, partition, b.raw(i), tuple(b.events[i]))
        for partition, b in bundles
        for i, offset in enumerate(b.offsets)
    )
    expected = [
        (offset, partition_for(EVENTS[offset]["team_id"], 3), raw, decode_fields(raw))
        for offset, raw in enumerate(raws)
        if offset not in (5, 2000)
    ]
    assert forwarded == expected
    for _, b in bundles:  # in source order within each source partition
        for source in (0, 1):
            offsets = [o for o, s in zip(b.offsets, b.sources, strict=True) if s == source]
            assert offsets == sorted(offsets) and all(o % 2 == source for o in offsets)
    dead = [orjson.loads(v) for t, v, _, _ in producer.sent if t == settings.kafka.dlq_topic]
    assert len(dead) == 2
    assert ingest.invalid_reasons == {"malformed_json": 2}
    assert ingest.consumed == len(raws)


def test_ingest_of_a_team_keyed_source_routes_by_key_unparsed_and_parses_unkeyed_messages():
    settings = build_settings(environ={"DETECTOR_KAFKA_EVENTS_KEYED_BY_TEAM": "true"})
    raws = [orjson.dumps(event) for event in EVENTS[:500]]
    keys: list[bytes | None] = [event["team_id"].encode() for event in EVENTS[:500]]
    raws[3] = b'{"event_id":'  # keyed: travels to the engine, which validates it
    raws[4], keys[4] = b"[]", None  # unkeyed and invalid: dead-lettered by ingest
    keys[5] = None  # unkeyed and valid: routed by its parsed team
    batch = {
        SourcePartition("events", 0): [
            SourceMessage(offset, key, raw)
            for offset, (key, raw) in enumerate(zip(keys, raws, strict=True))
        ]
    }
    ingest = Ingest(settings, partitions=3)
    producer = RecordingProducer()

    asyncio.run(ingest._forward(batch, producer))  # type: ignore[arg-type]

    bundles = [
        (p, decode_bundle(v)) for t, v, _, p in producer.sent if t == bundle_topic_name(settings)
    ]
    assert all(b.events is None for _, b in bundles)
    forwarded = sorted((o, p, b.raw(i)) for p, b in bundles for i, o in enumerate(b.offsets))
    assert forwarded == [
        (offset, partition_for(EVENTS[offset]["team_id"], 3), raw)
        for offset, raw in enumerate(raws)
        if offset != 4
    ]
    assert ingest.invalid_reasons == {"not_an_object": 1}


def test_ingest_suggests_the_keyed_option_once_many_keys_in_a_row_are_team_ids(
    caplog: pytest.LogCaptureFixture,
):
    def batch(key_of: Callable[[dict[str, Any]], bytes]) -> dict[Any, list[Any]]:
        return {
            SourcePartition("events", 0): [
                SourceMessage(i, key_of(event), orjson.dumps(event))
                for i, event in enumerate(EVENTS[:3000])
            ]
        }

    caplog.set_level(logging.INFO, logger="churn_detector")
    by_team, by_user = batch(lambda e: e["team_id"].encode()), batch(lambda e: b"u")
    suggested = "DETECTOR_KAFKA_EVENTS_KEYED_BY_TEAM=true"
    for key_batches, expected in (
        ([by_team] * 4, 1),  # 12,000 team keys: one suggestion after the 10,000th
        ([by_team, by_user, *[by_team] * 4], 0),  # a key that is not a team id ends it
    ):
        caplog.clear()
        ingest = Ingest(build_settings(environ={}), partitions=3)
        for key_batch in key_batches:
            asyncio.run(ingest._forward(key_batch, RecordingProducer()))  # type: ignore[arg-type]
        assert sum(suggested in r.getMessage() for r in caplog.records) == expected
    keyed = Ingest(build_settings(environ={"DETECTOR_KAFKA_EVENTS_KEYED_BY_TEAM": "1"}), 3)
    assert keyed.keys_to_check == 0  # already on: nothing to suggest


class RevokedSource:
    """An ingest consumer whose first commit fails with ``error``, as aiokafka's does once
    the group has rebalanced; the later ones go through."""

    def __init__(self, error: Exception) -> None:
        self.error: Exception | None = error
        self.committed: list[dict[str, int]] = []

    async def commit(self, offsets: dict[str, int]) -> None:
        error, self.error = self.error, None
        if error is not None:
            raise error
        self.committed.append(offsets)


@pytest.mark.parametrize(
    "error",
    [
        CommitFailedError(),
        IllegalStateError(
            "Partition TopicPartition(topic='usage-events', partition=3) is not assigned"
        ),
        IllegalStateError("No partitions assigned"),
        UnknownError(),
    ],
    ids=lambda error: type(error).__name__,
)
def test_an_ingest_commit_refused_after_a_rebalance_is_skipped_and_the_next_ones_go_on(error):
    source = RevokedSource(error)
    ingest = Ingest(build_settings(environ={}), partitions=4)

    async def two_batches() -> None:
        first = asyncio.ensure_future(ingest._commit_when_sent(source, [], {"tp3": 10}, None))
        second = ingest._commit_when_sent(source, [], {"tp0": 20}, first)
        await asyncio.gather(first, second)

    asyncio.run(two_batches())  # type: ignore[arg-type]
    assert source.committed == [{"tp0": 20}]


def test_an_ingest_commit_without_the_rights_to_commit_stops_ingest():
    source = RevokedSource(GroupAuthorizationFailedError())
    ingest = Ingest(build_settings(environ={}), partitions=4)
    with pytest.raises(GroupAuthorizationFailedError):
        asyncio.run(ingest._commit_when_sent(source, [], {"tp0": 1}, None))  # type: ignore[arg-type]


class FakeIngestConsumer:
    """Ingest's source consumer: one valid event per read until ``batches`` reads, then
    nothing; no commit ever answers. Counts the commits still running when it is stopped."""

    def __init__(self, batches: int) -> None:
        self.batches = batches
        self.commits_started = 0
        self.commits_running_at_stop: int | None = None

    async def start(self) -> None:
        pass

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        if not self.batches:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        self.batches -= 1
        offset = 10 - self.batches
        raw = orjson.dumps(EVENTS[offset])
        return {SourcePartition("usage-events", 0): [SourceMessage(offset, None, raw)]}

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.commits_started += 1
        await asyncio.get_running_loop().create_future()

    async def stop(self) -> None:
        self.commits_running_at_stop = sum(
            "_commit_when_sent" in t.get_coro().__qualname__  # type: ignore[union-attr]
            for t in asyncio.all_tasks()
        )


class SharedTopic:
    """The memberships topic as ingest's group-less consumer sees it: ``records`` (key,
    value) in one partition, then nothing new."""

    def __init__(self, records: list[tuple[bytes, bytes | None]]) -> None:
        self.records = [SourceMessage(offset, *record) for offset, record in enumerate(records)]
        self.at = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def assign(self, tps: list[Any]) -> None:
        self.tp = tps[0]

    async def seek_to_beginning(self, *tps: Any) -> None:
        self.at = 0

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: len(self.records) if tp == self.tp else 0 for tp in tps}

    async def position(self, tp: Any) -> int:
        return self.at if tp == self.tp else 0

    async def getmany(self, timeout_ms: int) -> dict[Any, list[Any]]:
        if self.at >= len(self.records):
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        taken, self.at = self.records[self.at : self.at + 2], self.at + 2
        return {self.tp: taken}


def test_ingest_reads_the_memberships_other_workers_shared_before_it_reads_events():
    ingest = Ingest(build_settings(environ={}), partitions=4)
    shared = SharedTopic([(b"u1", b"t1"), (b"u2", b"t2"), (b"u1", b"t3"), (b"u2", None)])
    asyncio.run(ingest._read_memberships(shared))  # type: ignore[arg-type]
    assert ingest.memberships.teams == {"u1": "t3"}  # the latest of each; u2's was deleted


def test_ingest_starts_without_the_memberships_it_cannot_read_in_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    class Stuck(SharedTopic):
        async def getmany(self, timeout_ms: int) -> dict[Any, list[Any]]:
            await asyncio.sleep(0.01)
            return {}  # a partition whose leader does not answer

    monkeypatch.setattr(service, "MEMBERSHIPS_READ_S", 0.05)
    ingest = Ingest(build_settings(environ={}), partitions=4)
    asyncio.run(ingest._read_memberships(Stuck([(b"u1", b"t1")])))  # type: ignore[arg-type]
    assert "1 memberships not read" in caplog.text


def test_a_membership_this_worker_shared_is_not_undone_by_its_older_records_coming_back():
    settings = build_settings(environ={})
    ingest = Ingest(settings, partitions=4)
    call = {"type": "group", "userId": "u1", "timestamp": "2026-03-01T09:00:00Z", "traits": {}}
    batch = {
        SourcePartition("events", 0): [
            SourceMessage(n, None, orjson.dumps({**call, "messageId": f"g{n}", "groupId": team}))
            for n, team in enumerate(("tA", "tB"))
        ]
    }
    asyncio.run(ingest._forward(batch, RecordingProducer()))  # type: ignore[arg-type]
    shared = SourcePartition("memberships", 0)
    ingest._learn_memberships({shared: [SourceMessage(0, b"u1", b"tA")]})  # the older echo
    assert ingest.memberships.team_of("u1") == "tB"
    ingest._learn_memberships({shared: [SourceMessage(1, b"u1", b"tB")]})  # ours is back
    ingest._learn_memberships({shared: [SourceMessage(2, b"u1", b"tC")]})  # then another's
    assert ingest.memberships.team_of("u1") == "tC"


def test_ingest_that_cannot_start_stops_what_it_started(monkeypatch: pytest.MonkeyPatch):
    shared = SharedTopic([])
    stopped: list[str] = []

    class Refused(FakeIngestConsumer):
        async def start(self) -> None:
            raise GroupAuthorizationFailedError()

    async def stop() -> None:
        stopped.append("memberships")

    shared.stop = stop  # type: ignore[method-assign]
    source = Refused(batches=0)
    monkeypatch.setattr(service, "AIOKafkaConsumer", lambda *a, **kw: source if a else shared)
    monkeypatch.setattr(service, "AIOKafkaProducer", lambda *a, **kw: FakeIngestProducer())
    ingest = Ingest(build_settings(environ={}), partitions=4)
    with pytest.raises(GroupAuthorizationFailedError):
        asyncio.run(ingest.run())
    assert stopped == ["memberships"]


def test_ingest_gives_a_segment_message_without_its_team_the_team_of_its_users_group_call():
    settings = build_settings(environ={})
    ingest = Ingest(settings, partitions=4)
    call = {"type": "track", "userId": "u1", "timestamp": "2026-03-01T09:00:00Z"}
    messages = [
        {**call, "messageId": "m1", "event": "Report Viewed"},  # before any group call
        {**call, "messageId": "m2", "type": "group", "groupId": "t7", "traits": {}},
        {**call, "messageId": "m3", "event": "Report Viewed"},
        {**call, "messageId": "m4", "type": "group", "groupId": "t7", "traits": {}},  # again
    ]
    batch = {
        SourcePartition("events", 0): [
            SourceMessage(offset, None, orjson.dumps(m)) for offset, m in enumerate(messages)
        ]
    }
    producer = RecordingProducer()
    asyncio.run(ingest._forward(batch, producer))  # type: ignore[arg-type]
    (dead,) = [orjson.loads(v) for t, v, _, _ in producer.sent if t == settings.kafka.dlq_topic]
    assert (dead["reason"], dead["offset"]) == ("missing_field:team_id", 0)
    assert "group call" in dead["detail"]
    events = [
        e
        for t, v, _, _ in producer.sent
        if t == bundle_topic_name(settings)
        for e in decode_bundle(v).events or []
    ]
    assert [(e[0], e[4]) for e in events] == [("m2", "t7"), ("m3", "t7"), ("m4", "t7")]
    shared = [(k, v) for t, v, k, _ in producer.sent if t == ingest.memberships_topic]
    assert shared == [(b"u1", b"t7")]  # shared once: the second call changed nothing


class FakeIngestProducer(RecordingProducer):
    """Ingest's producer: every send is acknowledged at once, or fails with ``error``."""

    def __init__(self, error: Exception | None = None) -> None:
        super().__init__()
        self.error = error

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None
    ) -> asyncio.Future[None]:
        if self.error is None:
            return await super().send(topic, value, key, partition)
        self.sent.append((topic, value, key, partition))
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.set_exception(self.error)
        return failed


def run_ingest_until(
    monkeypatch: pytest.MonkeyPatch,
    producer: FakeIngestProducer,
    started: Callable[[FakeIngestConsumer, FakeIngestProducer], bool],
) -> tuple[FakeIngestConsumer, list[dict[str, Any]]]:
    """Run ingest over fakes until ``started`` holds, then stop it; returns its consumer and
    what reached the event loop's exception handler (e.g. exceptions never retrieved)."""
    unhandled: list[dict[str, Any]] = []

    async def main() -> FakeIngestConsumer:
        asyncio.get_running_loop().set_exception_handler(lambda _, c: unhandled.append(c))
        consumer = FakeIngestConsumer(batches=3)
        # the source consumer subscribes to the events topic; the memberships one to nothing
        monkeypatch.setattr(
            service, "AIOKafkaConsumer", lambda *a, **kw: consumer if a else SharedTopic([])
        )
        monkeypatch.setattr(service, "AIOKafkaProducer", lambda *a, **kw: producer)
        settings = build_settings(environ={"DETECTOR_SERVICE_BATCH_SIZE": "1"})
        ingest = Ingest(settings, partitions=4)  # a batch per read: a commit per event
        task = asyncio.ensure_future(ingest.run())
        while not started(consumer, producer):
            await asyncio.sleep(0.01)
        await ingest.stop(task)
        del task
        gc.collect()
        await asyncio.sleep(0)
        return consumer

    consumer = asyncio.run(main())
    return consumer, unhandled


def test_stopping_ingest_ends_its_pending_commits_before_its_consumer_stops(monkeypatch):
    consumer, unhandled = run_ingest_until(
        monkeypatch, FakeIngestProducer(), lambda c, p: c.commits_started > 0 and not c.batches
    )
    assert consumer.commits_running_at_stop == 0
    assert unhandled == []


def test_stopping_ingest_retrieves_the_failures_of_its_pending_commits(monkeypatch):
    producer = FakeIngestProducer(KafkaTimeoutError())  # no bundle acknowledged: no commit
    consumer, unhandled = run_ingest_until(monkeypatch, producer, lambda c, p: len(p.sent) >= 3)
    assert consumer.commits_started == 0
    assert [c["message"] for c in unhandled] == []


def raw_bundle(source: int, items: list[tuple[int, bytes]]) -> bytes:
    """A bundle of (source offset, original bytes), as ingest sends them from a keyed source."""
    columns = Columns()
    for offset, raw in items:
        columns.sources.append(source)
        columns.offsets.append(offset)
        columns.raws.append(raw)
    (bundle,) = columns.encoded()
    return bundle


def test_a_bundle_of_original_bytes_applies_like_decoded_fields_and_dead_letters_the_bad(
    caplog: pytest.LogCaptureFixture,
):
    partitions = 4
    partition = partition_for(EVENTS[0]["team_id"], partitions)
    raws = [
        (offset, orjson.dumps(event))
        for offset, event in enumerate(EVENTS)
        if partition_for(event["team_id"], partitions) == partition
    ]
    elsewhere = next(
        orjson.dumps(e) for e in EVENTS if partition_for(e["team_id"], partitions) != partition
    )
    bad = [(len(EVENTS), b'{"event_id":'), (len(EVENTS) + 1, elsewhere)]
    decoded = runtime_over({})
    original = runtime_over({})
    for runtime in (decoded, original):
        asyncio.run(runtime.ensure(partition))

    (fields_bundle,) = bundles_for(partition, partitions, size=len(EVENTS))
    decoded.apply(partition, 0, fields_bundle)
    _, dead = original.apply(partition, 0, raw_bundle(partition, raws + bad))

    engine, same = original.engines[partition], decoded.engines[partition]
    assert {t: team.events_total for t, team in engine.teams.items()} == {
        t: team.events_total for t, team in same.teams.items()
    }
    assert engine.stats.events_valid == same.stats.events_valid
    assert [(d["reason"], d["offset"]) for d in dead] == [
        ("malformed_json", len(EVENTS)),
        ("misrouted", len(EVENTS) + 1),
    ]
    assert engine.stats.invalid == {"malformed_json": 1, "misrouted": 1}
    warned = [r for r in caplog.records if "EVENTS_KEYED_BY_TEAM=false" in r.getMessage()]
    assert len(warned) == 1  # once, with what to do about it


def test_the_worker_collects_cycles_after_many_new_objects_not_after_700():
    before = gc.get_threshold()
    try:
        _collect_cycles_less_often()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
    finally:
        gc.set_threshold(*before)


def test_the_engines_consumer_is_not_held_by_the_broker_for_faust_s_long_poll(tmp_path):
    """Faust fixes fetch_max_wait_ms at 1,500 ms: a fetch that asks only for partitions with
    nothing new (its leader topic) then holds back every bundle for that long."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    async def created_wait_ms() -> int:
        app = faust.App("wait-test", broker="kafka://127.0.0.1:1", datadir=str(tmp_path))
        thread = app.consumer._thread
        assert isinstance(thread, AIOKafkaConsumerThread)
        return int(thread._create_worker_consumer(app.transport)._fetch_max_wait_ms)

    original = AIOKafkaConsumerThread._create_worker_consumer
    try:
        assert asyncio.run(created_wait_ms()) == 1500  # Faust's own
        _fetch_bundles_without_long_polls()
        _fetch_bundles_without_long_polls()  # idempotent
        assert asyncio.run(created_wait_ms()) == BUNDLE_FETCH_MAX_WAIT_MS
    finally:
        AIOKafkaConsumerThread._create_worker_consumer = original  # type: ignore[method-assign]


def test_a_worker_without_a_broker_says_so_in_one_line_and_exits_1(tmp_path, monkeypatch, capsys):
    def unreachable(*args: Any, **kwargs: Any) -> dict[str, int]:
        raise KafkaUnavailableError("cannot reach Kafka at 127.0.0.1:1 (PLAINTEXT) within 30s")

    monkeypatch.setattr(service, "ensure_topics", unreachable)
    monkeypatch.setattr(service, "_collect_cycles_less_often", lambda: None)
    monkeypatch.setattr(service, "_fetch_bundles_without_long_polls", lambda: None)
    settings = build_settings(
        environ={
            "DETECTOR_KAFKA_BROKERS": "127.0.0.1:1",
            "DETECTOR_SERVICE_STATE_DIR": str(tmp_path / "state"),
        }
    )
    assert run_worker(settings) == 1
    assert capsys.readouterr().err == (
        "churn-detector: error: cannot reach Kafka at 127.0.0.1:1 (PLAINTEXT) within 30s\n"
    )
