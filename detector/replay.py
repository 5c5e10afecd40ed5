"""Replay/backfill: run the engine over a file of events, one engine per partition.

Lines are processed in file order, exactly as a Kafka topic keyed by team would deliver
them to each partition, so a replayed file and the same file streamed through Kafka give
the same alerts. Bad lines go to the dead-letter file with a reason; none is dropped.
Partitions are independent, so a file can be replayed by several processes (jobs), each
applying the lines of its partitions; their outputs, merged by input line, are the bytes
one process writes.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import multiprocessing
import multiprocessing.connection
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import IO, Any, NamedTuple

import orjson

from .codec import dumps_held
from .events import Invalid, parse_timestamp
from .router import PartitionedEngines
from .settings import EngineSettings


@dataclass
class ReplayResult:
    lines: int = 0
    valid: int = 0
    invalid: dict[str, int] = field(default_factory=dict)
    alerts: int = 0
    alerts_by_state: dict[str, int] = field(default_factory=dict)

    def count_alert(self, alert: dict[str, Any]) -> None:
        state = alert["data"]["state"]
        self.alerts_by_state[state] = self.alerts_by_state.get(state, 0) + 1
        self.alerts += 1

    @classmethod
    def merged(cls, parts: list[ReplayResult]) -> ReplayResult:
        """The counts of jobs that each read every line (and counted it) of one file.

        >>> a = ReplayResult(4, 2, {"late": 1}, 1, {"cooling": 1})
        >>> ReplayResult.merged([a, ReplayResult(4, 1, {"late": 1}, 0, {})])
        ReplayResult(lines=4, valid=3, invalid={'late': 2}, alerts=1, alerts_by_state={'cooling': 1})
        """
        total = cls(lines=parts[0].lines)
        for part in parts:
            total.valid += part.valid
            total.alerts += part.alerts
            for mine, theirs in (
                (total.invalid, part.invalid),
                (total.alerts_by_state, part.alerts_by_state),
            ):
                for key, n in theirs.items():
                    mine[key] = mine.get(key, 0) + n
        return total


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


#: bytes read from a JSONL file at once
READ_CHUNK = 1 << 23


def read_lines(path: Path, progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """Raw event lines of a JSONL file (or rows of a Parquet file, re-encoded as JSON).

    Blank lines are skipped; a line's trailing CR/LF is not part of it. JSONL is read in
    large chunks (a few bytes per line cheaper than iterating the file object).
    """
    if path.suffix == ".parquet":
        yield from _parquet_rows(path, progress)
        return
    with path.open("rb") as fh:
        tail = b""
        while chunk := fh.read(READ_CHUNK):
            if progress is not None:
                progress(len(chunk))
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            yield from _non_blank(lines)
        yield from _non_blank([tail])


def _non_blank(lines: list[bytes]) -> Iterator[bytes]:
    """The lines without trailing CR/LF that hold more than whitespace.

    >>> list(_non_blank([b"a\\r", b"", b" \\t", b"b"]))
    [b'a', b'b']
    """
    for line in lines:
        line = line.rstrip(b"\r\n")
        if line and not line.isspace():
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
        # held until the batch is applied: copied out of orjson's 4 KB output buffers
        rows = [dumps_held(_without_nulls(row)) for row in batch.to_pylist()]
        if progress is not None:
            progress(sum(map(len, rows)))
        yield from rows


def _without_nulls(row: dict[str, Any]) -> dict[str, Any]:
    """A Parquet row as the event it stands for: a struct column has every property any
    event has, null where this event has none, and null here means absent.

    >>> _without_nulls({"type": "trial.started", "properties": {"plan": "pro", "mrr": None}})
    {'type': 'trial.started', 'properties': {'plan': 'pro'}}
    """
    props = row.get("properties")
    if isinstance(props, dict):
        row["properties"] = {k: v for k, v in props.items() if v is not None}
    return row


#: lines handed to the engines at once (bounds the memory of a batch's alerts and rejections)
BATCH_LINES = 4096


def batches(lines: Iterable[bytes], size: int = BATCH_LINES) -> Iterator[list[bytes]]:
    """Consecutive lists of up to ``size`` lines.

    >>> [len(b) for b in batches([b"x"] * 5, 2)]
    [2, 2, 1]
    """
    it = iter(lines)
    while batch := list(itertools.islice(it, size)):
        yield batch


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
    for batch in batches(lines):
        rejected: list[tuple[int, Invalid]] = []
        alerts: list[dict[str, Any]] = []
        engines.process_lines(batch, rejected, alerts)
        for index, why in rejected:
            dlq_out.write(_dead_letter_line(batch[index], why, result.lines + index))
        for alert in alerts:
            alerts_out.write(dumps(alert) + b"\n")
            result.count_alert(alert)
        result.lines += len(batch)
    result.invalid = engines.invalid_counts()
    result.valid = engines.events_valid
    return result


def _dead_letter_line(raw: bytes, why: Invalid, index: int) -> bytes:
    """The dead-letter JSONL line of the ``index``-th (from 0) non-blank input line."""
    return orjson.dumps(dead_letter(raw, why, {"line": index + 1})) + b"\n"


def default_jobs(partitions: int) -> int:
    """Processes for a parallel replay: one per usable CPU, at most one per partition."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, partitions))


