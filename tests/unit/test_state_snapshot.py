"""The snapshot's rules: only committed records, where to resume, and when not to trust it."""

from __future__ import annotations

from dataclasses import dataclass

from detector.state_snapshot import (
    MAX_PENDING_RECORDS,
    ChangelogRead,
    Pending,
    Position,
    after_read,
    continues,
    merged,
    read_from,
)


@dataclass
class Meta:
    topic: str
    partition: int
    offset: int


class Future:
    def __init__(self, meta: Meta | None, done: bool = True, error: bool = False) -> None:
        self.meta, self._done, self.error = meta, done, error

    def done(self) -> bool:
        return self._done

    def result(self) -> Meta:
        if self.error:
            raise RuntimeError("send failed")
        assert self.meta is not None
        return self.meta


def add(pending: Pending, bundle: int, records: list[tuple[bytes, bytes]]) -> None:
    """Stage a bundle's records as they are (the worker stages a RocksDB write batch)."""
    pending.add(bundle, records, records[-1][0], len(records))


def test_only_bundles_below_the_committed_offset_reach_the_snapshot():
    pending: Pending = Pending("cl", 2)
    add(pending, 10, [(b"u:a", b"1"), (b"m:2", b"x10")])
    pending.sent(Future(Meta("cl", 2, 100)))
    add(pending, 11, [(b"t:t", b"2"), (b"m:2", b"x11")])
    pending.sent(Future(Meta("cl", 2, 103)))

    assert pending.committed(10) == ([], None)  # bundle 10 not committed yet
    staged, position = pending.committed(11)
    assert staged == [[(b"u:a", b"1"), (b"m:2", b"x10")]]
    assert position == Position(101, 100, b"m:2")
    staged, position = pending.committed(12)
    assert staged == [[(b"t:t", b"2"), (b"m:2", b"x11")]]
    assert position == Position(104, 103, b"m:2")
    assert pending.records == 0


def test_a_committed_bundle_whose_send_is_not_acknowledged_waits():
    pending: Pending = Pending("cl", 0)
    add(pending, 1, [(b"m:0", b"a")])
    future = Future(Meta("cl", 0, 5), done=False)
    pending.sent(future)
    assert pending.committed(5) == ([], None)
    future._done = True
    assert pending.committed(5)[1] == Position(6, 5, b"m:0")


def test_a_failed_or_foreign_send_stops_the_snapshot_for_good():
    for future in (None, Future(None, error=True), Future(Meta("other", 0, 5))):
        pending: Pending = Pending("cl", 0)
        add(pending, 1, [(b"m:0", b"a")])
        pending.sent(future)
        assert pending.committed(5) == ([], None)
        assert pending.broken
        add(pending, 2, [(b"m:0", b"b")])
        pending.sent(Future(Meta("cl", 0, 9)))
        assert pending.committed(5) == ([], None)  # nothing after a gap, ever


def test_stalled_commits_stop_the_snapshot_instead_of_growing_without_bound():
    pending: Pending = Pending("cl", 0)
    pending.add(1, "a huge batch", b"m:0", MAX_PENDING_RECORDS + 1)
    assert pending.broken and pending.records == 0


def test_a_snapshot_continues_its_changelog_only_if_its_newest_record_is_there():
    position = Position(10, 8, b"m:0")
    here = (8, b"m:0", b"v")
    assert read_from(position) == 8
    assert continues(position, b"v", ChangelogRead(end=10, first=here, last=(8, b"m:0")))
    # another value at that offset: another changelog (recreated topic, another app's)
    assert not continues(position, b"w", ChangelogRead(end=10, first=here))
    assert not continues(position, b"v", ChangelogRead(end=10, first=(8, b"u:a", b"v")))
    # ahead of the changelog's end: it holds what the changelog does not
    assert not continues(position, b"v", ChangelogRead(end=9, first=here))
    # the changelog starts after it (records deleted)
    assert not continues(position, b"v", ChangelogRead(end=20, log_start=9, first=here))
    # nothing committed at or after its newest record: not written by this changelog
    assert not continues(position, b"v", ChangelogRead(end=10))
    # compacted away: a newer record of the key follows in the read, which replaces it
    newer = {b"m:0": b"n"}
    assert continues(position, b"v", ChangelogRead(newer, end=30, first=(12, b"m:0", b"n")))
    # a gap with no newer record of its key: compaction cannot explain it
    assert not continues(position, b"v", ChangelogRead({b"u:a": b"1"}, 30, 0, (12, b"u:a", b"1")))


def test_the_state_is_the_snapshot_with_the_changelog_after_it_on_top():
    base = {b"u:a": b"1", b"u:b": b"1", b"m:0": b"old"}
    read = ChangelogRead({b"u:a": b"2", b"u:b": None, b"m:0": b"new"}, end=20)
    assert merged(base, read) == {b"u:a": b"2", b"m:0": b"new"}
    assert base == {b"u:a": b"1", b"u:b": b"1", b"m:0": b"old"}  # not changed


def test_the_position_after_a_read_is_its_end():
    read = ChangelogRead({b"m:0": b"x"}, end=21, first=(5, b"m:0", b"x"), last=(19, b"m:0"))
    assert after_read(None, read) == Position(21, 19, b"m:0")
    assert after_read(None, ChangelogRead(end=0)) is None  # an empty changelog
    assert after_read(Position(10, 8, b"m:0"), ChangelogRead(end=12)) == Position(12, 8, b"m:0")


def test_a_header_of_another_changelog_or_a_damaged_one_is_not_a_position():
    data = Position(10, 8, b"m:0").encode("app-state-changelog", 3, 1_000)
    assert Position.decode(data, "app-state-changelog", 3) == Position(10, 8, b"m:0")
    assert Position.decode(data, "other-state-changelog", 3) is None
    assert Position.decode(data, "app-state-changelog", 2) is None
    assert Position.decode(data[:-3], "app-state-changelog", 3) is None
    assert Position.decode(None, "app-state-changelog", 3) is None
    bad = Position(8, 8, b"m:0").encode("cl", 0, 1_000)  # newest record not below its offset
    assert Position.decode(bad, "cl", 0) is None
