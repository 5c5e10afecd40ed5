"""Route decoded events to one engine per partition, exactly as the Kafka topic would."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from .engine import PartitionEngine
from .events import (
    TEAM_UPDATED,
    EventFields,
    Invalid,
    decode_fields,
    routing_key,
    segment_event_type,
    validate_fields,
)
from .memberships import Memberships
from .partitioning import partition_for
from .quarantine import quarantined
from .settings import EngineSettings


def _may_be_membership(obj: dict[str, Any]) -> bool:
    """Whether a line could validate to a ``team.updated`` event, which teaches a membership
    (a group call, a canonical team.updated, a track call named "Team Updated"): a job
    validates such lines of the other jobs' partitions too, so that every job learns what
    one process would.

    >>> _may_be_membership({"type": "track", "event": "Team Updated"})
    True
    >>> _may_be_membership({"type": "track", "event": "Report Viewed"}), _may_be_membership({"type": []})
    (False, False)
    """
    kind = obj.get("type")  # any JSON value
    if kind == "group" or kind == TEAM_UPDATED:
        return True
    return kind == "track" and segment_event_type(obj.get("event")) == TEAM_UPDATED


class PartitionedEngines:
    """N partition engines; events go to the partition of their team key."""

    def __init__(self, settings: EngineSettings, clock: Callable[[], float] = time.perf_counter):
        self.settings = settings
        self.engines = [PartitionEngine(settings, clock) for _ in range(settings.partitions)]
        self._partition_cache: dict[str, int] = {}
        self.decode_invalid: dict[str, int] = {}
        #: the teams of users, from group calls, for messages without their team
        self.memberships = Memberships()

    def partition(self, team_id: str) -> int:
        p = self._partition_cache.get(team_id)
        if p is None:
            p = partition_for(team_id, len(self.engines))
            if len(self._partition_cache) < 1_000_000:
                self._partition_cache[team_id] = p
        return p

    def process_raw(self, raw: bytes) -> Invalid | None:
        memberships = self.memberships
        decoded = decode_fields(raw, self.settings.max_event_bytes, memberships.team_of)
        if isinstance(decoded, Invalid):
            self.decode_invalid[decoded.reason] = self.decode_invalid.get(decoded.reason, 0) + 1
            return decoded
        memberships.observe(decoded)
        return self.process(decoded)

    def process(self, event: EventFields) -> Invalid | None:
        """Apply one valid event (an Event or its plain fields) in its partition's engine."""
        return self.engines[self.partition(event[4])].process(event)

    def process_lines(
        self,
        lines: Iterable[bytes],
        rejected: list[tuple[int, Invalid]],
        alerts: list[dict[str, Any]],
    ) -> int:
        """:meth:`process_raw` over many lines, with every lookup bound once.

        Appends ``(index in lines, why)`` to ``rejected`` for each line not applied, and each
        alert to ``alerts`` in the order it was raised (alerts already waiting first); returns
        the number of lines. The same as process_raw line by line, draining after each: an
        engine raises alerts only while it processes its own event, so draining that engine
        alone keeps the order.
        """
        alerts.extend(self.drain_alerts())
        decode, max_bytes = decode_fields, self.settings.max_event_bytes
        engines, partition_of = self.engines, self._partition_cache
        decode_invalid = self.decode_invalid
        team_of, observe = self.memberships.team_of, self.memberships.observe
        n = 0
        for n, raw in enumerate(lines, 1):
            fields = decode(raw, max_bytes, team_of)
            if isinstance(fields, Invalid):
                decode_invalid[fields.reason] = decode_invalid.get(fields.reason, 0) + 1
                rejected.append((n - 1, fields))
                continue
            if fields[1] == TEAM_UPDATED:
                observe(fields)
            p = partition_of.get(fields[4])
            engine = engines[self.partition(fields[4]) if p is None else p]
            try:  # free in CPython 3.11 unless it raises
                why = engine.process(fields)
            except Exception as exc:  # a poison event: dead-lettered, the rest keeps flowing
                why = quarantined(exc, engine.stats.invalid)
            if why is not None:
                rejected.append((n - 1, why))
            if engine.outbox:  # also after a rejection: a quarantined event may have raised some
                alerts.extend(engine.drain_alerts())
        return n

    def process_owned_lines(
        self,
        lines: Iterable[bytes],
        first: int,
        job: int,
        jobs: int,
        rejected: list[tuple[int, Invalid]],
        alerts: list[tuple[int, dict[str, Any]]],
    ) -> None:
        """:meth:`process_lines` for one of ``jobs`` processes that each read every line.

        Job ``job`` applies the lines of the partitions ``p % jobs == job`` and rejects the
        lines that have no team to route by (job 0); the others it skips after parsing
        (:func:`~detector.events.routing_key`, no validation), but for group calls, which
        every job validates to learn the memberships from. Lines are numbered from
        ``first``; each rejection and each alert carries the number of the line that caused
        it, so merging the jobs' outputs by line number gives :meth:`process_lines`' order.
        """
        decode, validate, loads = decode_fields, validate_fields, orjson.loads
        max_bytes, engines = self.settings.max_event_bytes, self.engines
        partition_of, decode_invalid = self._partition_cache, self.decode_invalid
        owned = [p % jobs == job for p in range(len(engines))]
        routes_unkeyed = job == 0
        team_of, observe = self.memberships.team_of, self.memberships.observe
        for index, raw in enumerate(lines, first):
            key = None
            if len(raw) <= max_bytes:
                try:
                    obj = loads(raw)
                except orjson.JSONDecodeError:
                    pass
                else:
                    key = routing_key(obj, team_of)
            fields: EventFields | Invalid
            if type(key) is str:
                p = partition_of.get(key)
                if p is None:
                    p = self.partition(key)
                if not owned[p]:
                    if _may_be_membership(obj):
                        learned = validate(obj, team_of)
                        if not isinstance(learned, Invalid):
                            observe(learned)
                    continue
                fields = validate(obj, team_of)
            elif routes_unkeyed:
                p, fields = -1, decode(raw, max_bytes, team_of)  # invalid: no team to route by
            else:
                continue
            if isinstance(fields, Invalid):
                decode_invalid[fields.reason] = decode_invalid.get(fields.reason, 0) + 1
                rejected.append((index, fields))
                continue
            if fields[1] == TEAM_UPDATED:
                observe(fields)
            if fields[4] != key:
                raise AssertionError(f"line {index + 1}: routed by {key!r}, team {fields[4]!r}")
            engine = engines[p]
            try:
                why = engine.process(fields)
            except Exception as exc:  # a poison event, as in process_lines
                why = quarantined(exc, engine.stats.invalid)
            if why is not None:
                rejected.append((index, why))
            if engine.outbox:
                alerts.extend((index, alert) for alert in engine.drain_alerts())

    def drain_alerts(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for engine in self.engines:
            if engine.outbox:
                out.extend(engine.drain_alerts())
        return out

    def invalid_counts(self) -> dict[str, int]:
        total = dict(self.decode_invalid)
        for engine in self.engines:
            for reason, n in engine.stats.invalid.items():
                total[reason] = total.get(reason, 0) + n
        return total

    @property
    def events_valid(self) -> int:
        return sum(e.stats.events_valid for e in self.engines)
