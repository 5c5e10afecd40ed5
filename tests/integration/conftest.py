"""Fixtures for tests on a REAL local Kafka broker (no mocks, no in-memory broker).

The broker comes from ``CHURN_TEST_KAFKA_BOOTSTRAP`` (``make integration`` starts one with
deploy/kafka-local.sh and sets it). Without it the tests are skipped locally, but under CI
(``CI=true``) a missing broker is an error, and any skipped integration test makes the
session fail: CI must never go green on tests that did not run.

Every test works on its own randomly named topics and consumer groups, so tests can share
one broker (and run against a broker other people use) without seeing each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from detector.kafka_clients import KafkaUnavailableError, admin_client
from detector.settings import KafkaSettings, Settings, build_settings

BOOTSTRAP_ENV = "CHURN_TEST_KAFKA_BOOTSTRAP"
HOW_TO_RUN = (
    "run `make integration` or set CHURN_TEST_KAFKA_BOOTSTRAP=$(deploy/kafka-local.sh start)"
)
_HERE = Path(__file__).resolve().parent


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unique(prefix: str) -> str:
    """``<prefix>-<8 hex chars>``: a name no other test (or earlier run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap address of the real broker (skip locally / fail under CI when there is none)."""
    address = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if not address:
        message = f"no Kafka broker for integration tests: {HOW_TO_RUN}"
        if _in_ci():
            pytest.fail(f"CI=true and {BOOTSTRAP_ENV} is not set: {message}", pytrace=False)
        pytest.skip(message)
    try:
        admin_client(KafkaSettings(brokers=address), timeout_s=15).close()
    except KafkaUnavailableError as exc:
        pytest.fail(f"{BOOTSTRAP_ENV}={address} but the broker does not answer: {exc}")
    return address


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> Iterator[Any]:
    """A kafka-python ``KafkaAdminClient`` on the test broker (session-wide)."""
    admin = admin_client(KafkaSettings(brokers=kafka_bootstrap), timeout_s=15)
    yield admin
    admin.close()


def _delete_topics(admin: Any, names: list[str]) -> None:
    """Best effort: topics that were never created, or are already gone, are fine."""
    if not names:
        return
    try:
        admin.delete_topics(names, timeout_ms=10_000, raise_errors=False)
    except Exception as exc:  # pragma: no cover - teardown must not hide the test result
        print(f"warning: could not delete test topics {names}: {exc}")


@pytest.fixture
def topic_factory(kafka_admin: Any) -> Iterator[Callable[..., str]]:
    """``make(partitions=4) -> name``: creates a topic ``t-<uuid8>``, ready for use.

    The topics are deleted when the test ends (best effort).
    """
    created: list[str] = []

    def make(partitions: int = 4) -> str:
        name = unique("t")
        kafka_admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": -1}}, timeout_ms=15_000
        )
        created.append(name)
        kafka_admin.wait_for_topics([name], timeout_ms=15_000)
        return name

    yield make
    _delete_topics(kafka_admin, created)


@pytest.fixture
def group_id_factory() -> Callable[[], str]:
    """``make() -> 'g-<uuid8>'``: a consumer group id nobody else uses."""
    return lambda: unique("g")


@pytest.fixture
def kafka_settings_factory(
    kafka_bootstrap: str, kafka_admin: Any, tmp_path: Path
) -> Iterator[Callable[..., Settings]]:
    """``make(engine={...}, kafka={...}, service={...}) -> Settings`` on the test broker.

    Events, dead-letter and alerts topics get fresh random names (``t-<uuid8>``; they are
    created by whoever uses them first and deleted at teardown, with every topic named
    ``<app_id>-*``), the app id (the worker's consumer group and topic prefix) is random, and
    the state dir is a fresh folder under ``tmp_path``. Sections given as arguments override
    these.
    """
    topics: list[str] = []
    app_ids_used: list[str] = []
    count = 0

    def make(**sections: dict[str, Any]) -> Settings:
        nonlocal count
        count += 1
        names = {key: unique("t") for key in ("events_topic", "dlq_topic", "alerts_topic")}
        overrides: dict[str, dict[str, Any]] = {
            "kafka": {"brokers": kafka_bootstrap, **names},
            "service": {
                "app_id": unique("churn-detector-test"),
                "state_dir": str(tmp_path / f"state-{count}"),
            },
        }
        for section, values in sections.items():
            overrides.setdefault(section, {}).update(values)
        settings = build_settings(environ={}, overrides=overrides)
        k = settings.kafka
        app_ids_used.append(settings.service.app_id)
        topics.extend(t for t in (k.events_topic, k.dlq_topic, k.alerts_topic) if t not in topics)
        return settings

    yield make
    # plus what the worker derives from the app id (bundles, Faust changelog/repartition topics)
    app_ids = tuple(f"{app_id}-" for app_id in app_ids_used)
    try:
        derived = [t for t in kafka_admin.list_topics() if t.startswith(app_ids)] if app_ids else []
    except Exception:  # pragma: no cover - best effort
        derived = []
    _delete_topics(kafka_admin, topics + [t for t in derived if t not in topics])


# --------------------------------------------------------------------------- hooks


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything in tests/integration carries the ``integration`` marker (``-m integration``)."""
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


_SKIPPED: list[tuple[str, str]] = []


def _is_integration(nodeid: str) -> bool:
    return nodeid.replace("\\", "/").startswith("tests/integration")


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and _is_integration(report.nodeid) and not hasattr(report, "wasxfail"):
        _SKIPPED.append((report.nodeid, _skip_reason(report)))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped and _is_integration(report.nodeid):
        _SKIPPED.append((report.nodeid, _skip_reason(report)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI, a skipped integration test fails the session (it did not test anything)."""
    if _in_ci() and _SKIPPED and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _in_ci() and _SKIPPED:
        terminalreporter.section("integration tests skipped under CI=true", sep="=", red=True)
        for nodeid, reason in _SKIPPED:
            terminalreporter.line(f"SKIPPED {nodeid}: {reason}", red=True)
        terminalreporter.line(
            f"{len(_SKIPPED)} integration test(s) did not run; CI treats this as a failure. "
            + HOW_TO_RUN,
            red=True,
        )
