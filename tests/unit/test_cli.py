"""The command line: errors in one line (exit 2), outputs written whole, line numbers as
in the file, inputs read as given (gzip), progress bars only on a terminal."""

from __future__ import annotations

import contextlib
import gzip
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from detector.cli import main
from detector.simulator import SimulationConfig, simulate


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command line; it must fail with exit 2 and one line on stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("churn-detector: error: ") and err.count("\n") == 1, err
    return err


def _events(path: Path, teams: int = 6, days: int = 30) -> list[bytes]:
    lines = [orjson.dumps(e) for e in simulate(SimulationConfig(teams, days, seed=3)).events()]
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return lines


def _replay(events: Path, out: Path, *extra: str) -> list[str]:
    return [
        "replay",
        str(events),
        "--alerts",
        str(out / "a.jsonl"),
        "--dlq",
        str(out / "d.jsonl"),
        "--quiet",
        *extra,
    ]


def test_dead_letters_count_blank_lines_for_any_jobs_and_sorted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """[1,2] after a blank line was reported as line 3: it is line 4."""
    events = tmp_path / "e.jsonl"
    events.write_bytes(b'garbage\n{"a":1}\n\n[1,2]\nnull\n')
    outputs = set()
    for jobs in ("1", "2"):
        for sort in ([], ["--sort"]):
            assert main(_replay(events, tmp_path, "--jobs", jobs, *sort)) == 0
            outputs.add((tmp_path / "d.jsonl").read_bytes())
    assert len(outputs) == 1, "the same bytes for any --jobs, sorted or not"
    dead = [orjson.loads(line) for line in outputs.pop().splitlines()]
    assert [(d["line"], d["raw"]) for d in dead] == [
        (1, "garbage"),
        (2, '{"a":1}'),
        (4, "[1,2]"),
        (5, "null"),
    ]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["replay", "ev.jsonl", "--alerts", "-", "--dlq", "d.jsonl"], "--alerts"),
        (["replay", "ev.jsonl", "--alerts", "-", "--dlq", "-", "--jobs", "1"], "--alerts"),
        (["replay", "ev.jsonl", "--alerts", "a.jsonl", "--dlq", "-"], "--dlq"),
        (
            [
                "evaluate",
                "--events",
                "ev.jsonl",
                "--alerts",
                "ev.jsonl",
                "--truth",
                "ev.jsonl",
                "--report",
                "-",
            ],
            "--report",
        ),
    ],
)
def test_stdout_as_an_output_is_refused_instead_of_a_file_named_dash(
    argv: list[str],
    flag: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    _events(tmp_path / "ev.jsonl", teams=1, days=5)
    err = _cli_error(argv, capsys)
    assert f"{flag} -: stdout is not supported here; give a file" in err
    assert not (tmp_path / "-").exists()


def test_simulate_writes_one_output_to_stdout_not_two(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["simulate", "--teams", "1", "--days", "5", "--quiet", "--out", "-", "--truth", "-"]
    assert "--out and --truth both write to stdout (-)" in _cli_error(argv, capsys)
    assert main([*argv[:-1], "t.jsonl"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) > 10 and all(orjson.loads(line)["event_id"] for line in out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]


def test_simulated_gzip_replays_as_the_plain_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """replay read it as text: every line malformed_json, exit 0."""
    base = ["simulate", "--teams", "6", "--days", "40", "--quiet", "--out"]
    assert main([*base, str(tmp_path / "x.jsonl")]) == 0
    assert main([*base, str(tmp_path / "x.jsonl.gz")]) == 0
    plain = (tmp_path / "x.jsonl").read_bytes()
    assert gzip.decompress((tmp_path / "x.jsonl.gz").read_bytes()) == plain
    expected = None
    for name, extra in (("x.jsonl", []), ("x.jsonl.gz", ["--jobs", "2"]), ("x.jsonl.gz", [])):
        assert main(_replay(tmp_path / name, tmp_path, *extra)) == 0
        got = (tmp_path / "a.jsonl").read_bytes(), (tmp_path / "d.jsonl").read_bytes()
        expected = expected or got
        assert got == expected and got[0].count(b"\n") > 10 and got[1] == b""
    err = capsys.readouterr().err
    assert "applied, 0 to" in err and "malformed_json" not in err


def test_a_malformed_events_line_fails_evaluate_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was a ValueError traceback from the reader."""
    events = tmp_path / "ev.jsonl"
    events.write_bytes(b'{"a": 1}\nnot json\n')
    (tmp_path / "a.jsonl").write_bytes(b"")
    (tmp_path / "t.jsonl").write_bytes(b"")
    files = ["--alerts", str(tmp_path / "a.jsonl"), "--truth", str(tmp_path / "t.jsonl")]
    err = _cli_error(["evaluate", "--events", str(events), *files], capsys)
    assert f"{events}:2: invalid JSON" in err


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_without_pyarrow_parquet_fails_in_one_line(
    jobs: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hint came once from each job, then a traceback."""
    from detector.replay import InputError, replay_file
    from detector.settings import EngineSettings

    events = tmp_path / "e.parquet"
    events.write_bytes(b"PAR1")
    for name in ("pyarrow", "pyarrow.parquet"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails
    assert main(_replay(events, tmp_path, "--jobs", jobs)) == 2
    assert capfd.readouterr().err == (
        "churn-detector: error: reading Parquet needs pyarrow: "
        "pip install 'churn-detector[parquet]'\n"
    )
    with pytest.raises(InputError, match="reading Parquet needs pyarrow"):  # no CLI check
        replay_file(events, tmp_path / "a", tmp_path / "d", EngineSettings(), False, int(jobs))
    assert "Traceback" not in capfd.readouterr().err


def test_a_failing_job_fails_the_replay_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was a RuntimeError traceback in the parent, after the job's."""
    from detector.router import PartitionedEngines

    def crash(self: PartitionedEngines, *args: object) -> None:
        raise MemoryError("out of memory")

    monkeypatch.setattr(PartitionedEngines, "process_owned_lines", crash)  # forked: in jobs
    _events(tmp_path / "e.jsonl", teams=2, days=5)
    err = _cli_error(_replay(tmp_path / "e.jsonl", tmp_path, "--jobs", "2"), capsys)
    assert "replay job 0 failed: MemoryError: out of memory" in err


@pytest.mark.parametrize(("port", "shown"), [("70000", "70000"), ("-5", "-5"), ("x", "'x'")])
def test_a_metrics_port_out_of_range_is_a_usage_error(
    port: str, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """70000 was an OverflowError from the HTTP server."""
    with pytest.raises(SystemExit) as exited:
        main(["demo", f"--metrics-port={port}"])
    assert exited.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert "argument --metrics-port:" in last and last.endswith(shown), last


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_an_output_that_cannot_be_written_fails_before_the_replay_touches_any(
    jobs: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole replay ran then failed, with the alerts file overwritten (--jobs 2), or
    the alerts file was truncated first (--jobs 1)."""
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc, where no file can be created")
    _events(tmp_path / "e.jsonl")
    (tmp_path / "a.jsonl").write_bytes(b"old\n")
    argv = _replay(tmp_path / "e.jsonl", tmp_path, "--jobs", jobs)
    argv[argv.index("--dlq") + 1] = "/proc/d.jsonl"
    assert "cannot write /proc/d.jsonl" in _cli_error(argv, capsys)
    assert (tmp_path / "a.jsonl").read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "e.jsonl"]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_keeps_the_outputs_there_were_and_prints_no_traceback(
    jobs: str, tmp_path: Path
) -> None:
    """Each job printed a KeyboardInterrupt traceback (--jobs 2); --jobs 1 left a partial
    alerts file over the old one."""
    _events(tmp_path / "e.jsonl", teams=60, days=120)
    old = {"a.jsonl": b"old alerts\n", "d.jsonl": b"old dead letters\n"}
    for name, content in old.items():
        (tmp_path / name).write_bytes(content)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "detector.cli",
            *_replay(tmp_path / "e.jsonl", tmp_path, "--jobs", jobs),
        ],
        stderr=subprocess.PIPE,
        start_new_session=True,  # a process group, as a terminal's: Ctrl-C reaches them all
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    started = ".replay-*/alerts-*" if jobs == "2" else ".output-*"
    deadline = time.monotonic() + 60
    while (
        not list(tmp_path.glob(started)) and (tmp_path / "a.jsonl").read_bytes() == old["a.jsonl"]
    ):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "replay did not start"
        time.sleep(0.01)  # polling for the replay to be under way
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err, err.decode()
    assert {name: (tmp_path / name).read_bytes() for name in old} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "d.jsonl", "e.jsonl"]


def test_progress_bars_are_not_drawn_when_stderr_is_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log or a pipe got the bars' carriage-return frames."""
    events = tmp_path / "e.jsonl"
    assert main(["simulate", "--teams", "2", "--days", "20", "--out", str(events)]) == 0
    for jobs in ("1", "2"):
        argv = _replay(events, tmp_path, "--jobs", jobs, "--sort")
        argv.remove("--quiet")
        assert main(argv) == 0
    out_dir = str(tmp_path / "demo")
    assert (
        main(["demo", "--teams", "2", "--days", "20", "--metrics-port", "0", "--out-dir", out_dir])
        == 0
    )
    err = capsys.readouterr().err
    assert "wrote" in err and "sorted" in err
    assert "\r" not in err and "%|" not in err and "events/s" not in err, err


def test_a_folder_as_an_input_is_not_a_file_and_missing_output_folders_are_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder was reported as missing; simulate failed on --truth in a missing folder
    only once all events were written."""
    folder = str(tmp_path)
    err = _cli_error(["replay", folder, "--alerts", "a", "--dlq", "d"], capsys)
    assert f"events file {folder} is not a file" in err
    argv = ["evaluate", "--events", folder, "--alerts", folder, "--truth", folder]
    assert f"file {folder} is not a file" in _cli_error(argv, capsys)
    out, truth = tmp_path / "new" / "e.jsonl", tmp_path / "newer" / "deep" / "t.jsonl"
    argv = ["simulate", "--teams", "1", "--days", "3", "--quiet", "--out", str(out)]
    assert main([*argv, "--truth", str(truth)]) == 0
    assert out.stat().st_size > 0 and truth.stat().st_size > 0


def _unordered_events(path: Path) -> None:
    """Events in reverse time order (replay sorts them and replays again), and a line
    that is no event (a dead letter in both passes)."""
    lines = [orjson.dumps(e) for e in simulate(SimulationConfig(4, 30, seed=3)).events()]
    path.write_bytes(b"garbage\n" + b"".join(line + b"\n" for line in reversed(lines)))


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_fifo_output_gets_the_final_output_once_when_replay_sorts_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], jobs: str
) -> None:
    """Both passes were written to it (and a FIFO's reader waited for a second one)."""
    events = tmp_path / "e.jsonl"
    _unordered_events(events)
    assert main(_replay(events, tmp_path, "--jobs", jobs)) == 0
    assert "sorting it and replaying again" in capsys.readouterr().err
    expected = (tmp_path / "d.jsonl").read_bytes()
    assert expected.count(b"\n") >= 1
    fifo = tmp_path / "dlq.fifo"
    os.mkfifo(fifo)
    opened: list[bytes] = []
    done = threading.Event()

    def read_each_opening() -> None:
        while not done.is_set():
            with fifo.open("rb") as fh:
                opened.append(fh.read())

    reader = threading.Thread(target=read_each_opening, daemon=True)
    reader.start()
    argv = _replay(events, tmp_path, "--jobs", jobs)
    argv[argv.index("--dlq") + 1] = str(fifo)
    assert main(argv) == 0
    done.set()
    with contextlib.suppress(OSError):  # a reader waiting to open: let it see the end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    reader.join(10)
    assert [chunk for chunk in opened if chunk] == [expected]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.jsonl",
        "d.jsonl",
        "dlq.fifo",
        "e.jsonl",
    ], "no work files left"


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_work_files_of_a_device_output_go_next_to_the_other_output_not_into_dev(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    jobs: str,
) -> None:
    """With --alerts /dev/null the sort and the jobs made their folders in /dev."""
    events = tmp_path / "e.jsonl"
    _unordered_events(events)
    folders: list[str] = []
    real_mkstemp, real_mkdtemp = tempfile.mkstemp, tempfile.mkdtemp

    def mkstemp(suffix: Any = None, prefix: Any = None, dir: Any = None, text: bool = False) -> Any:
        if str(prefix).startswith("."):  # replay's (not multiprocessing's, in /dev/shm)
            folders.append(str(dir))
        return real_mkstemp(suffix, prefix, dir, text)

    def mkdtemp(suffix: Any = None, prefix: Any = None, dir: Any = None) -> Any:
        if str(prefix).startswith("."):
            folders.append(str(dir))
        return real_mkdtemp(suffix, prefix, dir)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    out = tmp_path / "out"
    argv = ["replay", str(events), "--alerts", os.devnull, "--dlq", str(out / "d.jsonl")]
    assert main([*argv, "--quiet", "--jobs", jobs]) == 0
    assert "sorting it and replaying again" in capsys.readouterr().err
    inside = [f for f in folders if f == str(out) or f.startswith(f"{out}{os.sep}")]
    assert folders and inside == folders, folders
    assert [p.name for p in out.iterdir()] == ["d.jsonl"]


def test_simulated_gzip_names_the_file_in_its_header_not_the_temporary_file(
    tmp_path: Path,
) -> None:
    base = ["simulate", "--teams", "1", "--days", "5", "--quiet"]
    out, truth = tmp_path / "ev.jsonl.gz", tmp_path / "truth.jsonl.gz"
    assert main([*base, "--out", str(out), "--truth", str(truth)]) == 0
    for path, name in ((out, b"ev.jsonl"), (truth, b"truth.jsonl")):
        header = path.read_bytes()
        assert header[3] & gzip.FNAME, "the header has a file name"
        assert header[10 : header.index(b"\0", 10)] == name
        assert gzip.decompress(header).count(b"\n") > 1


def _fake_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    """produce without a broker: every line read counts as sent."""
    from detector import kafka_tools

    async def produce(lines: Any, k: Any, topic: str, partitions: int, on_batch: Any) -> Any:
        result = kafka_tools.ProduceResult(topic=topic, partitions=partitions)
        for _ in lines:
            result.sent += 1
            on_batch()
        return result

    monkeypatch.setattr(kafka_tools, "ensure_topics", lambda k, topics: dict(topics))
    monkeypatch.setattr(kafka_tools, "_produce", produce)


def test_produce_of_a_gzip_file_cut_short_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It printed the InputError's traceback."""
    _fake_kafka(monkeypatch)
    events = tmp_path / "e.jsonl.gz"
    lines = [orjson.dumps(e) for e in simulate(SimulationConfig(6, 30, seed=3)).events()]
    packed = gzip.compress(b"".join(line + b"\n" for line in lines))
    events.write_bytes(packed[: len(packed) // 2])
    err = _cli_error(["produce", str(events), "--quiet"], capsys)
    assert "is not a readable gzip file" in err and "may have been sent to usage-events" in err


def test_produce_draws_no_progress_bar_when_stderr_is_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_kafka(monkeypatch)
    events = tmp_path / "e.jsonl"
    lines = _events(events, teams=2, days=20)
    assert main(["produce", str(events)]) == 0
    err = capsys.readouterr().err
    assert f"sent {len(lines):,} lines to usage-events" in err
    assert "\r" not in err and "%|" not in err and "produce usage-events" not in err, err
