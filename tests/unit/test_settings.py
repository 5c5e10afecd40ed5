from __future__ import annotations

import io
import json

import orjson
import pytest

from detector.settings import MIN_EVICT_AFTER_DAYS, SettingsError, build_settings


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
        # checked before the sweep interval divides the day (was a ZeroDivisionError)
        ({"DETECTOR_ENGINE_SWEEP_INTERVAL_S": "0"}, "sweep_interval_s must be >= 60"),
        ({"DETECTOR_ENGINE_SWEEP_INTERVAL_S": "3601"}, "sweep_interval_s must divide a day"),
        # every sweep raised, and the events of the batch were dead-lettered
        ({"DETECTOR_ENGINE_RISK_SNAPSHOT_DAYS": "0"}, "risk_snapshot_days must be >= 1, got 0"),
        ({"DETECTOR_ENGINE_SHARP_DROP_DAYS": "0"}, "sharp_drop_days must be >= 1"),
        ({"DETECTOR_ENGINE_RISK_MIN_LABELS": "0"}, "risk_min_labels must be >= 1"),
        ({"DETECTOR_ENGINE_RECOVERY_DAYS": "0"}, "recovery_days must be >= 1"),
        ({"DETECTOR_ENGINE_USER_MIN_SILENCE_DAYS": "-1"}, "user_min_silence_days must be >= 1"),
        ({"DETECTOR_ENGINE_MAX_FUTURE_SKEW_S": "-1"}, "max_future_skew_s must be >= 0"),
        # windows longer than the history a team keeps read only part of it, silently
        ({"DETECTOR_ENGINE_RECENT_WINDOW_DAYS": "10"}, "recent_window_days must be <= 8"),
        ({"DETECTOR_ENGINE_SHARP_DROP_DAYS": "17"}, "sharp_drop_days must be <= 16"),
        ({"DETECTOR_ENGINE_DECAY_ALPHA": "1"}, "decay_alpha must be in"),
        ({"DETECTOR_ENGINE_TRACKING_GAP_RATIO": "2"}, "tracking_gap_ratio must be in"),
        ({"DETECTOR_ENGINE_RISK_LABEL_MIN_DAYS": "40"}, "must be <= engine.risk_horizon_days"),
        (
            {
                "DETECTOR_ENGINE_CHURN_SILENCE_DAYS": "120",
                "DETECTOR_ENGINE_EVICT_AFTER_DAYS": "100",
            },
            "longer than engine.churn_silence_days",
        ),
        ({"DETECTOR_SERVICE_IDLE_SWEEP_S": "0"}, "idle_sweep_s must be > 0"),
        ({"DETECTOR_SERVICE_IDLE_CLOCK_SCALE": "-1"}, "idle_clock_scale must be > 0"),
        # 'nan' failed no comparison it was not put through
        ({"DETECTOR_SERVICE_IDLE_CLOCK_SCALE": "nan"}, "idle_clock_scale: cannot use 'nan'"),
        ({"DETECTOR_ENGINE_SHORT_FIRST_SESSION_S": "inf"}, "short_first_session_s: cannot use"),
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


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        ({"recent_window_days": 7.5}, "recent_window_days: cannot use 7.5"),  # was read as 7
        ({"partitions": float("inf")}, "partitions: cannot use inf"),  # was an OverflowError
    ],
)
def test_a_config_file_number_that_is_no_integer_fails(tmp_path, engine, message):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"engine": engine}))  # Infinity: Python's json reads it
    with pytest.raises(SettingsError, match=message):
        build_settings(environ={}, config_file=config)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        # were an AttributeError, or str() of the value used as the setting
        ({"engine": [1]}, "engine must be an object of settings, got \\[1\\]"),
        ({"kafka": "b:1"}, "kafka must be an object of settings"),
        ({"kafka": {"brokers": ["a:1", "b:2"]}}, "kafka.brokers: cannot use .* a string"),
        ({"service": {"web_host": None}}, "service.web_host: cannot use None"),
        ({"service": {"app_id": 5}}, "service.app_id: cannot use 5"),
        ({"engine": {"key_action_types": ["a", 1]}}, "key_action_types: cannot use"),
        ({"engine": {"key_action_types": {"a": 1}}}, "key_action_types: cannot use"),
        # true was 1.0
        ({"engine": {"cooling_risk": True}}, "engine.cooling_risk: cannot use True"),
        ({"service": {"log_level": "verbose"}}, "service.log_level must be one of"),
    ],
)
def test_a_config_value_of_the_wrong_kind_fails_naming_the_setting(tmp_path, config, message):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    with pytest.raises(SettingsError, match=message):
        build_settings(environ={}, config_file=path)


def test_values_of_the_right_kind_still_load(tmp_path):
    path = tmp_path / "c.json"
    config = {
        "engine": {"key_action_types": ["a", "b"], "cooling_risk": 0.3, "partitions": 2.0},
        "service": {"user_id_key_file": None, "web_port": "6067", "log_level": "debug"},
    }
    path.write_text(json.dumps(config))
    s = build_settings(environ={}, config_file=path)
    assert s.engine.key_action_types == ("a", "b") and s.engine.partitions == 2
    assert s.service.web_port == 6067 and s.service.log_level == "debug"


def test_a_log_level_no_logger_knows_fails_before_the_worker_starts():
    """It failed inside the worker, after the settings were accepted."""
    with pytest.raises(SettingsError, match=r"service.log_level must be one of .* 'verbose'"):
        build_settings(environ={"DETECTOR_SERVICE_LOG_LEVEL": "verbose"})
    assert build_settings(environ={"DETECTOR_SERVICE_LOG_LEVEL": "Warning"}).service


@pytest.mark.parametrize("level", ["warn", "WARN", "fatal", "Fatal"])
def test_the_other_names_logging_and_faust_know_are_accepted(level: str) -> None:
    """warn and fatal were refused though logging and the Faust worker take them."""
    settings = build_settings(environ={"DETECTOR_SERVICE_LOG_LEVEL": level})
    assert settings.service.log_level == level


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"kafka": {"brokers": "\xff"}}', "is not UTF-8 text"),  # was a UnicodeDecodeError
        (None, "is not a file"),  # a folder: was an IsADirectoryError
    ],
)
def test_a_config_file_that_cannot_be_read_fails_in_one_message(tmp_path, content, message):
    path = tmp_path / "c.json"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(SettingsError, match=message):
        build_settings(environ={"DETECTOR_CONFIG": str(path)})


def test_the_engine_runs_at_the_limits_the_settings_allow():
    """The bounds are the engine's: at each of them, days close and teams are scored."""
    from detector.replay import replay
    from detector.simulator import SimulationConfig, simulate

    limits = {
        "recent_window_days": 8,
        "sharp_drop_days": 16,
        "risk_snapshot_days": 1,
        "risk_min_labels": 1,
        "sweep_interval_s": 60,
        "min_history_days": 0,
        "recovery_days": 1,
        "user_min_silence_days": 1,
        "evict_after_days": MIN_EVICT_AFTER_DAYS,
    }
    settings = build_settings(environ={}, overrides={"engine": limits}).engine
    sim = simulate(SimulationConfig(teams=6, days=40, seed=2))
    alerts, dead = io.BytesIO(), io.BytesIO()
    result = replay((orjson.dumps(e) for e in sim.events()), settings, alerts, dead)
    assert result.valid == result.lines and result.alerts > 0, result
