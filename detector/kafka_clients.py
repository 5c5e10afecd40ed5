"""Kafka client keyword arguments from :class:`~detector.settings.KafkaSettings`, and topics.

Two client libraries are in use: kafka-python (admin, the user tools' consumers) and aiokafka
(Faust and the fast producer). Both get their connection and security settings from here, so
PLAINTEXT / SSL / SASL_PLAINTEXT / SASL_SSL behave the same everywhere.

Passwords never appear in log lines or error messages: only the bootstrap address and the
security protocol do (see :func:`describe`).
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any

from .settings import KafkaSettings

log = logging.getLogger(__name__)

CLIENT_ID = "churn-detector"
_TLS_PROTOCOLS = {"SSL", "SASL_SSL"}
_SASL_PROTOCOLS = {"SASL_PLAINTEXT", "SASL_SSL"}


class KafkaUnavailableError(RuntimeError):
    """The broker cannot be reached (or refused an admin request); the message names it."""


def bootstrap_servers(k: KafkaSettings) -> list[str]:
    """The comma-separated ``brokers`` setting as a list.

    >>> bootstrap_servers(KafkaSettings(brokers=" a:9092, b:9093 ,"))
    ['a:9092', 'b:9093']
    """
    return [b.strip() for b in k.brokers.split(",") if b.strip()]


def describe(k: KafkaSettings) -> str:
    """Where and how we connect, safe to log (no credentials).

    >>> describe(KafkaSettings(brokers="k:9092"))
    'k:9092 (PLAINTEXT)'
    >>> describe(KafkaSettings(brokers="k:9093", security_protocol="SASL_SSL",
    ...     sasl_mechanism="PLAIN", sasl_username="bob", sasl_password="s3cret"))
    'k:9093 (SASL_SSL, PLAIN as bob)'
    """
    how = k.security_protocol
    if k.security_protocol in _SASL_PROTOCOLS:
        how += f", {k.sasl_mechanism} as {k.sasl_username}"
    return f"{','.join(bootstrap_servers(k))} ({how})"


def _sasl(k: KafkaSettings) -> dict[str, Any]:
    if k.security_protocol not in _SASL_PROTOCOLS:
        return {}
    # Both libraries name the credentials sasl_plain_* for PLAIN and SCRAM alike.
    return {
        "sasl_mechanism": k.sasl_mechanism,
        "sasl_plain_username": k.sasl_username,
        "sasl_plain_password": k.sasl_password,
    }


def _common(k: KafkaSettings) -> dict[str, Any]:
    """What kafka-python and aiokafka clients take alike: servers, client id, protocol, SASL."""
    return {
        "bootstrap_servers": bootstrap_servers(k),
        "client_id": CLIENT_ID,
        "security_protocol": k.security_protocol,
        **_sasl(k),
    }


def kafka_python_config(k: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for kafka-python clients (KafkaProducer/Consumer/AdminClient).

    >>> kafka_python_config(KafkaSettings(brokers="k:9092"))
    {'bootstrap_servers': ['k:9092'], 'client_id': 'churn-detector', 'security_protocol': 'PLAINTEXT'}
    """
    config = _common(k)
    if k.security_protocol in _TLS_PROTOCOLS:
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(k, name)
            if value:
                config[name] = value
    else:
        _warn_unused_tls(k)
    return config