def replay_file(
    events: Path,
    alerts: Path,
    dlq: Path,
    settings: EngineSettings,
    show_progress: bool = True,
    jobs: int = 1,
) -> ReplayResult:
    """Replay a file in ``jobs`` processes (1: in this process); the same output for any."""
    alerts.parent.mkdir(parents=True, exist_ok=True)
    dlq.parent.mkdir(parents=True, exist_ok=True)
    jobs = max(1, min(jobs, settings.partitions))
    if jobs > 1:
        return _replay_in_jobs(events, alerts, dlq, settings, jobs, show_progress)
    with (
        _progress_bar(events, show_progress) as bar,
        alerts.open("wb") as alerts_fh,
        dlq.open("wb") as dlq_fh,
    ):
        result = replay(read_lines(events, bar.update), settings, alerts_fh, dlq_fh)
        bar.update(bar.total - bar.n)
    return result


def _progress_bar(events: Path, show: bool, desc: str = "replay") -> Any:
    from tqdm import tqdm

    size = events.stat().st_size
    return tqdm(total=size, unit="B", unit_scale=True, desc=desc, disable=not show)


# ---------------------------------------------------------------------------- event-time sort
# Exports are not always in time order (per user, per table, per day and shard). The engine
# takes events up to the allowed lateness behind the newest; older ones are dead letters. An
# external merge sort puts a file in event-time order first, in bounded memory.

SORT_RUN_BYTES = 64 << 20  # lines sorted in memory at a time (~3x this in Python objects)
SORT_FAN_IN = 256  # runs merged at once (open files)
UNREADABLE = -1  # the sort key of a line without a readable timestamp: first (a dead letter)


class SortResult(NamedTuple):
    lines: int
    #: the earliest and latest readable event times (epoch ms; None: none readable)
    first_ms: int | None
    last_ms: int | None


