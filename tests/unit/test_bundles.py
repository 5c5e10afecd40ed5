"""Bundles: columns in, the same events out, split at the size limits; older bundles still read."""

from __future__ import annotations

import orjson
import pytest

from detector.bundles import (
    MAX_BYTES,
    MAX_ITEMS,
    Columns,
    Item,
    UndecodableBundle,
    decode_bundle,
    encode_bundle,
)
from detector.events import Event, Invalid, decode_fields


def _columns(raws: list[bytes]) -> Columns:
    columns = Columns()
    for offset, raw in enumerate(raws):
        fields = decode_fields(raw)
        assert isinstance(fields, tuple)
        columns.sources.append(offset % 3)
        columns.offsets.append(offset)
        columns.raws.append(raw)
        columns.events.append(fields)
    return columns


def _event(i: int, padding: int = 0) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"e{i}",
            "type": "feature.used",
            "timestamp": 1772356502123 + i,
            "user_id": f"u{i % 7}",
            "team_id": "t1",
            "properties": {"feature": "x" * (1 + padding)},
        }
    )


def test_every_event_comes_back_once_in_order_with_its_bytes_across_the_split_bundles():
    raws = [_event(i, padding=i % 500) for i in range(5000)]
    columns = _columns(raws)

    bundles = [decode_bundle(data) for data in columns.encoded()]

    assert len(bundles) > 1
    assert all(len(b.offsets) <= MAX_ITEMS for b in bundles)
    assert all(len(b.body) * 2 <= MAX_BYTES for b in bundles)
    assert [o for b in bundles for o in b.offsets] == list(range(5000))
    assert [s for b in bundles for s in b.sources] == [i % 3 for i in range(5000)]
    assert [b.raw(i) for b in bundles for i in range(len(b.offsets))] == raws
    assert [tuple(e) for b in bundles for e in b.events] == columns.events


def test_an_event_larger_than_the_byte_limit_travels_alone():
    big = _event(1, padding=MAX_BYTES)
    bundles = [decode_bundle(data) for data in _columns([_event(0), big, _event(2)]).encoded()]

    assert [b.offsets for b in bundles] == [[0], [1], [2]]
    assert bundles[1].raw(0) == big


def test_fields_given_as_an_event_tuple_encode_like_plain_fields():
    fields = decode_fields(_event(3))
    assert isinstance(fields, tuple)
    bundle = decode_bundle(encode_bundle([Item(0, 1, b"raw", Event._make(fields))]))

    assert tuple(bundle.events[0]) == fields


def test_a_bundle_of_the_first_release_raw_bytes_only_still_decodes():
    first = b'{"event_id":"e1","type":"session.started","timestamp":1772356502123,"user_id":"u1","team_id":"t1"}'
    second = (
        b'{"event_id":"e2","type":"login","timestamp":1772356502124,"user_id":"u2","team_id":"t1"}'
    )
    rows = [[0, 5, len(first)], [2, 9, len(second)]]
    bundle = decode_bundle(orjson.dumps(rows) + b"\x00" + first + second)

    assert (bundle.sources, bundle.offsets, bundle.raw(0), bundle.raw(1)) == (
        [0, 2],
        [5, 9],
        first,
        second,
    )
    assert bundle.events is None  # original bytes only: the engine decodes them
    assert bundle.tick_ms == 0


def test_columns_without_fields_make_a_bundle_of_original_bytes_only():
    raws = [_event(i) for i in range(5)] + [b'{"event_id":']  # not parsed by ingest
    columns = Columns()
    columns.sources, columns.offsets, columns.raws = [0] * 6, list(range(6)), raws

    (bundle,) = [decode_bundle(data) for data in columns.encoded()]

    assert bundle.events is None
    assert [bundle.raw(i) for i in range(6)] == raws
    assert bundle.offsets == list(range(6))


def test_columns_within_both_limits_are_one_bundle_and_one_event_more_splits_them():
    raws = [_event(i) for i in range(MAX_ITEMS)]

    whole = [decode_bundle(data) for data in _columns(raws).encoded()]
    split = [decode_bundle(data) for data in _columns([*raws, _event(MAX_ITEMS)]).encoded()]

    assert [len(b.offsets) for b in whole] == [MAX_ITEMS]
    assert [b.raw(i) for b in whole for i in range(MAX_ITEMS)] == raws
    assert [len(b.offsets) for b in split] == [MAX_ITEMS, 1]


def _expanding_event(i: int) -> bytes:
    """A valid event of almost 64 KB whose 16,000 numbers, written ``1E5``, each decode to
    ``100000.0``: its decoded copy is more than twice its size."""
    numbers = b",".join([b"1E5"] * 16_000)
    return _event(i).replace(b'"feature":"x"', b'"feature":"x","n":[' + numbers + b"]")


def test_events_that_grow_when_decoded_still_make_bundles_within_the_byte_limit():
    raws = [_expanding_event(i) for i in range(20)]
    assert all(not isinstance(decode_fields(raw), Invalid) for raw in raws)
    columns = _columns(raws)

    encoded = list(columns.encoded())

    assert max(map(len, encoded)) <= MAX_BYTES  # the estimate alone made 1.4 MB bundles
    bundles = [decode_bundle(data) for data in encoded]
    assert [o for b in bundles for o in b.offsets] == list(range(20))
    assert [b.raw(i) for b in bundles for i in range(len(b.offsets))] == raws
    assert [tuple(e) for b in bundles for e in b.events] == columns.events


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\x00",
        b"[1]\x00",
        b'{"p":[0],"o":[7]}\x00{}',
        b'{"p":[0,1],"o":[7],"n":[2]}\x00{}',
        b'{"p":[0],"o":[7],"n":[2],"e":[]}\x00{}',
        b'{"p":[0],"o":[7.5],"n":[2]}\x00{}',
        b'{"p":[0],"o":[7],"n":[3]}\x00{}',
        b'{"p":[0,0],"o":[7,8],"n":[-1,3]}\x00{}',
        b'{"tick_ms":"5"}\x00',
    ],
)
def test_a_message_that_is_not_a_whole_bundle_is_refused_before_anything_is_applied(data: bytes):
    with pytest.raises(UndecodableBundle):
        decode_bundle(data)
