"""The state snapshot on disk: one RocksDB (rocksdict, raw bytes) per changelog partition.

What may be written, and when it is trusted, is :mod:`detector.state_snapshot`; this module
only stores it. A bundle's records are staged as one ``WriteBatch`` when they are sent and
written once their transaction has committed, the header after them; nothing is synced:
after a crash RocksDB recovers a prefix of the writes, each of which leaves a consistent
snapshot, so a lost tail only means a longer replay. One database per partition, under ``<state_dir>/snapshots/<changelog>-<partition>``:
RocksDB's lock file keeps two workers sharing a state directory from writing one at once (the
second works without a snapshot for that partition).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch

from .state_snapshot import HEADER_KEY, MAX_AGE_MS, Position, chunks, young

log = logging.getLogger("churn_detector.snapshot")

#: records per WriteBatch when a whole partition is written (bounded transient memory)
CHUNK = 50_000


#: one block cache for every partition's database, index and filter blocks included: the
#: snapshot is read once per restore, so its memory is kept small and bounded (without it,
#: a worker's RSS crept up ~3 MB a minute in the soak as table files accumulated)
_CACHE = Cache(4 << 20)


def _options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    # small memtables: four partitions must not hold hundreds of MB the engine needs
    options.set_write_buffer_size(2 << 20)
    options.set_max_write_buffer_number(2)
    table = BlockBasedOptions()
    table.set_block_cache(_CACHE)
    table.set_cache_index_and_filter_blocks(True)
    options.set_block_based_table_factory(table)
    return options


class PartitionSnapshot:
    """One partition's snapshot database (open).

    ``max_age_ms``: the oldest a snapshot is used (at most the changelog's
    delete.retention.ms); ``clock``: the wall clock in seconds, whose time a header records.
    """

    def __init__(
        self,
        path: Path,
        topic: str,
        partition: int,
        max_age_ms: int = MAX_AGE_MS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path, self.topic, self.partition = path, topic, partition
        self.max_age_ms, self.clock = max_age_ms, clock
        self.db: Rdict | None = Rdict(str(path), _options())

    def load(self) -> tuple[Position, dict[bytes, bytes]] | None:
        """The position and records held, or None (empty, foreign, too old or unreadable:
        wiped)."""
        assert self.db is not None
        try:
            position = Position.decode(self.db.get(HEADER_KEY), self.topic, self.partition)
            if position is None:
                self.wipe()
                return None
            now_ms = self._now_ms()
            if not young(position, now_ms, self.max_age_ms):
                written = position.written_ms
                log.warning(
                    "snapshot %s %s (limit: %.1f days): dropped, the changelog may no longer "
                    "hold what was deleted since",
                    self.path,
                    "of unknown age"
                    if written is None
                    else f"written {(now_ms - written) / 86_400_000:.1f} days ago",
                    self.max_age_ms / 86_400_000,
                )
                self.wipe()
                return None
            records: dict[bytes, bytes] = {
                k: v for k, v in self.db.items() if isinstance(k, bytes) and k != HEADER_KEY
            }
        except Exception as exc:  # a damaged database: the changelog has it all
            log.warning("snapshot %s unreadable (%r): dropped", self.path, exc)
            self.wipe()
            return None
        return position, records

    def stage(self, records: Iterable[tuple[bytes, bytes | None]]) -> WriteBatch:
        """The records (None: delete) as one write batch: one buffer, not many objects."""
        batch = WriteBatch(raw_mode=True)
        for key, value in records:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        return batch

    def commit(self, batches: Iterable[WriteBatch], position: Position) -> None:
        """Write the staged batches, then the header (last, so a crash in between leaves the
        old header, which a replay from its offset completes)."""
        assert self.db is not None
        for batch in batches:
            self.db.write(batch)
        self.db.put(HEADER_KEY, position.encode(self.topic, self.partition, self._now_ms()))

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def write(self, records: Iterable[tuple[bytes, bytes | None]], position: Position) -> None:
        """Store ``records`` (None: delete) in bounded batches, then the header."""
        self.commit((self.stage(chunk) for chunk in chunks(iter(records), CHUNK)), position)

    def wipe(self) -> None:
        """Empty the database (it holds nothing this changelog can vouch for)."""
        self.close()
        Rdict.destroy(str(self.path), _options())
        shutil.rmtree(self.path, ignore_errors=True)
        self.db = Rdict(str(self.path), _options())

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


class SnapshotStore:
    """The snapshots of one changelog topic under a state directory (``max_age_ms`` and
    ``clock``: as :class:`PartitionSnapshot`'s)."""

    def __init__(
        self,
        state_dir: str | Path,
        topic: str,
        max_age_ms: int = MAX_AGE_MS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(state_dir) / "snapshots"
        self.topic = topic
        self.max_age_ms, self.clock = max_age_ms, clock

    def path(self, partition: int) -> Path:
        return self.root / f"{self.topic}-{partition}"

    def open(self, partition: int) -> PartitionSnapshot | None:
        """The partition's snapshot, or None if it cannot be used (locked by another
        worker); a database that does not open is removed and made anew."""
        path = self.path(partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return PartitionSnapshot(path, self.topic, partition, self.max_age_ms, self.clock)
        except Exception as exc:
            if "lock" in str(exc).lower():
                log.warning("snapshot %s in use (%r): partition restored without it", path, exc)
                return None
            log.warning("snapshot %s does not open (%r): made anew", path, exc)
        shutil.rmtree(path, ignore_errors=True)
        try:
            return PartitionSnapshot(path, self.topic, partition, self.max_age_ms, self.clock)
        except Exception as exc:
            log.warning("snapshot %s cannot be made (%r): none for this partition", path, exc)
            return None

    def size_bytes(self) -> int:
        """Bytes on disk of every snapshot under this store."""
        if not self.root.exists():
            return 0
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())
