"""A local snapshot of a partition's state changelog: what it may hold, and where to resume.

Why the state is in our own changelog topic plus a rocksdict snapshot, not in Faust tables:
the changelog topic is the source of truth, written inside the bundle's Kafka transaction
together with the alerts and offsets (:mod:`detector.changelog`), so a ``kill -9`` leaves all
of a bundle or none of it. Faust tables failed that in the fault tests: table writes are
buffered and may reach Kafka after the offsets commit, one bundle's writes may straddle two
commits, and recovery reads only to the last stable offset. The engine works on plain Python
objects in memory; what a table would add is a local copy, so a restart need not read the
whole changelog again. That copy is this snapshot (RocksDB via rocksdict,
:mod:`detector.snapshot_store`), and it is only ever a cache:

* It holds **only committed records**: a bundle's records are written to it after Faust has
  committed the transaction that carries them (the bundle offset is committed), never before,
  so a crash between the snapshot write and the commit cannot happen by construction.
* Its header says where it stands: every committed changelog record below ``offset`` is in it
  (it may also hold some committed records from above, which replaying from ``offset``
  overwrites with the same or newer values). A new owner loads it and reads the changelog
  only from there to the high watermark, with the same fencing and ``read_committed`` read.
* It is trusted only while young: its header says when it was written (wall clock), and one
  older than a limit (:data:`MAX_AGE_MS`, the changelog topic's ``delete.retention.ms``) is
  dropped. Compaction removes a deletion (tombstone) from the changelog after that
  retention, so an older snapshot could hold records deleted since with nothing in the
  changelog to say so (the engine also evicts again what its weekly clean-up would have).
* It is checked against the changelog before it is trusted: the header names the changelog
  topic and partition, and the last record it holds (offset and key); that record must still
  be at that offset with the same value, or, if compaction removed it, a newer record of the
  same key must follow (compaction keeps a key's newest record; the replay brings it). A snapshot ahead of the
  changelog's end, behind its start, from another topic, or unreadable is dropped, and the
  whole partition is read as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import orjson

#: the header's key; every state key starts with a letter and a colon (``t:``, ``u:``, ``m:``)
HEADER_KEY = b"#snapshot"
FORMAT = 1
#: pending records per partition beyond which the snapshot stops following (commits stalled)
MAX_PENDING_RECORDS = 2_000_000
#: the oldest a snapshot may be (since its header was written) to be used: at most the
#: changelog topic's delete.retention.ms, so the deletions since are still there to replay
MAX_AGE_MS = 7 * 86_400_000


@dataclass(frozen=True)
class Position:
    """Where a snapshot stands in its changelog partition.

    ``offset``: every committed record below it is in the snapshot (the replay starts here);
    ``last_offset``/``last_key``: the newest record it holds, checked against the changelog;
    ``written_ms``: when its header was written (wall clock; None: not written yet, or by a
    version that did not say).
    """

    offset: int
    last_offset: int
    last_key: bytes
    written_ms: int | None = field(default=None, compare=False, repr=False)

    def encode(self, topic: str, partition: int, written_ms: int) -> bytes:
        """
        >>> p = Position(10, 8, b"m:0")
        >>> Position.decode(p.encode("cl", 0, 5), "cl", 0) == p
        True
        >>> Position.decode(p.encode("cl", 0, 5), "cl", 0).written_ms
        5
        >>> Position.decode(p.encode("cl", 0, 5), "cl", 1) is None  # another partition's
        True
        """
        return orjson.dumps(
            {
                "format": FORMAT,
                "topic": topic,
                "partition": partition,
                "offset": self.offset,
                "last_offset": self.last_offset,
                "last_key": self.last_key.hex(),
                "written_ms": written_ms,
            }
        )

    @classmethod
    def decode(cls, data: bytes | None, topic: str, partition: int) -> Position | None:
        """The header if it is well-formed and names this changelog partition, else None.

        >>> Position.decode(b"garbage", "cl", 0) is None
        True
        """
        if not data:
            return None
        try:
            h = orjson.loads(data)
            if (h["format"], h["topic"], h["partition"]) != (FORMAT, topic, partition):
                return None
            written = h.get("written_ms")
            position = cls(
                int(h["offset"]),
                int(h["last_offset"]),
                bytes.fromhex(h["last_key"]),
                None if written is None else int(written),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        if not 0 <= position.last_offset < position.offset:
            return None
        return position


@dataclass
class ChangelogRead:
    """Committed records of one changelog partition from some offset to its end."""

    #: latest value per key in the range read (None: deleted)
    latest: dict[bytes, bytes | None] = field(default_factory=dict)
    #: the partition's high watermark the read went to, and its first offset
    end: int = 0
    log_start: int = 0
    #: the first committed record read: (offset, key, value)
    first: tuple[int, bytes, bytes | None] | None = None
    #: the newest committed record read: (offset, key)
    last: tuple[int, bytes] | None = None


def young(position: Position, now_ms: int, max_age_ms: int = MAX_AGE_MS) -> bool:
    """Whether a snapshot is recent enough to use: written at most ``max_age_ms`` ago.

    One of unknown age (a header without its time) is not: it may be of any age.

    >>> day = 86_400_000
    >>> young(Position(10, 8, b"m:0", 0), 7 * day), young(Position(10, 8, b"m:0", 0), 7 * day + 1)
    (True, False)
    >>> young(Position(10, 8, b"m:0"), 0)
    False
    """
    return position.written_ms is not None and now_ms - position.written_ms <= max_age_ms


def read_from(position: Position | None) -> int:
    """Where to start reading the changelog: at the snapshot's newest record (to check it),
    or at the beginning without a snapshot.

    >>> read_from(None), read_from(Position(10, 8, b"m:0"))
    (0, 8)
    """
    return 0 if position is None else position.last_offset


def continues(position: Position, held: bytes | None, read: ChangelogRead) -> bool:
    """Whether the changelog read from ``read_from(position)`` continues this snapshot.

    ``held`` is the snapshot's value of ``position.last_key``. The snapshot's newest record
    must still be in the changelog, unchanged, at its offset; a gap there is fine only if
    compaction can explain it: a newer record follows (compaction keeps a key's newest).

    >>> p = Position(10, 8, b"m:0")
    >>> continues(p, b"v", ChangelogRead({b"m:0": b"v"}, 10, 0, (8, b"m:0", b"v"), (8, b"m:0")))
    True
    >>> continues(p, b"v", ChangelogRead({b"m:0": b"w"}, 10, 0, (8, b"m:0", b"w"), (8, b"m:0")))
    False
    >>> continues(p, b"v", ChangelogRead({}, 9, 0))  # the changelog ends before the snapshot
    False
    """
    if not read.log_start <= position.last_offset < position.offset <= read.end:
        return False
    if read.first is None:
        return False  # the newest record is gone with nothing after it: not this changelog
    offset, key, value = read.first
    if offset == position.last_offset:
        return key == position.last_key and value == held
    return position.last_key in read.latest  # compacted away: only if a newer one followed


def merged(base: dict[bytes, bytes], read: ChangelogRead) -> dict[bytes, bytes]:
    """The state: the snapshot's records with the changelog's newer ones over them.

    >>> r = ChangelogRead({b"u:a": b"2", b"u:b": None})
    >>> merged({b"u:a": b"1", b"u:b": b"1", b"u:c": b"1"}, r)
    {b'u:a': b'2', b'u:c': b'1'}
    """
    state = dict(base)
    for key, value in read.latest.items():
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    return state


def after_read(position: Position | None, read: ChangelogRead) -> Position | None:
    """Where the snapshot stands once the records read are written to it (None: nothing yet).

    >>> after_read(None, ChangelogRead({b"m:0": b"x"}, 12, 0, (3, b"m:0", b"x"), (10, b"m:0")))
    Position(offset=12, last_offset=10, last_key=b'm:0')
    >>> after_read(Position(5, 4, b"m:0"), ChangelogRead(end=7))  # only markers since
    Position(offset=7, last_offset=4, last_key=b'm:0')
    """
    if read.last is not None:
        return Position(read.end, read.last[0], read.last[1])
    if position is None:
        return None
    return Position(max(position.offset, read.end), position.last_offset, position.last_key)


class Sent(Protocol):
    """The future of the last record of a bundle's send (aiokafka's RecordMetadata)."""

    def done(self) -> bool: ...
    def result(self) -> Any: ...


T = TypeVar("T")


@dataclass
class _Bundle(Generic[T]):
    offset: int
    staged: T
    last_key: bytes
    records: int
    sent: Sent | None = None


class Pending(Generic[T]):
    """One partition's changelog records sent but not yet known to be committed.

    The worker stages each bundle's state records (``add``: already in the form the store
    writes, e.g. a RocksDB write batch, so the records themselves are not kept alive), then
    gives the future of the send whose last record is the bundle's meta record (``sent``);
    once Faust has committed the bundle offsets past a bundle, ``committed`` hands its staged
    records over for the snapshot with the position they bring it to.
    """

    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition
        self.bundles: list[_Bundle[T]] = []
        self.records = 0
        #: stopped following the changelog (a send failed or commits stalled): never write
        #: past this point again until the partition is restored anew
        self.broken = False

    def add(self, bundle_offset: int, staged: T, last_key: bytes, records: int) -> None:
        """``staged``: the bundle's ``records`` state records, ``last_key`` the last one's key."""
        if self.broken:
            return
        self.bundles.append(_Bundle(bundle_offset, staged, last_key, records))
        self.records += records
        if self.records > MAX_PENDING_RECORDS:
            self.stop()

    def sent(self, future: Sent | None) -> None:
        if self.broken or not self.bundles or self.bundles[-1].sent is not None:
            return
        if future is None:
            self.stop()
        else:
            self.bundles[-1].sent = future

    def stop(self) -> None:
        self.broken = True
        self.bundles.clear()
        self.records = 0

    def committed(self, bundle_committed: int) -> tuple[list[T], Position | None]:
        """The staged records of the bundles below the committed bundle offset
        ``bundle_committed`` (Kafka's committed offset: the next to read), in order, and the
        position after them.

        >>> class Done:
        ...     def __init__(self, o): self.o = o
        ...     def done(self): return True
        ...     def result(self): return type("M", (), {"topic": "cl", "partition": 0, "offset": self.o})
        >>> p = Pending("cl", 0)
        >>> p.add(7, "batch 7", b"m:0", 2); p.sent(Done(41))
        >>> p.add(8, "batch 8", b"m:0", 1); p.sent(Done(43))
        >>> p.committed(8)
        (['batch 7'], Position(offset=42, last_offset=41, last_key=b'm:0'))
        >>> p.committed(8), p.records
        (([], None), 1)
        """
        out: list[T] = []
        position: Position | None = None
        taken = 0
        for bundle in self.bundles:
            if bundle.offset >= bundle_committed:
                break
            sent = bundle.sent
            if sent is None or not sent.done():
                break  # committed yet not acknowledged here: wait for the next call
            try:
                meta = sent.result()
            except Exception:
                self.stop()
                return [], None
            if (meta.topic, meta.partition) != (self.topic, self.partition):
                self.stop()  # the send did not end with this partition's changelog record
                return [], None
            out.append(bundle.staged)
            position = Position(meta.offset + 1, meta.offset, bundle.last_key)
            self.records -= bundle.records
            taken += 1
        del self.bundles[:taken]
        return out, position


def chunks(
    records: Iterator[tuple[bytes, bytes | None]], size: int
) -> Iterator[list[tuple[bytes, bytes | None]]]:
    """
    >>> [len(c) for c in chunks(iter([(b"k", b"v")] * 5), 2)]
    [2, 2, 1]
    """
    chunk: list[tuple[bytes, bytes | None]] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
