"""The worker's web pages: /metrics, /healthz, /readyz and the health query API.

``GET /teams/{id}`` and ``GET /users/{id}`` answer with the entity's current state as JSON
(see :mod:`detector.health_view`), ``GET /teams`` with the highest-priority cooling and
at-risk teams, and unknown ids get a 404 with a JSON error.

Several workers: each owns some partitions, and a request may arrive at any of them.

* A team lives in partition ``partition_for(team_id)``. The worker that does not hold it
  looks the partition's owner up in the Faust assignment (who holds that partition of the
  bundle topic, ``app.router.external_topics_metadata``) and forwards the request there.
* A user's team is not known to a worker that does not hold the user, so the request is
  sent to every peer at once and the one that holds the user answers (at most one does:
  a user lives in their team's partition). Cost: one request per worker, in parallel.
* Forwarded requests carry ``X-Churn-Detector-Forwarded``; a worker answers them from its
  own state only, so a request never travels more than one hop, even mid-rebalance.
* While no worker owns the partition (a rebalance), the answer is 503 with a JSON error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from .metrics import (
    FaustCollector,
    Lag,
    ServiceCollector,
    ServiceMetrics,
    register_engines,
    top_at_risk,
)
from .partitioning import partition_for

log = logging.getLogger("churn_detector.web")

FORWARDED = "X-Churn-Detector-Forwarded"
PEER_TIMEOUT_S = 5.0
MAX_LIST = 100


def _error(web: Any, status: int, error: str, message: str) -> Any:
    return web.json({"error": error, "message": message}, status=status)


class HealthApi:
    """The pages of one worker; the service hands it its runtime and ingest stage."""

    def __init__(
        self,
        app: Any,
        runtime: Any,
        ingest: Any,
        bundle_topic: str,
        recovered: Callable[[], bool],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.app, self.runtime, self.ingest = app, runtime, ingest
        self.bundle_topic = bundle_topic
        self.recovered = recovered
        self.partitions = runtime.settings.engine.partitions
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ServiceMetrics(self.registry)
        ProcessCollector(registry=self.registry)  # process_start_time_seconds, memory, CPU
        self.registry.register(FaustCollector(app))
        register_engines(self.registry, lambda: sorted(runtime.engines.items()), ingest)
        self.registry.register(
            ServiceCollector(self.lag, self.ready, self.assigned, runtime.state_bytes)
        )

    # ------------------------------------------------------------------ worker state
    def assigned(self) -> list[int]:
        assignment = self.app.consumer.assignment() if self.app.consumer else ()
        return sorted(tp.partition for tp in assignment if tp.topic == self.bundle_topic)

    def ingest_assigned(self) -> list[int]:
        """Source partitions the ingest stage reads (its own consumer group)."""
        consumer = getattr(self.ingest, "consumer", None)
        return sorted(tp.partition for tp in consumer.assignment()) if consumer else []

    def ready(self) -> bool:
        """Partitions assigned, rebalance over, and an engine restored for each of them."""
        if not self.recovered() or self.app.rebalancing:
            return False
        assigned = self.assigned()
        return bool(assigned) and all(p in self.runtime.engines for p in assigned)

    def lag(self) -> Iterator[Lag]:
        consumer = getattr(self.ingest, "consumer", None)
        if consumer is not None:
            for tp in list(consumer.assignment()):
                end = consumer.highwater(tp)
                if end is not None:
                    read = self.ingest.positions.get(tp.partition, 0)
                    yield Lag("ingest", tp.partition, end - read)
        if self.app.consumer is None:
            return
        for tp in self.app.consumer.assignment():
            if tp.topic != self.bundle_topic or tp.partition not in self.runtime.engines:
                continue
            try:
                end = self.app.consumer.highwater(tp)
            except Exception:  # not fetched yet
                continue
            if end is not None:
                applied = self.runtime.bundle_offset.get(tp.partition, -1)
                yield Lag("engine", tp.partition, end - applied - 1)

    def observe_bundle(self, appended_s: float, alerts: int) -> None:
        """A bundle (or tick) appended at ``appended_s`` has been applied (and its alerts sent)."""
        spent = time.time() - appended_s
        self.metrics.observe("state", spent)
        if alerts:
            self.metrics.observe("alert", spent)

    # ------------------------------------------------------------------ peers
    def _self_url(self) -> str:
        return str(self.app.conf.canonical_url).rstrip("/")

    def owner_of(self, partition: int) -> str | None:
        """Web address of the worker that holds ``partition`` (of the bundle topic)."""
        for url, topics in self.app.router.external_topics_metadata().items():
            if partition in topics.get(self.bundle_topic, ()):
                return str(url).rstrip("/")
        return None

    def peers(self) -> list[str]:
        me = self._self_url()
        return sorted(
            u
            for u in (str(x).rstrip("/") for x in self.app.router.external_topics_metadata())
            if u != me
        )

    async def _fetch(self, base: str, request: Any) -> tuple[int, bytes]:
        url = base + request.path_qs
        async with self.app.http_client.get(
            url, headers={FORWARDED: "1"}, timeout=PEER_TIMEOUT_S
        ) as resp:
            return resp.status, await resp.read()

    async def _ask_all(self, request: Any) -> list[tuple[int, bytes]]:
        peers = self.peers()
        results = await asyncio.gather(
            *(self._fetch(peer, request) for peer in peers), return_exceptions=True
        )
        out: list[tuple[int, bytes]] = []
        for peer, result in zip(peers, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("peer %s did not answer: %s", peer, result)
                out.append((503, b""))
            else:
                out.append(result)
        return out

    # ------------------------------------------------------------------ pages
    async def metrics_page(self, web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(self.registry), content_type="text/plain; version=0.0.4")

    async def healthz(self, web: Any, request: Any) -> Any:
        """Liveness: the process serves requests. Details help a human, not the probe."""
        engines = self.runtime.engines.values()
        applied = sum(e.stats.events_valid + sum(e.stats.invalid.values()) for e in engines)
        return web.json(
            {
                "status": "ok",
                "ready": self.ready(),
                "ingested": self.ingest.consumed,
                "ingest_invalid": self.ingest.invalid,
                "applied_since_start": applied,
                "partitions": sorted(self.runtime.engines),
                "assigned": self.assigned(),
                "ingest_assigned": self.ingest_assigned(),
            }
        )

    async def readyz(self, web: Any, request: Any) -> Any:
        ready = self.ready()
        body = {
            "ready": ready,
            "assigned": self.assigned(),
            "restored": sorted(self.runtime.engines),
        }
        return web.json(body, status=200 if ready else 503)

    async def team(self, web: Any, request: Any, team_id: str) -> Any:
        view = self.runtime.team_view(team_id)
        if view is not None:
            return web.json(view)
        if request.headers.get(FORWARDED):
            return _error(web, 404, "not_found", "no such team on this worker")
        owner = self.owner_of(partition_for(team_id, self.partitions))
        if owner is None:
            return _error(web, 503, "unavailable", "partition has no owner (rebalancing)")
        if owner == self._self_url():
            if not self.ready():
                return _error(web, 503, "unavailable", "state is being restored")
            return _error(web, 404, "not_found", f"no team {team_id!r}")
        try:
            status, body = await self._fetch(owner, request)
        except Exception as exc:
            return _error(web, 503, "unavailable", f"owner {owner} did not answer: {exc}")
        return web.bytes(body, content_type="application/json", status=status)

    async def user(self, web: Any, request: Any, user_id: str) -> Any:
        view = self.runtime.user_view(user_id)
        if view is not None:
            return web.json(view)
        if request.headers.get(FORWARDED):
            return _error(web, 404, "not_found", "no such user on this worker")
        answers = await self._ask_all(request)
        for status, body in answers:
            if status == 200:
                return web.bytes(body, content_type="application/json", status=200)
        if not self.ready() or any(status != 404 for status, _ in answers):
            return _error(web, 503, "unavailable", "not every worker could be asked")
        return _error(web, 404, "not_found", f"no user {user_id!r}")

    async def teams(self, web: Any, request: Any) -> Any:
        """The highest-priority cooling/at-risk teams over all workers (``?limit=``, ≤ 100)."""
        try:
            limit = max(1, min(MAX_LIST, int(request.query.get("limit", "20"))))
        except ValueError:
            return _error(web, 400, "bad_request", "limit must be an integer")
        found = [t._asdict() for t in top_at_risk(self.runtime.engines.values(), limit)]
        if not request.headers.get(FORWARDED):
            for status, body in await self._ask_all(request):
                if status == 200:
                    found.extend(orjson.loads(body)["teams"])
        found.sort(key=lambda t: (-t["risk"] * t["mrr"], -t["risk"], t["team_id"]))
        ranked = [{**t, "rank": i} for i, t in enumerate(found[:limit], 1)]
        return web.json({"teams": ranked})

    def install(self) -> None:
        """Register the pages on the Faust web server."""
        for path, handler in (
            ("/metrics", self.metrics_page),
            ("/healthz", self.healthz),
            ("/readyz", self.readyz),
            ("/teams", self.teams),
            ("/teams/{team_id}", self.team),
            ("/users/{user_id}", self.user),
        ):
            self.app.page(path)(_view(handler))


def _view(handler: Callable[..., Any]) -> Callable[..., Any]:
    """A plain function for Faust's page decorator (it becomes a View method, so no bound
    methods: ``web`` is the view, which has the response helpers)."""

    async def view(web: Any, request: Any, **match: str) -> Any:
        return await handler(web, request, **match)

    view.__name__ = view.__qualname__ = handler.__name__
    view.__doc__ = handler.__doc__
    return view


def install(
    app: Any,
    runtime: Any,
    ingest: Any,
    bundle_topic: str,
    recovered: Callable[[], bool],
) -> HealthApi:
    """Create the worker's pages and metrics; returns the api (for per-bundle observations)."""
    advertised = runtime.settings.service.web_advertised_url
    if advertised:  # read by Faust's assignor when the worker joins the group
        app.conf.canonical_url = advertised
    api = HealthApi(app, runtime, ingest, bundle_topic, recovered)
    api.install()
    ingest.metrics = api.metrics
    return api


__all__ = ["FORWARDED", "HealthApi", "install"]
