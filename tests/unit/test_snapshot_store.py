"""The snapshot on disk (real rocksdict in a temporary directory), alone and under the
worker's EngineRuntime with a changelog partition simulated in memory."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from detector.partitioning import partition_for
from detector.service import EngineRuntime
from detector.settings import build_settings
from detector.snapshot_store import SnapshotStore
from detector.state_snapshot import HEADER_KEY, ChangelogRead, Position
from tests.unit.test_service import EVENTS, bundles_for

TOPIC = "app-state-changelog"
PARTITIONS = 4
PARTITION = partition_for(EVENTS[0]["team_id"], PARTITIONS)


def test_records_and_position_survive_a_reopen(tmp_path: Path):
    store = SnapshotStore(tmp_path, TOPIC)
    snapshot = store.open(0)
    assert snapshot is not None and snapshot.load() is None  # empty
    snapshot.write([(b"u:a", b"1"), (b"u:b", b"2")], Position(5, 4, b"u:b"))
    snapshot.write([(b"u:a", None), (b"m:0", b"x")], Position(9, 8, b"m:0"))
    snapshot.close()
    again = store.open(0)
    assert again is not None
    assert again.load() == (Position(9, 8, b"m:0"), {b"u:b": b"2", b"m:0": b"x"})
    assert store.size_bytes() > 0


def test_a_snapshot_of_another_partition_or_changelog_is_wiped(tmp_path: Path):
    store = SnapshotStore(tmp_path, TOPIC)
    snapshot = store.open(1)
    assert snapshot is not None
    snapshot.write([(b"u:a", b"1")], Position(5, 4, b"u:a"))
    snapshot.close()
    (tmp_path / "snapshots" / f"{TOPIC}-1").rename(tmp_path / "snapshots" / f"{TOPIC}-2")
    moved = store.open(2)
    assert moved is not None and moved.load() is None
    assert moved.db is not None and list(moved.db.keys()) == []


def test_a_snapshot_older_than_the_changelogs_tombstones_is_wiped(tmp_path: Path):
    """Compaction removes a deletion from the changelog after delete.retention.ms: a snapshot
    written before that may hold records deleted since, with nothing left to say so."""
    now = [1_700_000_000.0]
    store = SnapshotStore(tmp_path, TOPIC, max_age_ms=7 * 86_400_000, clock=lambda: now[0])
    snapshot = store.open(0)
    assert snapshot is not None
    snapshot.write([(b"u:a", b"1")], Position(5, 4, b"u:a"))
    snapshot.close()

    now[0] += 7 * 86_400  # as old as the limit: used
    snapshot = store.open(0)
    assert snapshot is not None and snapshot.load() == (Position(5, 4, b"u:a"), {b"u:a": b"1"})
    snapshot.close()
    now[0] += 0.001  # older: dropped
    snapshot = store.open(0)
    assert snapshot is not None and snapshot.load() is None
    assert snapshot.db is not None and list(snapshot.db.keys()) == []

    # a header written without its time (before it was kept): of unknown age, dropped
    snapshot.db.put(b"u:a", b"1")
    header = orjson.loads(Position(5, 4, b"u:a").encode(TOPIC, 0, int(now[0] * 1000)))
    del header["written_ms"]
    snapshot.db.put(HEADER_KEY, orjson.dumps(header))
    assert snapshot.load() is None
    snapshot.close()


def test_a_damaged_database_is_made_anew_and_a_locked_one_is_skipped(tmp_path: Path):
    store = SnapshotStore(tmp_path, TOPIC)
    path = store.path(0)
    path.mkdir(parents=True)
    (path / "CURRENT").write_bytes(b"MANIFEST-999999\n")  # points at nothing
    snapshot = store.open(0)
    assert snapshot is not None and snapshot.load() is None
    assert store.open(0) is None  # held open above: another worker on the same state dir
    snapshot.close()


# ---------------------------------------------------------------- under the EngineRuntime
@dataclass
class Sent:
    topic: str
    partition: int
    offset: int

    def done(self) -> bool:
        return True

    def result(self) -> Sent:
        return self


@dataclass
class Changelog:
    """One changelog partition in memory: (offset, key, value, committed)."""

    log: list[tuple[int, bytes, bytes, bool]] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)

    def append(self, records: list[tuple[bytes, bytes]], committed: bool = True) -> Sent:
        for key, value in records:
            self.log.append((len(self.log), key, value, committed))
        self.log.append((len(self.log), b"", b"", False))  # the transaction marker
        return Sent(TOPIC, PARTITION, len(self.log) - 2)

    async def read(self, partition: int, start: int) -> ChangelogRead:
        self.starts.append(start)
        read = ChangelogRead(end=len(self.log))
        for offset, key, value, committed in self.log[start:]:
            if committed:
                read.first = read.first or (offset, key, value)
                read.last = (offset, key)
                read.latest[key] = value
        return read


def runtime(changelog: Changelog, state_dir: Path) -> EngineRuntime:
    store = SnapshotStore(state_dir, TOPIC)
    return EngineRuntime(build_settings(environ={}), changelog.read, store)


def counts(rt: EngineRuntime) -> dict[str, int]:
    return {t: team.events_total for t, team in rt.engines[PARTITION].teams.items()}


def transaction(rt: EngineRuntime) -> list[tuple[bytes, bytes]]:
    """The state records the worker sends when the partition's transaction commits."""
    return [(key or b"", value) for _, key, value, _ in rt.seal(PARTITION, [], TOPIC)]


