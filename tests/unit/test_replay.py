"""Replay of a file: in one process or in several (--jobs), byte for byte the same output."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from detector import replay as replay_module
from detector.engine import PartitionEngine
from detector.events import Invalid
from detector.replay import (
    InputError,
    LineNumbers,
    ReplayJobFailed,
    ReplayResult,
    dead_letter,
    numbered_batches,
    parquet_rows_in,
    read_line_chunks,
    read_lines,
    read_numbered_lines,
    remove_abandoned_work,
    replay,
    replay_file,
    sort_by_event_time,
    work_dir_prefix,
    written_whole,
)
from detector.router import PartitionedEngines
from detector.settings import EngineSettings
from detector.simulator import SimulationConfig, simulate, to_segment
from tests.poison import poison_copies, poisoned_process

from .fuzz_corpus import Corpus, mixed

SETTINGS = EngineSettings(partitions=4)


def _simulated_lines() -> list[bytes]:
    """A simulated product (with churn, so alerts) in both input formats, with bad lines."""
    events = list(simulate(SimulationConfig(teams=20, days=100, seed=5)).events())
    lines = [orjson.dumps(to_segment(ev) if n % 7 == 0 else ev) for n, ev in enumerate(events)]
    for at, bad in (
        (10, b"{not json"),
        (500, b"[1, 2]"),
        (20_000, orjson.dumps({k: v for k, v in events[19_000].items() if k != "team_id"})),
        (30_000, lines[100]),  # late (and a duplicate id)
        (40_000, b"  "),  # blank: skipped (and counted in the line numbers)
        (50_000, b'{"event_id": "\xff"}'),  # not UTF-8
        (55_000, orjson.dumps({**events[54_000], "timestamp": "yesterday"})),
    ):
        lines.insert(at, bad)
    return lines


def _write(tmp_path: Path, lines: list[bytes], newline: bytes = b"\n") -> Path:
    path = tmp_path / "events.jsonl"
    path.write_bytes(newline.join(lines) + newline)
    return path


def _outputs(events: Path, out: Path, jobs: int) -> tuple[bytes, bytes, ReplayResult]:
    alerts, dlq = out / f"alerts-{jobs}.jsonl", out / f"dlq-{jobs}.jsonl"
    result = replay_file(events, alerts, dlq, SETTINGS, show_progress=False, jobs=jobs)
    return alerts.read_bytes(), dlq.read_bytes(), result


def test_parallel_replay_writes_what_one_process_writes(tmp_path: Path) -> None:
    events = _write(tmp_path, _simulated_lines())
    serial_alerts, serial_dlq, serial = _outputs(events, tmp_path, jobs=1)
    assert serial.alerts > 50 and len(serial_alerts.splitlines()) == serial.alerts
    assert {"malformed_json", "not_an_object", "missing_field:team_id", "late"} <= set(
        serial.invalid
    )
    for jobs in (2, 3):  # 3 jobs over 4 partitions: one job has two, the others one
        alerts, dlq, result = _outputs(events, tmp_path, jobs)
        assert alerts == serial_alerts, f"{jobs} jobs"
        assert dlq == serial_dlq, f"{jobs} jobs"
        assert result == serial
    assert not list(tmp_path.glob(".replay-*")), "the jobs' files are removed"


def test_parallel_replay_of_fuzzed_input_writes_what_one_process_writes(tmp_path: Path) -> None:
    """Half the lines broken in known ways, CRLF line ends: the same dead letters, in order."""
    lines = [raw for raw, _ in mixed(Corpus(seed=11), 6_000, 0.5, 500)]
    events = _write(tmp_path, lines, newline=b"\r\n")
    serial_alerts, serial_dlq, serial = _outputs(events, tmp_path, jobs=1)
    assert sum(serial.invalid.values()) > 2_000
    alerts, dlq, result = _outputs(events, tmp_path, jobs=2)
    assert (alerts, dlq, result) == (serial_alerts, serial_dlq, serial)


def test_a_poisoned_job_quarantines_as_one_process_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The jobs are forked, so they get the injected fault too."""
    monkeypatch.setattr(PartitionEngine, "process", poisoned_process)
    events = list(simulate(SimulationConfig(teams=12, days=60, seed=3)).events())
    path = _write(tmp_path, [orjson.dumps(e) for e in poison_copies(events, every=500)])
    alerts, dlq = io.BytesIO(), io.BytesIO()
    serial = replay(read_lines(path), SETTINGS, alerts, dlq)
    assert serial.invalid["processing_error"] >= 5
    assert _outputs(path, tmp_path, jobs=2) == (alerts.getvalue(), dlq.getvalue(), serial)


