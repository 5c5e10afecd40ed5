from __future__ import annotations

import math
from array import array

import orjson
import pytest

from detector.codec import (
    UndecodableRecord,
    decode_team,
    decode_user,
    encode_partition,
    encode_team,
    encode_user,
    restore_partition,
)
from detector.engine import NEVER, PartitionEngine
from detector.events import Event
from detector.settings import EngineSettings
from detector.state import TeamState, UserState

from .streams import TeamSpec, healthy_teams, stream


def test_state_restored_from_records_continues_exactly_like_an_uninterrupted_run():
    teams = [
        *healthy_teams(12),
        TeamSpec("q", 5, level=lambda d: 1.0 if d < 50 else 0.0),
        TeamSpec("f", 8, level=lambda d: 1.0 if d < 45 else 0.2, cancel_day=75),
    ]
    events = list(stream(teams, days=90, seed=5))
    cut = len(events) // 2

    whole = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
    for ev in events:
        whole.process(ev)
    expected = sorted(a["id"] for a in whole.drain_alerts())

    first = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
    for ev in events[:cut]:
        first.process(ev)
    before = first.drain_alerts()
    records_t = {k: encode_team(t) for k, t in first.teams.items()}
    records_u = {k: encode_user(u) for k, u in first.users.items()}
    meta = encode_partition(first, source_offset=cut - 1)

    second = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
    offset = restore_partition(
        second,
        meta,
        {k: decode_team(v) for k, v in records_t.items()},
        {k: decode_user(v) for k, v in records_u.items()},
    )
    assert offset == cut - 1
    for ev in events[cut:]:
        second.process(ev)
    after = second.drain_alerts()
    assert sorted(a["id"] for a in before + after) == expected
    assert len(expected) > 2


def test_records_stay_within_the_memory_budget():
    engine = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
    for ev in stream(healthy_teams(5, users=10), days=40):
        engine.process(ev)
    assert max(len(encode_team(t)) for t in engine.teams.values()) < 4096
    assert max(len(encode_user(u)) for u in engine.users.values()) < 1024


def test_records_written_before_open_days_were_tracked_still_decode():
    engine = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
    for ev in stream(healthy_teams(2, users=3), days=12):
        engine.process(ev)
    user = next(iter(engine.users.values()))
    old_user = [
        getattr(user, n) for n in UserState.__slots__ if n not in ("open_days", "settled_day")
    ]
    decoded = decode_user(orjson.dumps(old_user))
    assert (decoded.open_days, decoded.settled_day) == (0, user.last_day)
    assert (decoded.gap, decoded.active_days, decoded.check_day) == (
        user.gap,
        user.active_days,
        user.check_day,
    )
    team = next(iter(engine.teams.values()))
    head, sep, rest = encode_team(team).partition(b"\x00")
    names = [n for n in TeamState.__slots__ if n not in ("ring", "recent_ids")]
    values = dict(zip(names, orjson.loads(head), strict=True))
    later = ("champion_left_first",)
    for release, added in enumerate(
        [
            ("open_days", "open_days_early", "open_tasks", "pending", *later),
            ("open_tasks", "pending", *later),
            later,
        ]
    ):
        old_head = orjson.dumps([v for n, v in values.items() if n not in added])
        old_team = decode_team(old_head + sep + rest)
        assert old_team.champion_left_first is False, release
        if release < 2:
            assert (old_team.open_tasks, old_team.pending) == ((), ()), release
        if release == 0:
            assert (old_team.open_days, old_team.open_days_early) == (0, 0)
        else:
            assert old_team.open_days == team.open_days
        assert (old_team.active_days, list(old_team.ring)) == (team.active_days, list(team.ring))


def test_pending_team_events_and_open_tasks_survive_a_restore():
    engine = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
    ts = 20_454 * 86_400_000 + 3_600_000
    engine.process(Event("a", "team.updated", ts, None, "t", {"plan": "pro", "mrr": 99.0}))
    engine.process(Event("b", "task.completed", ts, "u", "t", {"task": "x", "duration_s": 2.5}))
    team = decode_team(encode_team(engine.teams["t"]))
    assert team.pending == [[ts, "a", "team.updated", {"plan": "pro", "mrr": 99.0}]]
    assert team.open_tasks == [[20_454, "x", 1, 2500]]
    restored = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
    restore_partition(restored, encode_partition(engine, 0), {"t": team}, {})
    assert restored.population.task_days == {20_454: {"x": [1, round(math.log1p(2.5) * 1e6)]}}


