from __future__ import annotations

import random

import orjson
import pytest

from detector import events
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


@pytest.mark.parametrize("etype", ["page", "screen", "track", "group", "identify", "alias"])
def test_a_canonical_event_may_have_a_type_named_like_a_segment_call(etype):
    """With its event_id (and no messageId) it is a canonical event, not a Segment message
    rejected as missing its event_id; without one it is still read as Segment."""
    obj = {**BASE, "type": etype, "properties": {}}
    for _ in range(2):  # the second time, the type is a known good type (the fast path)
        ev = decode_event(enc(obj))
        assert isinstance(ev, Event) and (ev.type, ev.event_id) == (etype, "e1"), ev
        assert tuple(events.validate_fields(obj)) == tuple(events._validate_in_full(obj))
    assert events.routing_key(obj) == "t1"
    segment = {k: v for k, v in obj.items() if k != "event_id"}
    assert isinstance(decode_event(enc(segment)), Invalid)
    assert isinstance(decode_event(enc({**obj, "messageId": "m"})), Invalid)  # no context


@pytest.mark.parametrize(
    "zone", ["localtime", "posixrules", "Factory", "posix/Europe/Berlin", "right/UTC", "LocalTime"]
)
def test_a_time_zone_only_some_hosts_have_is_refused(zone):
    """'localtime' was the machine's own zone: each worker read the team's days differently."""
    obj = {**BASE, "type": "team.updated", "user_id": None, "properties": {"timezone": zone}}
    for _ in range(2):  # the second time, known_timezone answers from its cache
        result = decode_event(enc(obj))
        assert isinstance(result, Invalid) and result.reason == "invalid_property:timezone"
    assert events.known_timezone("Europe/Berlin") and events.known_timezone("UTC")


def test_lifecycle_events_need_no_user():
    ev = validate_event(
        {**BASE, "type": "subscription.cancelled", "user_id": None, "properties": {}}
    )
    assert isinstance(ev, Event) and ev.user_id is None


def test_decoder_never_raises_on_odd_json():
    for raw in (b"null", b"1e999", b'"s"', b"{}", b'{"type": {}}', b"[" * 2000):
        assert isinstance(decode_event(raw), Invalid)


