"""Secrets (Kafka password, pseudonymisation key) never reach a log line."""

from __future__ import annotations

import logging
from typing import Any

_SECRETS: set[str] = set()


def redact_in_logs(*secrets: str | None) -> None:
    """From now on, write each secret as ``***`` in every log record, whoever logs it.

    Some client libraries log their whole configuration at DEBUG (kafka-python's admin
    client does, password included). A log-record factory catches every logger, and every
    handler configured later (Faust replaces the handlers when the worker starts).
    """
    new = {s for s in secrets if s}
    if not new:
        return
    if not _SECRETS:  # first secret: install the factory (once)
        make_record = logging.getLogRecordFactory()

        def redacting(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make_record(*args, **kwargs)
            text = record.getMessage()
            if any(secret in text for secret in _SECRETS):
                for secret in _SECRETS:
                    text = text.replace(secret, "***")
                record.msg, record.args = text, None
            return record

        logging.setLogRecordFactory(redacting)
    _SECRETS.update(new)
