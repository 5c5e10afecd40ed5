"""The ``churn-detector`` command line: the entry point that builds the settings."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .redaction import redact_in_logs
from .settings import Settings, SettingsError, build_settings
from .timemodel import iso_ms

#: replay: more late events than this share of the lines says the file is not in time order
LATE_SHARE_UNSORTED = 0.01

if TYPE_CHECKING:
    from .evaluation import EvaluationReport
    from .replay import ReplayResult


class CommandError(Exception):
    """A command cannot do its work with the files it was given (an input it cannot read,
    a job that failed); the message says why, in one line."""


def _settings(args: argparse.Namespace, engine: dict[str, Any] | None = None) -> Settings:
    overrides: dict[str, dict[str, Any]] = {}
    if engine:
        overrides["engine"] = {k: v for k, v in engine.items() if v is not None}
    settings = build_settings(os.environ, getattr(args, "config", None), overrides)
    redact_in_logs(settings.kafka.sasl_password, settings.service.user_id_key)
    return settings


def _same_file(a: Path, b: Path) -> bool:
    """One file under two names: the same path once resolved (``..``, symbolic links), or,
    when both exist, the same file (hard links too).

    >>> _same_file(Path("/tmp/x/../a.jsonl"), Path("/tmp/a.jsonl"))
    True
    >>> _same_file(Path("/tmp/a.jsonl"), Path("/tmp/b.jsonl"))
    False
    """
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def _check_outputs(
    outputs: dict[str, Path | None], inputs: dict[str, Path | None], stdout: bool = False
) -> None:
    """Refuse an output that is a folder (found out only once the work is done), or a file
    that is also an input or another output: opening an output truncates it, so the input is
    lost before it is read, and two outputs interleave. ``-`` is stdout where ``stdout``
    allows it (for one output), else refused: it made a file named ``-``. Optional files
    not given are left out."""

    def given(files: dict[str, Path | None]) -> list[tuple[str, Path]]:
        return [
            (name, path) for name, path in files.items() if path is not None and str(path) != "-"
        ]

    dashes = [name for name, path in outputs.items() if str(path) == "-"]
    if dashes and not stdout:
        raise SettingsError(
            f"{dashes[0]} -: stdout is not supported here; give a file (/dev/stdout is one)"
        )
    if len(dashes) > 1:
        raise SettingsError(f"{dashes[0]} and {dashes[1]} both write to stdout (-)")
    outs = given(outputs)
    for name, path in outs:
        if path.is_dir():
            raise SettingsError(f"{name} {path} is a folder, not a file")
    pairs = itertools.chain(itertools.combinations(outs, 2), itertools.product(outs, given(inputs)))
    for (name_a, a), (name_b, b) in pairs:
        if _same_file(a, b):
            raise SettingsError(f"{name_a} and {name_b} are the same file ({a})")


def _input_file(what: str, path: Path) -> None:
    if not path.is_file():
        raise SettingsError(
            f"{what} {path} {'is not a file' if path.exists() else 'does not exist'}"
        )


def _make_folder(flag: str, path: Path) -> None:
    """Create the folder of an output (and its parents) if missing, or fail in one line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(
            f"{flag} {path}: cannot create the folder {path.parent}: {exc.strerror}"
        ) from None


def _written_whole(
    stack: contextlib.ExitStack, outputs: contextlib.AbstractContextManager[list[Path]]
) -> list[Path]:
    """Enter :func:`~detector.replay.written_whole`: an output that cannot be created
    fails in one line, before the work."""
    try:
        return stack.enter_context(outputs)
    except OSError as exc:
        raise SettingsError(f"cannot write {exc.filename}: {exc.strerror}") from None


def cmd_simulate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .replay import terminate_as_exit, written_whole
    from .simulator import SimulationConfig, simulate, to_segment, write_jsonl

    outputs = {"--out": args.out, "--truth": args.truth}
    _check_outputs(outputs, {}, stdout=True)
    files = [path for path in outputs.values() if path is not None and str(path) != "-"]
    for flag, path in outputs.items():  # before the work, not once the events are written
        if path in files:
            _make_folder(flag, path)
    with contextlib.ExitStack() as stack:
        stack.enter_context(terminate_as_exit())
        temps = _written_whole(stack, written_whole(*files))
        temp = dict(zip(files, temps, strict=True))  # not "-" (stdout)
        out = temp.get(args.out, args.out)
        truth_out = temp.get(args.truth, args.truth)
        sim = simulate(SimulationConfig(teams=args.teams, days=args.days, seed=args.seed))
        events = sim.events()
        if args.format == "segment":
            events = (to_segment(e) for e in events)
        disable = True if args.quiet else None  # None: drawn when stderr is a terminal
        with tqdm(desc="simulate", unit=" events", unit_scale=True, disable=disable) as bar:
            n = write_jsonl(out, events, progress=lambda k: bar.update(k - bar.n), name=args.out)
            bar.update(n - bar.n)
        truth = write_jsonl(truth_out, sim.truth(), name=args.truth) if truth_out is not None else 0
    print(
        f"wrote {n:,} events to {args.out}"
        + (f" and {truth:,} truth records to {args.truth}" if args.truth else ""),
        file=sys.stderr,
    )
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from .replay import InputError, ReplayJobFailed

    try:
        return _replay(args)
    except (InputError, ReplayJobFailed) as exc:
        raise CommandError(str(exc)) from None


