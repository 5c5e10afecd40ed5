"""One frozen settings object, built once at the entry point.

Nothing below the entry point reads the environment: the CLI builds :class:`Settings`
from defaults, an optional JSON config file and ``DETECTOR_*`` environment variables, and
passes the pieces down.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .state import RING_DAYS


class SettingsError(ValueError):
    """A setting is missing or invalid; the message says which and why."""


@dataclass(frozen=True)
class EngineSettings:
    """Detection thresholds and time model. Defaults are meant to work unchanged."""

    #: events older than (max event time seen - lateness) go to the DLQ as ``late``
    allowed_lateness_s: int = 2 * 3600
    #: events further ahead of the partition's time than this go to the DLQ (unless several
    #: teams confirm the jump); in live mode the wall clock bounds time much tighter
    max_future_skew_s: int = 90 * 24 * 3600
    #: live mode: events stamped more than this after the wall clock go to the DLQ
    live_clock_skew_s: int = 300
    #: distinct teams that must confirm a jump in time before the watermark follows it
    future_jump_confirmations: int = 3
    #: event-time interval between sweeps (day close and silence detection)
    sweep_interval_s: int = 3600
    max_event_bytes: int = 65_536
    #: event types that mean "the product delivered its value"
    key_action_types: tuple[str, ...] = ("document.published",)
    #: days of history before an entity is judged against its own baseline
    min_history_days: int = 14
    #: window compared with the baseline, in days (a whole week neutralises weekdays)
    recent_window_days: int = 7
    #: baseline learning rate per day (exponential moving average)
    baseline_alpha: float = 1.0 / 42.0
    #: risk at which an entity starts cooling / becomes at risk / counts as recovered
    cooling_risk: float = 0.40
    at_risk_risk: float = 0.60
    recovered_risk: float = 0.25
    #: consecutive scored days needed to escalate to at_risk, and to recover
    at_risk_days: int = 2
    #: a risk below this (evidence just over at_risk_risk, e.g. one signal at its at-risk
    #: level) must last at_risk_days_moderate days: such spikes were mostly short dips
    at_risk_strong_risk: float = 0.70
    at_risk_days_moderate: int = 3
    recovery_days: int = 5
    #: after a recovery, no new cooling alert for this many days
    cooldown_days: int = 7
    #: an entity silent this long (population-adjusted days) is considered churned
    churn_silence_days: int = 45
    #: significance level for "activity is lower than the baseline by chance"
    decay_alpha: float = 0.01
    #: sharp drop: the last this-many days against the team's usual for those weekdays; it
    #: answers a sudden drop days before a weekly average does
    sharp_drop_days: int = 3
    #: significance level of a sharp drop (stricter than decay_alpha: a few days are noisy)
    sharp_drop_alpha: float = 0.001
    #: a population day below this share of its baseline is a tracking gap, not churn
    tracking_gap_ratio: float = 0.5
    #: minimum days of population history before population normalisation applies
    population_min_days: int = 7
    #: onboarding window for early-life red flags
    onboarding_days: int = 10
    short_first_session_s: float = 120.0
    #: online risk model: a team's features are kept every this many days; a snapshot taken
    #: risk_label_min_days..risk_horizon_days before a cancellation is a positive, one whose
    #: team is still there risk_horizon_days later a negative
    risk_snapshot_days: int = 7
    risk_label_min_days: int = 7
    risk_horizon_days: int = 28
    #: the model's risk is shown on alerts once it has learned this many labels of each class
    risk_min_labels: int = 20
    #: users: a user silent for max(this, 4x their usual gap) days is decaying
    user_min_silence_days: int = 10
    #: a user with no activity and a team with no event of any kind for this many days are
    #: dropped from the state (and their changelog records deleted) at the next weekly
    #: clean-up; one that comes back starts over as new. 0: keep every entity forever
    evict_after_days: int = 365
    #: partitions used by replay and the demo (mirror the Kafka topic)
    partitions: int = 4


@dataclass(frozen=True)
class KafkaSettings:
    brokers: str = "127.0.0.1:9092"
    events_topic: str = "usage-events"
    dlq_topic: str = "usage-events-dlq"
    alerts_topic: str = "churn-alerts"
    #: the producers key every event by its team id (as ``churn-detector produce`` does):
    #: ingest then routes each keyed message by its key without parsing it, and the engine
    #: validates it (parsed once instead of twice); an event whose team is not the key's is
    #: dead-lettered as ``misrouted``. Off: ingest parses every event to find its team.
    events_keyed_by_team: bool = False
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None


@dataclass(frozen=True)
class ServiceSettings:
    app_id: str = "churn-detector"
    state_dir: str = ".state"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    #: how the other workers reach this one's web server (the health API forwards requests
    #: for keys another worker owns); empty: http://<web_host>:<web_port>, which must then
    #: be reachable from the peers (not 0.0.0.0)
    web_advertised_url: str = ""
    batch_size: int = 5000
    #: read by nothing since the ingest loop changed; accepted so older config files load
    batch_timeout_s: float = 0.2
    #: a partition without new events for this long lets its clock run by the idle time (time
    #: during which ingest could not read its source does not count)
    idle_sweep_s: float = 5.0
    #: event-time milliseconds per idle wall-clock millisecond (1 in production; tests and
    #: demos of live silence detection speed the clock up)
    idle_clock_scale: float = 1.0
    log_level: str = "INFO"
    #: keep a local RocksDB snapshot of each owned partition's state changelog under
    #: state_dir, so a restart reads only the changelog written after it
    state_snapshot: bool = True
    #: pseudonymise user ids in alerts and the health API with HMAC-SHA256 under this key
    #: (DETECTOR_SERVICE_USER_ID_KEY), or under the key in this file; never logged
    user_id_key: str | None = field(default=None, repr=False)
    user_id_key_file: str | None = None
    #: TEST ONLY, never set in production (DETECTOR_SERVICE_FAULT_KILL_AFTER_RECORDS): the
    #: worker SIGKILLs itself in the middle of a bundle's state records, after the n-th state
    #: record sent into a transaction (detector/changelog.py); 0 = off
    fault_kill_after_records: int = 0


@dataclass(frozen=True)
class Settings:
    engine: EngineSettings = field(default_factory=EngineSettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)


#: service.log_level: the names both logging and the Faust worker know (WARN and FATAL
#: are logging's other names of WARNING and CRITICAL)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL", "FATAL")

_SECTIONS = {"engine": EngineSettings, "kafka": KafkaSettings, "service": ServiceSettings}
_PROTOCOLS = {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}
_MECHANISMS = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}


def _coerce(section: str, name: str, target: Any, value: Any) -> Any:
    where = f"{section}.{name}"
    kind = str(target)
    try:
        if kind.startswith("tuple"):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TypeError  # a list of strings, or one string of comma-separated ones
            return tuple(value)
        if isinstance(value, (dict, list)):  # never str() of a JSON object or array
            raise TypeError
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError  # 7.5 days is not 7; true is not 1
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError  # true is not 1.0
            number = float(value)
            if not math.isfinite(number):  # 'nan' passes no range check and fails none
                raise ValueError
            return number
        if kind == "bool":
            if isinstance(value, bool):
                return value
            return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[
                str(value).strip().lower()
            ]
        if kind == "str | None" and value in (None, ""):
            return None
        if not isinstance(value, str):  # null, a number or a switch where text belongs
            raise TypeError
        return value
    except (TypeError, ValueError, KeyError, OverflowError):
        expected = {
            "str": "a string",
            "str | None": "a string or null",
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
        }.get(kind, kind)
        if kind.startswith("tuple"):
            expected = "a list of strings or a comma-separated string"
        raise SettingsError(f"{where}: cannot use {value!r} (expected {expected})") from None


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``DETECTOR_<SECTION>_<NAME>`` → {section: {name: value}}; unknown names are errors."""
    out: dict[str, dict[str, str]] = {}
    for key, value in environ.items():
        if not key.startswith("DETECTOR_") or key == "DETECTOR_CONFIG":
            continue
        rest = key[len("DETECTOR_") :].lower()
        section, _, name = rest.partition("_")
        cls = _SECTIONS.get(section)
        if cls is None or name not in {f.name for f in fields(cls)}:
            raise SettingsError(
                f"unknown environment variable {key}; expected DETECTOR_<ENGINE|KAFKA|SERVICE>_<NAME>"
            )
        out.setdefault(section, {})[name] = value
    return out


