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
import contextlib
import hashlib
import heapq
import itertools
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
import threading
import time
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


#: original bytes up to this many (the largest event valid by default) stay whole in a dead
#: letter; of more, a dead letter over DEAD_LETTER_MAX_BYTES keeps only the first this many
DEAD_LETTER_PREFIX_BYTES = EngineSettings.max_event_bytes
#: the prefix escaped six times over (each byte a control character, ``\\u0001``): with the
#: other fields a record stays under 400 KB, well under a producer's request (1,000,000
#: bytes in aiokafka and Faust), even in the engine's transaction
DEAD_LETTER_MAX_BYTES = 6 * DEAD_LETTER_PREFIX_BYTES


def dead_letter(raw: bytes, invalid: Invalid, source: dict[str, Any]) -> dict[str, Any]:
    """A dead-letter record: the original bytes, the reason and where it came from.

    A record over :data:`DEAD_LETTER_MAX_BYTES` keeps a prefix of the bytes with their size
    and SHA-256: a 900 KB message of ``"`` made a 1.8 MB dead letter, the producer refused
    it, and the worker crashed on the same message after every restart.

    >>> dead_letter(b"{", Invalid("malformed_json", "x"), {"line": 3})["raw"]
    '{'
    >>> cut = dead_letter(b"\\xff" * 900_000, Invalid("oversized", "x"), {"line": 3})
    >>> len(cut["raw_base64"]), cut["raw_truncated"], cut["raw_bytes"], cut["raw_sha256"][:8]
    (87384, True, 900000, 'bc7fe371')
    """
    record: dict[str, Any] = {"reason": invalid.reason, "detail": invalid.detail, **source}
    try:
        record["raw"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        record["raw_base64"] = base64.b64encode(raw).decode("ascii")
    if len(raw) > DEAD_LETTER_PREFIX_BYTES and len(orjson.dumps(record)) > DEAD_LETTER_MAX_BYTES:
        prefix = raw[:DEAD_LETTER_PREFIX_BYTES]
        if "raw" in record:  # text stays text: a character cut at the end is left out
            record["raw"] = prefix.decode("utf-8", "ignore")
        else:
            record["raw_base64"] = base64.b64encode(prefix).decode("ascii")
        record["raw_truncated"] = True
        record["raw_bytes"] = len(raw)
        record["raw_sha256"] = hashlib.sha256(raw).hexdigest()
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


_NUMBER_BYTES = 8  # a line number in the numbers a sort writes


class LineNumbers:
    """The number of the ``index``-th line replayed (from 0) in the file the user has: index + 1,
    or, for a sorted copy, the number its :func:`sort_by_event_time` wrote for it (8 bytes a
    line in ``path``), so a dead letter points at the line in the original file. The numbers
    are read only for dead letters: no memory per line.

    >>> LineNumbers(None)(0)
    1
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fh: IO[bytes] | None = None

    def __call__(self, index: int) -> int:
        if self.path is None:
            return index + 1
        if self._fh is None:
            self._fh = self.path.open("rb")
        self._fh.seek(_NUMBER_BYTES * index)
        return int.from_bytes(self._fh.read(_NUMBER_BYTES), "little")

    def __enter__(self) -> LineNumbers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def replay(
    lines: Iterable[bytes],
    settings: EngineSettings,
    alerts_out: IO[bytes],
    dlq_out: IO[bytes],
    engines: PartitionedEngines | None = None,
    line_number: Callable[[int], int] | None = None,
) -> ReplayResult:
    """Process ``lines`` and write alerts and dead letters (numbered by ``line_number``,
    by default from 1 in the order read)."""
    engines = engines or PartitionedEngines(settings)
    line_number = line_number or LineNumbers(None)
    result = ReplayResult()
    dumps = orjson.dumps
    for batch in batches(lines):
        rejected: list[tuple[int, Invalid]] = []
        alerts: list[dict[str, Any]] = []
        engines.process_lines(batch, rejected, alerts)
        for index, why in rejected:
            dlq_out.write(_dead_letter_line(batch[index], why, line_number(result.lines + index)))
        for alert in alerts:
            alerts_out.write(dumps(alert) + b"\n")
            result.count_alert(alert)
        result.lines += len(batch)
    result.invalid = engines.invalid_counts()
    result.valid = engines.events_valid
    return result


def _dead_letter_line(raw: bytes, why: Invalid, line: int) -> bytes:
    """The dead-letter JSONL line of non-blank input line number ``line`` (from 1)."""
    return orjson.dumps(dead_letter(raw, why, {"line": line})) + b"\n"


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
    line_numbers: Path | None = None,
) -> ReplayResult:
    """Replay a file in ``jobs`` processes (1: in this process); the same output for any.

    ``line_numbers``: ``events`` is a sorted copy, and these are its lines' numbers in the
    original (see :func:`sort_by_event_time`), for the dead letters.
    """
    alerts.parent.mkdir(parents=True, exist_ok=True)
    dlq.parent.mkdir(parents=True, exist_ok=True)
    jobs = max(1, min(jobs, settings.partitions))
    if jobs > 1:
        return _replay_in_jobs(events, alerts, dlq, settings, jobs, show_progress, line_numbers)
    with (
        _progress_bar(events, show_progress) as bar,
        alerts.open("wb") as alerts_fh,
        dlq.open("wb") as dlq_fh,
        LineNumbers(line_numbers) as number,
    ):
        result = replay(read_lines(events, bar.update), settings, alerts_fh, dlq_fh, None, number)
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
    src: Path,
    dst: Path,
    show_progress: bool = False,
    run_bytes: int = SORT_RUN_BYTES,
    line_numbers: Path | None = None,
) -> SortResult:
    """Write ``src``'s lines to ``dst`` (JSONL) in event-time order.

    Stable: lines with the same time keep their file order, so a file already in order comes
    out byte for byte the same (blank lines and CR dropped). Lines without a readable
    timestamp come first; replay dead-letters them as before. Sorted runs of about
    ``run_bytes`` go to temporary files next to ``dst`` and are merged. ``line_numbers``
    receives each sorted line's number in ``src`` (non-blank lines from 1, as dead letters
    count them; 8 bytes a line, read by :class:`LineNumbers`).
    """
    count, first, last = 0, None, None
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=work_dir_prefix("sort")) as tmp:
        runs: list[Path] = []

        def write_run(chunk: list[bytes]) -> None:
            nonlocal first, last
            keyed = sorted(
                ((event_time_key(line), n, line) for n, line in enumerate(chunk, count + 1)),
                key=itemgetter(0),
            )
            known = [key for key, _, _ in keyed if key != UNREADABLE]
            if known:
                first = known[0] if first is None else min(first, known[0])
                last = known[-1] if last is None else max(last, known[-1])
            runs.append(Path(tmp) / f"{len(runs)}.run")
            with runs[-1].open("wb") as fh:
                fh.writelines(
                    b"%d%s%d%s%s\n" % (key, _TAG_END, n, _TAG_END, line) for key, n, line in keyed
                )

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
                    out.writelines(line for _, line in _merged(group))
        with dst.open("wb") as out, contextlib.ExitStack() as stack:
            numbers = stack.enter_context(line_numbers.open("wb")) if line_numbers else None
            for payload, _ in _merged(runs):
                number, _, line = payload.partition(_TAG_END)
                out.write(line)
                if numbers is not None:
                    numbers.write(int(number).to_bytes(_NUMBER_BYTES, "little"))
    return SortResult(count, first, last)


def work_dir_prefix(kind: str) -> str:
    """The name a temporary work directory starts with: the process id in it lets a later
    replay remove what a killed one left (:func:`remove_abandoned_work`).

    >>> work_dir_prefix("sort") == f".sort-{os.getpid()}-"
    True
    """
    return f".{kind}-{os.getpid()}-"


#: a work directory with nothing written for this long, whose process is gone, was abandoned
ABANDONED_AFTER_S = 3600


def remove_abandoned_work(directory: Path, now: float | None = None) -> list[Path]:
    """Remove the work directories of replays and sorts killed before they could: their
    process is gone and nothing in them was written for :data:`ABANDONED_AFTER_S` (a
    replay on another host or in another container sharing the folder has a process id
    this machine does not know). Returns them; a directory without a process id in its
    name is left."""
    now = time.time() if now is None else now
    removed = []
    for path in sorted(directory.glob(".*-*-*")):
        kind, _, rest = path.name[1:].partition("-")
        pid = rest.partition("-")[0]
        if (
            kind in ("replay", "sort")
            and pid.isdigit()
            and path.is_dir()
            and not _alive(int(pid))
            and now - _last_written(path) >= ABANDONED_AFTER_S
        ):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _last_written(path: Path) -> float:
    """The newest modification time of a directory and everything in it."""
    times = [path.stat().st_mtime]
    for inner in path.rglob("*"):
        with contextlib.suppress(OSError):  # removed meanwhile
            times.append(inner.stat().st_mtime)
    return max(times)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# ---------------------------------------------------------------------------- in parallel
# Each job (a process) reads the whole file, parses every line to find its team and applies
# the lines of its partitions (partition % jobs == job). Partitions are independent, as in
# Kafka, so a job's engines see exactly the events they see in one process. Each output line
# is tagged with the number of the input line that caused it; merging the jobs' outputs by
# that number restores the single-process order byte for byte.

_TAG_END = b"\t"


class _StopState:
    deferring = False
    pending = 0  # a stop signal that came while deferring


_STOP = _StopState()


def _on_stop_signal(signum: int, frame: Any) -> None:
    if _STOP.deferring:
        _STOP.pending = signum
        return
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """SIGTERM (``kill``, a stopped container) exits through Python, as Ctrl-C does, so the
    work files are removed; the default handler ends the process on the spot. Only the main
    thread may set handlers: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _on_stop_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def _stop_deferred() -> Iterator[None]:
    """Hold a SIGTERM back until the block is done: raised inside a fork, the exit could be
    lost or leave a job the parent does not know of running."""
    _STOP.deferring, _STOP.pending = True, 0
    try:
        yield
    finally:
        _STOP.deferring = False
        if _STOP.pending:
            raise SystemExit(128 + _STOP.pending)


