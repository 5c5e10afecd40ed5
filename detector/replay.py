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
import bisect
import contextlib
import glob
import gzip
import hashlib
import heapq
import itertools
import math
import multiprocessing
import multiprocessing.connection
import os
import secrets
import shutil
import signal
import stat
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from operator import itemgetter
from pathlib import Path
from typing import IO, Any, NamedTuple, TypeVar

import orjson

from .events import Invalid, parse_timestamp
from .router import PartitionedEngines
from .settings import EngineSettings


class InputError(ValueError):
    """An events file cannot be read (gzip that is cut short, Parquet without pyarrow);
    the message says which and why."""


class ReplayJobFailed(RuntimeError):
    """A job of a parallel replay failed on something else than its input (a fault: the
    job printed its traceback); the message says which job and what."""


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
#: the first bytes of a gzip file
GZIP_MAGIC = b"\x1f\x8b"
#: lines handed to the engines at once (bounds the memory of a batch's alerts and rejections)
BATCH_LINES = 4096


def read_lines(path: Path, progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """Raw event lines of a JSONL file, gzip-compressed or not (or rows of a Parquet file,
    re-encoded as JSON).

    Blank lines are skipped; a line's trailing CR/LF is not part of it. ``progress`` gets
    the bytes of the file read (compressed bytes for gzip, JSON bytes for Parquet).
    """
    for lines, _ in read_line_chunks(path, progress):
        yield from lines


def read_numbered_lines(
    path: Path, progress: Callable[[int], None] | None = None, parquet_rows: bool = False
) -> Iterator[tuple[int, bytes]]:
    """:func:`read_lines` with each line's number in the file (from 1, blank lines
    counted: the number an editor shows; a Parquet row's number from 1)."""
    for lines, numbers in read_line_chunks(path, progress, parquet_rows):
        yield from zip(map(numbers, range(len(lines))), lines, strict=True)


class LineNumbering:
    """The numbers in the file of a list of lines read: line ``i`` of the list (from 0) is
    line ``self(i)`` of the file (from 1). Kept as the first line's number and where blank
    lines were skipped, so a number costs nothing until it is asked for (a dead letter).

    >>> numbers = LineNumbering(11, [1, 1, 2])  # b"a", b"", b"", b"b", b"", b"c" from line 11
    >>> [numbers(i) for i in range(3)]
    [11, 14, 16]
    >>> numbers.after(1)(0)
    14
    """

    __slots__ = ("first", "offset", "skips")

    def __init__(self, first: int, skips: list[int] | None = None, offset: int = 0) -> None:
        self.first = first  # the file's number of the first line, blank or not
        # per blank line skipped, the lines kept before it (non-decreasing)
        self.skips = skips or []
        self.offset = offset

    def __call__(self, index: int) -> int:
        at = self.offset + index
        return self.first + at + bisect.bisect_right(self.skips, at)

    def after(self, start: int) -> LineNumbering:
        """The numbering of ``lines[start:]``."""
        return LineNumbering(self.first, self.skips, self.offset + start)


class _JoinedNumbering:
    """The numbering of lists of lines one after the other: (length, numbering) each."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[tuple[int, Callable[[int], int]]]) -> None:
        self.parts = parts

    def __call__(self, index: int) -> int:
        for length, numbers in self.parts:
            if index < length:
                return numbers(index)
            index -= length
        raise IndexError(index)


def read_line_chunks(
    path: Path, progress: Callable[[int], None] | None = None, parquet_rows: bool = False
) -> Iterator[tuple[list[bytes], Callable[[int], int]]]:
    """:func:`read_lines` as lists of lines (a chunk of the file each), with their numbers
    in the file (:class:`LineNumbering`: from 1, blank lines counted, the number an editor
    shows; a Parquet row's number from 1).

    JSONL is read in large chunks, split and kept as lists (no Python work per line unless
    a chunk has a CR or a blank line); a file that starts with gzip's magic bytes is
    decompressed, whatever its name. ``parquet_rows``: ``progress`` counts Parquet rows
    instead of their JSON bytes.
    """
    if path.suffix == ".parquet":
        number = 1
        for rows in _parquet_rows(path, progress, parquet_rows):
            yield rows, LineNumbering(number)
            number += len(rows)
        return
    with path.open("rb") as raw:
        gzipped = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        fh: Any = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        tail, number, reported = b"", 1, 0
        try:
            while chunk := fh.read(READ_CHUNK):
                if progress is not None:  # the bytes of the file read, compressed or not
                    at = raw.tell()
                    progress(at - reported)
                    reported = at
                data = tail + chunk
                lines = data.split(b"\n")
                tail = lines.pop()
                if lines:
                    yield _non_blank(lines, number, b"\r" in data)
                number += len(lines)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:  # cut short, or corrupt
            raise InputError(f"events file {path} is not a readable gzip file: {exc}") from None
        last = _non_blank([tail], number, b"\r" in tail)
        if last[0]:
            yield last


def _non_blank(
    lines: list[bytes], first: int, cr: bool = True
) -> tuple[list[bytes], LineNumbering]:
    """The lines without trailing CR that hold more than whitespace, and their numbers
    (the first line is number ``first``). ``lines`` is kept as it is when it has no blank
    line and no CR (``cr``: there may be one).

    >>> lines, numbers = _non_blank([b"a\\r", b"", b" \\t", b"b"], 11)
    >>> lines, [numbers(i) for i in range(len(lines))]
    ([b'a', b'b'], [11, 14])
    """
    if any(map(bytes.isspace, lines)) or b"" in lines:  # "\r" alone is space too
        kept: list[bytes] = []
        skips: list[int] = []
        for line in lines:
            if not line or line.isspace():
                skips.append(len(kept))
            else:
                kept.append(line)
        lines = kept
    else:
        skips = []
    if cr:
        lines = [line.rstrip(b"\r") for line in lines]
    return lines, LineNumbering(first, skips)


def numbered_batches(
    chunks: Iterable[tuple[list[bytes], Callable[[int], int]]], size: int = BATCH_LINES
) -> Iterator[tuple[list[bytes], Callable[[int], int]]]:
    """Chunks of lines (:func:`read_line_chunks`) as consecutive lists of ``size`` lines
    (the last one fewer), each with its lines' numbers.

    >>> chunks = [([b"a", b"b", b"c"], LineNumbering(1)), ([b"d", b"e"], LineNumbering(10))]
    >>> [(b, [n(i) for i in range(len(b))]) for b, n in numbered_batches(chunks, 2)]
    [([b'a', b'b'], [1, 2]), ([b'c', b'd'], [3, 10]), ([b'e'], [11])]
    """
    held: list[bytes] = []
    parts: list[tuple[int, Callable[[int], int]]] = []
    for lines, numbers in chunks:
        start = 0
        if held:
            start = size - len(held)
            taken = lines[:start]
            held += taken
            parts.append((len(taken), numbers))
            if len(held) < size:
                continue
            yield held, _JoinedNumbering(parts)
        while len(lines) - start >= size:
            yield lines[start : start + size], _after(numbers, start)
            start += size
        held = lines[start:]
        parts = [(len(held), _after(numbers, start))] if held else []
    if held:
        yield held, _JoinedNumbering(parts)


def _after(numbers: Callable[[int], int], start: int) -> Callable[[int], int]:
    if isinstance(numbers, LineNumbering):
        return numbers.after(start) if start else numbers
    return lambda index: numbers(start + index)


def _parquet_rows(
    path: Path, progress: Callable[[int], None] | None, count_rows: bool
) -> Iterator[list[bytes]]:
    table = _parquet_file(path)
    for batch in table.iter_batches(batch_size=50_000):
        # held until the batch is applied: copied out of orjson's 4 KB output buffers (as
        # codec.dumps_held does); a value JSON has no type for is converted, not a crash
        rows = [
            memoryview(orjson.dumps(_without_nulls(row), default=_parquet_value)).tobytes()
            for row in batch.to_pylist()
        ]
        if progress is not None:
            progress(len(rows) if count_rows else sum(map(len, rows)))
        if rows:
            yield rows


def _parquet_file(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(PARQUET_NEEDS_PYARROW) from None
    return pq.ParquetFile(path)


PARQUET_NEEDS_PYARROW = "reading Parquet needs pyarrow: pip install 'churn-detector[parquet]'"


def parquet_rows_in(path: Path) -> int:
    """The number of rows a Parquet file's footer gives."""
    return int(_parquet_file(path).metadata.num_rows)


def _parquet_value(value: Any) -> Any:
    """A Parquet value JSON has no type for, as JSON: a decimal a number (its text if it
    is not finite), bytes text (UTF-8) or base64, a duration seconds, the rest its text.

    >>> _parquet_value(Decimal("12.50")), _parquet_value(b"team-1"), _parquet_value(b"\\xff")
    (12.5, 'team-1', '/w==')
    >>> _parquet_value(timedelta(minutes=2)), _parquet_value(Decimal("NaN"))
    (120.0, 'NaN')
    """
    if isinstance(value, Decimal):
        number = float(value)
        return number if math.isfinite(number) else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(data).decode("ascii")
    if isinstance(value, timedelta):
        return value.total_seconds()
    return str(value)


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


T = TypeVar("T")


def batches(lines: Iterable[T], size: int = BATCH_LINES) -> Iterator[list[T]]:
    """Consecutive lists of up to ``size`` lines.

    >>> [len(b) for b in batches([b"x"] * 5, 2)]
    [2, 2, 1]
    """
    it = iter(lines)
    while batch := list(itertools.islice(it, size)):
        yield batch


_NUMBER_BYTES = 8  # a line number in the numbers a sort writes


class LineNumbers:
    """The number in the file the user has of line ``number`` (from 1) of the file replayed:
    the same number, or, for a sorted copy, the number its :func:`sort_by_event_time` wrote
    for it (8 bytes a line in ``path``), so a dead letter points at the line in the original
    file. The numbers are read only for dead letters: no memory per line.

    >>> LineNumbers(None)(3)
    3
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fh: IO[bytes] | None = None

    def __call__(self, number: int) -> int:
        if self.path is None:
            return number
        if self._fh is None:
            self._fh = self.path.open("rb")
        self._fh.seek(_NUMBER_BYTES * (number - 1))
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
    """Process ``lines`` and write alerts and dead letters (numbered from 1 in the order
    read, or ``line_number`` of that)."""

    def numbered() -> Iterator[tuple[list[bytes], Callable[[int], int]]]:
        first = 1
        for batch in batches(lines):
            yield batch, LineNumbering(first)
            first += len(batch)

    return replay_batches(numbered(), settings, alerts_out, dlq_out, engines, line_number)


def replay_batches(
    lines: Iterable[tuple[list[bytes], Callable[[int], int]]],
    settings: EngineSettings,
    alerts_out: IO[bytes],
    dlq_out: IO[bytes],
    engines: PartitionedEngines | None = None,
    line_number: Callable[[int], int] | None = None,
) -> ReplayResult:
    """:func:`replay` of batches of lines, each with its lines' numbers
    (:func:`numbered_batches`): a dead letter gives its line's number, or ``line_number``
    of it."""
    engines = engines or PartitionedEngines(settings)
    line_number = line_number or LineNumbers(None)
    result = ReplayResult()
    dumps = orjson.dumps
    for raws, numbers in lines:
        rejected: list[tuple[int, Invalid]] = []
        alerts: list[dict[str, Any]] = []
        engines.process_lines(raws, rejected, alerts)
        for index, why in rejected:
            dlq_out.write(_dead_letter_line(raws[index], why, line_number(numbers(index))))
        for alert in alerts:
            alerts_out.write(dumps(alert) + b"\n")
            result.count_alert(alert)
        result.lines += len(raws)
    result.invalid = engines.invalid_counts()
    result.valid = engines.events_valid
    return result


def _dead_letter_line(raw: bytes, why: Invalid, line: int) -> bytes:
    """The dead-letter JSONL line of input line number ``line`` (from 1)."""
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
    original (see :func:`sort_by_event_time`), for the dead letters. ``alerts`` and ``dlq``
    are written whole or not at all (:func:`written_whole`): a replay that fails or is
    interrupted leaves the files there were.
    """
    alerts.parent.mkdir(parents=True, exist_ok=True)
    dlq.parent.mkdir(parents=True, exist_ok=True)
    jobs = max(1, min(jobs, settings.partitions))
    with written_whole(alerts, dlq) as (alerts_tmp, dlq_tmp):
        if jobs > 1:
            return _replay_in_jobs(
                events, alerts_tmp, dlq_tmp, settings, jobs, show_progress, line_numbers
            )
        with (
            _progress_bar(events, show_progress) as bar,
            alerts_tmp.open("wb") as alerts_fh,
            dlq_tmp.open("wb") as dlq_fh,
            LineNumbers(line_numbers) as number,
        ):
            lines = numbered_batches(read_line_chunks(events, bar.update, parquet_rows=True))
            result = replay_batches(lines, settings, alerts_fh, dlq_fh, None, number)
            bar.update(bar.total - bar.n)
        return result


def _progress_bar(events: Path, show: bool, desc: str = "replay") -> Any:
    """A bar of the bytes of the file (compressed bytes for gzip) or of the rows of a
    Parquet file; drawn only when asked for and stderr is a terminal."""
    from tqdm import tqdm

    if events.suffix == ".parquet":
        rows = parquet_rows_in(events)
        return tqdm(
            total=rows, unit=" rows", unit_scale=True, desc=desc, disable=None if show else True
        )
    size = events.stat().st_size
    return tqdm(total=size, unit="B", unit_scale=True, desc=desc, disable=None if show else True)


@contextlib.contextmanager
def written_whole(*paths: Path) -> Iterator[list[Path]]:
    """Temporary files next to ``paths``, to write instead, moved over them
    (:func:`os.replace`) when the block ends without an error, removed when it raises
    (a failure, Ctrl-C, SIGTERM under :func:`terminate_as_exit`). An output that cannot
    be written fails here, before any work; a reader never sees half a file, and a run
    that does not finish keeps the files there were. The temporary files take the mode
    the file they replace has (new: 0666 less the umask, as ``open`` gives); one a killed
    process left is removed by :func:`remove_abandoned_work`. A symbolic link is followed
    (the file it points to is replaced). A path that is there but no regular file
    (``/dev/null``, ``/dev/stdout``, a FIFO) gets a temporary file in :func:`work_folder`
    too, copied to it once at the end: what a run writes twice (replay's pass in file
    order, then sorted) reaches it once, and nothing does when the run fails.
    """
    targets = [path if _special(path) else Path(os.path.realpath(path)) for path in paths]
    spare = work_folder(*paths)
    temps: list[Path] = []
    # one prefix for this call's files: a Ctrl-C between a file's creation and its
    # name reaching ``temps`` cannot leave it behind (the clean-up looks for the prefix)
    prefix = f"{work_dir_prefix('output')}{secrets.token_hex(4)}-"
    folders: list[Path] = []
    try:
        for path, target in zip(paths, targets, strict=True):
            folder = spare if _special(path) else target.parent
            folders.append(folder)
            try:
                fd, name = tempfile.mkstemp(prefix=prefix, suffix=f"-{target.name}", dir=folder)
            except OSError as exc:  # named after the output, not the temporary file
                raise OSError(exc.errno, exc.strerror, str(path)) from None
            temps.append(Path(name))
            try:
                if not _special(path):
                    os.fchmod(fd, _mode_for(target))
            finally:
                os.close(fd)
        yield list(temps)
        for path, temp, target in zip(paths, temps, targets, strict=True):
            if _special(path):
                with temp.open("rb") as src, open(path, "wb") as dst:
                    shutil.copyfileobj(src, dst, READ_CHUNK)
            else:
                os.replace(temp, target)
    finally:
        # this call's files, and those a nested call made for them (replay_file inside the
        # CLI's: a Ctrl-C while that call's block is entered never runs its clean-up)
        patterns = [f"{glob.escape(prefix)}*"]
        patterns += [f".output-*-{glob.escape(temp.name)}" for temp in temps]
        for folder in dict.fromkeys(folders):
            for pattern in patterns:
                for temp in folder.glob(pattern):
                    with contextlib.suppress(FileNotFoundError):
                        temp.unlink()


def work_folder(*outputs: Path) -> Path:
    """Where the work files of a run writing ``outputs`` go: the folder of the first that
    is a regular file (or not there yet), else (all ``/dev/null``, FIFOs...) the system's
    temporary folder, never ``/dev``.

    >>> work_folder(Path("/dev/null"), Path("out/dlq.jsonl"))
    PosixPath('out')
    >>> work_folder(Path("/dev/null")) == Path(tempfile.gettempdir())
    True
    """
    for path in outputs:
        if not _special(path):
            return path.parent
    return Path(tempfile.gettempdir())


def _special(path: Path) -> bool:
    """There, and no regular file or folder: a device or a FIFO (``/dev/null``)."""
    return path.exists() and not path.is_file() and not path.is_dir()


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


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
    receives each sorted line's number in ``src`` (from 1, blank lines counted, as dead
    letters give them; 8 bytes a line, read by :class:`LineNumbers`).
    """
    count, first, last = 0, None, None
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=work_dir_prefix("sort")) as tmp:
        runs: list[Path] = []

        def write_run(chunk: list[tuple[int, bytes]]) -> None:
            nonlocal first, last
            keyed = sorted(
                ((event_time_key(line), n, line) for n, line in chunk), key=itemgetter(0)
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
            chunk: list[tuple[int, bytes]] = []
            size = 0
            for at, line in read_numbered_lines(src, bar.update, parquet_rows=True):
                chunk.append((at, line))
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
    """Remove the work directories of replays and sorts, and the unfinished outputs
    (:func:`written_whole`), of processes killed before they could: their process is gone
    and nothing in them was written for :data:`ABANDONED_AFTER_S` (a replay on another
    host or in another container sharing the folder has a process id this machine does
    not know). Returns them; one without a process id in its name is left."""
    now = time.time() if now is None else now
    removed = []
    for path in sorted(directory.glob(".*-*-*")):
        kind, _, rest = path.name[1:].partition("-")
        pid = rest.partition("-")[0]
        if (
            (
                (kind in ("replay", "sort") and path.is_dir())
                or (kind == "output" and path.is_file())
            )
            and pid.isdigit()
            and not _alive(int(pid))
            and now - _last_written(path) >= ABANDONED_AFTER_S
        ):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _last_written(path: Path) -> float:
    """The newest modification time of a directory and everything in it."""
    times = [path.stat().st_mtime]
    for inner in path.rglob("*") if path.is_dir() else ():
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
    """Hold a SIGTERM or Ctrl-C (SIGINT) back until the block is done: raised inside a
    fork, the exit could be lost or leave a job the parent does not know of running."""
    _STOP.deferring, _STOP.pending = True, 0
    main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGINT, _on_stop_signal) if main else None
    try:
        yield
    finally:
        _STOP.deferring = False
        if main:
            signal.signal(signal.SIGINT, before)
        if _STOP.pending == signal.SIGINT:
            raise KeyboardInterrupt
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
    folder = work_folder(alerts, dlq)
    with tempfile.TemporaryDirectory(prefix=work_dir_prefix("replay"), dir=folder) as tmp:
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
        failed = [(job, p.exitcode) for job, p in enumerate(procs) if p.exitcode]
        # the job that failed, not the others terminated (SIGTERM: a negative exit code)
        for job, exitcode in sorted(failed, key=lambda f: (f[1] < 0, f[0])):
            _raise_failure(job, exitcode, work)
        for name, path in (("alerts", alerts), ("dlq", dlq)):
            with path.open("wb") as out:
                tagged = [work / f"{name}-{job}" for job in range(jobs)]
                out.writelines(payload for payload, _ in _merged(tagged))
        parts = [
            ReplayResult(**orjson.loads((work / f"result-{job}.json").read_bytes()))
            for job in range(jobs)
        ]
    return ReplayResult.merged(parts)


def _raise_failure(job: int, exitcode: int, work: Path) -> None:
    """The error of a job that failed: what it wrote to its error file (see
    :func:`_replay_job`), in one line."""
    try:
        kind, _, message = (work / f"error-{job}").read_text().partition("\t")
    except FileNotFoundError:  # killed: no word from it
        raise ReplayJobFailed(f"replay job {job} failed (exit code {exitcode})") from None
    if kind == "input":
        raise InputError(message)
    raise ReplayJobFailed(f"replay job {job} failed: {message} (traceback above)")


def _replay_job(
    events: Path,
    settings: EngineSettings,
    job: int,
    jobs: int,
    work: Path,
    read: Any,
    line_numbers: Path | None,
) -> None:
    """One job's share of the replay. Ctrl-C reaches every process of the terminal's
    group: a job ignores it, and the parent, interrupted, terminates the jobs. A job that
    fails on its input (as one process would: the same message) writes the message to its
    error file and exits quietly; on anything else it writes it and its traceback is shown
    too, a fault."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _STOP.deferring = False  # forked while the parent deferred stops
    if _STOP.pending:
        raise SystemExit(128 + _STOP.pending)
    try:
        _replay_share(events, settings, job, jobs, work, read, line_numbers)
    except (InputError, OSError) as exc:
        if isinstance(exc, OSError) and exc.filename is None:
            (work / f"error-{job}").write_text(f"fault\t{type(exc).__name__}: {exc}")
            raise
        message = str(exc) if isinstance(exc, InputError) else f"{exc.strerror}: {exc.filename}"
        (work / f"error-{job}").write_text(f"input\t{message}")
        raise SystemExit(1) from None
    except Exception as exc:
        (work / f"error-{job}").write_text(f"fault\t{type(exc).__name__}: {exc}")
        raise


def _replay_share(
    events: Path,
    settings: EngineSettings,
    job: int,
    jobs: int,
    work: Path,
    read: Any,
    line_numbers: Path | None,
) -> None:
    """A job's tagged alerts and dead letters, and its counts."""

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
        for raws, numbers in numbered_batches(read_line_chunks(events, tick, parquet_rows=True)):
            rejected: list[tuple[int, Invalid]] = []
            alerts: list[tuple[int, dict[str, Any]]] = []
            first = result.lines  # tags: the index of the line replayed, from 0
            engines.process_owned_lines(raws, first, job, jobs, rejected, alerts)
            for index, why in rejected:
                at = index - first
                dead = _dead_letter_line(raws[at], why, number(numbers(at)))
                dlq_out.write(b"%d%s%s" % (index, _TAG_END, dead))
            for index, alert in alerts:
                alerts_out.write(b"%d%s%s\n" % (index, _TAG_END, dumps(alert)))
                result.count_alert(alert)
            result.lines += len(raws)
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
    "InputError",
    "LineNumbering",
    "LineNumbers",
    "ReplayJobFailed",
    "ReplayResult",
    "SortResult",
    "batches",
    "dead_letter",
    "default_jobs",
    "event_time_key",
    "numbered_batches",
    "read_line_chunks",
    "read_lines",
    "read_numbered_lines",
    "remove_abandoned_work",
    "replay",
    "replay_batches",
    "replay_file",
    "sort_by_event_time",
    "terminate_as_exit",
    "work_dir_prefix",
    "work_folder",
    "written_whole",
]