def test_a_failing_job_fails_the_replay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = PartitionedEngines.process_owned_lines

    def crash_in_job_1(self: PartitionedEngines, *args: Any) -> None:
        if args[2] == 1:  # (lines, first, job, ...)
            raise MemoryError("job 1 ran out")
        real(self, *args)

    monkeypatch.setattr(PartitionedEngines, "process_owned_lines", crash_in_job_1)
    path = _write(tmp_path, [orjson.dumps(e) for e in simulate(SimulationConfig(teams=4)).events()])
    with pytest.raises(ReplayJobFailed, match="replay job 1 failed: MemoryError: job 1 ran out"):
        _outputs(path, tmp_path, jobs=2)
    assert not list(tmp_path.glob(".replay-*")), "the jobs' files are removed"


def test_lines_are_read_across_chunk_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("detector.replay.READ_CHUNK", 7)
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a":1}\r\n\n   \n{"bb":22}\n{"c":3}')
    assert list(read_lines(path)) == [b'{"a":1}', b'{"bb":22}', b'{"c":3}']


def test_lines_are_numbered_as_in_the_file_with_its_blank_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dead letters give these numbers: blank lines were not counted, so every line after
    one was reported a line too early."""
    monkeypatch.setattr("detector.replay.READ_CHUNK", 5)
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a":1}\r\n\n   \n{"bb":22}\n\r\n{"c":3}')
    assert list(read_numbered_lines(path)) == [(1, b'{"a":1}'), (4, b'{"bb":22}'), (6, b'{"c":3}')]


@pytest.mark.parametrize(("chunk", "size"), [(5, 1), (7, 3), (64, 4), (1 << 20, 4096)])
def test_batches_carry_the_numbers_of_their_lines_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int, size: int
) -> None:
    """Batches are lists of the lines as read (no (number, line) pair per line): each
    line's number is looked up from the chunk's first number and its blank lines."""
    monkeypatch.setattr("detector.replay.READ_CHUNK", chunk)
    rows = [b'{"n":%d}' % i for i in range(300)]
    for i in range(0, 300, 7):
        rows[i] = b""
    for i in range(3, 300, 11):
        rows[i] = b" \t\r" if i % 2 else b"\r"
    for i in range(5, 300, 13):
        rows[i] += b"\r"
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\n".join(rows))
    expected = [(number, row.rstrip(b"\r")) for number, row in enumerate(rows, 1) if row.strip()]
    got = [
        (numbers(i), line)
        for lines, numbers in numbered_batches(read_line_chunks(path), size)
        for i, line in enumerate(lines)
    ]
    assert got == expected
    sizes = [len(lines) for lines, _ in numbered_batches(read_line_chunks(path), size)]
    assert sizes[:-1] == [size] * (len(sizes) - 1) and 0 < sizes[-1] <= size


def test_a_chunk_without_blank_lines_or_cr_is_kept_as_it_was_split() -> None:
    """One pass of Python per line to number and filter lines made replay ~25% slower."""
    lines = [b'{"a":1}', b'{"b":2}']
    kept, numbers = replay_module._non_blank(lines, 41, cr=False)
    assert kept is lines and [numbers(0), numbers(1)] == [41, 42]


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_dead_letters_give_the_line_numbers_of_the_file_after_blank_lines(
    tmp_path: Path, jobs: int
) -> None:
    events = [orjson.dumps(e) for e in simulate(SimulationConfig(teams=6, days=30)).events()]
    lines = list(events)
    for at, bad in ((0, b"garbage"), (3, b""), (4, b"[1,2]"), (5, b"\t"), (500, b"null")):
        lines.insert(at, bad)
    for at in range(1_000, len(lines), 997):  # blank lines all through, CRLF in some
        lines.insert(at, b"\r" if at % 2 else b"")
    events_file = _write(tmp_path, lines)
    _, dlq, result = _outputs(events_file, tmp_path, jobs)
    dead = [orjson.loads(line) for line in dlq.splitlines()]
    assert [d["line"] for d in dead][:3] == [1, 5, 501]
    for record in dead:
        assert lines[record["line"] - 1] == record["raw"].encode(), record
    assert result.lines == len(events) + 3


def test_a_gzip_file_replays_as_the_file_it_holds(tmp_path: Path) -> None:
    """It was read as text: every line malformed_json, exit 0."""
    import gzip

    lines = _simulated_lines()[:30_000]
    plain = _write(tmp_path, lines)
    packed = tmp_path / "events.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    unnamed = tmp_path / "events-export"  # gzip by its first bytes, whatever its name
    unnamed.write_bytes(packed.read_bytes())
    expected = _outputs(plain, tmp_path, jobs=1)
    assert expected[2].valid > 20_000
    for path in (packed, unnamed):
        for jobs in (1, 2):
            assert _outputs(path, tmp_path, jobs) == expected, (path, jobs)
    read: list[int] = []
    assert list(read_lines(packed, read.append)) == [line for line in lines if line.strip()]
    assert sum(read) == packed.stat().st_size, "progress counts the bytes of the file"
    dst, numbers = tmp_path / "sorted.jsonl", tmp_path / "numbers"
    sort_by_event_time(packed, dst, line_numbers=numbers)
    assert dst.read_bytes() == (sort_by_event_time(plain, dst) and dst.read_bytes())


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_gzip_file_cut_short_fails_in_one_message(tmp_path: Path, jobs: int) -> None:
    import gzip

    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(orjson.dumps(e) + b"\n" for e in _events(4)))[:2000])
    (tmp_path / "alerts-1.jsonl").write_bytes(b"kept\n")
    with pytest.raises(InputError, match="is not a readable gzip file: Compressed file ended"):
        _outputs(path, tmp_path, jobs)
    assert (tmp_path / "alerts-1.jsonl").read_bytes() == b"kept\n"


def _events(teams: int) -> list[dict[str, Any]]:
    return list(simulate(SimulationConfig(teams=teams, days=30, seed=5)).events())


def test_parquet_decimals_and_bytes_are_replayed_as_json_numbers_and_text(tmp_path: Path) -> None:
    """They were a TypeError (not JSON serializable) from every job."""
    pq = pytest.importorskip("pyarrow.parquet", reason="needs the parquet extra (pyarrow)")
    import datetime
    import decimal

    import pyarrow as pa

    events = _events(4)
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.Table.from_pylist(events), plain)
    typed = pa.Table.from_pylist(
        [
            {
                **e,
                "team_id": e["team_id"].encode(),  # binary
                "amount": decimal.Decimal("12.50"),
                "blob": b"\xff\x00",  # not UTF-8: base64
                "took": datetime.timedelta(seconds=3),
            }
            for e in events
        ]
    )
    assert pa.types.is_binary(typed.schema.field("team_id").type)
    path = tmp_path / "typed.parquet"
    pq.write_table(typed, path)
    rows = [orjson.loads(line) for line in read_lines(path)]
    assert rows[0]["team_id"] == events[0]["team_id"]
    assert (rows[0]["amount"], rows[0]["blob"], rows[0]["took"]) == (12.5, "/wA=", 3.0)
    expected = _outputs(plain, tmp_path, jobs=1)
    assert expected[2].valid == len(events) and expected[2].alerts > 0
    for jobs in (1, 2):
        assert _outputs(path, tmp_path, jobs) == expected


def test_parquet_progress_counts_rows_up_to_the_rows_in_the_file(tmp_path: Path) -> None:
    """It counted JSON bytes against the compressed size of the file: past its total."""
    pq = pytest.importorskip("pyarrow.parquet", reason="needs the parquet extra (pyarrow)")
    import pyarrow as pa

    events = _events(4)
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist(events), path, row_group_size=1_000)
    counted: list[int] = []
    numbered = list(read_numbered_lines(path, counted.append, parquet_rows=True))
    assert parquet_rows_in(path) == sum(counted) == len(events) == numbered[-1][0]
    assert replay_module._progress_bar(path, show=True).total == len(events)


def test_an_output_is_replaced_only_once_it_is_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay that failed or was interrupted left half an alerts file over the old one."""
    events = _write(tmp_path, [orjson.dumps(e) for e in _events(8)])
    alerts, dlq = tmp_path / "alerts-1.jsonl", tmp_path / "dlq-1.jsonl"
    alerts.write_bytes(b"old alerts\n")
    alerts.chmod(0o640)
    real, calls = PartitionedEngines.process_lines, []

    def interrupted_at_the_second_batch(self: PartitionedEngines, *args: Any) -> int:
        calls.append(1)
        if len(calls) == 2:  # alerts and dead letters of the first batch were written
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(PartitionedEngines, "process_lines", interrupted_at_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        _outputs(events, tmp_path, jobs=1)
    assert alerts.read_bytes() == b"old alerts\n" and not dlq.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alerts-1.jsonl", "events.jsonl"]
    monkeypatch.setattr(PartitionedEngines, "process_lines", real)
    new, _, result = _outputs(events, tmp_path, jobs=1)
    assert result.alerts > 0 and new.count(b"\n") == result.alerts
    assert alerts.stat().st_mode & 0o777 == 0o640, "the mode of the file replaced"
    assert dlq.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_output_through_a_link_replaces_the_file_linked_and_dev_null_stays(
    tmp_path: Path,
) -> None:
    """Replaced, /dev/null would have become a regular file (as root)."""
    (tmp_path / "real.jsonl").write_bytes(b"old\n")
    (tmp_path / "link.jsonl").symlink_to("real.jsonl")
    null = Path(os.devnull)
    with written_whole(tmp_path / "link.jsonl", null) as (linked, devnull):
        # /dev/null's temporary file is next to the other output (copied to it at the end)
        assert linked.parent == tmp_path and devnull.parent == tmp_path and devnull != null
        linked.write_bytes(b"new\n")
        devnull.write_bytes(b"gone\n")
    assert (tmp_path / "link.jsonl").is_symlink()
    assert (tmp_path / "real.jsonl").read_bytes() == b"new\n"
    assert null.is_char_device()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "real.jsonl"]


