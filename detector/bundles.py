"""Bundles: many events in one Kafka message, re-keyed to the engine's partition.

The ingest stage packs validated events, each with its source partition and offset, its
decoded fields and its original bytes, into one message per engine partition. Per-message
overhead in the streaming framework is paid once per bundle instead of once per event, the
engine applies the decoded fields without parsing and validating the event a second time,
and the source offsets let the engine skip events it has already applied (redelivery after
a crash never double counts). The original bytes are kept for a dead letter the engine may
still write (an event that turns out late). A tick is a bundle without events that lets idle
time pass in live mode.

When the source topic is keyed by team (``kafka.events_keyed_by_team``), ingest routes by
the key and does not parse: such a bundle carries the original bytes only (no decoded
fields), and the engine decodes and validates each event.

A bundle is held and sent as columns (one list per field, not one object per event): at
tens of thousands of events per second, building and unpacking a small object per event on
both sides was a tenth of the worker's time. The original bytes travel concatenated after
the header and are cut out only for an event the engine rejects.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import orjson

from .events import EventFields

_SEP = b"\x00"  # JSON output never contains a raw NUL byte

MAX_ITEMS = 2000
#: under a default broker's message.max.bytes (1,048,588) and producer max request size
#: (1,000,000 in aiokafka and Faust): the bundle topic needs no max.message.bytes
MAX_BYTES = 900_000


class Item(NamedTuple):
    """One event of a bundle (for callers that build bundles an event at a time)."""

    source_partition: int
    source_offset: int
    raw: bytes
    #: the decoded event (its fields as :func:`detector.events.decode_fields` returns them)
    event: EventFields


class Columns:
    """The events of one bundle being built by ingest, a list per field; ``events`` empty:
    a bundle of original bytes only, which the engine decodes."""

    __slots__ = ("events", "offsets", "raws", "sources")

    def __init__(self) -> None:
        self.sources: list[int] = []
        self.offsets: list[int] = []
        self.raws: list[bytes] = []
        self.events: list[EventFields] = []

    def encoded(self) -> Iterator[bytes]:
        """The bundles, each at most :data:`MAX_ITEMS` events and :data:`MAX_BYTES` (an
        event larger than that on its own travels alone)."""
        lengths = list(map(len, self.raws))
        if len(lengths) <= MAX_ITEMS and _item_bytes(len(lengths), sum(lengths)) <= MAX_BYTES:
            yield from self._fitted(0, len(lengths), lengths)
            return  # the common case: one bundle, no per-event sizing
        for start, end in _chunk_bounds(lengths):
            yield from self._fitted(start, end, lengths)

    def _fitted(self, start: int, end: int, lengths: list[int]) -> Iterator[bytes]:
        """Events ``start`` to ``end`` as one bundle, halved until each half fits: the
        estimate by raw bytes is not a bound (a valid 64 KB event of properties written
        ``1E5`` decodes to ``100000.0`` each, and twenty of them made a 1.27 MB bundle)."""
        if start == 0 and end == len(lengths):  # the common case: no copies
            data = _encode(self.sources, self.offsets, self.raws, lengths, self.events)
        else:
            data = _encode(
                self.sources[start:end],
                self.offsets[start:end],
                self.raws[start:end],
                lengths[start:end],
                self.events[start:end],
            )
        if len(data) <= MAX_BYTES or end - start <= 1:
            yield data
            return
        middle = (start + end) // 2
        yield from self._fitted(start, middle, lengths)
        yield from self._fitted(middle, end, lengths)


def _encode(
    sources: list[int],
    offsets: list[int],
    raws: list[bytes],
    lengths: list[int],
    events: list[EventFields],
) -> bytes:
    columns: dict[str, list[Any]] = {"p": sources, "o": offsets, "n": lengths}
    if events:  # none: original bytes only
        columns["e"] = events
    # default: fields as an Event (a NamedTuple, which orjson does not take)
    return orjson.dumps(columns, default=tuple) + _SEP + b"".join(raws)


def _item_bytes(items: int, raw_bytes: int) -> int:
    """Rough bundle size of ``items`` events: their raw bytes, a decoded copy, framing (an
    estimate to cut by: a decoded copy is usually smaller, but can be larger)."""
    return 2 * raw_bytes + 40 * items


def _chunk_bounds(lengths: list[int]) -> Iterator[tuple[int, int]]:
    """
    >>> list(_chunk_bounds([400_000, 400_000, 400_000, 10]))
    [(0, 1), (1, 2), (2, 4)]
    """
    start, size = 0, 0
    for i, length in enumerate(lengths):
        item_size = _item_bytes(1, length)
        if i > start and (i - start >= MAX_ITEMS or size + item_size > MAX_BYTES):
            yield start, i
            start, size = i, 0
        size += item_size
    if start < len(lengths):
        yield start, len(lengths)


class Bundle(NamedTuple):
    #: per event: source partition, source offset, decoded fields (as lists); no fields
    #: (None): the engine decodes the original bytes
    sources: list[int]
    offsets: list[int]
    events: list[EventFields] | None
    #: the original bytes of the events, concatenated, and the length of each
    lengths: list[int]
    body: bytes
    #: idle milliseconds to let pass (a tick), 0 for an events bundle
    tick_ms: int = 0

    def raw(self, index: int) -> bytes:
        """The original bytes of event ``index`` (for a dead letter: rare, not cached)."""
        start = sum(self.lengths[:index])
        return self.body[start : start + self.lengths[index]]


def encode_bundle(items: list[Item]) -> bytes:
    """All ``items`` in one bundle.

    >>> e = ("e1", "session.started", 5, "u1", "t1", {"k": 1})
    >>> b = decode_bundle(encode_bundle([Item(0, 5, b'{"a":1}', e), Item(1, 9, b"x\\x00y", e)]))
    >>> b.sources, b.offsets, [b.raw(0), b.raw(1)]
    ([0, 1], [5, 9], [b'{"a":1}', b'x\\x00y'])
    >>> tuple(b.events[1]) == e
    True
    """
    return _encode(
        [i.source_partition for i in items],
        [i.source_offset for i in items],
        [i.raw for i in items],
        [len(i.raw) for i in items],
        [i.event for i in items],
    )


def encode_tick(elapsed_ms: int) -> bytes:
    """
    >>> decode_bundle(encode_tick(5000)).tick_ms
    5000
    """
    return orjson.dumps({"tick_ms": elapsed_ms}) + _SEP


class UndecodableBundle(ValueError):
    """A message of the bundle topic that is not a bundle this release reads (a corrupt
    message, or one written by a newer release during a rolling upgrade)."""


def decode_bundle(data: bytes) -> Bundle:
    """The bundle in ``data``, its columns checked before any event is applied.

    >>> raw = Columns(); raw.sources, raw.offsets, raw.raws = [0, 1], [7, 3], [b"{}", b"[]"]
    >>> b = decode_bundle(next(raw.encoded()))
    >>> b.events, b.offsets, b.raw(1)
    (None, [7, 3], b'[]')
    >>> decode_bundle(b'{"p":[0],"o":[7],"n":[5]}\\x00{}')
    Traceback (most recent call last):
    ...
    detector.bundles.UndecodableBundle: the lengths add up to 5 bytes, the body has 2
    """
    try:
        bundle = _decoded(data)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise UndecodableBundle(f"{type(exc).__name__}: {exc}"[:500]) from exc
    columns = (bundle.sources, bundle.offsets, bundle.lengths)
    if not all(type(column) is list for column in columns):
        raise UndecodableBundle("a column is not a list")
    count = len(bundle.offsets)
    if any(len(column) != count for column in columns) or (
        bundle.events is not None
        and (type(bundle.events) is not list or len(bundle.events) != count)
    ):
        raise UndecodableBundle("its columns differ in length")
    # sums in C instead of a check per event: a text or null fails to add, a float makes
    # the sum a float (a bool adds as the integer it is)
    try:
        sums: list[object] = [sum(column) for column in columns]
    except TypeError:
        sums = [None]
    if any(type(total) is not int for total in sums) or type(bundle.tick_ms) is not int:
        raise UndecodableBundle("a partition, offset, length or tick is not an integer")
    if sums[2] != len(bundle.body) or min(bundle.lengths, default=0) < 0:
        raise UndecodableBundle(
            f"the lengths add up to {sums[2]} bytes, the body has {len(bundle.body)}"
        )
    return bundle


def _decoded(data: bytes) -> Bundle:
    head, _, body = data.partition(_SEP)
    meta = orjson.loads(head)
    if isinstance(meta, list):  # a bundle of release 0.1.0: [partition, offset, length] rows
        sources, offsets = [row[0] for row in meta], [row[1] for row in meta]
        return Bundle(sources, offsets, None, [row[2] for row in meta], body)
    if "tick_ms" in meta:
        return Bundle([], [], [], [], b"", meta["tick_ms"])
    # the fields come back as lists: the engine unpacks them the same way
    return Bundle(meta["p"], meta["o"], meta.get("e"), meta["n"], body)
