"""Contract tests for schemas/: the JSON Schemas, their examples, and the engine's decoder.

Every example file is its own test id (``<kind>/<valid|invalid>/<file>``). Each example directory
has a manifest and every file must be listed in it (and every listed file must exist):

- ``usage_event/valid/expected_decoded.json`` and ``segment/valid/expected_decoded.json``:
  file -> the Event fields ``decode_event`` must produce;
- ``usage_event/invalid/expected_reasons.json`` and ``segment/invalid/expected_reasons.json``:
  file -> the exact ``Invalid.reason``, either a string or
  ``{"reason": ..., "schema": false, "why": ...}`` when JSON Schema cannot express the rule;
- ``churn_alert/invalid/expected_errors.json``: file -> ``{"path", "keyword"}`` of the schema
  error the example must produce (so it fails for the intended reason).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
EXAMPLES = SCHEMAS / "examples"

SCHEMA_FILES = {
    "usage_event": "usage_event.schema.json",
    "segment": "segment_message.schema.json",
    "churn_alert": "churn_alert.schema.json",
}
MANIFESTS = {
    ("usage_event", "valid"): "expected_decoded.json",
    ("usage_event", "invalid"): "expected_reasons.json",
    ("segment", "valid"): "expected_decoded.json",
    ("segment", "invalid"): "expected_reasons.json",
    ("churn_alert", "valid"): None,
    ("churn_alert", "invalid"): "expected_errors.json",
}
DECODED = ("usage_event", "segment")
MAX_RAW_BYTES = 64 * 1024
REASON_PREFIXES = ("missing_field:", "invalid_field:", "invalid_property:")
REASONS = {
    "oversized",
    "malformed_json",
    "not_an_object",
    "unknown_message_type",
    "invalid_timestamp",
    "timestamp_out_of_range",
}
CANONICAL_FIELDS = {"event_id", "type", "timestamp", "team_id", "user_id", "properties"}
# Where a canonical field lives in a Segment message (for "fails for the right reason" checks).
SEGMENT_NAMES = {
    "event_id": {"messageId"},
    "type": {"event", "type"},
    "timestamp": {"timestamp"},
    "team_id": {"groupId", "context"},
    "user_id": {"userId", "anonymousId"},
    "properties": {"properties", "traits"},
}


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _example_files(kind: str, validity: str) -> list[Path]:
    manifest = MANIFESTS[(kind, validity)]
    return sorted(
        p for p in (EXAMPLES / kind / validity).iterdir() if p.is_file() and p.name != manifest
    )


def _manifest(kind: str, validity: str) -> dict[str, Any]:
    name = MANIFESTS[(kind, validity)]
    return {} if name is None else _load_json(EXAMPLES / kind / validity / name)


def _params(kinds: tuple[str, ...], validity: str) -> list[Any]:
    return [
        pytest.param(kind, path, id=f"{kind}/{validity}/{path.name}")
        for kind in kinds
        for path in _example_files(kind, validity)
    ]


_VALIDATORS: dict[str, Draft202012Validator] = {}


def _validator(kind: str) -> Draft202012Validator:
    if kind not in _VALIDATORS:
        schema = _load_json(SCHEMAS / SCHEMA_FILES[kind])
        _VALIDATORS[kind] = Draft202012Validator(
            schema, format_checker=Draft202012Validator.FORMAT_CHECKER
        )
    return _VALIDATORS[kind]


def _all_errors(errors: Any) -> list[ValidationError]:
    """Flatten errors, including those nested in anyOf/oneOf contexts."""
    out: list[ValidationError] = []
    for err in errors:
        out.append(err)
        out.extend(_all_errors(err.context or []))
    return out


def _expected_reason(entry: str | dict[str, Any]) -> tuple[str, bool]:
    if isinstance(entry, str):
        return entry, True
    return entry["reason"], entry.get("schema", True)


def _parse(raw: bytes) -> tuple[bool, Any]:
    """Parse like the engine does (orjson: no NaN/Infinity, strict UTF-8)."""
    try:
        return True, orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False, None


ALL_KINDS = tuple(SCHEMA_FILES)
VALID = _params(ALL_KINDS, "valid")
INVALID = _params(ALL_KINDS, "invalid")
DECODE_VALID = _params(DECODED, "valid")
DECODE_INVALID = _params(DECODED, "invalid")


@pytest.fixture(scope="module")
def events() -> Any:
    return pytest.importorskip("detector.events", reason="detector.events not available yet")


# --------------------------------------------------------------------------- schemas themselves


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_schema_is_valid_draft_2020_12(kind: str) -> None:
    schema = _load_json(SCHEMAS / SCHEMA_FILES[kind])
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_shared_defs_identical() -> None:
    """segment_message repeats usage_event's building blocks; they must not drift apart."""
    usage = _load_json(SCHEMAS / SCHEMA_FILES["usage_event"])["$defs"]
    segment = _load_json(SCHEMAS / SCHEMA_FILES["segment"])["$defs"]
    assert segment.keys() <= usage.keys()
    for name, definition in segment.items():
        assert definition == usage[name], name


# --------------------------------------------------------------------------- manifests


@pytest.mark.parametrize(
    ("kind", "validity"),
    [k for k, v in MANIFESTS.items() if v is not None],
    ids=lambda x: str(x),
)
def test_manifest_lists_exactly_the_example_files(kind: str, validity: str) -> None:
    files = {p.name for p in _example_files(kind, validity)}
    listed = set(_manifest(kind, validity))
    assert files - listed == set(), f"example files missing from {MANIFESTS[(kind, validity)]}"
    assert listed - files == set(), "manifest entries without a file"


