"""A test-only fault outside the per-event quarantine: a bundle raises after its events are in
the engine, as a bug in a sweep or a record encoder would.

Production code has no switch for this. The integration test runs the real worker through
``python -m tests.bundle_fault worker ...``, which installs the fault and then runs the
ordinary CLI. The engine then holds changes that no record describes; the worker must exit
(status 70) instead of letting Faust commit the bundle's offset.
"""

from __future__ import annotations

import sys
from typing import Any

from detector.service import EngineRuntime

#: the bundle (counted among those this process really applies) that raises
FAIL_AT = 3


class BundleFault(RuntimeError):
    """What the injected fault raises."""


_real_apply = EngineRuntime.apply
_applied = 0


def failing_apply(self: EngineRuntime, partition: int, offset: int, value: bytes) -> Any:
    global _applied
    before = self.bundle_offset.get(partition, -1)
    result = _real_apply(self, partition, offset, value)
    if before < offset and self.bundle_offset[partition] == offset:
        _applied += 1
        if _applied == FAIL_AT:
            raise BundleFault(f"injected fault after bundle {offset} of partition {partition}")
    return result


if __name__ == "__main__":
    from detector.cli import main

    EngineRuntime.apply = failing_apply  # type: ignore[method-assign]
    sys.exit(main())