def build_settings(
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Defaults < config file (JSON) < environment < explicit overrides (CLI flags)."""
    environ = os.environ if environ is None else environ
    layers: list[Mapping[str, Mapping[str, Any]]] = []
    config_file = config_file or environ.get("DETECTOR_CONFIG")
    if config_file:
        path = Path(config_file)
        try:
            loaded = json.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise SettingsError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise SettingsError(f"config file {path} is not a file") from None
        except OSError as exc:
            raise SettingsError(f"config file {path} cannot be read: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise SettingsError(f"config file {path} is not UTF-8 text: {exc}") from None
        except json.JSONDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict) or set(loaded) - set(_SECTIONS):
            raise SettingsError(
                f"config file {path}: top level must be an object with {sorted(_SECTIONS)}"
            )
        for section, given in loaded.items():
            if not isinstance(given, dict):
                raise SettingsError(
                    f"config file {path}: {section} must be an object of settings, got {given!r}"
                )
        layers.append(loaded)
    layers.append(_env_overrides(environ))
    if overrides:
        layers.append(overrides)

    sections: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for layer in layers:
            for name, value in (layer.get(section) or {}).items():
                if name not in types:
                    raise SettingsError(f"unknown setting {section}.{name}")
                values[name] = _coerce(section, name, types[name], value)
        sections[section] = cls(**values)
    settings = Settings(**sections)
    validate(settings)
    return settings


#: longer than every window an entity is judged on (baselines, churn silence, risk labels)
MIN_EVICT_AFTER_DAYS = 90


#: engine settings that count days, events or labels, used as divisors, moduli, windows or
#: the days a state must last: 0 divides by zero, reads an empty window or skips the wait
_ENGINE_AT_LEAST_ONE = (
    "partitions",
    "future_jump_confirmations",
    "max_event_bytes",
    "recent_window_days",
    "at_risk_days",
    "at_risk_days_moderate",
    "recovery_days",
    "churn_silence_days",
    "sharp_drop_days",
    "risk_snapshot_days",
    "risk_horizon_days",
    "risk_min_labels",
    "user_min_silence_days",
)
#: engine settings where 0 means none (no lateness, no grace, no wait)
_ENGINE_AT_LEAST_ZERO = (
    "allowed_lateness_s",
    "max_future_skew_s",
    "live_clock_skew_s",
    "min_history_days",
    "cooldown_days",
    "population_min_days",
    "onboarding_days",
    "short_first_session_s",
    "risk_label_min_days",
)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SettingsError(message)


def validate(settings: Settings) -> None:
    """The first invalid setting raises. The checks run one after another, so a check that
    divides by a setting or reads a window of it runs only once that setting passed."""
    e, k, s = settings.engine, settings.kafka, settings.service
    for name in _ENGINE_AT_LEAST_ONE:
        _require(getattr(e, name) >= 1, f"engine.{name} must be >= 1, got {getattr(e, name)}")
    for name in _ENGINE_AT_LEAST_ZERO:
        _require(getattr(e, name) >= 0, f"engine.{name} must be >= 0, got {getattr(e, name)}")
    _require(e.sweep_interval_s >= 60, "engine.sweep_interval_s must be >= 60")
    _require(86400 % e.sweep_interval_s == 0, "engine.sweep_interval_s must divide a day")
    _require(
        0 < e.recovered_risk < e.cooling_risk < e.at_risk_risk < 1,
        "risk thresholds must satisfy 0 < recovered < cooling < at_risk < 1",
    )
    # a team keeps RING_DAYS days of history; a longer window silently reads only those
    _require(
        2 * e.recent_window_days <= RING_DAYS,
        f"engine.recent_window_days must be <= {RING_DAYS // 2}: windows of it and of twice "
        f"it are read from the {RING_DAYS} days of history a team keeps",
    )
    _require(
        e.sharp_drop_days <= RING_DAYS,
        f"engine.sharp_drop_days must be <= {RING_DAYS}, the days of history a team keeps",
    )
    for name in ("baseline_alpha", "decay_alpha", "sharp_drop_alpha"):
        _require(0 < getattr(e, name) < 1, f"engine.{name} must be in (0, 1)")
    _require(0 <= e.tracking_gap_ratio <= 1, "engine.tracking_gap_ratio must be in [0, 1]")
    _require(
        e.risk_label_min_days <= e.risk_horizon_days,
        "engine.risk_label_min_days must be <= engine.risk_horizon_days (else no snapshot "
        "is ever a positive label)",
    )
    _require(
        e.evict_after_days == 0 or e.evict_after_days >= MIN_EVICT_AFTER_DAYS,
        f"engine.evict_after_days must be 0 (never) or >= {MIN_EVICT_AFTER_DAYS}",
    )
    _require(
        e.evict_after_days == 0
        or e.evict_after_days > max(e.churn_silence_days, e.risk_horizon_days),
        "engine.evict_after_days must be 0 (never) or longer than engine.churn_silence_days "
        "and engine.risk_horizon_days (else a silent entity is dropped before it is judged)",
    )
    _require(
        k.security_protocol in _PROTOCOLS,
        f"kafka.security_protocol must be one of {sorted(_PROTOCOLS)}",
    )
    _require(
        k.sasl_mechanism is None or k.sasl_mechanism in _MECHANISMS,
        f"kafka.sasl_mechanism must be one of {sorted(_MECHANISMS)}",
    )
    _require(
        not k.security_protocol.startswith("SASL")
        or bool(k.sasl_mechanism and k.sasl_username and k.sasl_password),
        "SASL needs kafka.sasl_mechanism, kafka.sasl_username and kafka.sasl_password",
    )
    _require(0 < s.web_port < 65536, "service.web_port must be a valid TCP port (1..65535)")
    _require(s.batch_size >= 1, "service.batch_size must be >= 1")
    _require(
        s.log_level.upper() in LOG_LEVELS,
        f"service.log_level must be one of {', '.join(LOG_LEVELS)} (any case), got {s.log_level!r}",
    )
    # the idle timer's interval, and the factor of idle time on the event-time clock
    _require(s.idle_sweep_s > 0, "service.idle_sweep_s must be > 0")
    _require(s.idle_clock_scale > 0, "service.idle_clock_scale must be > 0")
    _require(s.fault_kill_after_records >= 0, "service.fault_kill_after_records must be >= 0")
    _require(
        not s.web_advertised_url or s.web_advertised_url.startswith(("http://", "https://")),
        "service.web_advertised_url must be an http:// or https:// URL",
    )
    _require(
        not (s.user_id_key and s.user_id_key_file),
        "set service.user_id_key or service.user_id_key_file, not both",
    )
    _require(
        s.user_id_key is None or len(s.user_id_key) >= 16,
        "service.user_id_key must have at least 16 characters",
    )
    for path_name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(k, path_name)
        if value and not Path(value).is_file():
            raise SettingsError(f"kafka.{path_name}: file {value} does not exist")
    if s.user_id_key_file:
        key_file = Path(s.user_id_key_file)
        if not key_file.is_file() or len(key_file.read_bytes().strip()) < 16:
            raise SettingsError(
                f"service.user_id_key_file: {key_file} must exist and hold at least 16 bytes"
            )


def replace_engine(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, engine=dataclasses.replace(settings.engine, **changes))
