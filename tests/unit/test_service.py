"""EngineRuntime without Kafka: bundles in, changelog records out, and a restore from them."""

from __future__ import annotations

import asyncio

import orjson

from detector.bundles import Item, encode_bundle
from detector.events import decode_fields
from detector.partitioning import partition_for
from detector.service import EngineRuntime
from detector.settings import build_settings
from detector.simulator import SimulationConfig, simulate
from detector.state_snapshot import ChangelogRead


def bundles_for(partition: int, partitions: int, size: int) -> list[bytes]:
    """The simulated events of one partition, as ingest would bundle them (source = partition)."""
    items = []
    for offset, event in enumerate(EVENTS):
        if partition_for(event["team_id"], partitions) != partition:
            continue
        raw = orjson.dumps(event)
        fields = decode_fields(raw)
        assert isinstance(fields, tuple)
        items.append(Item(partition, offset, raw, fields))
    return [encode_bundle(items[i : i + size]) for i in range(0, len(items), size)]


EVENTS = list(simulate(SimulationConfig(teams=6, days=30, seed=5)).events())


def runtime_over(records: dict[bytes, bytes]) -> EngineRuntime:
    async def read(partition: int, start: int) -> ChangelogRead:
        return ChangelogRead(dict(records), end=len(records))

    return EngineRuntime(build_settings(environ={}), read)


def test_a_runtime_restored_from_the_changelog_continues_like_one_that_never_stopped():
    partitions = 4
    partition = partition_for(EVENTS[0]["team_id"], partitions)
    bundles = bundles_for(partition, partitions, size=200)
    assert len(bundles) > 4
    half = len(bundles) // 2

    straight = runtime_over({})
    asyncio.run(straight.ensure(partition))
    for offset, bundle in enumerate(bundles):
        straight.apply(partition, offset, bundle)

    changelog: dict[bytes, bytes] = {}
    first = runtime_over({})
    asyncio.run(first.ensure(partition))
    for offset, bundle in enumerate(bundles[:half]):
        first.apply(partition, offset, bundle)
        changelog.update(first.changes(partition))

    second = runtime_over(changelog)
    asyncio.run(second.ensure(partition))
    assert second.bundle_offset[partition] == half - 1
    # redelivered bundles (before the committed offset) and events are skipped, not re-counted
    for offset, bundle in enumerate(bundles):
        second.apply(partition, offset, bundle)

    def counts(runtime: EngineRuntime) -> dict[str, int]:
        engine = runtime.engines[partition]
        return {team_id: team.events_total for team_id, team in engine.teams.items()}

    assert counts(second) == counts(straight)
    assert sum(counts(straight).values()) > 0


def test_state_bytes_estimates_what_a_new_owner_reads_back_from_the_changelog():
    partitions = 4
    partition = partition_for(EVENTS[0]["team_id"], partitions)
    runtime = runtime_over({})
    asyncio.run(runtime.ensure(partition))
    assert runtime.state_bytes() == 0  # nothing written yet, nothing to estimate from
    changelog: dict[bytes, bytes] = {}
    for offset, bundle in enumerate(bundles_for(partition, partitions, size=200)):
        runtime.apply(partition, offset, bundle)
        changelog.update(runtime.changes(partition))
    entity_bytes = sum(len(v) for k, v in changelog.items() if k[:2] in (b"t:", b"u:"))
    assert entity_bytes > 0
    assert abs(runtime.state_bytes() - entity_bytes) <= 0.25 * entity_bytes
