from __future__ import annotations

import logging

from detector.kafka_clients import describe, kafka_python_config
from detector.redaction import redact_in_logs
from detector.settings import KafkaSettings

SECRET = "pa55-w0rd-only-in-this-test"


def test_a_client_configuration_logged_at_debug_shows_no_password(caplog):
    k = KafkaSettings(
        brokers="k:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="detector",
        sasl_password=SECRET,
    )
    redact_in_logs(k.sasl_password)
    with caplog.at_level(logging.DEBUG):
        # what kafka-python's admin client does at DEBUG
        logging.getLogger("kafka.admin.client").debug("config: %s", kafka_python_config(k))
        logging.getLogger("elsewhere").warning(f"formatted early: {SECRET}")
    assert len(caplog.records) == 2
    assert SECRET not in caplog.text
    assert "'sasl_plain_password': '***'" in caplog.text
    assert SECRET not in describe(k) and SECRET not in repr(k)