def test_an_output_that_cannot_be_created_fails_before_any_file_is_touched(
    tmp_path: Path,
) -> None:
    kept = tmp_path / "a.jsonl"
    kept.write_bytes(b"old\n")
    blocked = tmp_path / "file"
    blocked.write_bytes(b"")
    with pytest.raises(OSError) as failed, written_whole(kept, blocked / "d.jsonl"):
        pytest.fail("no work without both outputs")
    assert failed.value.filename == str(blocked / "d.jsonl")
    assert kept.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "file"]


def test_parallel_replay_of_parquet_writes_what_one_process_writes(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="needs the parquet extra (pyarrow)")
    import pyarrow as pa

    events = list(simulate(SimulationConfig(teams=8, days=40, seed=5)).events())
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist(events), path, row_group_size=5_000)
    serial_alerts, serial_dlq, serial = _outputs(path, tmp_path, jobs=1)
    assert serial.lines == len(events) and serial.valid > 0
    assert _outputs(path, tmp_path, jobs=2) == (serial_alerts, serial_dlq, serial)


def test_sorting_by_event_time_is_stable_and_puts_unreadable_lines_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [
        b'{"timestamp": "2026-03-01T10:00:00Z", "n": 1}',
        b'{"timestamp": 1772355600000, "n": 2}',  # 09:00, epoch ms
        b"{not json",
        b'{"timestamp": "2026-03-01T10:00:00+00:00", "n": 3}',  # same time as n=1
        b'{"timestamp": "yesterday", "n": 4}',
        b'{"timestamp": "2026-03-01T08:00:00Z", "n": 5}',
    ]
    src, dst, numbers = _write(tmp_path, lines), tmp_path / "sorted.jsonl", tmp_path / "numbers"
    # one run; runs of a line or two, merged; more runs than merge at once (stages)
    for run_bytes, fan_in in ((1 << 20, 256), (50, 256), (50, 2)):
        monkeypatch.setattr(replay_module, "SORT_FAN_IN", fan_in)
        done = sort_by_event_time(src, dst, run_bytes=run_bytes, line_numbers=numbers)
        assert done == (6, 1772352000000, 1772359200000)  # 08:00 .. 10:00
        assert dst.read_bytes().splitlines() == [lines[i] for i in (2, 4, 5, 1, 0, 3)]
        with LineNumbers(numbers) as number:  # where each sorted line was, from 1
            assert [number(i) for i in range(1, 7)] == [3, 5, 6, 2, 1, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "numbers", "sorted.jsonl"]


