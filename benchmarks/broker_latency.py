"""End-to-end alert latency: paced events in, alerts out, matched to the event that caused them.

An alert is published by the sweep that first reaches its ``time`` (the end of the scored
day): team alerts for local day ``d`` at the first sweep boundary ``S >= day_end_ms(d)``.
User alerts for UTC day ``d`` wait until every time-zone group of the partition has closed
its local day ``d`` (hours after UTC midnight west of UTC), so their trigger depends on the
partition's zones: they are counted, not timed. A partition sweeps up to boundary ``S``
while applying the first event that lifts its watermark (newest event time minus the
allowed lateness) to ``S`` or beyond. So the triggering event of each alert is known from
the events alone: the latency is the alert's arrival on the alerts topic minus the moment
that event was handed to the producer.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from detector.events import Invalid, decode_event
from detector.partitioning import partition_for

from .broker_procs import assigned_partitions

Route = tuple[int, bytes | None]


@dataclass
class Triggers:
    """Per partition: the events (indexes into the paced list) that lift the watermark to a
    new sweep boundary, and the boundary each one reaches."""

    sweep_ms: int
    #: event time covered by the paced events (first to newest), ms
    paced_span_ms: int = 0
    start_wm: dict[int, int] = field(default_factory=dict)
    reached: dict[int, list[int]] = field(default_factory=dict)
    index: dict[int, list[int]] = field(default_factory=dict)

    def trigger_of(self, partition: int, alert_time_ms: int) -> int | None:
        """Index of the paced event that made ``partition`` publish an alert for
        ``alert_time_ms``; -1 if an event before the paced ones did; None if none did.

        >>> t = Triggers(sweep_ms=10, start_wm={0: 20}, reached={0: [30, 50]}, index={0: [4, 9]})
        >>> [t.trigger_of(0, ms) for ms in (15, 20, 21, 30, 31, 50, 51)]
        [-1, -1, 4, 4, 9, 9, None]
        """
        boundary = -(-alert_time_ms // self.sweep_ms) * self.sweep_ms
        if boundary <= self.start_wm.get(partition, -(2**62)):
            return -1
        reached = self.reached.get(partition, [])
        at = bisect.bisect_left(reached, boundary)
        return self.index[partition][at] if at < len(reached) else None


def find_triggers(
    before: Iterable[bytes],
    paced: Sequence[bytes],
    partitions: int,
    lateness_ms: int,
    sweep_ms: int,
) -> tuple[Triggers, list[Route]]:
    """The sweep-triggering events among ``paced`` (sent after ``before``), and where each
    paced event goes: (partition, team key), (-1, None) for lines that do not decode."""
    newest: dict[int, int] = {}
    for raw in before:
        ev = decode_event(raw)
        if not isinstance(ev, Invalid):
            p = partition_for(ev.team_id, partitions)
            if ev.ts_ms > newest.get(p, -(2**62)):
                newest[p] = ev.ts_ms
    triggers = Triggers(sweep_ms=sweep_ms)
    for p, ts in newest.items():
        triggers.start_wm[p] = (ts - lateness_ms) // sweep_ms * sweep_ms
    routes: list[Route] = []
    first_ms: int | None = None
    for i, raw in enumerate(paced):
        ev = decode_event(raw)
        if isinstance(ev, Invalid):
            routes.append((-1, None))
            continue
        p = partition_for(ev.team_id, partitions)
        routes.append((p, ev.team_id.encode()))
        if first_ms is None:
            first_ms = ev.ts_ms
        triggers.paced_span_ms = max(triggers.paced_span_ms, ev.ts_ms - first_ms)
        if ev.ts_ms <= newest.get(p, -(2**62)):
            continue
        newest[p] = ev.ts_ms
        boundary = (ev.ts_ms - lateness_ms) // sweep_ms * sweep_ms
        reached = triggers.reached.setdefault(p, [])
        if boundary > (reached[-1] if reached else triggers.start_wm.get(p, -(2**62))):
            reached.append(boundary)
            triggers.index.setdefault(p, []).append(i)
    return triggers, routes


@dataclass
class PacedRun:
    sent: int = 0
    seconds: float = 0.0
    #: from the last send until the worker reported every paced event applied
    caught_up_s: float = 0.0
    #: after each tick: events sent so far, and the perf_counter when they were handed over
    sent_counts: list[int] = field(default_factory=list)
    sent_times: list[float] = field(default_factory=list)
    #: (perf_counter at arrival, alert)
    alerts: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def sent_at(self, index: int) -> float:
        """When paced event ``index`` was handed to the producer."""
        return self.sent_times[bisect.bisect_right(self.sent_counts, index)]


async def _produce_paced(
    bootstrap: str,
    topic: str,
    lines: Sequence[bytes],
    routes: Sequence[Route],
    rate: float,
    run: PacedRun,
    tick_s: float = 0.02,
) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=0
    )
    await producer.start()
    try:
        pending = []
        started = time.perf_counter()
        sent = 0
        while sent < len(lines):
            due = min(len(lines), int((time.perf_counter() - started) * rate) + 1)
            if due > sent:
                batches: dict[int, Any] = {}
                for i in range(sent, due):
                    p, key = routes[i]
                    p = max(p, 0)  # undecodable lines: any partition (the worker DLQs them)
                    batch = batches.get(p)
                    if batch is None:
                        batch = batches[p] = producer.create_batch()
                    if batch.append(key=key, value=lines[i], timestamp=None) is None:
                        pending.append(await producer.send_batch(batch, topic, partition=p))
                        batch = batches[p] = producer.create_batch()
                        batch.append(key=key, value=lines[i], timestamp=None)
                handed = time.perf_counter()
                for p, batch in batches.items():
                    pending.append(await producer.send_batch(batch, topic, partition=p))
                run.sent_counts.append(due)
                run.sent_times.append(handed)
                sent = due
            await asyncio.sleep(tick_s)
        await asyncio.gather(*pending)
        run.sent = sent
        run.seconds = time.perf_counter() - started
    finally:
        await producer.stop()


async def paced_run(
    bootstrap: str,
    events_topic: str,
    alerts_topic: str,
    lines: Sequence[bytes],
    routes: Sequence[Route],
    rate: float,
    drained: Callable[[], Awaitable[Any]],
    settle_s: float = 3.0,
) -> PacedRun:
    """Send ``lines`` at ``rate`` events/s while collecting committed alerts; after the last
    send, keep collecting until ``await drained()`` returns and ``settle_s`` more."""
    from aiokafka import AIOKafkaConsumer

    run = PacedRun()
    consumer = AIOKafkaConsumer(
        alerts_topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="latest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        tps = await assigned_partitions(consumer, alerts_topic)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)  # resolve "end" now, before anything is sent
        done = asyncio.Event()

        async def collect() -> None:
            while not done.is_set():
                batch = await consumer.getmany(timeout_ms=100)
                now = time.perf_counter()
                for messages in batch.values():
                    run.alerts.extend((now, orjson.loads(m.value)) for m in messages)

        collector = asyncio.create_task(collect())
        await _produce_paced(bootstrap, events_topic, lines, routes, rate, run)
        last_sent = time.perf_counter()
        await drained()
        run.caught_up_s = time.perf_counter() - last_sent
        await asyncio.sleep(settle_s)  # the last transaction commits within ~1 s
        done.set()
        await collector
    finally:
        await consumer.stop()
    return run


@dataclass(frozen=True)
class Latencies:
    seconds: list[float]
    before_phase: int
    unmatched: int
    early: int
    users: int = 0


def alert_latencies(run: PacedRun, triggers: Triggers, partitions: int) -> Latencies:
    """Latency of every alert caused by a paced event; counts the others."""
    seconds: list[float] = []
    before = unmatched = early = users = 0
    for arrived, alert in run.alerts:
        if alert["data"]["entity_type"] == "user":
            users += 1
            continue
        partition = partition_for(alert["data"]["team_id"], partitions)
        at_ms = int(datetime.fromisoformat(alert["time"]).timestamp() * 1000)
        index = triggers.trigger_of(partition, at_ms)
        if index is None:
            unmatched += 1
        elif index < 0:
            before += 1
        else:
            latency = arrived - run.sent_at(index)
            if latency < 0:
                early += 1
            else:
                seconds.append(latency)
    return Latencies(sorted(seconds), before, unmatched, early, users)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5), percentile([1.0, 2.0, 3.0, 4.0], 0.99)
    (2.0, 4.0)
    """
    rank = max(1, -(-int(q * 1000) * len(sorted_values) // 1000))
    return sorted_values[min(rank, len(sorted_values)) - 1]