def _replay(args: argparse.Namespace) -> int:
    from .replay import (
        default_jobs,
        remove_abandoned_work,
        replay_file,
        sort_by_event_time,
        terminate_as_exit,
        work_dir_prefix,
        work_folder,
        written_whole,
    )

    settings = _settings(args, {"partitions": args.partitions})
    _input_file("events file", args.events)
    if args.events.suffix == ".parquet":
        _check_parquet(args.events)
    _check_outputs(
        {"--alerts": args.alerts, "--dlq": args.dlq},
        {"the events file": args.events, "--config": args.config},
    )
    if args.sort and args.file_order:
        raise SettingsError("--sort and --file-order exclude each other")
    _make_folder("--alerts", args.alerts)
    _make_folder("--dlq", args.dlq)
    # the work files of an output that is no regular file (/dev/null, a FIFO) go to the
    # folder of the other output, else to the temporary folder: not into /dev
    work = work_folder(args.alerts, args.dlq)
    for folder in dict.fromkeys((work_folder(args.alerts), work_folder(args.dlq))):
        for path in remove_abandoned_work(folder):
            print(f"removed {path}, left by a replay that was killed", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        stack.enter_context(terminate_as_exit())
        # both outputs can be written, before any work; replaced only once all is done
        alerts, dlq = _written_whole(stack, written_whole(args.alerts, args.dlq))

        def sorted_copy() -> tuple[Path, Path]:
            tmp = stack.enter_context(
                tempfile.TemporaryDirectory(dir=work, prefix=work_dir_prefix("replay"))
            )
            out, numbers = Path(tmp) / "sorted.jsonl", Path(tmp) / "line-numbers"
            done = sort_by_event_time(
                args.events, out, show_progress=not args.quiet, line_numbers=numbers
            )
            span = " .. ".join(
                iso_ms(ms)[:19] + "Z" for ms in (done.first_ms, done.last_ms) if ms is not None
            )
            print(
                f"sorted {done.lines:,} lines by event time ({span or 'no times'})", file=sys.stderr
            )
            return out, numbers

        def run(events: Path, line_numbers: Path | None = None) -> ReplayResult:
            return replay_file(
                events,
                alerts,
                dlq,
                settings.engine,
                show_progress=not args.quiet,
                jobs=args.jobs or default_jobs(settings.engine.partitions),
                line_numbers=line_numbers,
            )

        result = run(*sorted_copy()) if args.sort else run(args.events)
        late = result.invalid.get("late", 0)
        if not args.sort and late > LATE_SHARE_UNSORTED * result.lines:
            print(
                f"{late:,} events ({late / result.lines:.0%}) came more than the allowed lateness "
                f"({settings.engine.allowed_lateness_s:,} s) after newer ones: the file is not in "
                "event-time order; "
                + (
                    "--file-order keeps them as dead letters."
                    if args.file_order
                    else "sorting it and replaying again (--file-order keeps the file's order)."
                ),
                file=sys.stderr,
            )
            if not args.file_order:
                result = run(*sorted_copy())
    print(
        f"{result.lines:,} lines: {result.valid:,} applied, {sum(result.invalid.values()):,} to {args.dlq} "
        f"{dict(sorted(result.invalid.items()))}; {result.alerts:,} alerts to {args.alerts} "
        f"{dict(sorted(result.alerts_by_state.items()))}",
        file=sys.stderr,
    )
    return 0


def _check_parquet(path: Path) -> None:
    """Read the file's Parquet footer: a file that is not Parquet fails here in one line,
    instead of in every replay job, each with its traceback."""
    from .replay import PARQUET_NEEDS_PYARROW

    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SettingsError(PARQUET_NEEDS_PYARROW) from None
    try:
        pq.read_metadata(path)
    except pa.ArrowInvalid as exc:
        raise SettingsError(f"events file {path} is not a Parquet file: {exc}") from None


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate, load_jsonl

    for path in (args.events, args.alerts, args.truth):
        _input_file("file", path)
    _check_outputs(
        {"--report": args.report},
        {"--events": args.events, "--alerts": args.alerts, "--truth": args.truth},
    )
    if args.report is not None:
        _make_folder("--report", args.report)
    try:  # a line that is not JSON, a value of the wrong kind: the readers say which
        events: Iterator[dict[str, Any]] = load_jsonl(args.events)
        if args.report is not None:
            events, write_report = _html_report(args, events)
        report = evaluate(
            events,
            load_jsonl(args.alerts),
            load_jsonl(args.truth),
            inactivity_days=args.inactivity_days,
            nab_window_days=args.nab_window_days,
        )
        if args.report is not None:
            write_report(report)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        sys.stdout.buffer.write(
            orjson.dumps(report.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        )
    else:
        print(report.to_text())
    return 0


def _html_report(
    args: argparse.Namespace, events: Iterator[dict[str, Any]]
) -> tuple[Iterator[dict[str, Any]], Callable[[EvaluationReport], None]]:
    """Prepare the HTML report: the events stream tapped (with a progress bar) so that the
    big file is read once, by ``evaluate``, and the function that writes the page."""
    import time

    from tqdm import tqdm

    from .eval_report import DailyActivity, index_inputs, pick_timelines, render_html
    from .evaluation import load_jsonl

    started = time.perf_counter()
    inputs = index_inputs(load_jsonl(args.truth), load_jsonl(args.alerts))
    picks = pick_timelines(inputs)
    activity = DailyActivity(pick.team_id for pick in picks)

    def write(report: EvaluationReport) -> None:
        args.report.write_text(render_html(report, inputs, picks, activity), encoding="utf-8")
        print(
            f"wrote {args.report} ({len(picks)} team timelines) in "
            f"{time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )

    bar = tqdm(events, desc="evaluate", unit=" events", unit_scale=True, disable=None)
    return activity.tap(bar), write


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoOptions, run_demo
    from .simulator import SimulationConfig

    settings = _settings(args, {"partitions": args.partitions})
    options = DemoOptions(
        out_dir=args.out_dir,
        simulation=SimulationConfig(teams=args.teams, days=args.days, seed=args.seed),
        metrics_port=args.metrics_port,
    )
    print(run_demo(options, settings.engine))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import logging

    from .service import run_worker

    settings = _settings(args)
    logging.basicConfig(
        level=settings.service.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run_worker(settings)


def _port(text: str) -> int:
    """argparse type of a TCP port: 0 (off) to 65535.

    >>> _port("9464"), _port("0")
    (9464, 0)
    >>> _port("70000")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be a TCP port from 0 (off) to 65535, got 70000
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port from 0 (off) to 65535, got {value}")
    return value


def _positive_int(text: str) -> int:
    """argparse type of counts of teams, days and jobs: an integer of at least 1.

    >>> _positive_int("3")
    3
    >>> _positive_int("0")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be at least 1, got 0
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="churn-detector",
        description="Streaming activity-churn detection for SaaS products. Settings come from defaults, "
        "a JSON config file (--config or DETECTOR_CONFIG) and DETECTOR_<SECTION>_<NAME> environment variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "simulate",
        help="write simulated product usage events and the churn truth",
        description="Simulate a SaaS product (teams, users, sessions, holidays, churn scenarios). "
        "Deterministic by seed.",
    )
    p.add_argument("--teams", type=_positive_int, default=300, help="number of teams (default 300)")
    p.add_argument("--days", type=_positive_int, default=180, help="days simulated (default 180)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="events JSONL output (gzip-compressed if it ends in .gz; -: stdout)",
    )
    p.add_argument(
        "--truth",
        type=Path,
        help="truth JSONL output (one line per team and user; .gz: gzip; -: stdout)",
    )
    p.add_argument(
        "--format",
        choices=["canonical", "segment"],
        default="canonical",
        help="event format: canonical (default) or Segment spec messages",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "replay",
        help="run the engine over an events file",
        description="Replay a JSONL (plain or gzip-compressed) or .parquet events file through "
        "the engine, one engine per partition as in Kafka, in file order (the order a topic "
        "would deliver). Events more "
        "than the allowed lateness older than the newest are dead letters (late); when over 1% "
        "of the lines are, the file is not in event-time order, and replay sorts it (a stable "
        "external sort) and replays again, unless --file-order. Partitions are independent, so "
        "--jobs processes share them; their outputs are merged in input-line order. Same input "
        "gives byte-identical alerts and dead letters for any --jobs. Dead letters give the "
        "line numbers of the file (blank lines counted; rows of a Parquet file). Both outputs "
        "are written to temporary files next to them and replace them only once the replay is "
        "done: a replay that fails or is interrupted keeps the files there were. An output that "
        "is no regular file (/dev/stdout, a FIFO) gets its temporary file next to the other "
        "output, or in the temporary folder, and is written once, at the end.",
    )
    p.add_argument(
        "events", type=Path, help="events file (.jsonl, gzip-compressed .jsonl.gz, or .parquet)"
    )
    p.add_argument("--alerts", type=Path, required=True, help="alerts JSONL output (a file, not -)")
    p.add_argument(
        "--dlq",
        type=Path,
        required=True,
        help="dead-letter JSONL output (bad events with reasons; a file, not -)",
    )
    p.add_argument(
        "--partitions", type=int, help="partitions to mirror (default: engine.partitions = 4)"
    )
    p.add_argument(
        "--jobs",
        type=_positive_int,
        help="processes, each replaying a share of the partitions (default: usable CPUs, at "
        "most the partitions; 1: in this process); the output is the same for any value",
    )
    p.add_argument(
        "--sort",
        action="store_true",
        help="put the file in event-time order first, without a file-order pass (stable; an "
        "external sort in a temporary directory next to --alerts (--dlq when --alerts is no "
        "regular file, else the temporary folder) that needs about twice the "
        "size of the file as JSONL on disk, removed at the end; a replay an hour later removes what a "
        "killed one left). Sorted, an event with a wrong clock is accepted at its time "
        "instead of being late: the printed time range shows such strays. Dead letters give "
        "the line numbers of the file as given, in the sorted order",
    )
    p.add_argument(
        "--file-order",
        action="store_true",
        help="keep the file's order even when it is not in event-time order (as a topic "
        "would deliver it: late events are dead letters)",
    )
    p.add_argument("--config", type=Path, help="JSON config file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "evaluate", help="score alerts against the truth, next to the 14-day-inactivity rule"
    )
    p.add_argument(
        "--events", type=Path, required=True, help="the events file the alerts came from"
    )
    p.add_argument("--alerts", type=Path, required=True, help="alerts JSONL")
    p.add_argument("--truth", type=Path, required=True, help="truth JSONL from the simulator")
    p.add_argument(
        "--inactivity-days",
        type=_positive_int,
        default=14,
        help="days of the baseline rule (default 14)",
    )
    p.add_argument(
        "--nab-window-days",
        type=_positive_int,
        default=30,
        help="days before a cancellation in which an alert earns NAB credit (default 30)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument(
        "--report",
        type=Path,
        help="also write a self-contained HTML report (plots and tables) to this file",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "demo",
        help="simulator -> engine in-process, no Kafka; prints a summary",
        description="Run the simulator into the engine in-process, serve metrics on 127.0.0.1, "
        "write JSONL files and print alerts and the evaluation against the truth.",
    )
    p.add_argument("--teams", type=_positive_int, default=300)
    p.add_argument("--days", type=_positive_int, default=180)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--partitions", type=int, help="partitions to mirror (default 4)")
    p.add_argument(
        "--out-dir", type=Path, default=Path("demo-out"), help="output folder (default demo-out)"
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        default=9464,
        help="Prometheus port on 127.0.0.1 (default 9464; 0: off)",
    )
    p.add_argument("--config", type=Path, help="JSON config file")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "worker",
        help="run the streaming service (Faust worker) on Kafka",
        description="Consume usage events from Kafka, keep durable per-user and per-team state, publish "
        "alerts and dead letters. Configure with DETECTOR_KAFKA_* / DETECTOR_SERVICE_* / DETECTOR_ENGINE_* "
        "environment variables or --config (JSON with sections engine, kafka, service). "
        "DETECTOR_SERVICE_FAULT_KILL_AFTER_RECORDS is for fault tests only: the worker kills "
        "itself (SIGKILL) in the middle of a state flush.",
    )
    p.add_argument("--config", type=Path, help="JSON config file")
    p.set_defaults(func=cmd_worker)

    from .kafka_tools import cli_register

    cli_register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (SettingsError, CommandError) as exc:
        print(f"churn-detector: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:  # not a file that cannot be opened: a fault, with its traceback
            raise
        print(f"churn-detector: error: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
