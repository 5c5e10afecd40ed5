from __future__ import annotations

import json

import pytest

from detector.settings import SettingsError, build_settings


def test_defaults_bind_to_loopback():
    s = build_settings(environ={})
    assert s.service.web_host == "127.0.0.1"
    assert s.engine.partitions == 4


def test_layers_file_then_env_then_overrides(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps({"engine": {"partitions": 2, "cooling_risk": 0.35}, "kafka": {"brokers": "b:1"}})
    )
    s = build_settings(
        environ={"DETECTOR_ENGINE_PARTITIONS": "3", "DETECTOR_CONFIG": str(cfg)},
        overrides={"engine": {"key_action_types": "a,b"}},
    )
    assert s.engine.partitions == 3 and s.engine.cooling_risk == 0.35 and s.kafka.brokers == "b:1"
    assert s.engine.key_action_types == ("a", "b")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DETECTOR_ENGINE_PARTITONS": "3"}, "unknown environment variable"),
        ({"DETECTOR_ENGINE_PARTITIONS": "many"}, "engine.partitions"),
        ({"DETECTOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "SASL needs"),
        ({"DETECTOR_KAFKA_SSL_CAFILE": "/nope/ca.pem"}, "does not exist"),
        ({"DETECTOR_ENGINE_COOLING_RISK": "0.9"}, "risk thresholds"),
        ({"DETECTOR_SERVICE_WEB_ADVERTISED_URL": "w1:6066"}, "web_advertised_url"),
        ({"DETECTOR_ENGINE_EVICT_AFTER_DAYS": "30"}, "evict_after_days must be 0"),
    ],
)
def test_bad_settings_fail_with_a_clear_message(env, message):
    with pytest.raises(SettingsError, match=message):
        build_settings(environ=env)


def test_password_is_not_in_repr():
    s = build_settings(environ={"DETECTOR_KAFKA_SASL_PASSWORD": "hunter2"})
    assert "hunter2" not in repr(s)


@pytest.mark.parametrize(
    ("value", "expected"), [("false", False), ("0", False), ("True", True), ("yes", True)]
)
def test_a_switch_reads_true_and_false_words_from_the_environment(value, expected):
    env = {"DETECTOR_SERVICE_STATE_SNAPSHOT": value}
    assert build_settings(environ=env).service.state_snapshot is expected


def test_a_switch_from_a_config_file_stays_a_bool_and_a_bad_word_fails(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"service": {"state_snapshot": False}}))
    assert build_settings(environ={}, config_file=config).service.state_snapshot is False
    with pytest.raises(SettingsError, match="state_snapshot"):
        build_settings(environ={"DETECTOR_SERVICE_STATE_SNAPSHOT": "maybe"})
