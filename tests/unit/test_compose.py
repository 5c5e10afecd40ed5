"""docker-compose.yml and Dockerfile agree with the code (no Docker needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

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


GRAFANA = ROOT / "deploy" / "grafana"
PROMETHEUS = ROOT / "deploy" / "prometheus"


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((GRAFANA / "dashboards" / "churn-detector.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def rule_expressions() -> list[str]:
    out = []
    for path in sorted((PROMETHEUS / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(rule["expr"] for rule in group["rules"])
    return out


def test_prometheus_scrapes_the_detector_and_loads_the_mounted_rules(compose):
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    port = build_settings(environ=env_of(compose["services"]["detector"])).service.web_port
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["churn-detector"]["static_configs"] for t in sc["targets"]]
    assert targets == [f"detector:{port}"]
    assert jobs["churn-detector"].get("metrics_path", "/metrics") == "/metrics"
    # rule_files are relative to the config file, which compose mounts next to rules/
    assert config["rule_files"] == ["rules/*.yml"]
    assert list((PROMETHEUS / "rules").glob("*.yml"))


def test_grafana_provisioning_points_at_prometheus_and_the_mounted_dashboards(compose):
    grafana = {norm(t): norm(s) for s, t in mounts_of(compose["services"]["grafana"])}
    datasource = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    prometheus_port = next(c for _, c in ports_of(compose["services"]["prometheus"]))
    assert datasource["url"] == f"http://prometheus:{prometheus_port}"
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "churn-detector.yml").read_text()
    )["providers"][0]
    assert grafana[norm(provider["options"]["path"])] == "./deploy/grafana/dashboards"
    dashboard = json.loads((GRAFANA / "dashboards" / "churn-detector.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], panel["title"]


def _exposed_names() -> set[str]:
    """Every sample name the worker can expose (its collectors on a registry of their own)."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    from detector.engine import PartitionEngine
    from detector.metrics import (
        FaustCollector,
        Lag,
        ServiceCollector,
        ServiceMetrics,
        register_engines,
    )
    from detector.settings import EngineSettings

    registry = CollectorRegistry()
    register_engines(registry, lambda: [(0, PartitionEngine(EngineSettings()))], _FakeIngest())
    registry.register(ServiceCollector(lambda: [Lag("engine", 0, 0)], lambda: True, list, int))
    ServiceMetrics(registry).observe("state", 1.0)
    ProcessCollector(registry=registry)
    registry.register(
        FaustCollector(
            SimpleNamespace(rebalancing_count=0, monitor=SimpleNamespace(commit_latency=[1.0]))
        )
    )
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    return {m.name + end for m in registry.collect() for end in suffixes.get(m.type, ("",))}


class _FakeIngest:
    consumed = 0
    invalid_reasons: ClassVar[dict[str, int]] = {"late": 1}


def test_every_metric_in_the_dashboard_and_the_rules_is_exposed_by_the_worker():
    exposed = _exposed_names()
    recorded = {
        rule["record"]
        for path in (PROMETHEUS / "rules").glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    names = {
        name
        for expr in dashboard_expressions() + rule_expressions()
        for name in re.findall(r"\b((?:churn_detector|process|job:churn_detector)[\w:]*)", expr)
    }
    assert names, "no metric names found"
    missing = sorted(n for n in names if n not in exposed and n not in recorded)
    assert not missing, f"used in dashboard/rules but never exposed: {missing}"
