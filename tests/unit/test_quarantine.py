"""A poison event (processing raises) is dead-lettered and counted; the rest keeps flowing."""

from __future__ import annotations

import asyncio
import io

import orjson
import pytest

from detector.bundles import Item, encode_bundle
from detector.engine import PartitionEngine
from detector.events import decode_fields
from detector.quarantine import PROCESSING_ERROR
from detector.replay import replay
from detector.service import EngineRuntime
from detector.settings import build_settings
from detector.simulator import SimulationConfig, simulate
from detector.state_snapshot import ChangelogRead
from tests.poison import poison_copies, poisoned_process


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PartitionEngine, "process", poisoned_process)


async def _nothing_stored(partition: int, start: int) -> ChangelogRead:
    return ChangelogRead()


def _events() -> list[dict]:
    return list(simulate(SimulationConfig(teams=6, days=60, seed=3)).events())


def _replay(events: list[dict]) -> tuple[list[bytes], list[dict], dict[str, int], int]:
    settings = build_settings(environ={}).engine
    alerts, dlq = io.BytesIO(), io.BytesIO()
    result = replay((orjson.dumps(e) for e in events), settings, alerts, dlq)
    dead = [orjson.loads(line) for line in dlq.getvalue().splitlines()]
    return alerts.getvalue().splitlines(), dead, result.invalid, result.valid


def test_replay_quarantines_poison_events_and_gives_the_alerts_of_the_clean_input(poisoned):
    events = _events()
    clean_alerts, clean_dead, _, clean_valid = _replay(events)
    with_poison = poison_copies(events, every=1000)
    poison = len(with_poison) - len(events)
    assert poison >= 5

    alerts, dead, invalid, valid = _replay(with_poison)

    quarantined = [d for d in dead if d["reason"] == PROCESSING_ERROR]
    assert len(quarantined) == poison
    assert all(d["detail"].startswith("PoisonError: ") for d in quarantined)
    assert all(orjson.loads(d["raw"])["event_id"].startswith("poison-") for d in quarantined)
    assert invalid[PROCESSING_ERROR] == poison
    assert valid == clean_valid == len(events) - len(clean_dead)
    assert alerts == clean_alerts


def test_the_worker_runtime_dead_letters_a_poison_item_and_applies_the_rest_of_the_bundle(
    poisoned,
):
    settings = build_settings(environ={}, overrides={"engine": {"partitions": 1}})
    runtime = EngineRuntime(settings, _nothing_stored)
    asyncio.run(runtime.ensure(0))
    events = poison_copies(_events()[:300], every=100)
    items = []
    for offset, event in enumerate(events):
        raw = orjson.dumps(event)
        fields = decode_fields(raw)
        assert isinstance(fields, tuple)
        items.append(Item(0, offset, raw, fields))

    _, dead = runtime.apply(0, 0, encode_bundle(items))

    assert [d["reason"] for d in dead] == [PROCESSING_ERROR] * 3
    assert [d["offset"] for d in dead] == [100, 201, 302]
    engine = runtime.engines[0]
    assert engine.stats.events_valid == 300
    assert engine.stats.invalid == {PROCESSING_ERROR: 3}
    assert runtime.bundle_offset[0] == 0  # the bundle is done: a redelivery is skipped
    assert runtime.apply(0, 0, encode_bundle(items)) == ([], [])
