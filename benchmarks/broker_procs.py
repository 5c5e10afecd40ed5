"""Processes of the broker benchmark: the local broker, pinned children, RSS, health polls."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_LOCAL = REPO_ROOT / "deploy" / "kafka-local.sh"

Log = Callable[[str], None]


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Pinning:
    """Which CPU the measured process gets, and where everything else (broker, driver) runs.

    With fewer than two usable CPUs nothing is pinned."""

    measured: int | None
    others: int | None

    @classmethod
    def choose(cls, enabled: bool) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if not enabled or len(cpus) < 2:
            return cls(None, None)
        return cls(measured=cpus[-1], others=cpus[0])

    def prefix(self, measured: bool) -> list[str]:
        cpu = self.measured if measured else self.others
        return [] if cpu is None else ["taskset", "-c", str(cpu)]

    def describe(self) -> str:
        if self.measured is None:
            return "not pinned"
        return (
            f"each measured process pinned to CPU {self.measured} (taskset); broker, producer "
            f"and the benchmark driver pinned to CPU {self.others}"
        )


@contextlib.contextmanager
def local_broker(data_dir: Path, partitions: int, pinning: Pinning, log: Log) -> Iterator[str]:
    """A fresh local Kafka broker (deploy/kafka-local.sh) for the block; stopped afterwards."""
    env = {
        **os.environ,
        "KAFKA_LOCAL_DATA": str(data_dir),
        "KAFKA_NUM_PARTITIONS": str(partitions),
    }
    log(f"starting the local broker ({KAFKA_LOCAL.relative_to(REPO_ROOT)}, data {data_dir}) ...")
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [*pinning.prefix(False), str(KAFKA_LOCAL), "start"],
            env=env,
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        bootstrap = done.stdout.strip().splitlines()[-1]
        log(f"  broker ready at {bootstrap} in {time.perf_counter() - started:.1f} s")
        yield bootstrap
    finally:
        log("stopping the local broker ...")
        subprocess.run([str(KAFKA_LOCAL), "stop"], env=env, check=False)


class Child:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self, argv: Sequence[str], log_file: Path, env: dict[str, str] | None = None
    ) -> None:
        self.log_file = log_file
        self.started = time.perf_counter()
        self._out = log_file.open("ab")
        self.proc = subprocess.Popen(
            list(argv), stdout=self._out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()
        return int(self.proc.returncode)

    def wait(self, timeout_s: float) -> int | None:
        try:
            return int(self.proc.wait(timeout_s))
        except subprocess.TimeoutExpired:
            return None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def assigned_partitions(consumer: Any, topic: str, timeout_s: float = 30.0) -> list[Any]:
    """The partitions a group-less aiokafka consumer subscribed to ``topic`` gets (all)."""
    import asyncio

    deadline = time.monotonic() + timeout_s
    while not consumer.assignment():
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic} has no partitions after {timeout_s:.0f} s")
        await asyncio.sleep(0.05)  # polling the metadata-driven assignment
    return sorted(consumer.assignment())


def get_json(url: str, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """GET a JSON document; None while the server is not (yet) answering."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            data = json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return data if isinstance(data, dict) else None
