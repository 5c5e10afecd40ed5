"""The worker on a SASL_SSL listener (SCRAM-SHA-512 over TLS) of a real broker.

The test starts its own broker with ``KAFKA_SASL_SSL=1 deploy/kafka-local.sh start`` (a
throw-away CA, a broker certificate and a SCRAM user with a random password), runs the
worker with the credentials from environment variables only, and checks that alerts flow
and that the password never shows up in anything the worker prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from detector.kafka_tools import produce_file
from detector.pseudonyms import Pseudonyms
from detector.settings import build_settings

from .conftest import unique
from .test_worker import (
    QUIET,
    all_teams_complete,
    committed_alert_ids,
    free_port,
    make_events,
    read_topic,
    replay_expectation,
    wait_until,
)

pytestmark = pytest.mark.integration

USER_ID_KEY = "pseudonym-key-for-the-security-test"

REPO = Path(__file__).resolve().parents[2]
KAFKA_LOCAL = REPO / "deploy" / "kafka-local.sh"


@pytest.fixture(scope="module")
def secure_broker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A second broker with PLAINTEXT and SASL_SSL listeners; its client settings."""
    env = {
        **os.environ,
        "KAFKA_SASL_SSL": "1",
        "KAFKA_LOCAL_DATA": str(tmp_path_factory.mktemp("sasl-broker")),
    }
    env.pop("KAFKA_PORT", None)
    started = subprocess.run(
        [str(KAFKA_LOCAL), "start"], env=env, capture_output=True, text=True, timeout=180
    )
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        plaintext = started.stdout.strip()
        info_path = subprocess.run(
            [str(KAFKA_LOCAL), "security"], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        info = json.loads(Path(info_path).read_text())
        password = Path(info["password_file"]).read_text().strip()
        assert password not in started.stdout + started.stderr, "the script printed the password"
        yield {**info, "plaintext": plaintext, "password": password}
    finally:
        subprocess.run([str(KAFKA_LOCAL), "stop"], env=env, capture_output=True, timeout=120)


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                if len(address) == 8:
                    found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
                else:
                    found.add("::" if int(address, 16) == 0 else address)
    return found


def secure_environment(broker: dict[str, Any], extra: dict[str, str]) -> dict[str, str]:
    """The worker's connection settings, as an operator would give them: environment only."""
    return {
        "DETECTOR_KAFKA_BROKERS": broker["bootstrap"],
        "DETECTOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "DETECTOR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "DETECTOR_KAFKA_SASL_USERNAME": broker["username"],
        "DETECTOR_KAFKA_SASL_PASSWORD": broker["password"],
        "DETECTOR_KAFKA_SSL_CAFILE": broker["cafile"],
        **extra,
    }


def test_worker_on_sasl_ssl_publishes_pseudonymous_alerts_and_never_prints_secrets(
    secure_broker, tmp_path
):
    names = {f"DETECTOR_KAFKA_{t}_TOPIC": unique("t") for t in ("EVENTS", "DLQ", "ALERTS")}
    port = free_port()
    environ = secure_environment(
        secure_broker,
        {
            **names,
            "DETECTOR_SERVICE_APP_ID": unique("churn-detector-sec"),
            "DETECTOR_SERVICE_STATE_DIR": str(tmp_path / "state"),
            "DETECTOR_SERVICE_WEB_PORT": str(port),
            "DETECTOR_SERVICE_IDLE_SWEEP_S": str(QUIET["idle_sweep_s"]),
            "DETECTOR_SERVICE_LOG_LEVEL": "DEBUG",  # the most talkative the worker gets
            "DETECTOR_SERVICE_USER_ID_KEY": USER_ID_KEY,
        },
    )
    settings = build_settings(environ=environ)
    events = tmp_path / "events.jsonl"
    expected = make_events(events, teams=6, days=50, seed=17)
    replay_expectation(events, settings, tmp_path)
    replayed = [
        orjson.loads(line) for line in (tmp_path / "replay-alerts.jsonl").read_bytes().splitlines()
    ]
    user_ids = {a["data"]["entity_id"] for a in replayed if a["data"]["entity_type"] == "user"}
    assert user_ids, "the scenario must raise user alerts, or the test shows nothing"
    # what the worker must publish: the replay's alerts with pseudonymous user ids
    alert_ids = {Pseudonyms(USER_ID_KEY.encode()).alert(a)["id"] for a in replayed}
    produce_file(events, settings, progress=False)  # over SASL_SSL too

    log = tmp_path / "worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")} | environ
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "detector.cli", "worker"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        from .test_worker import Worker

        worker = Worker.__new__(Worker)  # only its HTTP helpers, on our process and port
        worker.proc, worker.port, worker.log = proc, port, log
        wait_until(worker.health, 120, "the SASL_SSL worker to answer /healthz")
        assert listening_addresses(port) == {"127.0.0.1"}, "web and /metrics: loopback only"
        wait_until(all_teams_complete([worker], expected), 180, "every event applied")
        # read back over the broker's PLAINTEXT listener: what was published, not how
        plain = settings.__class__(
            engine=settings.engine,
            kafka=settings.kafka.__class__(
                brokers=secure_broker["plaintext"], alerts_topic=settings.kafka.alerts_topic
            ),
            service=settings.service,
        )
        published = committed_alert_ids(plain, alert_ids)
        assert set(published) == alert_ids
        raw = b"".join(
            orjson.dumps(a) for a in read_topic(plain.kafka.brokers, plain.kafka.alerts_topic)
        )
        assert not [uid for uid in user_ids if f'"{uid}"'.encode() in raw], "a real user id leaked"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    output = log.read_bytes()
    assert b"SASL_SSL" in output or b"sasl" in output.lower(), "the log shows how it connected"
    assert secure_broker["password"].encode() not in output
    assert USER_ID_KEY.encode() not in output
