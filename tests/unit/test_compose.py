"""docker-compose.yml and Dockerfile agree with the code (no Docker needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from detector.settings import build_settings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"kafka", "detector", "simulator", "prometheus", "grafana"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as strings, from the mapping or the ``KEY=value`` list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def ports_of(service: dict[str, Any]) -> list[tuple[str, int]]:
    """Published ports as (host part, container port) from the short or long syntax."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append((str(port.get("published", "")), int(port["target"])))
        else:
            host, _, container = str(port).rpartition(":")
            out.append((host, int(container.split("/")[0])))
    return out


def mounts_of(service: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            out.append((str(volume.get("source", "")), str(volume["target"])))
        else:
            source, target = str(volume).split(":")[:2]
            out.append((source, target))
    return out


def norm(path: str) -> str:
    return path.rstrip("/")


def test_services_exist(compose):
    assert set(compose["services"]) >= SERVICES


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_detector_env_vars_are_valid_settings(compose, name):
    env = {k: v for k, v in env_of(compose["services"][name]).items() if k.startswith("DETECTOR_")}
    settings = build_settings(environ=env)  # unknown names or bad values raise SettingsError
    if name in {"detector", "simulator"}:
        assert settings.kafka.brokers == "kafka:9092"


def test_detector_service(compose):
    detector = compose["services"]["detector"]
    settings = build_settings(environ=env_of(detector))
    assert settings.service.web_host == "0.0.0.0"  # reachable from the other containers
    assert (settings.service.web_port, settings.service.state_dir) == (6066, "/data")
    assert settings.service.web_port in [container for _, container in ports_of(detector)]
    assert any(host.endswith(":6066") or host == "6066" for host, _ in ports_of(detector))
    assert "/data" in [norm(target) for _, target in mounts_of(detector)]
    assert detector["command"] in (["worker"], "worker")
    assert detector["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_simulator_feeds_kafka_once(compose):
    simulator = compose["services"]["simulator"]
    command = " ".join([*simulator.get("entrypoint", []), *simulator["command"]])
    assert "churn-detector simulate --out /tmp/e.jsonl" in command
    assert "churn-detector produce /tmp/e.jsonl" in command
    assert simulator.get("restart", "no") == "no"
    assert simulator["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_kafka_kraft_single_node(compose):
    kafka = compose["services"]["kafka"]
    assert kafka["image"] == "apache/kafka:3.9.1"
    env = env_of(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocol_map = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(listeners) | set(advertised) <= set(protocol_map)
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in listeners and controller not in advertised
    node, _, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert node == env["KAFKA_NODE_ID"] and voter == f"kafka:{listeners[controller].split(':')[-1]}"
    # the containers' address: advertised under the host name `kafka`, the one they dial
    brokers = build_settings(environ=env_of(compose["services"]["detector"])).kafka.brokers
    assert brokers in advertised.values()
    host, port = brokers.split(":")
    assert host == "kafka" and kafka.get("hostname", "kafka") == "kafka"
    assert any(bind.endswith(f":{port}") for bind in listeners.values())
    for name in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[name] == "1"
    # replay mirrors the topic: auto-created topics get engine.partitions partitions
    assert int(env["KAFKA_NUM_PARTITIONS"]) == build_settings(environ={}).engine.partitions
    assert "kafka:9092" in " ".join(kafka["healthcheck"]["test"])


def test_prometheus_and_grafana_mounts(compose):
    prometheus = mounts_of(compose["services"]["prometheus"])
    assert ("./deploy/prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml") in prometheus
    assert "./deploy/prometheus/rules" in [norm(source) for source, _ in prometheus]
    assert ("./deploy/prometheus/rules", "/etc/prometheus/rules") in [
        (norm(s), norm(t)) for s, t in prometheus
    ]
    grafana = {
        norm(source): norm(target) for source, target in mounts_of(compose["services"]["grafana"])
    }
    assert grafana.get("./deploy/grafana/provisioning") == "/etc/grafana/provisioning"
    assert "./deploy/grafana/dashboards" in grafana
    assert 9090 in [c for _, c in ports_of(compose["services"]["prometheus"])]
    assert 3000 in [c for _, c in ports_of(compose["services"]["grafana"])]


def test_published_ports_stay_on_loopback(compose):
    for name, service in compose["services"].items():
        for host, _ in ports_of(service):
            assert host.startswith("127.0.0.1:"), f"{name} publishes {host} on every interface"


def test_dockerfile_runs_the_cli():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert 'ENTRYPOINT ["churn-detector"]' in dockerfile
    assert 'CMD ["worker"]' in dockerfile
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".venv" in ignored and ".git" in ignored
    assert not {"detector", "pyproject.toml", "README.md"} & set(ignored)