def _variants() -> list[object]:
    """Canonical events and Segment messages with one or two fields swapped for odd values."""
    rng = random.Random(3)
    values: dict[str, list[object]] = {
        "type": [
            "session.started",
            "feature.used",
            "task.completed",
            "session.ended",
            "team.updated",
            "payment.failed",
            "track",
            "group",
            "page",
            "identify",
            "alias",
            "Feature.Used",
            "x" * 129,
            "",
            7,
            None,
            ["feature.used"],
        ],
        "event_id": ["e", "x" * 256, "x" * 257, "", 5, None, True],
        "team_id": ["t", "", "t" * 257, 3, None],
        "user_id": ["u", "", "u" * 257, 42, None],
        "timestamp": [
            "2026-03-01T09:15:02.123Z",
            "2026-03-01T09:15:02Z",
            "2026-03-01T09:15:02.1234567Z",
            "2026-03-01T09:15:02.0005Z",
            "2026-03-01T09:15:02.9995Z",
            "2026-03-01T10:15:02+01:00",
            "2026-03-01T09:15:02.123+00:00",
            "2026-03-01 09:15:02.123Z",
            "2026-03-01T09:15:02",
            "20260301T091502Z",
            "2026-03-01",
            "1999-12-31T23:59:59.999Z",
            "2099-12-31T23:59:59.9995Z",
            "2100-01-01T00:00:00Z",
            "yesterday",
            "",
            "2026-03-01T09:15:02Z\x00garbage",  # fromisoformat read up to the NUL only
            1772356502123,
            0,
            4_102_444_800_000,
            True,
            1.7e12,
            None,
        ],
        "properties": [
            {},
            None,
            [],
            {"feature": "editor"},
            {"feature": ""},
            {"feature": 3},
            {"feature": "f" * 257},
            {"task": "t", "duration_s": 2.5},
            {"task": "t"},
            {"task": "t", "duration_s": -1},
            {"task": "t", "duration_s": True},
            {"task": "t", "duration_s": float("inf")},
            {"task": "t", "duration_s": float("nan")},
            {"task": "t", "duration_s": 10**400},
            {"duration_s": 0},
            {"duration_s": 1e308},
            {"plan": "pro", "mrr": 9, "seats": 3, "timezone": "Europe/Paris"},
            {"seats": 0},
            {"seats": True},
            {"timezone": "Mars/Olympus"},
            {"amount": "9"},
            {"amount": 9.5, "reason": "card"},
            {"error": None},
            {"task": "t", "error": "x"},
        ],
    }
    segment = {
        "type": "track",
        "messageId": "m1",
        "event": "Feature Used",
        "userId": "u",
        "timestamp": "2026-03-01T09:15:02Z",
        "context": {"groupId": "t"},
        "properties": {"feature": "editor"},
    }
    out: list[object] = []
    for _ in range(3000):
        obj: dict[str, object] = dict(BASE)
        for name in rng.sample(sorted(values), rng.choice([1, 1, 2])):
            if rng.random() < 0.1:
                obj.pop(name, None)
            else:
                obj[name] = rng.choice(values[name])
        if rng.random() < 0.05:
            obj["messageId"] = "m"
        out.append(obj)
        seg = dict(segment)
        seg["type"] = rng.choice(["track", "track", "group", "page", "identify", "alias", 5])
        seg["timestamp"] = rng.choice(values["timestamp"])
        seg["event"] = rng.choice(["Feature Used", "task.completed", "Track", None])
        seg["properties"] = rng.choice(values["properties"])
        if rng.random() < 0.2:
            seg.pop("userId")
        out.append(seg)
    return out


def test_fast_path_accepts_exactly_what_full_validation_accepts():
    """validate_fields' one-pass check must agree with the full, reason-finding validation."""
    cases = _variants()
    for _ in range(2):  # the second round runs with the cache of known types warm
        for obj in cases:
            full = events._validate_in_full(obj)
            fast = events.validate_fields(obj)
            assert isinstance(fast, Invalid) == isinstance(full, Invalid), obj
            assert tuple(fast) == tuple(full), obj
    outcomes = [type(events.validate_fields(o)) for o in cases]
    fast, full = outcomes.count(tuple), outcomes.count(Event)  # a plain tuple: the fast path
    assert fast > 0.1 * len(cases) and full > 0, "both paths are exercised"
    assert outcomes.count(Invalid) > 0.2 * len(cases)


def test_routing_key_is_the_team_of_every_valid_event():
    """Parallel replay routes a line by routing_key before validating it: for every event that
    validates, the key must be the team it validates to (else the event would be applied in
    the wrong process, or in none)."""
    cases = [
        *_variants(),
        {"messageId": "m", "type": "group", "groupId": "t9", "timestamp": 1772356502123},
        {"messageId": "m", "type": "group", "context": {"groupId": "t8"}, "groupId": "t9"},
        {"type": "track", "event": "Feature Used", "userId": "u", "context": {"groupId": "t7"}},
    ]
    valid = 0
    for obj in cases:
        fields = events.validate_fields(obj)
        if not isinstance(fields, Invalid):
            valid += 1
            assert events.routing_key(obj) == fields[4], obj
    assert valid > 0.1 * len(cases)


def test_a_timestamp_with_a_nul_in_it_is_invalid():
    """datetime.fromisoformat stops reading at a NUL byte: what followed it was ignored."""
    event = {"event_id": "e", "type": "session.started", "user_id": "u", "team_id": "t"}
    for stamp in ("2026-03-01T09:15:02Z\x00garbage", "2026-03-01T09:15:02\x00Z"):
        for check in (events.validate_fields, events._validate_in_full):
            result = check({**event, "timestamp": stamp})
            assert isinstance(result, Invalid) and result.reason == "invalid_timestamp"
