"""detector.heap: releasing the heap after a burst of work."""

from __future__ import annotations

import weakref

from detector import heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_release_collects_garbage_in_reference_cycles():
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    took = heap.release()
    assert gone() is None
    assert took >= 0.0


def test_a_keeper_releases_once_per_burst_of_enough_work():
    keeper = heap.HeapKeeper(min_records=100, quiet_s=2.0, max_wait_s=60.0, now=0.0)
    due = []
    for second in range(20):  # work for 10 s, then nothing
        if second < 10:
            keeper.add(50, now=float(second))
        if keeper.due(float(second)):
            due.append(second)
            keeper.released(float(second))
    assert due == [11]