def _replay_in_jobs(
    events: Path,
    alerts: Path,
    dlq: Path,
    settings: EngineSettings,
    jobs: int,
    show: bool,
    line_numbers: Path | None,
) -> ReplayResult:
    # fork (POSIX): no re-import of the caller's __main__ (spawn's pitfall, and ~1 s); the
    # jobs start before the progress bar's thread exists and use no lock another thread holds
    ctx = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory(prefix=work_dir_prefix("replay"), dir=alerts.parent) as tmp:
        work = Path(tmp)
        read = [ctx.Value("q", 0, lock=False) for _ in range(jobs)]
        procs = [
            ctx.Process(
                target=_replay_job,
                args=(events, settings, job, jobs, work, read[job], line_numbers),
                name=f"replay-job-{job}",
            )
            for job in range(jobs)
        ]
        try:
            with _stop_deferred():  # a job half started could not be stopped
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
        for name, path in (("alerts", alerts), ("dlq", dlq)):
            with path.open("wb") as out:
                tagged = [work / f"{name}-{job}" for job in range(jobs)]
                out.writelines(payload for payload, _ in _merged(tagged))
        parts = [
            ReplayResult(**orjson.loads((work / f"result-{job}.json").read_bytes()))
            for job in range(jobs)
        ]
    return ReplayResult.merged(parts)


