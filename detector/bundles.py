"""Bundles: many validated events in one Kafka message, re-keyed to the engine's partition.

The ingest stage packs validated events, each with its source partition and offset, its
decoded fields and its original bytes, into one message per engine partition. Per-message
overhead in the streaming framework is paid once per bundle instead of once per event, the
engine applies the decoded fields without parsing and validating the event a second time,
and the source offsets let the engine skip events it has already applied (redelivery after
a crash never double counts). The original bytes are kept for a dead letter the engine may
still write (an event that turns out late). A tick is a bundle without events that lets idle
time pass in live mode.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

from .events import EventFields

_SEP = b"\x00"  # JSON output never contains a raw NUL byte


class Item(NamedTuple):
    source_partition: int
    source_offset: int
    raw: bytes
    #: the decoded event (its fields as :func:`detector.events.decode_fields` returns them)
    event: EventFields


class Bundle(NamedTuple):
    items: list[Item]
    #: idle milliseconds to let pass (a tick), 0 for an events bundle
    tick_ms: int = 0


def encode_bundle(items: list[Item]) -> bytes:
    """
    >>> e = ("e1", "session.started", 5, "u1", "t1", {"k": 1})
    >>> b = decode_bundle(encode_bundle([Item(0, 5, b'{"a":1}', e), Item(1, 9, b"x\\x00y", e)]))
    >>> [(i.source_partition, i.source_offset, i.raw) for i in b.items]
    [(0, 5, b'{"a":1}'), (1, 9, b'x\\x00y')]
    >>> tuple(b.items[1].event) == e
    True
    """
    header = orjson.dumps(
        [[i.source_partition, i.source_offset, len(i.raw), *i.event] for i in items]
    )
    return header + _SEP + b"".join(i.raw for i in items)


def encode_tick(elapsed_ms: int) -> bytes:
    """
    >>> decode_bundle(encode_tick(5000)).tick_ms
    5000
    """
    return orjson.dumps({"tick_ms": elapsed_ms}) + _SEP


def decode_bundle(data: bytes) -> Bundle:
    head, _, body = data.partition(_SEP)
    meta = orjson.loads(head)
    if isinstance(meta, dict):
        return Bundle([], int(meta["tick_ms"]))
    items = []
    pos = 0
    for row in meta:
        length = row[2]
        # the fields come back as a list: the engine unpacks them the same way
        items.append(Item(row[0], row[1], body[pos : pos + length], row[3:]))
        pos += length
    return Bundle(items)


def encoded_size(raw: bytes) -> int:
    """Bytes an item adds to a bundle, roughly: its raw bytes, its decoded copy, framing."""
    return 2 * len(raw) + 40