def test_a_shuffled_export_replays_with_sort_as_the_ordered_file_does(tmp_path: Path) -> None:
    from detector.cli import main

    events = [
        orjson.dumps(ev) for ev in simulate(SimulationConfig(teams=20, days=70, seed=3)).events()
    ]
    ordered = _write(tmp_path, events)
    shuffled = tmp_path / "shuffled.jsonl"  # e.g. exported user by user
    shuffled.write_bytes(
        b"\n".join(sorted(events, key=lambda line: orjson.loads(line)["user_id"] or "")) + b"\n"
    )
    out = {}
    for name, path, extra in (
        ("ordered", ordered, []),
        ("sorted", shuffled, ["--sort"]),
        ("sorted when found out of order", shuffled, []),
        ("as is", shuffled, ["--file-order"]),
    ):
        alerts, dlq = tmp_path / f"{name}-alerts.jsonl", tmp_path / f"{name}-dlq.jsonl"
        argv = ["replay", str(path), "--alerts", str(alerts), "--dlq", str(dlq), "--quiet"]
        assert main([*argv, *extra]) == 0
        out[name] = (alerts.read_bytes(), dlq.read_bytes())
    assert out["sorted"] == out["ordered"] and out["ordered"][0].count(b"\n") > 20
    assert out["sorted when found out of order"] == out["ordered"]
    assert out["as is"][1].count(b'"late"') > len(events) // 2
    assert not list(tmp_path.glob(".replay-*")), "the sorted copy is removed"


