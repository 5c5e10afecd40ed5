from __future__ import annotations

import orjson
import pytest

from detector.events import Event, Invalid, decode_event, validate_event

BASE = {
    "event_id": "e1",
    "type": "feature.used",
    "timestamp": "2026-03-01T09:15:02.123Z",
    "user_id": "u1",
    "team_id": "t1",
    "properties": {"feature": "editor"},
}


def enc(obj: object) -> bytes:
    return orjson.dumps(obj)


def test_canonical_event_is_normalised():
    ev = decode_event(enc(BASE))
    assert ev == Event("e1", "feature.used", 1772356502123, "u1", "t1", {"feature": "editor"})


def test_offset_timestamp_and_epoch_ms_agree():
    a = decode_event(enc({**BASE, "timestamp": "2026-03-01T10:15:02.123+01:00"}))
    b = decode_event(enc({**BASE, "timestamp": 1772356502123}))
    assert isinstance(a, Event) and isinstance(b, Event) and a.ts_ms == b.ts_ms


def test_segment_track_and_group_are_mapped():
    track = {
        "type": "track",
        "messageId": "m1",
        "event": "document.published",
        "userId": "u1",
        "timestamp": "2026-03-01T09:15:02Z",
        "context": {"groupId": "t9"},
        "properties": {},
    }
    ev = decode_event(enc(track))
    assert isinstance(ev, Event)
    assert (ev.event_id, ev.type, ev.user_id, ev.team_id) == (
        "m1",
        "document.published",
        "u1",
        "t9",
    )
    group = {
        "type": "group",
        "messageId": "m2",
        "groupId": "t9",
        "timestamp": "2026-03-01T09:15:02Z",
        "traits": {"plan": "pro", "mrr": 99.0, "seats": 5, "timezone": "Europe/Paris"},
    }
    ev = decode_event(enc(group))
    assert (
        isinstance(ev, Event)
        and ev.type == "team.updated"
        and ev.properties["timezone"] == "Europe/Paris"
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"x" * 70_000, "oversized"),
        (b'{"event_id": "e1", ', "malformed_json"),
        (b'{"a": NaN}', "malformed_json"),
        (b'{"a": "\xff\xfe"}', "malformed_json"),
        (b"[1, 2]", "not_an_object"),
        (enc({k: v for k, v in BASE.items() if k != "event_id"}), "missing_field:event_id"),
        (enc({**BASE, "team_id": None}), "missing_field:team_id"),
        (enc({**BASE, "user_id": None}), "missing_field:user_id"),
        (enc({**BASE, "user_id": 42}), "invalid_field:user_id"),
        (enc({**BASE, "event_id": "x" * 300}), "invalid_field:event_id"),
        (enc({**BASE, "properties": [1]}), "invalid_field:properties"),
        (enc({**BASE, "timestamp": "last tuesday"}), "invalid_timestamp"),
        (enc({**BASE, "timestamp": True}), "invalid_timestamp"),
        (enc({**BASE, "timestamp": "1970-01-01T00:00:00Z"}), "timestamp_out_of_range"),
        (enc({**BASE, "properties": {}}), "invalid_property:feature"),
        (
            enc({**BASE, "type": "session.ended", "properties": {"duration_s": -1}}),
            "invalid_property:duration_s",
        ),
        (
            enc({**BASE, "type": "team.updated", "properties": {"timezone": "Nowhere/City"}}),
            "invalid_property:timezone",
        ),
        (enc({"type": "alias", "messageId": "m", "userId": "u"}), "unknown_message_type"),
    ],
)
def test_bad_input_gets_a_specific_reason(raw, reason):
    result = decode_event(raw)
    assert isinstance(result, Invalid)
    assert result.reason == reason
    assert result.detail


def test_lifecycle_events_need_no_user():
    ev = validate_event(
        {**BASE, "type": "subscription.cancelled", "user_id": None, "properties": {}}
    )
    assert isinstance(ev, Event) and ev.user_id is None


def test_decoder_never_raises_on_odd_json():
    for raw in (b"null", b"1e999", b'"s"', b"{}", b'{"type": {}}', b"[" * 2000):
        assert isinstance(decode_event(raw), Invalid)