@pytest.mark.parametrize(("kind", "path"), _params(DECODED, "invalid"))
def test_expected_reason_is_a_known_code(kind: str, path: Path) -> None:
    reason, _ = _expected_reason(_manifest(kind, "invalid")[path.name])
    if reason.startswith(REASON_PREFIXES):
        prefix, _, name = reason.partition(":")
        assert name, reason
        if prefix != "invalid_property":
            assert name in CANONICAL_FIELDS, reason
    else:
        assert reason in REASONS, reason


def test_minimum_coverage() -> None:
    valid = _manifest("usage_event", "valid")
    assert len(valid) >= 8
    typed = {
        "session.started", "session.ended", "feature.used", "document.published",
        "task.completed", "task.failed", "subscription.started", "subscription.cancelled",
        "payment.failed", "payment.succeeded", "trial.started", "team.updated",
    }  # fmt: skip
    assert typed <= {v["type"] for v in valid.values()}
    raw = {n: _load_json(EXAMPLES / "usage_event" / "valid" / n) for n in valid}
    assert any(isinstance(e["timestamp"], int) for e in raw.values())
    assert any(isinstance(e["timestamp"], str) and e["timestamp"][-6] in "+-" for e in raw.values())
    assert any(e.get("user_id", None) is None for e in raw.values())
    segment_types = {_load_json(p)["type"] for p in _example_files("segment", "valid")}
    assert {"track", "group", "page", "identify"} <= segment_types
    assert len(_example_files("churn_alert", "valid")) >= 3


@pytest.mark.parametrize(("kind", "path"), VALID + INVALID)
def test_only_oversized_examples_exceed_the_limit(kind: str, path: Path) -> None:
    size = path.stat().st_size
    oversized = (
        kind in DECODED
        and path.parent.name == "invalid"
        and _expected_reason(_manifest(kind, "invalid")[path.name])[0] == "oversized"
    )
    if oversized:
        assert size > MAX_RAW_BYTES
    else:
        assert size <= MAX_RAW_BYTES


# --------------------------------------------------------------------------- schema validation


@pytest.mark.parametrize(("kind", "path"), VALID)
def test_valid_example_validates(kind: str, path: Path) -> None:
    ok, instance = _parse(path.read_bytes())
    assert ok, "valid example must be JSON that orjson parses"
    _validator(kind).validate(instance)


@pytest.mark.parametrize(("kind", "path"), INVALID)
def test_invalid_example_fails_schema(kind: str, path: Path) -> None:
    ok, instance = _parse(path.read_bytes())
    if not ok:
        # Not even JSON: the decoder's malformed_json; nothing for a schema to say.
        if kind in DECODED:
            assert _expected_reason(_manifest(kind, "invalid")[path.name])[0] == "malformed_json"
        return
    errors = _all_errors(_validator(kind).iter_errors(instance))
    if kind == "churn_alert":
        expected = _manifest(kind, "invalid")[path.name]
        found = {("/" + "/".join(map(str, e.absolute_path)), e.validator) for e in errors}
        path_str = expected["path"] or "/"
        assert (path_str, expected["keyword"]) in found, found
        return
    reason, schema_can_tell = _expected_reason(_manifest(kind, "invalid")[path.name])
    if not schema_can_tell:
        assert not errors, "marked schema:false but the schema rejects it: drop the mark"
        pytest.skip(f"{reason}: not expressible in JSON Schema")
    assert errors, f"schema accepts an input the decoder rejects with {reason}"
    _assert_errors_match_reason(kind, reason, errors)


def _assert_errors_match_reason(kind: str, reason: str, errors: list[ValidationError]) -> None:
    """The schema must reject the example where the reason says, not somewhere else."""
    if reason == "not_an_object":
        assert any(e.validator == "type" and not e.absolute_path for e in errors)
        return
    if reason == "unknown_message_type":
        names = {"type"}
    elif reason in ("invalid_timestamp", "timestamp_out_of_range"):
        names = {"timestamp"}
    else:
        _, _, name = reason.partition(":")
        if reason.startswith("invalid_property:"):
            names = {name}
        else:
            names = SEGMENT_NAMES[name] if kind == "segment" else {name}

    def mentions(err: ValidationError) -> bool:
        return bool(names & set(map(str, err.absolute_path))) or any(
            f"'{n}' is a required property" in err.message for n in names
        )

    assert any(mentions(e) for e in errors), [e.message for e in errors]


# --------------------------------------------------------------------------- churn alert semantics


@pytest.mark.parametrize(("kind", "path"), _params(("churn_alert",), "valid"))
def test_alert_envelope_matches_data(kind: str, path: Path) -> None:
    alert = _load_json(path)
    data = alert["data"]
    assert alert["type"] == "io.churndetector.alert." + data["state"]
    assert alert["subject"] == f"{data['entity_type']}/{data['entity_id']}"
    if data["entity_type"] == "team":
        assert data["team_id"] == data["entity_id"]


# --------------------------------------------------------------------------- engine decoder


@pytest.mark.parametrize(("kind", "path"), DECODE_VALID)
def test_decoder_accepts_valid_example(events: Any, kind: str, path: Path) -> None:
    result = events.decode_event(path.read_bytes())
    assert isinstance(result, events.Event), result
    expected = _manifest(kind, "valid")[path.name]
    actual = {field: getattr(result, field) for field in expected}
    assert actual == expected
    assert type(result.ts_ms) is int


@pytest.mark.parametrize(("kind", "path"), DECODE_INVALID)
def test_decoder_rejects_invalid_example(events: Any, kind: str, path: Path) -> None:
    result = events.decode_event(path.read_bytes())
    assert isinstance(result, events.Invalid), result
    expected, _ = _expected_reason(_manifest(kind, "invalid")[path.name])
    assert result.reason == expected, result.detail
    assert isinstance(result.detail, str) and result.detail
