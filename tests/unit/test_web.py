"""The health API's answers and its routing between workers, with the Faust parts faked.

The real thing (two workers on a broker, requests forwarded over HTTP) is tested in
tests/integration/test_observability.py; here each routing decision is checked alone.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from detector.engine import PartitionEngine
from detector.partitioning import partition_for
from detector.service import EngineRuntime
from detector.settings import build_settings
from detector.web import FORWARDED, HealthApi

from .streams import TeamSpec, healthy_teams, stream

ME, PEER = "http://me:6066", "http://peer:6066"
BUNDLES = "bundles"


class FakeWeb:
    def json(self, value: Any, status: int = 200) -> tuple[int, Any]:
        return status, orjson.loads(orjson.dumps(value))

    def bytes(self, value: bytes, content_type: str = "", status: int = 200) -> tuple[int, Any]:
        return status, orjson.loads(value) if value else None


class FakeRequest:
    def __init__(self, path: str, forwarded: bool = False, query: dict[str, str] | None = None):
        self.path_qs = path
        self.headers = {FORWARDED: "1"} if forwarded else {}
        self.query = query or {}


class FakeConsumer:
    def __init__(self, partitions: list[int]) -> None:
        self.tps = [SimpleNamespace(topic=BUNDLES, partition=p) for p in partitions]

    def assignment(self) -> list[Any]:
        return self.tps

    def highwater(self, tp: Any) -> int:
        return 10


def make_api(mine: list[int], theirs: list[int], peer_answers: dict[str, Any]) -> HealthApi:
    settings = build_settings(environ={})
    runtime = EngineRuntime(settings, read_changelog=None)  # type: ignore[arg-type]
    engine = PartitionEngine(settings.engine, clock=lambda: 0.0)
    teams = [*healthy_teams(6), TeamSpec("quiet", 4, level=lambda d: 1.0 if d < 40 else 0.0)]
    for ev in stream(teams, days=60):
        engine.process(ev)
    for team in engine.teams.values():
        team.mrr = 100.0
    for p in mine:
        runtime.engines[p] = engine if p == mine[0] else PartitionEngine(settings.engine)
        runtime.bundle_offset[p] = 4
    app = SimpleNamespace(
        consumer=FakeConsumer(mine),
        rebalancing=False,
        rebalancing_count=2,
        monitor=SimpleNamespace(commit_latency=[0.02, 0.01, 0.5]),
        conf=SimpleNamespace(canonical_url=ME),
        router=SimpleNamespace(
            external_topics_metadata=lambda: {ME: {BUNDLES: mine}, PEER: {BUNDLES: theirs}}
        ),
    )
    ingest = SimpleNamespace(consumed=0, invalid=0, invalid_reasons={}, positions={})
    api = HealthApi(app, runtime, ingest, BUNDLES, lambda: True, CollectorRegistry())
    api.calls = []  # type: ignore[attr-defined]

    async def fetch(base: str, request: Any) -> tuple[int, bytes]:
        api.calls.append((base, request.path_qs))  # type: ignore[attr-defined]
        status, body = peer_answers.get(request.path_qs, (404, {"error": "not_found"}))
        return status, orjson.dumps(body)

    api._fetch = fetch  # type: ignore[method-assign]
    return api


def call(handler: Any, request: FakeRequest, *args: str) -> tuple[int, Any]:
    return asyncio.run(handler(FakeWeb(), request, *args))


def a_team_in(partition: int) -> str:
    return next(f"x{i}" for i in range(10_000) if partition_for(f"x{i}", 4) == partition)


def test_a_local_team_is_answered_here_and_an_unknown_one_in_our_partition_is_404():
    owned = partition_for("quiet", 4)
    api = make_api([owned], [p for p in range(4) if p != owned], {})
    status, body = call(api.team, FakeRequest("/teams/quiet"), "quiet")
    assert status == 200 and body["team_id"] == "quiet" and body["risk"]["score"] > 0
    assert body["state"] in ("cooling", "at_risk", "churned")
    assert set(body["features"]) == {"last_1d", "last_7d", "last_14d"}
    engine = api.runtime.engines[owned]
    quiet_users = [uid for uid, u in engine.users.items() if u.team_id == "quiet"]
    views = [call(api.user, FakeRequest(f"/users/{uid}"), uid) for uid in quiet_users]
    assert views and all(status == 200 for status, _ in views)
    assert any(v["risk"]["score"] > 0 and v["risk"]["reasons"] for _, v in views)
    missing = a_team_in(owned)
    assert call(api.team, FakeRequest(f"/teams/{missing}"), missing)[0] == 404
    assert api.calls == []  # type: ignore[attr-defined]


def test_a_team_of_another_worker_is_forwarded_to_its_owner_once():
    owned = partition_for("quiet", 4)
    theirs = [p for p in range(4) if p != owned]
    remote = a_team_in(theirs[0])
    api = make_api([owned], theirs, {f"/teams/{remote}": (200, {"team_id": remote})})
    assert call(api.team, FakeRequest(f"/teams/{remote}"), remote) == (200, {"team_id": remote})
    assert api.calls == [(PEER, f"/teams/{remote}")]  # type: ignore[attr-defined]
    # a forwarded request is answered from local state only: no second hop
    forwarded = FakeRequest(f"/teams/{remote}", forwarded=True)
    assert call(api.team, forwarded, remote)[0] == 404
    assert len(api.calls) == 1  # type: ignore[attr-defined]


def test_a_partition_without_owner_is_503_not_404():
    owned = partition_for("quiet", 4)
    orphan = next(p for p in range(4) if p != owned)
    api = make_api([owned], [], {})
    status, body = call(api.team, FakeRequest("/teams/t"), a_team_in(orphan))
    assert status == 503 and body["error"] == "unavailable"


@pytest.mark.parametrize(("peer_has_it", "expected"), [(True, 200), (False, 404)])
def test_users_are_looked_up_on_every_peer(peer_has_it, expected):
    answers = {"/users/u9": (200, {"user_id": "u9"})} if peer_has_it else {}
    api = make_api([0], [1, 2, 3], answers)
    status, body = call(api.user, FakeRequest("/users/u9"), "u9")
    assert status == expected and (body["user_id"] == "u9" if peer_has_it else body["error"])
    assert api.calls == [(PEER, "/users/u9")]  # type: ignore[attr-defined]


def test_at_risk_list_merges_the_peers_and_ranks_again():
    owned = partition_for("quiet", 4)
    peer_list = {"teams": [{"rank": 1, "team_id": "big", "state": "at_risk", "risk": 0.9,
                            "mrr": 9000.0, "plan": "pro"}]}  # fmt: skip
    api = make_api([owned], [p for p in range(4) if p != owned], {"/teams": (200, peer_list)})
    status, body = call(api.teams, FakeRequest("/teams", query={"limit": "5"}))
    assert status == 200
    assert [t["team_id"] for t in body["teams"]][:2] == ["big", "quiet"]
    assert [t["rank"] for t in body["teams"]] == list(range(1, len(body["teams"]) + 1))


def test_ready_only_when_every_assigned_partition_is_restored():
    api = make_api([0, 1], [2, 3], {})
    assert api.ready()
    del api.runtime.engines[1]
    assert not api.ready()
    status, body = call(api.readyz, FakeRequest("/readyz"))
    assert status == 503 and body["assigned"] == [0, 1] and body["restored"] == [0]
    assert [(lag.stage, lag.partition, lag.messages) for lag in api.lag()] == [("engine", 0, 5)]
    get = api.registry.get_sample_value
    assert get("churn_detector_rebalances_total") == 2
    assert get("churn_detector_commit_latency_seconds") == 0.02
    assert get("churn_detector_consumer_lag", {"stage": "engine", "partition": "0"}) == 5
