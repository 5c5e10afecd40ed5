"""Quarantine: an event whose processing raises is dead-lettered, not retried forever.

A bug that makes one input raise inside the engine (a "poison message") must not stop the
partition: in the worker an exception escaping the agent would stall the partition or
crash the worker, and after a restart the same bundle would be applied again and raise
again. Replay (``PartitionedEngines.process_lines``) and the worker's apply loop both catch
an exception around ``PartitionEngine.process`` and turn it into :func:`quarantined`, so
they agree on what is quarantined. Effects of the event up to the point where it raised stay
in the state (the engine does not roll back); the same happens in replay and in the stream.
"""

from __future__ import annotations

import logging
import traceback

from .events import Invalid

log = logging.getLogger("churn_detector")

PROCESSING_ERROR = "processing_error"


def quarantined(exc: Exception, counts: dict[str, int]) -> Invalid:
    """The dead-letter reason for an event whose processing raised ``exc``.

    ``counts`` (a reason → count dict) gets the quarantined event, so the dead-letter
    counter moves. The dead letter's detail is the exception class and message; the log
    line has the class and where it was raised, not the message (it may quote input).

    >>> counts = {}
    >>> try:
    ...     1 // 0
    ... except ZeroDivisionError as exc:
    ...     quarantined(exc, counts)
    Invalid(reason='processing_error', detail='ZeroDivisionError: integer division or modulo by zero')
    >>> counts
    {'processing_error': 1}
    """
    counts[PROCESSING_ERROR] = counts.get(PROCESSING_ERROR, 0) + 1
    where = traceback.extract_tb(exc.__traceback__)[-1]
    log.warning(
        "event quarantined: processing raised %s at %s:%s",
        type(exc).__name__,
        where.filename,
        where.lineno,
    )
    return Invalid(PROCESSING_ERROR, f"{type(exc).__name__}: {exc}"[:500])
