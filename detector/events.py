"""Decode, validate and normalise raw usage events.

Every input becomes either an :class:`Event` or an :class:`Invalid` with a reason code;
nothing is raised, so one bad message can never stop a partition. Both the canonical
event format and Segment/RudderStack spec messages are accepted (see schemas/README.md).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

MAX_EVENT_BYTES = 65_536
MAX_ID_CHARS = 256
MAX_TYPE_CHARS = 128
MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
_FLOAT_MAX = sys.float_info.max  # a finite float is at most this (inf and nan are not)

TRIAL_STARTED = "trial.started"
SUBSCRIPTION_STARTED = "subscription.started"
SUBSCRIPTION_CANCELLED = "subscription.cancelled"
PAYMENT_FAILED = "payment.failed"
PAYMENT_SUCCEEDED = "payment.succeeded"
TEAM_UPDATED = "team.updated"
USER_IDENTIFIED = "user.identified"

#: Team-level types: they carry no user activity and may have no user_id.
TEAM_LEVEL_TYPES = frozenset(
    {
        TRIAL_STARTED,
        SUBSCRIPTION_STARTED,
        SUBSCRIPTION_CANCELLED,
        PAYMENT_FAILED,
        PAYMENT_SUCCEEDED,
        TEAM_UPDATED,
    }
)
#: Types that are accepted but are not product usage (no activity counted).
NON_ACTIVITY_TYPES = TEAM_LEVEL_TYPES | {USER_IDENTIFIED}

TYPE_RE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*")
#: types that passed TYPE_RE (bounded cache)
_KNOWN_GOOD_TYPES: set[str] = set()
_SPACES = re.compile(r"\s+")


def segment_event_type(name: Any) -> Any:
    """'Feature Used' -> 'feature.used' (trim, lowercase, whitespace runs -> '.', '-' -> '_').

    >>> segment_event_type(" Feature  Used "), segment_event_type("sign-up"), segment_event_type(3)
    ('feature.used', 'sign_up', 3)
    """
    if not isinstance(name, str):
        return name
    mapped = _SEGMENT_NAMES.get(name)
    if mapped is None:
        mapped = _SPACES.sub(".", name.strip().lower()).replace("-", "_")
        if len(_SEGMENT_NAMES) < 4096:
            _SEGMENT_NAMES[name] = mapped
    return mapped


_SEGMENT_NAMES: dict[str, str] = {}  # Segment event name -> type (bounded cache)


SEGMENT_TYPES = frozenset({"track", "group", "page", "screen", "identify", "alias"})


def _is_segment(obj: dict[str, Any]) -> bool:
    """A Segment message: it has a ``messageId``, or no ``event_id`` and a Segment type. A
    canonical event (with its event_id) may have a type such as ``page`` too.

    >>> _is_segment({"messageId": "m", "type": "page"}), _is_segment({"type": "page"})
    (True, True)
    >>> _is_segment({"event_id": "e", "type": "page"}), _is_segment({"type": "feature.used"})
    (False, False)
    """
    if "messageId" in obj:
        return True
    kind = obj.get("type")
    return "event_id" not in obj and isinstance(kind, str) and kind in SEGMENT_TYPES


class Event(NamedTuple):
    """A validated, normalised usage event."""

    event_id: str
    type: str
    ts_ms: int
    user_id: str | None
    team_id: str
    properties: dict[str, Any]


#: An event's fields in :class:`Event` order, as a plain tuple: what the engine consumes
#: (building the named tuple costs more than the rest of the fast path's bookkeeping).
EventFields = tuple[str, str, int, str | None, str, dict[str, Any]]


class Invalid(NamedTuple):
    """Input that cannot be used, with a stable reason code and a human detail."""

    reason: str
    detail: str


def _number(value: Any) -> bool:
    """A finite number >= 0 that fits a float (not a bool; no overflow on huge ints).

    >>> _number(2.5), _number(0), _number(-1), _number(True), _number(float("nan")), _number(10**400)
    (True, True, False, False, False, False)
    """
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= _FLOAT_MAX
    )


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS


#: zone files some hosts have that are no place's zone: 'localtime' is the host's own zone,
#: 'posixrules' a default rule, 'Factory' a placeholder; posix/ and right/ copy the zones (right/
#: counts leap seconds). Case-folded: on a case-insensitive file system 'LOCALTIME' opens too
_HOST_ONLY_ZONES = frozenset({"localtime", "posixrules", "factory"})
_HOST_ONLY_FOLDERS = ("posix/", "right/")


@lru_cache(maxsize=1024)
def known_timezone(name: str) -> bool:
    """True for an IANA zone name this machine knows, and not one of the host-only names,
    which mean another zone on another host or none at all.

    >>> known_timezone("Europe/Berlin"), known_timezone("Mars/Olympus")
    (True, False)
    >>> known_timezone("localtime"), known_timezone("right/UTC")
    (False, False)
    """
    folded = name.lower()
    if folded in _HOST_ONLY_ZONES or folded.startswith(_HOST_ONLY_FOLDERS):
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):  # 'Europe' is a directory
        return False
    return True


def _check_timezone(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and known_timezone(value)


def _check_seats(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# Typed properties of known event types: property -> check. Only present keys are checked,
# except where the schema requires them (checked by _REQUIRED_PROPERTIES).
_PROPERTY_CHECKS: dict[str, Any] = {
    "duration_s": _number,
    "mrr": _number,
    "amount": _number,
    "seats": _check_seats,
    "timezone": _check_timezone,
    "feature": _nonempty_str,
    "task": _nonempty_str,
    "error": lambda v: isinstance(v, str),
    "reason": lambda v: isinstance(v, str),
    "plan": lambda v: isinstance(v, str) and len(v) <= MAX_TYPE_CHARS,
}
_TYPED_PROPERTIES: dict[str, tuple[str, ...]] = {
    "session.ended": ("duration_s",),
    "feature.used": ("feature",),
    "task.completed": ("task", "duration_s"),
    "task.failed": ("task", "error"),
    SUBSCRIPTION_CANCELLED: ("reason",),
    TEAM_UPDATED: ("plan", "mrr", "seats", "timezone"),
    SUBSCRIPTION_STARTED: ("plan", "mrr", "seats"),
    TRIAL_STARTED: ("plan", "mrr", "seats"),  # read as team traits too
    PAYMENT_FAILED: ("amount", "reason"),
    PAYMENT_SUCCEEDED: ("amount",),
}
_REQUIRED_PROPERTIES: dict[str, tuple[str, ...]] = {
    "session.ended": ("duration_s",),
    "feature.used": ("feature",),
    "task.completed": ("task", "duration_s"),
    "task.failed": ("task",),
}
#: The same two tables as one per-type rule list, (property, check, required), for the fast path.
_PROPERTY_RULES: dict[str, tuple[tuple[str, Callable[[Any], bool], bool], ...]] = {
    etype: tuple(
        (name, _PROPERTY_CHECKS[name], name in _REQUIRED_PROPERTIES.get(etype, ()))
        for name in names
    )
    for etype, names in _TYPED_PROPERTIES.items()
}


def parse_timestamp(value: Any) -> int | Invalid:
    """Epoch milliseconds from RFC 3339 text or epoch-ms integer.

    >>> parse_timestamp("2026-03-01T09:15:02.123Z")
    1772356502123
    >>> parse_timestamp(1772356502123), parse_timestamp("2026-03-01t09:15:02.123z")
    (1772356502123, 1772356502123)
    >>> parse_timestamp("yesterday").reason, parse_timestamp("2026-03-01T09:15:02Z\\x00x").reason
    ('invalid_timestamp', 'invalid_timestamp')
    >>> parse_timestamp(0).reason
    'timestamp_out_of_range'
    """
    if isinstance(value, str):
        try:
            if "\x00" in value:  # fromisoformat stops reading at a NUL: what follows passed
                raise ValueError
            # RFC 3339 allows a lowercase "z", which fromisoformat refuses
            parsed = datetime.fromisoformat(value[:-1] + "Z" if value[-1:] == "z" else value)
        except ValueError:
            return Invalid("invalid_timestamp", f"not an RFC 3339 timestamp: {value[:64]!r}")
        if parsed.tzinfo is None:
            return Invalid("invalid_timestamp", "timestamp has no UTC offset")
        ts_ms = int(parsed.timestamp() * 1000.0 + 0.5)
    elif isinstance(value, int) and not isinstance(value, bool):
        ts_ms = value
    else:
        return Invalid(
            "invalid_timestamp", f"timestamp must be text or integer, not {type(value).__name__}"
        )
    if not MIN_TS_MS <= ts_ms < MAX_TS_MS:
        return Invalid("timestamp_out_of_range", f"timestamp {ts_ms} ms is outside 2000..2100")
    return ts_ms


def _brief(value: Any) -> str:
    """Short text of a rejected value; containers by type only (repr of deep nesting recurses)."""
    return f"a {type(value).__name__}" if isinstance(value, dict | list) else f"{value!r:.80}"


def _missing(name: str) -> Invalid:
    return Invalid(f"missing_field:{name}", f"required field {name!r} is absent or null")


def _bad(name: str, why: str) -> Invalid:
    return Invalid(f"invalid_field:{name}", f"field {name!r} {why}")


#: the team a user id belongs to, if known (see :mod:`detector.memberships`)
TeamOf = Callable[[str], "str | None"]


def _from_segment(msg: dict[str, Any], team_of: TeamOf | None = None) -> dict[str, Any] | Invalid:
    """Map a Segment/RudderStack spec message to canonical field names; a message without
    ``context.groupId`` gets the team ``team_of`` gives its user (from their group calls).

    >>> _from_segment({"type": "track", "userId": "u1"}, {"u1": "t1"}.get)["team_id"]
    't1'
    """
    kind = msg.get("type")
    context = msg.get("context")
    group_id = context.get("groupId") if isinstance(context, dict) else None
    user_id = msg.get("userId")
    properties: Any
    if kind == "track":
        etype = segment_event_type(msg.get("event"))
        properties = msg.get("properties", {})
        if user_id is None:
            user_id = msg.get("anonymousId")
    elif kind == "group":
        etype = TEAM_UPDATED
        group_id = msg.get("groupId", group_id)
        properties = msg.get("traits", {})
    elif kind in ("page", "screen"):
        etype = f"{kind}.viewed"
        properties = msg.get("properties", {})
    elif kind == "identify":
        etype = USER_IDENTIFIED
        properties = msg.get("traits", {})
    else:
        return Invalid("unknown_message_type", f"unsupported Segment message type {kind!r}")
    if group_id is None and team_of is not None and kind != "group" and type(user_id) is str:
        group_id = team_of(user_id)
    return {
        "event_id": msg.get("messageId"),
        "type": etype,
        "timestamp": msg.get("timestamp"),
        "user_id": user_id,
        "team_id": group_id,
        "properties": properties,
    }


def routing_key(obj: Any, team_of: TeamOf | None = None) -> Any:
    """The team id that :func:`validate_fields` would give ``obj`` if it is valid, found
    without validating it: parallel replay routes a parsed line to its partition's process
    with it. Not necessarily a string (the line is then invalid).

    >>> routing_key({"event_id": "e1", "team_id": "t1"})
    't1'
    >>> routing_key({"messageId": "m1", "type": "group", "groupId": "t2"})
    't2'
    >>> routing_key([1]) is None
    True
    """
    if type(obj) is not dict:
        return None
    if _is_segment(obj):
        mapped = _from_segment(obj, team_of)
        return None if isinstance(mapped, Invalid) else mapped["team_id"]
    return obj.get("team_id")


def validate_event(obj: Any) -> Event | Invalid:
    """Validate an already-parsed object (canonical or Segment) and normalise it."""
    fields = validate_fields(obj)
    return fields if isinstance(fields, Invalid) else Event._make(fields)


def validate_fields(obj: Any, team_of: TeamOf | None = None) -> EventFields | Invalid:
    """:func:`validate_event` as plain fields (the engine's input).

    The common shape, a well-formed canonical event or Segment message, is accepted in one
    pass over the fields; anything else goes through :func:`_validate_in_full`, which finds
    the reason. Both accept exactly the same input.

    >>> validate_fields({"event_id": "e1", "type": "session.started", "timestamp": 1772356502123,
    ...                  "user_id": "u1", "team_id": "t1"})
    ('e1', 'session.started', 1772356502123, 'u1', 't1', {})
    """
    if type(obj) is dict:
        if "messageId" not in obj:  # a Segment message without one has no event_id either
            fields = _well_formed(obj)
        else:
            mapped = _from_segment(obj, team_of)
            fields = None if isinstance(mapped, Invalid) else _well_formed(mapped)
        if fields is not None:
            return fields
    return _validate_in_full(obj, team_of)


def _well_formed(obj: dict[str, Any]) -> EventFields | None:
    """The fields of a canonical event that passes every check, else None (no reasons)."""
    try:  # subscripts: cheaper than .get() calls, and a missing field is not the common case
        etype = obj["type"]
        event_id = obj["event_id"]
        team_id = obj["team_id"]
        user_id = obj["user_id"]
        ts = obj["timestamp"]
    except KeyError:
        return None
    properties = obj.get("properties")
    if properties is None:
        properties = {}
    if not (
        type(etype) is str
        and etype in _KNOWN_GOOD_TYPES
        and type(event_id) is str
        and 0 < len(event_id) <= MAX_ID_CHARS
        and type(team_id) is str
        and 0 < len(team_id) <= MAX_ID_CHARS
        and type(user_id) is str
        and 0 < len(user_id) <= MAX_ID_CHARS
        and type(properties) is dict
    ):
        return None
    if type(ts) is str:
        if "\x00" in ts:
            return None
        try:
            parsed = _fromisoformat(ts)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            return None
        ts = int(parsed.timestamp() * 1000.0 + 0.5)
    elif type(ts) is not int:
        return None
    if not MIN_TS_MS <= ts < MAX_TS_MS:
        return None
    for name, check, required in _PROPERTY_RULES.get(etype, ()):
        value = properties.get(name, _ABSENT)
        if value is _ABSENT:
            if required:
                return None
        # the two common checks inline (calling them costs more than checking)
        elif check is _nonempty_str:
            if type(value) is not str or not 0 < len(value) <= MAX_ID_CHARS:
                return None
        elif check is _number:
            if not ((type(value) is float or type(value) is int) and 0 <= value <= _FLOAT_MAX):
                return None
        elif not check(value):
            return None
    return (event_id, etype, ts, user_id, team_id, properties)


_fromisoformat = datetime.fromisoformat
_ABSENT = object()


def _validate_in_full(obj: Any, team_of: TeamOf | None = None) -> Event | Invalid:
    """Every check in order, so that a bad event gets the reason of its first problem."""
    if not isinstance(obj, dict):
        return Invalid("not_an_object", f"event must be a JSON object, got {type(obj).__name__}")
    segment = _is_segment(obj)
    if segment:
        kind = obj.get("type")
        if not isinstance(kind, str) or kind not in SEGMENT_TYPES or kind == "alias":
            return Invalid("unknown_message_type", f"unsupported message type {kind!r:.80}")
        mapped = _from_segment(obj, team_of)
        if isinstance(mapped, Invalid):
            return mapped
        obj = mapped

    event_id = obj.get("event_id")
    if event_id is None:
        return _missing("event_id")
    if not _nonempty_str(event_id):
        return _bad("event_id", f"must be a string of 1..{MAX_ID_CHARS} characters")
    etype = obj.get("type")
    if etype is None:
        return _missing("type")
    if not isinstance(etype, str) or not 0 < len(etype) <= MAX_TYPE_CHARS:
        return _bad("type", f"must be a string of 1..{MAX_TYPE_CHARS} characters")
    if etype not in _KNOWN_GOOD_TYPES:
        if not TYPE_RE.fullmatch(etype):
            return _bad("type", "must be lowercase words joined by '.' or '_'")
        if len(_KNOWN_GOOD_TYPES) < 4096:
            _KNOWN_GOOD_TYPES.add(etype)
    raw_ts = obj.get("timestamp")
    if raw_ts is None:
        return _missing("timestamp")
    ts_ms = parse_timestamp(raw_ts)
    if isinstance(ts_ms, Invalid):
        return ts_ms
    team_id = obj.get("team_id")
    if team_id is None:
        if segment:
            return Invalid(
                "missing_field:team_id",
                "no context.groupId, and no group call has tied its user to a team",
            )
        return _missing("team_id")
    if not _nonempty_str(team_id):
        return _bad("team_id", f"must be a string of 1..{MAX_ID_CHARS} characters")
    user_id = obj.get("user_id")
    if user_id is None:
        if etype not in TEAM_LEVEL_TYPES:
            return _missing("user_id")
    elif not _nonempty_str(user_id):
        return _bad("user_id", f"must be a string of 1..{MAX_ID_CHARS} characters")
    properties = obj.get("properties")
    if properties is None:
        properties = {}
    elif not isinstance(properties, dict):
        return _bad("properties", "must be an object")
    typed = _TYPED_PROPERTIES.get(etype)
    if typed is not None:
        for name in _REQUIRED_PROPERTIES.get(etype, ()):
            if name not in properties:
                return Invalid(f"invalid_property:{name}", f"{etype} requires property {name!r}")
        for name in typed:
            if name in properties and not _PROPERTY_CHECKS[name](properties[name]):
                return Invalid(
                    f"invalid_property:{name}",
                    f"property {name!r} of {etype} has an invalid value: {_brief(properties[name])}",
                )
    return Event(event_id, etype, ts_ms, user_id, team_id, properties)


def decode_event(raw: bytes, max_bytes: int = MAX_EVENT_BYTES) -> Event | Invalid:
    """Decode one raw message. Never raises.

    >>> decode_event(b'{"event_id":"e1","type":"session.started","timestamp":1772356502123,'
    ...              b'"user_id":"u1","team_id":"t1"}').team_id
    't1'
    >>> decode_event(b'{"event_id":').reason
    'malformed_json'
    >>> decode_event(b'[1]').reason
    'not_an_object'
    """
    fields = decode_fields(raw, max_bytes)
    return fields if isinstance(fields, Invalid) else Event._make(fields)


def decode_fields(
    raw: bytes, max_bytes: int = MAX_EVENT_BYTES, team_of: TeamOf | None = None
) -> EventFields | Invalid:
    """:func:`decode_event` as plain fields (the engine's input). Never raises.

    >>> decode_fields(b'{"event_id":"e1","type":"session.started","timestamp":1772356502123,'
    ...               b'"user_id":"u1","team_id":"t1"}')[4]
    't1'
    """
    if len(raw) > max_bytes:
        return Invalid("oversized", f"event is {len(raw)} bytes, limit is {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Invalid("malformed_json", f"not valid JSON: {str(exc)[:120]}")
    if type(obj) is dict and "messageId" not in obj:  # validate_fields, one call less
        return _well_formed(obj) or _validate_in_full(obj, team_of)
    return validate_fields(obj, team_of)