def aiokafka_config(k: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for aiokafka clients (and Faust's broker credentials).

    TLS becomes an :class:`ssl.SSLContext` built by ``aiokafka.helpers.create_ssl_context``
    (system CAs when no ``ssl_cafile`` is set).

    >>> aiokafka_config(KafkaSettings(brokers="k:9092"))
    {'bootstrap_servers': ['k:9092'], 'client_id': 'churn-detector', 'security_protocol': 'PLAINTEXT'}
    >>> aiokafka_config(KafkaSettings(security_protocol="SSL"))["ssl_context"].verify_mode
    <VerifyMode.CERT_REQUIRED: 2>
    """
    config = _common(k)
    if k.security_protocol in _TLS_PROTOCOLS:
        config["ssl_context"] = ssl_context(k)
    else:
        _warn_unused_tls(k)
    return config


def ssl_context(k: KafkaSettings) -> ssl.SSLContext:
    """The TLS context for ``k`` (CA, client certificate and key files as configured)."""
    from aiokafka.helpers import create_ssl_context

    return create_ssl_context(cafile=k.ssl_cafile, certfile=k.ssl_certfile, keyfile=k.ssl_keyfile)


def _warn_unused_tls(k: KafkaSettings) -> None:
    if k.ssl_cafile or k.ssl_certfile or k.ssl_keyfile:
        log.warning(
            "kafka.ssl_* files are set but kafka.security_protocol is %s; they are not used",
            k.security_protocol,
        )


def admin_client(k: KafkaSettings, timeout_s: float = 30) -> Any:
    """A connected kafka-python ``KafkaAdminClient``; :class:`KafkaUnavailableError` if none."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    timeout_ms = max(1, int(timeout_s * 1000))
    try:
        return KafkaAdminClient(
            **kafka_python_config(k),
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
        )
    except KafkaError as exc:
        raise KafkaUnavailableError(
            f"cannot reach Kafka at {describe(k)} within {timeout_s:g}s "
            f"({type(exc).__name__}); is the broker running? "
            "(locally: BOOTSTRAP=$(deploy/kafka-local.sh start), then DETECTOR_KAFKA_BROKERS=$BOOTSTRAP)"
        ) from None


def _partition_counts(admin: Any, names: list[str]) -> dict[str, int]:
    """Partition count of each existing topic among ``names`` (missing topics are left out)."""
    counts: dict[str, int] = {}
    for topic in admin.describe_topics(names):
        name = topic.get("name", topic.get("topic"))
        if topic.get("error_code", 0) == 0 and topic.get("partitions"):
            counts[name] = len(topic["partitions"])
    return counts


def ensure_topics(
    k: KafkaSettings, topics: dict[str, int], timeout_s: float = 30
) -> dict[str, int]:
    """Create each topic of ``topics`` (name → partitions) that does not exist yet.

    Existing topics are left alone, whatever their partition count. Returns the actual
    partition count of every topic, once every partition has a leader. Raises
    :class:`KafkaUnavailableError` naming the bootstrap address if the broker is unreachable.
    """
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    if not topics:
        return {}
    deadline = time.monotonic() + timeout_s
    names = list(topics)
    admin = admin_client(k, timeout_s)
    try:
        existing = _partition_counts(admin, names)
        missing = {name: n for name, n in topics.items() if name not in existing}
        if missing:
            result = admin.create_topics(
                {
                    name: {"num_partitions": n, "replication_factor": -1}
                    for name, n in missing.items()
                },
                timeout_ms=max(1, int(timeout_s * 1000)),
                raise_errors=False,
            )
            for topic in result.get("topics", []):
                code = topic.get("error_code", 0)
                if code in (0, TopicAlreadyExistsError.errno):  # lost a race: fine
                    continue
                raise KafkaUnavailableError(
                    f"cannot create topic {topic.get('name')!r} on {describe(k)}: "
                    f"error {code} {topic.get('error_message') or ''}".rstrip()
                )
            for name, n in missing.items():
                log.info("created topic %s with %d partitions", name, n)
        remaining_ms = max(1000, int((deadline - time.monotonic()) * 1000))
        admin.wait_for_topics(names, timeout_ms=remaining_ms)
        counts = _partition_counts(admin, names)
    except KafkaUnavailableError:
        raise
    except KafkaError as exc:
        raise KafkaUnavailableError(
            f"Kafka at {describe(k)} did not get topics {names} ready within {timeout_s:g}s: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    finally:
        admin.close()
    return {name: counts[name] for name in names}
