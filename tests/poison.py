"""A test-only engine fault: events whose id starts with ``poison-`` raise inside the engine.

Production code has no switch for this. Unit tests install it with ``monkeypatch``; the
integration test runs the real worker through ``python -m tests.poison worker ...``, which
installs the fault and then runs the ordinary CLI. The exception is raised where the engine
starts applying a valid event, before it changes any state, so a quarantined poison event
leaves no trace in the counts.
"""

from __future__ import annotations

import sys
from typing import Any

from detector.engine import PartitionEngine
from detector.events import EventFields, Invalid

PREFIX = "poison-"


class PoisonError(RuntimeError):
    """What the injected fault raises."""


_real_process = PartitionEngine.process


def poisoned_process(self: PartitionEngine, ev: EventFields) -> Invalid | None:
    if ev[0].startswith(PREFIX):  # event_id
        raise PoisonError(f"injected fault for {ev[0]}")
    return _real_process(self, ev)


def poison_copies(events: list[dict[str, Any]], every: int) -> list[dict[str, Any]]:
    """``events`` with a poison copy (new id, same content) after every ``every``-th event."""
    out: list[dict[str, Any]] = []
    for n, event in enumerate(events, 1):
        out.append(event)
        if n % every == 0:
            out.append({**event, "event_id": f"{PREFIX}{n}"})
    return out


if __name__ == "__main__":
    from detector.cli import main

    PartitionEngine.process = poisoned_process  # type: ignore[method-assign]
    sys.exit(main())
