"""The pure-Python ceiling through the broker: raw aiokafka consume + orjson + two dict counts.

Run as its own process by :mod:`benchmarks.broker_bench` (so it is measured per process,
pinned like the others)::

    python -m benchmarks.broker_ceiling BOOTSTRAP TOPIC OUT.json

Reads every partition of ``TOPIC`` from the beginning to the end offsets seen at the start
(no consumer group, no commits), decodes each value with ``orjson.loads`` and increments a
per-user and a per-team count: the least any consumer that keeps per-entity state must do.
The fetch sizes are the worker's ingest settings, so both read the broker alike. Writes
``{"events", "seconds", "cpu_seconds", "rss_bytes", "users", "teams"}`` to OUT.json.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from .broker_procs import assigned_partitions, rss_bytes

FETCH = {"max_partition_fetch_bytes": 4 << 20, "fetch_max_bytes": 16 << 20}


async def consume_all(bootstrap: str, topic: str) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,  # no group: every partition is assigned to this consumer
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **FETCH,
    )
    await consumer.start()
    try:
        tps = await assigned_partitions(consumer, topic)
        await consumer.seek_to_beginning(*tps)
        start = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        total = sum(end[tp] - start[tp] for tp in tps)
        users: dict[str, int] = {}
        teams: dict[str, int] = {}
        loads = orjson.loads
        count = 0
        started, cpu_started = time.perf_counter(), time.process_time()
        while count < total:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                for msg in messages:
                    event = loads(msg.value)
                    user, team = event.get("user_id"), event.get("team_id")
                    users[user] = users.get(user, 0) + 1
                    teams[team] = teams.get(team, 0) + 1
                count += len(messages)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        await consumer.stop()
    return {
        "events": count,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rss_bytes": rss_bytes(),
        "users": len(users),
        "teams": len(teams),
    }


def main(argv: list[str]) -> int:
    bootstrap, topic, out = argv
    result = asyncio.run(consume_all(bootstrap, topic))
    Path(out).write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
