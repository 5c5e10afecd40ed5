"""Seeded corpus of good usage events and of mutations whose rejection reason is known.

Shared by the engine fuzz test (tests/unit/test_fuzz_events.py) and the worker fuzz test
(tests/integration/test_fuzz_worker.py). Mutations are cheap (dict edits and byte splices),
so hundreds of thousands of events take seconds.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from detector.timemodel import DAY_MS, HOUR_MS, iso_ms

BASE_MS = 20_454 * DAY_MS  # 2026-01-01T00:00:00Z
STEP_MS = 5_000  # 120k events span ~7 days: days close, sweeps and scoring run
#: every reason the decoder and the engine may give
REASON = re.compile(
    r"(oversized|malformed_json|not_an_object|unknown_message_type|invalid_timestamp"
    r"|timestamp_out_of_range|late|future_timestamp|duplicate"
    r"|missing_field:\w+|invalid_field:\w+|invalid_property:\w+)"
)


class Corpus:
    """Seeded good events (canonical and Segment) and mutations with a known reason."""

    TEAMS = 60

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.n = 0
        self.now = BASE_MS

    # good input
    def good(self) -> dict[str, Any]:
        rng = self.rng
        self.n += 1
        self.now += STEP_MS
        team = f"team-{rng.randrange(self.TEAMS)}"
        user = f"{team}/user-{rng.randrange(8)}"
        # out of order by up to an hour: within the allowed lateness, so never late
        ts = self.now - rng.randrange(HOUR_MS)
        stamp: Any = ts if rng.random() < 0.5 else iso_ms(ts)
        eid = f"ev-{self.n}"
        kind = rng.randrange(10)
        if kind == 0:
            return {
                "messageId": eid,
                "type": "track",
                "event": rng.choice(["Document Published", "Feature Used"]),
                "userId": user,
                "timestamp": stamp,
                "context": {"groupId": team},
                "properties": {"feature": "export"},
            }
        if kind == 1:
            traits = {"plan": "pro", "mrr": 99.0, "seats": 10}
            return {
                "messageId": eid,
                "type": "group",
                "groupId": team,
                "userId": user,
                "timestamp": stamp,
                "traits": traits,
            }
        if kind == 2:
            props = {"task": "report", "duration_s": rng.uniform(0, 600)}
            return self._canonical(eid, "task.completed", stamp, user, team, props)
        if kind == 3:
            return self._canonical(
                eid, "session.ended", stamp, user, team, {"duration_s": rng.randrange(0, 3600)}
            )
        if kind == 4:
            odd = {"nested": _nest(rng.randrange(1, 200)), "text": "ünïcødé ✓ 日本"}
            return self._canonical(eid, "page.viewed", stamp, user, team, odd)
        return self._canonical(
            eid, rng.choice(["session.started", "document.published", "feature.used"]), stamp,
            user, team, {"feature": rng.choice(["search", "export", "share"])},
        )  # fmt: skip

    @staticmethod
    def _canonical(
        eid: str, etype: str, stamp: Any, user: str, team: str, props: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "event_id": eid,
            "type": etype,
            "timestamp": stamp,
            "user_id": user,
            "team_id": team,
            "properties": props,
        }

    # bad input: each mutation returns (raw bytes, the reason it must be rejected with)
    def bad(self) -> tuple[bytes, str]:
        mutate = self.rng.choice(self.MUTATIONS)
        return mutate(self, self._canonical_good())

    def _canonical_good(self) -> dict[str, Any]:
        ev = self.good()
        while "messageId" in ev:
            ev = self.good()
        return ev

    def truncated(self, ev: dict[str, Any]) -> tuple[bytes, str]:
        raw = orjson.dumps(ev)
        return raw[: self.rng.randrange(1, len(raw) - 1)], "malformed_json"

    def invalid_utf8(self, ev: dict[str, Any]) -> tuple[bytes, str]:
        raw = orjson.dumps(ev)
        at = raw.index(b'"ev-') + 2
        return raw[:at] + self.rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"]) + raw[at:], (
            "malformed_json"
        )

    def non_finite(self, ev: dict[str, Any]) -> tuple[bytes, str]:
        ev["timestamp"] = "@@"
        literal = self.rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999"])
        return orjson.dumps(ev).replace(b'"@@"', literal), "malformed_json"

    def too_deep(self, ev: dict[str, Any]) -> tuple[bytes, str]:
        ev["properties"] = {"x": "@@"}
        depth = self.rng.randrange(1100, 3000)
        return orjson.dumps(ev).replace(b'"@@"', b"[" * depth + b"]" * depth), "malformed_json"

    def missing(self, ev: dict[str, Any]) -> tuple[bytes, str]:
        name = self.rng.choice(["event_id", "type", "timestamp", "team_id", "user_id"])
        if self.rng.random() < 0.5:
            del ev[name]
        else:
            ev[name] = None
        return orjson.dumps(ev), f"missing_field:{name}"

    def wrong_type(self, ev: dict[str, Any]) -> tuple[bytes, str]:
        name = self.rng.choice(["event_id", "team_id", "user_id", "type", "properties"])
        junk: list[Any] = [42, 1.5, True, [], ["x"], {"a": 1}, "", "x" * 257]
        if name == "type":
            junk += ["Feature Used", "feature..used", "9lives", "a" * 129]
        if name == "properties":
            junk = [42, "text", ["feature"], True]
        ev[name] = self.rng.choice(junk)
        return orjson.dumps(ev), f"invalid_field:{name}"

    def huge_string(self, ev: dict[str, Any]) -> tuple[bytes, str]:
        name = self.rng.choice(["event_id", "team_id", "user_id"])
        ev[name] = "é" * self.rng.randrange(300, 20_000)
        return orjson.dumps(ev), f"invalid_field:{name}"

    def oversized(self, ev: dict[str, Any]) -> tuple[bytes, str]:
        ev["properties"] = {"blob": _BLOB[: self.rng.randrange(65_600, len(_BLOB))]}
        return orjson.dumps(ev), "oversized"

    def bad_timestamp(self, ev: dict[str, Any]) -> tuple[bytes, str]:
        choice = self.rng.randrange(4)
        if choice == 0:
            ev["timestamp"] = self.rng.choice(["yesterday", "2026-13-01T00:00:00Z", "", "0"])
            return orjson.dumps(ev), "invalid_timestamp"
        if choice == 1:
            ev["timestamp"] = self.rng.choice([1.5e12, [1], {"ms": 1}, False, "1772356502123"])
            return orjson.dumps(ev), "invalid_timestamp"
        if choice == 2:
            ev["timestamp"] = iso_ms(self.now)[:-1]  # no UTC offset
            return orjson.dumps(ev), "invalid_timestamp"
        ev["timestamp"] = self.rng.choice(
            [
                *(0, -1, 2**62, "1970-01-01T00:00:00Z", "1999-12-31T23:59:59Z"),
                *("2150-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59"),
            ]
        )
        return orjson.dumps(ev), "timestamp_out_of_range"

    def late(self, ev: dict[str, Any]) -> tuple[bytes, str]:
        ev["timestamp"] = self.now - self.rng.randrange(4 * HOUR_MS, 30 * DAY_MS)
        return orjson.dumps(ev), "late"

    def broken_clock(self, ev: dict[str, Any]) -> tuple[bytes, str]:
        # one team only: a jump confirmed by several teams would be accepted (a real gap)
        ev["team_id"] = "team-with-a-broken-clock"
        ev["timestamp"] = iso_ms(self.now + self.rng.randrange(100 * DAY_MS, 20 * 365 * DAY_MS))
        return orjson.dumps(ev), "future_timestamp"

    def not_object(self, ev: dict[str, Any]) -> tuple[bytes, str]:
        return orjson.dumps(self.rng.choice([[ev], ev["event_id"], 7, None, True])), (
            "not_an_object"
        )

    def bad_property(self, ev: dict[str, Any]) -> tuple[bytes, str]:
        ev["user_id"] = ev["user_id"] or "u"
        rng = self.rng
        etype, props = rng.choice(
            [
                ("session.ended", {"duration_s": rng.choice([-1, "5", None, _nest(200)])}),
                ("session.ended", {}),
                ("task.completed", {"duration_s": float("inf"), "task": "t"}),  # inf -> null
                ("feature.used", {"feature": rng.choice(["", 3, "f" * 300])}),
                ("team.updated", {"timezone": rng.choice(["Europe", "Mars/Olympus", "../etc"])}),
                ("team.updated", {"seats": rng.choice([0, -3, 2.5, True])}),
                ("payment.failed", {"amount": rng.choice([-5, "10 EUR"])}),
            ]
        )
        ev["type"], ev["properties"] = etype, props
        name = next(iter(props), {"session.ended": "duration_s"}.get(etype, ""))
        return orjson.dumps(ev), f"invalid_property:{name}"

    def segment_unusable(self, ev: dict[str, Any]) -> tuple[bytes, str]:
        base = {"messageId": ev["event_id"], "timestamp": ev["timestamp"], "userId": "u"}
        choice = self.rng.randrange(5)
        if choice == 0:
            msg = {**base, "type": self.rng.choice(["alias", "unknown", 3, None, ["track"]])}
            return orjson.dumps(msg), "unknown_message_type"
        if choice == 1:  # a group call without a group id
            return orjson.dumps({**base, "type": "group", "traits": {}}), "missing_field:team_id"
        if choice == 2:  # track without userId or anonymousId
            msg = {**base, "type": "track", "event": "Clicked", "context": {"groupId": "t"}}
            del msg["userId"]
            return orjson.dumps(msg), "missing_field:user_id"
        if choice == 3:  # an event name that is not a usable type
            msg = {**base, "type": "track", "event": "Oops!", "context": {"groupId": "t"}}
            return orjson.dumps(msg), "invalid_field:type"
        msg = {**base, "type": "track", "event": "Clicked", "context": "not-an-object"}
        return orjson.dumps(msg), "missing_field:team_id"

    MUTATIONS: tuple[Callable[[Corpus, dict[str, Any]], tuple[bytes, str]], ...] = (
        truncated,
        invalid_utf8,
        non_finite,
        too_deep,
        missing,
        wrong_type,
        huge_string,
        oversized,
        bad_timestamp,
        late,
        broken_clock,
        not_object,
        bad_property,
        segment_unusable,
    )


_BLOB = "x" * 120_000


def _nest(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def mixed(
    corpus: Corpus, count: int, bad_share: float, warmup: int
) -> Iterator[tuple[bytes, str | None]]:
    """``count`` raw events with the reason each must be rejected with (None: good).

    Bad input starts after ``warmup`` good events, so every partition has a watermark
    (a 'late' mutation needs one).
    """
    for number in range(count):
        if number >= warmup and corpus.rng.random() < bad_share:
            yield corpus.bad()
        else:
            yield orjson.dumps(corpus.good()), None