def event_time_key(line: bytes) -> int:
    """Epoch milliseconds of a line's ``timestamp`` (canonical and Segment alike).

    >>> event_time_key(b'{"timestamp": "2026-03-01T09:15:02.123Z"}')
    1772356502123
    >>> event_time_key(b'{"timestamp": 1772356502123}'), event_time_key(b"not json")
    (1772356502123, -1)
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return UNREADABLE
    ts = parse_timestamp(obj.get("timestamp")) if isinstance(obj, dict) else None
    return ts if isinstance(ts, int) else UNREADABLE


def sort_by_event_time(
    src: Path, dst: Path, show_progress: bool = False, run_bytes: int = SORT_RUN_BYTES
) -> SortResult:
    """Write ``src``'s lines to ``dst`` (JSONL) in event-time order.

    Stable: lines with the same time keep their file order, so a file already in order comes
    out byte for byte the same (blank lines and CR dropped). Lines without a readable
    timestamp come first; replay dead-letters them as before. Sorted runs of about
    ``run_bytes`` go to temporary files next to ``dst`` and are merged.
    """
    count, first, last = 0, None, None
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".sort-") as tmp:
        runs: list[Path] = []

        def write_run(chunk: list[bytes]) -> None:
            nonlocal first, last
            keyed = sorted(((event_time_key(line), line) for line in chunk), key=itemgetter(0))
            known = [key for key, _ in keyed if key != UNREADABLE]
            if known:
                first = known[0] if first is None else min(first, known[0])
                last = known[-1] if last is None else max(last, known[-1])
            runs.append(Path(tmp) / f"{len(runs)}.run")
            with runs[-1].open("wb") as fh:
                fh.writelines(b"%d%s%s\n" % (key, _TAG_END, line) for key, line in keyed)

        with _progress_bar(src, show_progress, desc="sort") as bar:
            chunk: list[bytes] = []
            size = 0
            for line in read_lines(src, bar.update):
                chunk.append(line)
                size += len(line)
                if size >= run_bytes:
                    write_run(chunk)
                    count += len(chunk)
                    chunk, size = [], 0
            if chunk:
                write_run(chunk)
                count += len(chunk)
            bar.update(bar.total - bar.n)
        while len(runs) > SORT_FAN_IN:  # merge in stages: a file per run stays open
            groups = [runs[i : i + SORT_FAN_IN] for i in range(0, len(runs), SORT_FAN_IN)]
            runs = []
            for group in groups:
                runs.append(Path(tmp) / f"merged-{len(runs)}-{group[0].name}")
                with runs[-1].open("wb") as out:
                    _merge_tagged(group, out, keep_tags=True)
        with dst.open("wb") as out:
            _merge_tagged(runs, out)
    return SortResult(count, first, last)


# ---------------------------------------------------------------------------- in parallel
# Each job (a process) reads the whole file, parses every line to find its team and applies
# the lines of its partitions (partition % jobs == job). Partitions are independent, as in
# Kafka, so a job's engines see exactly the events they see in one process. Each output line
# is tagged with the number of the input line that caused it; merging the jobs' outputs by
# that number restores the single-process order byte for byte.

_TAG_END = b"\t"


def _replay_in_jobs(
    events: Path, alerts: Path, dlq: Path, settings: EngineSettings, jobs: int, show: bool
) -> ReplayResult:
    # fork (POSIX): no re-import of the caller's __main__ (spawn's pitfall, and ~1 s); the
    # jobs start before the progress bar's thread exists and use no lock another thread holds
    ctx = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory(prefix=".replay-", dir=alerts.parent) as tmp:
        work = Path(tmp)
        read = [ctx.Value("q", 0, lock=False) for _ in range(jobs)]
        procs = [
            ctx.Process(
                target=_replay_job,
                args=(events, settings, job, jobs, work, read[job]),
                name=f"replay-job-{job}",
            )
            for job in range(jobs)
        ]
        try:
            for proc in procs:
                proc.start()
            with _progress_bar(events, show) as bar:
                running = procs
                while running and not any(p.exitcode for p in procs):  # a failed job: stop
                    multiprocessing.connection.wait([p.sentinel for p in running], 0.25)
                    running = [p for p in procs if p.exitcode is None]
                    bar.update(min(v.value for v in read) - bar.n)
        finally:
            for proc in procs:
                if proc.exitcode is None and proc.pid is not None:
                    proc.terminate()
                    proc.join()
        failed = [f"job {j}: exit code {p.exitcode}" for j, p in enumerate(procs) if p.exitcode]
        if failed:
            raise RuntimeError(f"parallel replay failed ({'; '.join(failed)}); see stderr")
        with alerts.open("wb") as out:
            _merge_tagged([work / f"alerts-{job}" for job in range(jobs)], out)
        with dlq.open("wb") as out:
            _merge_tagged([work / f"dlq-{job}" for job in range(jobs)], out)
        parts = [
            ReplayResult(**orjson.loads((work / f"result-{job}.json").read_bytes()))
            for job in range(jobs)
        ]
    return ReplayResult.merged(parts)


def _replay_job(
    events: Path, settings: EngineSettings, job: int, jobs: int, work: Path, read: Any
) -> None:
    """One job's share of the replay: tagged alerts and dead letters, and its counts."""

    def tick(n: int) -> None:
        read.value += n

    engines = PartitionedEngines(settings)
    result = ReplayResult()
    dumps = orjson.dumps
    with (
        (work / f"alerts-{job}").open("wb") as alerts_out,
        (work / f"dlq-{job}").open("wb") as dlq_out,
    ):
        for batch in batches(read_lines(events, tick)):
            rejected: list[tuple[int, Invalid]] = []
            alerts: list[tuple[int, dict[str, Any]]] = []
            first = result.lines
            engines.process_owned_lines(batch, first, job, jobs, rejected, alerts)
            for index, why in rejected:
                dead = _dead_letter_line(batch[index - first], why, index)
                dlq_out.write(b"%d%s%s" % (index, _TAG_END, dead))
            for index, alert in alerts:
                alerts_out.write(b"%d%s%s\n" % (index, _TAG_END, dumps(alert)))
                result.count_alert(alert)
            result.lines += len(batch)
    result.invalid = engines.invalid_counts()
    result.valid = engines.events_valid
    (work / f"result-{job}.json").write_bytes(orjson.dumps(result))


def _merge_tagged(parts: list[Path], out: IO[bytes], keep_tags: bool = False) -> None:
    """Merge tagged lines by tag (each part is in tag order; equal tags: earlier parts
    first), tags removed unless ``keep_tags``. Jobs' outputs are tagged by input line, sort
    runs by event time."""

    def untagged(fh: IO[bytes]) -> Iterator[tuple[int, bytes, bytes]]:
        for line in fh:
            tag, _, payload = line.partition(_TAG_END)
            yield int(tag), payload, line

    files = [part.open("rb") for part in parts]
    try:
        for _, payload, line in heapq.merge(*map(untagged, files), key=itemgetter(0)):
            out.write(line if keep_tags else payload)
    finally:
        for fh in files:
            fh.close()


__all__ = [
    "ReplayResult",
    "SortResult",
    "batches",
    "dead_letter",
    "default_jobs",
    "event_time_key",
    "read_lines",
    "replay",
    "replay_file",
    "sort_by_event_time",
]
