"""Bad input through the engine: generated and mutated events never crash it.

Two parts. Hypothesis generates arbitrary bytes and JSON-like objects (including
near-miss events built from valid and junk field values): nothing raises, and every input
is either applied or counted under a known reason. A seeded bulk run then pushes
``BULK_EVENTS`` events, about half of them mutated in a way whose rejection reason is known in
advance, through :func:`detector.replay.replay`: every bad line reaches the dead-letter output
with exactly that reason, every good one is applied, and good events keep flowing between the
bad ones.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.events import Event, Invalid, decode_event, validate_event
from detector.replay import replay
from detector.router import PartitionedEngines
from detector.settings import EngineSettings

from .fuzz_corpus import REASON, Corpus, mixed

BULK_EVENTS = 120_000
SETTINGS = EngineSettings(partitions=4)


# --------------------------------------------------------------------------- hypothesis

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
good_ids = st.text(min_size=1, max_size=12)
field_values: dict[str, st.SearchStrategy[Any]] = {
    "event_id": good_ids | json_values,
    "messageId": good_ids | json_values,
    "type": st.sampled_from(
        [
            *("session.started", "feature.used", "task.completed", "session.ended"),
            *("team.updated", "track", "group", "identify", "page", "alias", "screen", "Bad Type"),
        ]
    )
    | json_values,
    "event": st.sampled_from(["Feature Used", "Document Published", "", "  x  "]) | json_values,
    "timestamp": st.integers(min_value=0, max_value=5_000_000_000_000)
    | st.sampled_from(["2026-03-01T09:15:02Z", "2026-03-01T09:15:02", "2126-01-01T00:00:00Z"])
    | json_values,
    "user_id": good_ids | json_values,
    "userId": good_ids | json_values,
    "team_id": good_ids | json_values,
    "groupId": good_ids | json_values,
    "context": st.fixed_dictionaries({"groupId": good_ids | json_values}) | json_values,
    "properties": st.fixed_dictionaries(
        {},
        optional={
            "feature": good_ids | json_values,
            "task": good_ids | json_values,
            "duration_s": st.floats() | json_values,
            "timezone": st.sampled_from(["Europe/Berlin", "Europe", "Mars/Olympus", ".."])
            | json_values,
            "seats": json_values,
            "mrr": json_values,
            "plan": json_values,
        },
    )
    | json_values,
    "traits": st.fixed_dictionaries({"plan": json_values}) | json_values,
}
near_miss_events = st.fixed_dictionaries(
    {}, optional={name: values for name, values in field_values.items()}
)


def engine_accounts_for(raws: list[bytes]) -> tuple[PartitionedEngines, list[Invalid | None]]:
    """Process ``raws``; check each input is either applied or counted under a known reason."""
    engines = PartitionedEngines(SETTINGS)
    results = [engines.process_raw(raw) for raw in raws]
    for result in results:
        assert result is None or (isinstance(result, Invalid) and REASON.fullmatch(result.reason))
    invalid = engines.invalid_counts()
    assert engines.events_valid + sum(invalid.values()) == len(raws)
    assert Counter(r.reason for r in results if r is not None) == Counter(invalid)
    return engines, results


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5))
def test_arbitrary_bytes_are_applied_or_rejected_with_a_reason(raws):
    engine_accounts_for(raws)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(near_miss_events | json_values, min_size=1, max_size=5))
def test_near_miss_events_never_raise_and_are_all_accounted_for(objects):
    raws = [orjson.dumps(obj) for obj in objects]
    _, results = engine_accounts_for(raws)
    for obj, result in zip(objects, results, strict=True):
        decoded = validate_event(obj)
        if result is None:
            assert isinstance(decoded, Event)
            assert 0 < len(decoded.event_id) <= 256 and 0 < len(decoded.team_id) <= 256


# --------------------------------------------------------------------------- bulk mutation


class DeadLetters:
    """A dead-letter sink that keeps only line number and reason of each record."""

    def __init__(self) -> None:
        self.reasons: dict[int, str] = {}

    def write(self, data: bytes) -> int:
        record = orjson.loads(data)
        assert "raw" in record or "raw_base64" in record
        self.reasons[record["line"]] = record["reason"]
        return len(data)


def test_bulk_mutated_events_reach_the_dead_letters_with_their_reason():
    corpus = Corpus(seed=7)
    expected: dict[int, str] = {}
    sent = Counter[str]()

    def lines() -> Iterator[bytes]:
        for number, (raw, reason) in enumerate(mixed(corpus, BULK_EVENTS, 0.5, 2_000), 1):
            if reason is None:
                sent["good"] += 1
            else:
                expected[number] = reason
            yield raw

    dead = DeadLetters()
    engines = PartitionedEngines(SETTINGS)
    result = replay(lines(), SETTINGS, io.BytesIO(), dead, engines)  # type: ignore[arg-type]

    assert result.lines == BULK_EVENTS
    mismatched = {
        n: (dead.reasons.get(n), r) for n, r in expected.items() if dead.reasons.get(n) != r
    }
    assert not mismatched, (
        f"{len(mismatched)} wrong or missing dead letters, e.g. {list(mismatched.items())[:5]}"
    )
    assert dead.reasons.keys() == expected.keys(), "no good event was dead-lettered"
    assert result.valid == sent["good"]
    assert result.invalid == Counter(expected.values())
    assert len(result.invalid) >= 20, (
        f"too few distinct reasons exercised: {sorted(result.invalid)}"
    )
    # the same engines keep working after all that: good events are still applied
    for _ in range(100):
        raw, reason = corpus.bad()
        assert engines.process_raw(raw).reason == reason
        assert engines.process_raw(orjson.dumps(corpus.good())) is None
    assert engines.events_valid == sent["good"] + 100


def test_decoder_is_total_on_mutated_bytes_of_good_events():
    """Random byte flips, insertions and deletions of valid events: never an exception."""
    corpus = Corpus(seed=11)
    rng = corpus.rng
    for _ in range(20_000):
        raw = bytearray(orjson.dumps(corpus.good()))
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(raw))
            op = rng.randrange(3)
            if op == 0:
                raw[at] = rng.randrange(256)
            elif op == 1:
                raw.insert(at, rng.randrange(256))
            else:
                del raw[at]
        decoded = decode_event(bytes(raw))
        assert isinstance(decoded, Event) or REASON.fullmatch(decoded.reason)
