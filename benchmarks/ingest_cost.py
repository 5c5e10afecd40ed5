"""Per-event cost of the ingest path without Kafka: decode + validate (``decode_fields``),
and a bundle's encode (ingest) and decode (engine), in CPU microseconds per event.

Input: the first ``--events`` lines of the worker benchmark's cached file (simulated if
absent). Each figure is the median of ``--reps`` passes (process CPU time, so less
sensitive to other load than wall time); compare before/after in one run of each.

    .venv/bin/python -m benchmarks.ingest_cost --events 200000 --reps 5
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable

from detector.bundles import MAX_ITEMS, Columns, decode_bundle
from detector.events import Invalid, decode_fields

from .worker_quick import events_file


def _columns(lines: list[bytes]) -> Columns:
    columns = Columns()
    for offset, raw in enumerate(lines):
        fields = decode_fields(raw)
        if isinstance(fields, Invalid):
            continue
        columns.sources.append(0)
        columns.offsets.append(offset)
        columns.raws.append(raw)
        columns.events.append(fields)
    return columns


def _per_event_us(work: Callable[[], int], reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.process_time()
        events = work()
        times.append((time.process_time() - started) / events * 1e6)
    return round(statistics.median(times), 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--teams", type=int, default=300)
    parser.add_argument("--days", type=int, default=180)
    args = parser.parse_args()
    path, _ = events_file(args.teams, args.days, seed=7)
    with path.open("rb") as f:
        lines = [line.rstrip(b"\n") for line in itertools.islice(f, args.events)]
    for raw in lines[:10_000]:
        decode_fields(raw)  # warm the caches of known types and names, as a running worker has
    bundles = [
        _columns(lines[start : start + MAX_ITEMS // 2])  # ~ a batch's share of one partition
        for start in range(0, len(lines), MAX_ITEMS // 2)
    ]
    encoded = [data for columns in bundles for data in columns.encoded()]

    def decode_all() -> int:
        for raw in lines:
            decode_fields(raw)
        return len(lines)

    def encode_all() -> int:
        for columns in bundles:
            for _ in columns.encoded():
                pass
        return len(lines)

    def decode_bundles() -> int:
        for data in encoded:
            decode_bundle(data)
        return len(lines)

    print(
        json.dumps(
            {
                "events": len(lines),
                "decode_fields_us": _per_event_us(decode_all, args.reps),
                "bundle_encode_us": _per_event_us(encode_all, args.reps),
                "bundle_decode_us": _per_event_us(decode_bundles, args.reps),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