def _replay_job(
    events: Path,
    settings: EngineSettings,
    job: int,
    jobs: int,
    work: Path,
    read: Any,
    line_numbers: Path | None,
) -> None:
    """One job's share of the replay: tagged alerts and dead letters, and its counts."""
    _STOP.deferring = False  # forked while the parent deferred stops
    if _STOP.pending:
        raise SystemExit(128 + _STOP.pending)

    def tick(n: int) -> None:
        read.value += n

    engines = PartitionedEngines(settings)
    result = ReplayResult()
    dumps = orjson.dumps
    with (
        (work / f"alerts-{job}").open("wb") as alerts_out,
        (work / f"dlq-{job}").open("wb") as dlq_out,
        LineNumbers(line_numbers) as number,
    ):
        for batch in batches(read_lines(events, tick)):
            rejected: list[tuple[int, Invalid]] = []
            alerts: list[tuple[int, dict[str, Any]]] = []
            first = result.lines
            engines.process_owned_lines(batch, first, job, jobs, rejected, alerts)
            for index, why in rejected:
                dead = _dead_letter_line(batch[index - first], why, number(index))
                dlq_out.write(b"%d%s%s" % (index, _TAG_END, dead))
            for index, alert in alerts:
                alerts_out.write(b"%d%s%s\n" % (index, _TAG_END, dumps(alert)))
                result.count_alert(alert)
            result.lines += len(batch)
    result.invalid = engines.invalid_counts()
    result.valid = engines.events_valid
    (work / f"result-{job}.json").write_bytes(orjson.dumps(result))


def _merged(parts: list[Path]) -> Iterator[tuple[bytes, bytes]]:
    """Tagged lines merged by tag (each part is in tag order; equal tags: earlier parts
    first), as (the line without its tag, the line). Jobs' outputs are tagged by input line,
    sort runs by event time."""

    def untagged(fh: IO[bytes]) -> Iterator[tuple[int, bytes, bytes]]:
        for line in fh:
            tag, _, payload = line.partition(_TAG_END)
            yield int(tag), payload, line

    files = [part.open("rb") for part in parts]
    try:
        for _, payload, line in heapq.merge(*map(untagged, files), key=itemgetter(0)):
            yield payload, line
    finally:
        for fh in files:
            fh.close()


__all__ = [
    "LineNumbers",
    "ReplayResult",
    "SortResult",
    "batches",
    "dead_letter",
    "default_jobs",
    "event_time_key",
    "read_lines",
    "remove_abandoned_work",
    "replay",
    "replay_file",
    "sort_by_event_time",
    "terminate_as_exit",
    "work_dir_prefix",
]