@pytest.mark.parametrize("jobs", [1, 2])
def test_dead_letters_of_a_sorted_replay_give_the_lines_of_the_file_as_given(
    tmp_path: Path, jobs: int
) -> None:
    from detector.cli import main

    events = [
        orjson.dumps(ev) for ev in simulate(SimulationConfig(teams=8, days=40, seed=3)).events()
    ]
    shuffled = sorted(events, key=lambda line: orjson.loads(line)["user_id"] or "")
    for at, bad in ((0, b"{not json"), (1_000, b"[1]"), (len(shuffled) // 2, b'{"timestamp": 1}')):
        shuffled.insert(at, bad)
    path = tmp_path / "shuffled.jsonl"
    path.write_bytes(b"\n".join(shuffled) + b"\n")
    dlq = tmp_path / "dlq.jsonl"
    argv = ["replay", str(path), "--alerts", str(tmp_path / "a.jsonl"), "--dlq", str(dlq)]
    assert main([*argv, "--sort", "--quiet", "--jobs", str(jobs)]) == 0
    dead = [orjson.loads(line) for line in dlq.read_bytes().splitlines()]
    assert len(dead) >= 3
    for record in dead:
        assert shuffled[record["line"] - 1] == record["raw"].encode(), record


def test_a_later_replay_removes_the_work_a_killed_one_left(tmp_path: Path) -> None:
    import subprocess
    import sys

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        check=True,
        text=True,
    )
    dead_pid = int(gone.stdout)
    left = [tmp_path / f".replay-{dead_pid}-abc", tmp_path / f".sort-{dead_pid}-def"]
    kept = [
        tmp_path / f"{work_dir_prefix('replay')}ghi",  # this process: still at work
        tmp_path / ".replay-notapid",
        tmp_path / f".other-{dead_pid}-x",
    ]
    for path in left + kept:
        (path / "sub").mkdir(parents=True)
        (path / "sub" / "sorted.jsonl").write_bytes(b"{}\n")
    output = tmp_path / f".output-{dead_pid}-jkl-alerts.jsonl"  # an unfinished output
    output.write_bytes(b"{}\n")
    (tmp_path / f"{work_dir_prefix('output')}mno-alerts.jsonl").write_bytes(b"")
    left.append(output)
    kept.append(tmp_path / f"{work_dir_prefix('output')}mno-alerts.jsonl")
    import time

    assert remove_abandoned_work(tmp_path) == [], "just written: maybe another host's replay"
    assert remove_abandoned_work(tmp_path, now=time.time() + 3600) == sorted(left)
    assert sorted(p for p in tmp_path.iterdir()) == sorted(kept)


def test_a_terminated_replay_removes_its_sorted_copy(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    events = tmp_path / "events.jsonl"
    sim = simulate(SimulationConfig(teams=60, days=120, seed=4))
    events.write_bytes(b"".join(orjson.dumps(ev) + b"\n" for ev in sim.events()))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "detector.cli",
            "replay",
            str(events),
            "--sort",
            "--jobs",
            "2",
            "--alerts",
            str(tmp_path / "a.jsonl"),
            "--dlq",
            str(tmp_path / "d.jsonl"),
            "--quiet",
        ],
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob(".replay-*"))) < 2:  # the sorted copy, and the jobs' work
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "replay did not start"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not list(tmp_path.glob(".replay-*")), "the sorted copy is removed"


