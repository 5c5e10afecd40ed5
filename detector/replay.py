"""Replay/backfill: run the engine over a file of events, one engine per partition.

Lines are processed in file order, exactly as a Kafka topic keyed by team would deliver
them to each partition, so a replayed file and the same file streamed through Kafka give
the same alerts. Bad lines go to the dead-letter file with a reason; none is dropped.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from .events import Invalid
from .quarantine import process_or_quarantine
from .router import PartitionedEngines
from .settings import EngineSettings


@dataclass
class ReplayResult:
    lines: int = 0
    valid: int = 0
    invalid: dict[str, int] = field(default_factory=dict)
    alerts: int = 0
    alerts_by_state: dict[str, int] = field(default_factory=dict)


def dead_letter(raw: bytes, invalid: Invalid, source: dict[str, Any]) -> dict[str, Any]:
    """A dead-letter record: the original bytes, the reason and where it came from.

    >>> dead_letter(b"{", Invalid("malformed_json", "x"), {"line": 3})["raw"]
    '{'
    """
    record: dict[str, Any] = {"reason": invalid.reason, "detail": invalid.detail, **source}
    try:
        record["raw"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        record["raw_base64"] = base64.b64encode(raw).decode("ascii")
    return record


def read_lines(path: Path, progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """Raw event lines of a JSONL file (or rows of a Parquet file, re-encoded as JSON)."""
    if path.suffix == ".parquet":
        yield from _parquet_rows(path, progress)
        return
    with path.open("rb") as fh:
        for line in fh:
            if progress is not None:
                progress(len(line))
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield line


def _parquet_rows(path: Path, progress: Callable[[int], None] | None) -> Iterator[bytes]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise SystemExit(
            "reading Parquet needs pyarrow: pip install 'churn-detector[parquet]'"
        ) from exc
    table = pq.ParquetFile(path)
    for batch in table.iter_batches(batch_size=50_000):
        for row in batch.to_pylist():
            data = orjson.dumps(row)
            if progress is not None:
                progress(len(data))
            yield data


def replay(
    lines: Iterable[bytes],
    settings: EngineSettings,
    alerts_out: IO[bytes],
    dlq_out: IO[bytes],
    engines: PartitionedEngines | None = None,
) -> ReplayResult:
    """Process ``lines`` and write alerts and dead letters as JSONL."""
    engines = engines or PartitionedEngines(settings)
    result = ReplayResult()
    dumps = orjson.dumps
    for number, raw in enumerate(lines, 1):
        rejected = process_or_quarantine(engines.process_raw, raw, engines.decode_invalid)
        if rejected is not None:
            dlq_out.write(dumps(dead_letter(raw, rejected, {"line": number})) + b"\n")
        else:
            for engine in engines.engines:
                if engine.outbox:
                    for alert in engine.drain_alerts():
                        alerts_out.write(dumps(alert) + b"\n")
                        state = alert["data"]["state"]
                        result.alerts_by_state[state] = result.alerts_by_state.get(state, 0) + 1
                        result.alerts += 1
        result.lines = number
    result.invalid = engines.invalid_counts()
    result.valid = engines.events_valid
    return result


def replay_file(
    events: Path, alerts: Path, dlq: Path, settings: EngineSettings, show_progress: bool = True
) -> ReplayResult:
    from tqdm import tqdm

    size = events.stat().st_size
    alerts.parent.mkdir(parents=True, exist_ok=True)
    dlq.parent.mkdir(parents=True, exist_ok=True)
    with (
        tqdm(
            total=size, unit="B", unit_scale=True, desc="replay", disable=not show_progress
        ) as bar,
        alerts.open("wb") as alerts_fh,
        dlq.open("wb") as dlq_fh,
    ):

        def tick(n: int, _acc: list[int] = [0]) -> None:  # noqa: B006 - batch the bar updates
            _acc[0] += n
            if _acc[0] >= 1 << 20:
                bar.update(_acc[0])
                _acc[0] = 0

        result = replay(read_lines(events, tick), settings, alerts_fh, dlq_fh)
        bar.update(size - bar.n)
    return result


__all__ = ["ReplayResult", "dead_letter", "read_lines", "replay", "replay_file"]