def run_bundles(rt: EngineRuntime, changelog: Changelog, bundles: list[bytes], first: int):
    """Each bundle committed in a transaction of its own."""
    for offset, bundle in enumerate(bundles, start=first):
        rt.apply(PARTITION, offset, bundle)
        rt.queued(PARTITION, changelog.append(transaction(rt)))


def first_worker(
    changelog: Changelog, state_dir: Path, bundles: list[bytes], committed: int
) -> EngineRuntime:
    """A worker that applied ``bundles``, each in a transaction of its own, of which Faust
    committed the first ``committed`` (the snapshot holds those)."""
    first = runtime(changelog, state_dir)
    asyncio.run(first.ensure(PARTITION))
    run_bundles(first, changelog, bundles, 0)
    first.save_committed({PARTITION: committed})
    return first


def snapshotted(state_dir: Path) -> Changelog:
    """A worker applied three bundles, all committed and in its snapshot, and left."""
    bundles = bundles_for(PARTITION, PARTITIONS, size=100)
    changelog = Changelog()
    first_worker(changelog, state_dir, bundles[:3], 3).drop([PARTITION])
    return changelog


def test_a_restart_reads_only_the_changelog_after_the_snapshot_and_continues_exactly(tmp_path):
    bundles = bundles_for(PARTITION, PARTITIONS, size=100)
    third = len(bundles) // 3
    straight = EngineRuntime(build_settings(environ={}), Changelog().read)
    asyncio.run(straight.ensure(PARTITION))
    for offset, bundle in enumerate(bundles):
        straight.apply(PARTITION, offset, bundle)

    changelog = Changelog()
    first = first_worker(changelog, tmp_path, bundles[: 2 * third], third)  # a third committed
    snapshot_end = first.snapshot_of[PARTITION].load()
    first.drop([PARTITION])
    assert snapshot_end is not None
    position, held = snapshot_end
    assert 0 < position.offset < len(changelog.log)
    assert held[b"m:%d" % PARTITION].startswith(b'{"bundle":%d,' % (third - 1))

    second = runtime(changelog, tmp_path)
    asyncio.run(second.ensure(PARTITION))
    assert changelog.starts[-1] == position.last_offset  # not from the beginning
    assert second.bundle_offset[PARTITION] == 2 * third - 1  # the tail after it was read
    run_bundles(second, changelog, bundles, 0)  # redelivered ones are skipped
    assert counts(second) == counts(straight)


def test_uncommitted_records_never_reach_the_snapshot(tmp_path):
    bundles = bundles_for(PARTITION, PARTITIONS, size=100)
    changelog = Changelog()
    first = first_worker(changelog, tmp_path, bundles[:4], 2)
    saved = first.snapshot_of[PARTITION].load()
    assert saved is not None
    position, held = saved
    # the fifth bundle's transaction is aborted (the worker was fenced, say)
    first.apply(PARTITION, 4, bundles[4])
    first.queued(PARTITION, changelog.append(transaction(first), committed=False))
    first.save_committed({PARTITION: 2})
    assert first.snapshot_of[PARTITION].load() == (position, held)
    committed = {k: v for _, k, v, c in changelog.log[: position.offset] if c}
    assert held == committed


def test_a_snapshot_that_does_not_match_the_changelog_falls_back_to_a_full_read(tmp_path):
    bundles = bundles_for(PARTITION, PARTITIONS, size=100)
    snapshotted(tmp_path)

    other = Changelog()  # another changelog (a recreated topic) with other state
    other_rt = runtime(other, tmp_path / "elsewhere")
    asyncio.run(other_rt.ensure(PARTITION))
    run_bundles(other_rt, other, bundles[:1], 0)
    _, key, value, _ = other.log[0]  # the same record again and again: other offsets
    other.log += [(len(other.log) + i, key, value, True) for i in range(30)]

    second = runtime(other, tmp_path)
    asyncio.run(second.ensure(PARTITION))
    assert other.starts[-1] == 0  # checked, rejected, read from the beginning
    assert second.bundle_offset[PARTITION] == 0
    saved = second.snapshot_of[PARTITION].load()
    assert saved is not None and saved[0].offset == len(other.log)  # rewritten from it


def test_a_deleted_snapshot_means_a_full_read(tmp_path):
    changelog = snapshotted(tmp_path / "state")
    shutil.rmtree(tmp_path / "state")
    second = runtime(changelog, tmp_path / "state")
    asyncio.run(second.ensure(PARTITION))
    assert changelog.starts[-1] == 0
    assert second.bundle_offset[PARTITION] == 2


def test_a_failed_restore_releases_the_snapshot_for_the_retry(tmp_path):
    changelog = snapshotted(tmp_path)

    calls = []

    async def broker_down_once(partition: int, start: int) -> ChangelogRead:
        calls.append(start)
        if len(calls) == 1:
            raise ConnectionError("broker down")
        return await changelog.read(partition, start)

    second = EngineRuntime(
        build_settings(environ={}), broker_down_once, SnapshotStore(tmp_path, TOPIC)
    )
    with pytest.raises(ConnectionError):
        asyncio.run(second.ensure(PARTITION))
    asyncio.run(second.ensure(PARTITION))
    assert calls[-1] > 0  # the retry used the snapshot (not locked by the failed attempt)
    assert second.bundle_offset[PARTITION] == 2