def test_replay_says_when_a_file_is_not_in_time_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from detector.cli import main

    lines = [
        orjson.dumps(
            {
                "event_id": f"e{i}",
                "type": "session.started",
                "timestamp": (20_400 - i) * 86_400_000,
                "user_id": "u",
                "team_id": "t",
            }
        )
        for i in range(200)
    ]
    path = _write(tmp_path, lines)
    args = [
        "replay",
        str(path),
        "--alerts",
        str(tmp_path / "a.jsonl"),
        "--dlq",
        str(tmp_path / "d.jsonl"),
        "--quiet",
    ]
    assert main([*args, "--file-order"]) == 0
    err = capsys.readouterr().err
    assert "not in event-time order; --file-order keeps them as dead letters" in err
    assert (tmp_path / "d.jsonl").read_bytes().count(b'"late"') == 199
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "not in event-time order; sorting it and replaying again" in err
    assert "sorted 200 lines by event time (2025-04-23T00:00:00Z .. 2025-11-08T00:00:00Z)" in err
    assert b'"late"' not in (tmp_path / "d.jsonl").read_bytes()


def test_a_huge_dead_letter_keeps_a_prefix_with_the_size_and_hash_of_the_whole():
    """A 900 KB message of quotes made a 1.8 MB dead letter, binary bytes 1.2 MB in base64:
    over the producer's 1,000,000-byte requests, a crash on every restart."""
    for raw, field, kept in (
        (b'"' * 900_000, "raw", '"' * 65_536),
        (b"\xff" * 900_000, "raw_base64", base64.b64encode(b"\xff" * 65_536).decode()),
        ("€".encode() * 300_000, "raw", "€" * 21_845),  # the character cut at 64 KiB: left out
    ):
        record = dead_letter(raw, Invalid("oversized", "too big"), {"offset": 7})

        assert len(orjson.dumps(record)) < 400_000
        assert record == {
            "reason": "oversized",
            "detail": "too big",
            "offset": 7,
            field: kept,
            "raw_truncated": True,
            "raw_bytes": 900_000,
            "raw_sha256": hashlib.sha256(raw).hexdigest(),
        }


def test_a_dead_letter_of_up_to_64_kib_keeps_its_bytes_whole_as_before():
    why = Invalid("malformed_json", "not valid JSON")
    worst = b"\x01" * 65_536  # each byte escaped as \u0001: six times its size
    for raw, field, kept in (
        (b"{not json", "raw", "{not json"),
        (b"\xff\x00", "raw_base64", "/wA="),
        (worst, "raw", worst.decode()),
    ):
        assert dead_letter(raw, why, {"line": 3}) == {
            "reason": "malformed_json",
            "detail": "not valid JSON",
            "line": 3,
            field: kept,
        }
    out = io.BytesIO()
    replay([b"{not json"], SETTINGS, io.BytesIO(), out)
    assert out.getvalue().endswith(b',"line":1,"raw":"{not json"}\n')


