"""Give the heap that a burst of work left behind back to the operating system.

A restore, a day close (which re-encodes every entity of a partition) or a catch-up makes
hundreds of thousands of short-lived objects. Two things keep their memory resident after
they are gone: garbage in reference cycles (aiokafka's batches and their per-record futures)
waits for a full collection of the cyclic collector, which runs less and less often as the
state grows (its trigger is a quarter of the long-lived objects, and every tracked entity
counts); and glibc keeps freed chunks in its arenas. Measured on the scale benchmark (200k
users): the worker's RSS just after the load was ~100 MB above what ``gc.collect()`` plus
``malloc_trim(0)`` leave.

:class:`HeapKeeper` decides when that is worth its cost (a full collection walks every
tracked object: ~0.3 s at 200k users): after at least ``min_records`` records of work, once
the work has paused for ``quiet_s``, or at most every ``max_wait_s`` while it goes on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable

#: records (state written, restored) since the last release that make one worth it
MIN_RECORDS = 50_000
#: seconds without work after which a burst counts as over
QUIET_S = 2.0
#: while the work goes on, release at most this often
MAX_WAIT_S = 120.0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None (another C library: nothing to trim)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release() -> float:
    """Collect cyclic garbage and return free heap pages to the OS; the seconds it took."""
    started = time.perf_counter()
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)
    return time.perf_counter() - started


class HeapKeeper:
    """Counts the work done (records) and says when to :func:`release`.

    >>> keeper = HeapKeeper(min_records=10, quiet_s=2, max_wait_s=60, now=0.0)
    >>> keeper.add(8, now=1.0); keeper.due(now=5.0)  # not enough work yet
    False
    >>> keeper.add(8, now=5.0); keeper.due(now=6.0)  # enough, but the work goes on
    False
    >>> keeper.due(now=7.0)  # paused for 2 s
    True
    >>> keeper.released(now=7.0); keeper.add(50, now=60.0); keeper.due(now=61.0)
    False
    >>> keeper.add(50, now=67.0); keeper.due(now=67.0)  # busy, but the last release is old
    True
    """

    def __init__(
        self,
        min_records: int = MIN_RECORDS,
        quiet_s: float = QUIET_S,
        max_wait_s: float = MAX_WAIT_S,
        now: float | None = None,
    ) -> None:
        self.min_records, self.quiet_s, self.max_wait_s = min_records, quiet_s, max_wait_s
        self.records = 0
        self.last_work = self.last_release = time.monotonic() if now is None else now

    def add(self, records: int, now: float) -> None:
        """``records`` of work done at ``now`` (monotonic seconds)."""
        self.records += records
        self.last_work = now

    def due(self, now: float) -> bool:
        if self.records < self.min_records:
            return False
        return now - self.last_work >= self.quiet_s or now - self.last_release >= self.max_wait_s

    def released(self, now: float) -> None:
        self.records = 0
        self.last_release = now
