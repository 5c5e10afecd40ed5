"""Bundles: many raw events in one Kafka message, re-keyed to the engine's partition.

The ingest stage packs validated raw events, each with its source partition and offset,
into one message per engine partition. Per-message overhead in the streaming framework is
paid once per bundle instead of once per event, and the source offsets let the engine skip
events it has already applied (redelivery after a crash never double counts).
A tick is a bundle without events that lets idle time pass in live mode.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

_SEP = b"\x00"  # JSON output never contains a raw NUL byte


class Item(NamedTuple):
    source_partition: int
    source_offset: int
    raw: bytes


class Bundle(NamedTuple):
    items: list[Item]
    #: idle milliseconds to let pass (a tick), 0 for an events bundle
    tick_ms: int = 0


def encode_bundle(items: list[Item]) -> bytes:
    """
    >>> b = decode_bundle(encode_bundle([Item(0, 5, b'{"a":1}'), Item(1, 9, b"x\\x00y")]))
    >>> [(i.source_partition, i.source_offset, i.raw) for i in b.items]
    [(0, 5, b'{"a":1}'), (1, 9, b'x\\x00y')]
    """
    header = orjson.dumps([[i.source_partition, i.source_offset, len(i.raw)] for i in items])
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
    for partition, offset, length in meta:
        items.append(Item(partition, offset, body[pos : pos + length]))
        pos += length
    return Bundle(items)