# ---------------------------------------------------------------------------- command line errors


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command line; it must fail with exit 2 and one line on stderr."""
    from detector.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("churn-detector: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    ("alerts", "dlq", "named"),
    [
        ("ev.jsonl", "d.jsonl", "--alerts and the events file"),
        ("a.jsonl", "ev.jsonl", "--dlq and the events file"),
        ("a.jsonl", "a.jsonl", "--alerts and --dlq"),
        ("sub/../ev.jsonl", "d.jsonl", "--alerts and the events file"),
        ("link.jsonl", "d.jsonl", "--alerts and the events file"),  # a hard link
    ],
)
def test_replay_refuses_one_file_in_two_roles(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    alerts: str,
    dlq: str,
    named: str,
) -> None:
    """An output opened over the input truncated it: '0 lines', exit 0, the input gone."""
    before = b'{"event_id": "e"}\n'
    (tmp_path / "ev.jsonl").write_bytes(before)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.jsonl").hardlink_to(tmp_path / "ev.jsonl")
    argv = ["replay", "ev.jsonl", "--alerts", alerts, "--dlq", dlq, "--quiet", "--jobs", "1"]
    monkeypatch.chdir(tmp_path)
    err = _cli_error(argv, capsys)
    assert named in err and "are the same file" in err
    assert (tmp_path / "ev.jsonl").read_bytes() == before


def test_simulate_and_evaluate_refuse_an_output_over_another_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "ev.jsonl")
    err = _cli_error(
        ["simulate", "--teams", "1", "--days", "2", "--out", out, "--truth", out], capsys
    )
    assert "--out and --truth are the same file" in err
    (tmp_path / "ev.jsonl").write_bytes(b"{}\n")
    (tmp_path / "a.jsonl").write_bytes(b"")
    (tmp_path / "tr.jsonl").write_bytes(b"")
    files = ["--events", out, "--alerts", str(tmp_path / "a.jsonl")]
    argv = ["evaluate", *files, "--truth", str(tmp_path / "tr.jsonl"), "--report", out]
    assert "--report and --events are the same file" in _cli_error(argv, capsys)
    assert (tmp_path / "ev.jsonl").read_bytes() == b"{}\n"


@pytest.mark.parametrize(
    ("argv", "flag", "value"),
    [
        (["simulate", "--out", "x.jsonl"], "--teams", "-5"),
        (["simulate", "--out", "x.jsonl"], "--days", "0"),
        (["evaluate", "--events", "e", "--alerts", "a", "--truth", "t"], "--nab-window-days", "0"),
        (["evaluate", "--events", "e", "--alerts", "a", "--truth", "t"], "--inactivity-days", "-1"),
        (["replay", "e", "--alerts", "a", "--dlq", "d"], "--jobs", "0"),
    ],
)
def test_counts_below_one_are_usage_errors(
    argv: list[str],
    flag: str,
    value: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """They ended in tracebacks (simulate, evaluate) or, for --days 0, an empty file."""
    from detector.cli import main

    monkeypatch.chdir(tmp_path)

    with pytest.raises(SystemExit) as exited:
        main([*argv, flag, value])
    assert exited.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.endswith(f"argument {flag}: must be at least 1, got {value}"), last


def test_files_that_cannot_be_used_end_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder as an output, a folder that does not exist, a .parquet file that is not
    Parquet: one line and exit 2, not a traceback (from every replay job, for Parquet)."""
    events = _write(tmp_path, [orjson.dumps({"event_id": "e"})])
    not_parquet = tmp_path / "events.parquet"
    not_parquet.write_bytes(events.read_bytes())
    folder = tmp_path / "folder"
    folder.mkdir()
    dlq = str(tmp_path / "d.jsonl")
    for jobs in ("1", "2"):
        argv = ["replay", str(events), "--alerts", str(folder), "--dlq", dlq, "--jobs", jobs]
        assert f"--alerts {folder} is a folder, not a file" in _cli_error(argv, capsys)
    argv = ["replay", str(not_parquet), "--alerts", str(tmp_path / "a.jsonl"), "--dlq", dlq]
    assert "is not a Parquet file" in _cli_error([*argv, "--jobs", "2"], capsys)
    blocked = tmp_path / "file" / "x.jsonl"
    (tmp_path / "file").write_bytes(b"")
    argv = ["simulate", "--teams", "1", "--days", "2", "--quiet", "--out", str(blocked)]
    assert f"--out {blocked}: cannot create the folder" in _cli_error(argv, capsys)