def test_records_are_json_arrays_of_the_slot_values_in_slot_order():
    engine = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
    ts = 20_454 * 86_400_000 + 3_600_000
    engine.process(Event("a", "team.updated", ts, None, "t", {"plan": "pro", "mrr": 99.0}))
    engine.process(Event("b", "task.completed", ts, "u", "t", {"task": "x", "duration_s": 2.5}))
    team, user = engine.teams["t"], engine.users["u"]

    assert encode_user(user) == orjson.dumps([getattr(user, s) for s in UserState.__slots__])
    head = encode_team(team).partition(b"\x00")[0]
    assert head == orjson.dumps(
        [getattr(team, s) for s in TeamState.__slots__ if s not in ("ring", "recent_ids")]
    )


def test_the_first_key_action_day_survives_a_restore_with_the_same_key_action_types():
    engine = PartitionEngine(EngineSettings(), clock=lambda: 0.0)
    for ev in stream(healthy_teams(3), days=10):
        engine.process(ev)
    assert engine.key_action_since < NEVER
    teams = {k: decode_team(encode_team(t)) for k, t in engine.teams.items()}
    meta = encode_partition(engine, source_offset=0)

    def restored(settings: EngineSettings, meta: bytes, teams: dict[str, TeamState]) -> int:
        fresh = PartitionEngine(settings, clock=lambda: 0.0)
        restore_partition(fresh, meta, teams, {})
        return fresh.key_action_since

    assert restored(EngineSettings(), meta, teams) == engine.key_action_since
    # other key action types: what was seen says nothing about them
    assert restored(EngineSettings(key_action_types=("report.exported",)), meta, teams) == NEVER
    # written before it was kept: seen if some team has performed one
    older = orjson.loads(meta)
    del older["key_action_since"]
    assert restored(EngineSettings(), orjson.dumps(older), teams) == 0
    for team in teams.values():
        team.key_total = 0
    assert restored(EngineSettings(), orjson.dumps(older), teams) == NEVER


#: the head of a team record written by 6492dda (33 fields: before the risk model's snapshots,
#: open days, pending events and open tasks, and champion_left_first)
_HEAD_6492DDA = (
    b"[3,1.0,0.0,2,1.0,0.0,2,false,null,0.0,0,3,20513,-1.0,1.0,0,0,false,0,20515,20514,null,0,0,"
    b'null,false,20515,null,"t1",false,"UTC",0,0]'
)
#: its ring (two active users on each of three days) and ids (generation 246184, one id)
_RING_6492DDA = array("d", [1.0 if i in (7, 8, 14, 15, 21, 22) else 0.0 for i in range(112)])
_IDS_6492DDA = bytes.fromhex("a8c1030000000000010000009ddc8491")


def test_a_team_record_of_6492dda_decodes_with_an_own_empty_snapshot_list():
    record = _HEAD_6492DDA + b"\x00" + _RING_6492DDA.tobytes() + _IDS_6492DDA
    first, second = decode_team(record), decode_team(record)

    assert (first.team_id, first.active_days, first.last_scored_day) == ("t1", 3, 20514)
    assert (first.open_days, first.pending, first.open_tasks) == (0, (), ())
    assert first.champion_left_first is False and list(first.ring) == list(_RING_6492DDA)
    assert first.recent_ids.gen == 246_184 and len(first.recent_ids) == 1
    first.snapshots.append([20_516.0, 0.0, 1.0])
    assert second.snapshots == []  # each team its own list
    assert decode_team(encode_team(first)).snapshots == [[20_516.0, 0.0, 1.0]]


def test_a_record_that_does_not_decode_names_its_key_and_field_count():
    head, sep, rest = encode_team(TeamState("t1", 20_000, False)).partition(b"\x00")
    newer = orjson.dumps([*orjson.loads(head), 0]) + sep + rest
    with pytest.raises(UndecodableRecord, match=r"team record t:t1: 40 fields, expected one of 33"):
        decode_team(newer, b"t:t1")
    with pytest.raises(ValueError, match=r"user record u:a\\xff: 3 fields, expected 14 or 16"):
        decode_user(b"[1,2,3]", b"u:a\xff")
    with pytest.raises(UndecodableRecord, match=r"team record t:t2: not JSON"):
        decode_team(b"[1,2" + sep + rest, "t:t2")


def test_a_team_record_cut_short_in_its_ring_or_ids_does_not_decode():
    team = TeamState("t1", 20_000, False)
    for i in range(3):
        team.recent_ids.seen(f"e{i}", 20_000 * 86_400_000, 3_600_000)
    record = encode_team(team)
    ids = len(team.recent_ids.to_bytes())  # a 12-byte header and three 4-byte ids
    assert decode_team(record[:-ids]).recent_ids.gen == -1  # a record from before ids: whole

    for cut, problem in (
        (ids + 304, "592 bytes of ring, expected 896"),
        (ids - 5, "recent ids: 5 bytes"),  # within the header
        (4, "recent ids: 3 in the current generation, 20 bytes"),
        (1, "recent ids: 23 bytes"),
    ):
        with pytest.raises(UndecodableRecord, match=f"team record t:t1: {problem}"):
            decode_team(record[:-cut], b"t:t1")
