"""The textbook peer: a Faust agent updating per-user and per-team tumbling-window tables.

This is how most teams would write per-entity daily counts with Faust (faust-streaming, the
version the project installs): the events as a ``faust.Record``, two tables with 1-day
tumbling windows relative to the event's own timestamp, RocksDB store (rocksdict) with
changelog topics, and one table update per event and table. Run as its own process by
:mod:`benchmarks.broker_bench`::

    python -m benchmarks.broker_peer BOOTSTRAP TOPIC PARTITIONS DATADIR OUT.json SECONDS MAX_EVENTS

It reads ``TOPIC`` from the beginning and stops after SECONDS of processing (counted from
the first event) or MAX_EVENTS events, whichever comes first, then writes
``{"events", "seconds", "cpu_seconds", "rss_bytes"}`` to OUT.json and stops itself.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import faust
import orjson

from detector.kafka_clients import ensure_topics
from detector.settings import KafkaSettings

from .broker_procs import rss_bytes


class UsageEvent(faust.Record, serializer="json"):
    """The canonical usage event (the fields the peer needs; others are ignored)."""

    event_id: str
    type: str
    timestamp: str
    team_id: str
    user_id: str | None = None


def build_app(
    bootstrap: str, topic_name: str, partitions: int, datadir: str
) -> tuple[faust.App, Any, Any, Any]:
    """The app, its source topic and the two windowed tables (user, team)."""
    app = faust.App(
        f"bench-peer-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{bootstrap}",
        store="rocksdb://",
        datadir=datadir,
        topic_partitions=partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
    )
    topic = app.topic(topic_name, value_type=UsageEvent, partitions=partitions)
    window = timedelta(days=1)
    user_days = (
        app.Table("user-days", default=int, partitions=partitions)
        .tumbling(window, expires=timedelta(days=14))
        .relative_to_field(UsageEvent.timestamp)  # type: ignore[arg-type]  # a descriptor
    )
    team_days = (
        app.Table("team-days", default=int, partitions=partitions)
        .tumbling(window, expires=timedelta(days=14))
        .relative_to_field(UsageEvent.timestamp)  # type: ignore[arg-type]  # a descriptor
    )
    return app, topic, user_days, team_days


def main(argv: list[str]) -> int:
    bootstrap, topic_name, partitions, datadir, out, seconds, max_events = argv
    limit_s, limit_n = float(seconds), int(max_events)
    app, topic, user_days, team_days = build_app(bootstrap, topic_name, int(partitions), datadir)
    state: dict[str, Any] = {
        "count": 0,
        "first": None,
        "cpu_first": 0.0,
        "done": False,
        "shown": 0.0,
    }

    def finish() -> None:
        result = {
            "events": state["count"],
            "seconds": time.perf_counter() - state["first"],
            "cpu_seconds": time.process_time() - state["cpu_first"],
            "rss_bytes": rss_bytes(),
        }
        Path(out).write_bytes(orjson.dumps(result))
        state["done"] = True
        os.kill(os.getpid(), signal.SIGTERM)  # a graceful Faust worker shutdown

    @app.agent(topic)
    async def count_days(events: Any) -> None:
        async for event in events:
            if state["done"]:
                continue
            user_days[event.user_id] += 1
            team_days[event.team_id] += 1
            state["count"] += 1
            if state["first"] is None:
                state["first"] = state["shown"] = time.perf_counter()
                state["cpu_first"] = time.process_time()
            if state["count"] % 1000 == 0:
                now = time.perf_counter()
                if now - state["shown"] >= 5:
                    state["shown"] = now
                    rate = state["count"] / (now - state["first"])
                    print(
                        f"[peer] {state['count']:,} events, {rate:,.0f}/s",
                        file=sys.stderr,
                        flush=True,
                    )
                if now - state["first"] >= limit_s or state["count"] >= limit_n:
                    finish()

    # Deployments create their topics up front; left to Faust, the first event can arrive
    # before the changelog's metadata and crash the agent (PartitionsMismatch, 0 partitions).
    ensure_topics(
        KafkaSettings(brokers=bootstrap),
        {t.table.changelog_topic.get_topic_name(): int(partitions) for t in (user_days, team_days)},
    )
    worker = faust.Worker(app, loglevel="warning", quiet=True)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
