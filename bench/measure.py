"""Timing, memory and statistics helpers (no knowledge of any store)."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class BenchError(RuntimeError):
    """A measured command failed: the row fails, it never reports a number for it."""


@dataclass
class Run:
    seconds: float
    peak_rss_bytes: int
    stdout: str = ""
    extra: dict = field(default_factory=dict)
    # a bench.worker's "JOB START" to "JOB END": the task's own work, without the interpreter's
    # start and the imports an Airflow worker has done before any task runs (the DAG file's)
    job_seconds: float | None = None

    def task_seconds(self) -> float:
        if self.job_seconds is None:
            raise BenchError("the worker printed no JOB START / JOB END")
        return self.job_seconds

    def json_tail(self) -> dict:
        """The last stdout line of a worker, which is its JSON result."""
        lines = [line for line in self.stdout.strip().splitlines() if line.startswith("{")]
        if not lines:
            raise BenchError(f"no JSON result in the output: {self.stdout[-2000:]}")
        return json.loads(lines[-1])


def _tree_rss(proc, exclude: tuple[str, ...] = (), skip_forks: bool = False) -> int:
    import psutil

    total = 0
    try:
        members = [proc, *proc.children(recursive=True)]
        own_name = proc.name() if skip_forks else None
    except psutil.Error:
        return 0
    for member in members:
        try:
            if member is not proc and (member.name() in exclude or member.name() == own_name):
                continue
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    what: str,
    cwd: str | None = None,
    sample_every: float = 0.05,
    on_line: Callable[[str], None] | None = None,
    exclude: tuple[str, ...] = (),
    skip_forks: bool = False,
) -> Run:
    """Run ``argv`` to its end: wall seconds and peak RSS of its whole process tree
    (sampled every ``sample_every`` s with psutil). A non-zero exit raises BenchError.
    ``on_line`` sees each stdout line as it comes (markers of a worker's phases);
    child processes named in ``exclude`` are left out of the RSS (a server the worker starts),
    and with ``skip_forks`` children named like the root process too (a fork of the worker not
    yet exec'ed shares its pages but would count them twice)."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    handle = psutil.Process(proc.pid)
    peak = 0
    out: list[str] = []
    err: list[str] = []

    marks: dict[str, float] = {}

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.rstrip("\n") in ("JOB START", "JOB END"):
                marks[line.rstrip("\n")] = time.perf_counter()
            out.append(line)
            if on_line:
                on_line(line.rstrip("\n"))

    # BENCH_LOG_DIR: keep each side's whole stderr (a worker logs the time of every step)
    log_dir = os.environ.get("BENCH_LOG_DIR")
    log_file = None
    if log_dir:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", what)[:80]
        log_file = open(Path(log_dir) / f"{time.strftime('%H%M%S')}-{name}.log", "w")  # noqa: SIM115

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err.append(line)
            del err[:-200]
            if log_file is not None:
                log_file.write(line)

    readers = [threading.Thread(target=read_stdout, daemon=True), threading.Thread(target=read_stderr, daemon=True)]
    for reader in readers:
        reader.start()
    while proc.poll() is None:
        peak = max(peak, _tree_rss(handle, exclude, skip_forks))
        time.sleep(sample_every)
    seconds = time.perf_counter() - started
    for reader in readers:
        reader.join(timeout=30)
    if log_file is not None:
        log_file.close()
    if proc.returncode != 0:
        said = "".join(err)[-3000:] or f"(nothing on stderr; stdout ends) {''.join(out)[-3000:]}"
        raise BenchError(f"{what} failed (exit {proc.returncode}): {said}")
    job = marks["JOB END"] - marks["JOB START"] if {"JOB START", "JOB END"} <= set(marks) else None
    return Run(seconds=seconds, peak_rss_bytes=peak, stdout="".join(out), job_seconds=job)


def summary(values: Sequence[float]) -> dict:
    if not values:
        raise BenchError("no measurement")
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": [round(v, 6) for v in values],
    }


def alternating(
    repetitions: int, old: Callable[[], float], new: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """``repetitions`` of each, side by side, the order alternating (old first on even
    repetitions) so that a warm cache or a busy neighbour does not favour one side."""
    olds: list[float] = []
    news: list[float] = []
    for index in range(repetitions):
        if index % 2 == 0:
            olds.append(old())
            news.append(new())
        else:
            news.append(new())
            olds.append(old())
    return olds, news


class LatencyProbe:
    """A client doing one operation in a loop in a thread; records the latency of each
    operation (and when it ended) so that a job's window can be cut out afterwards."""

    def __init__(self, operation: Callable[[], None], name: str) -> None:
        self.operation = operation
        self.name = name
        self.samples: list[tuple[float, float]] = []  # (end time, latency)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                self.operation()
            except Exception as exc:  # a failing client is recorded; the window shows it
                self.errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.01)
                continue
            ended = time.perf_counter()
            self.samples.append((ended, ended - started))

    def __enter__(self) -> LatencyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def window(self, start: float, end: float) -> dict:
        """Operations that ended in [start, end + worst]: the count and the longest wait.
        An operation stuck across the end of the job counts with its full latency."""
        inside = [(t, lat) for t, lat in self.samples if t >= start and t - lat <= end]
        if not inside:
            raise BenchError(f"{self.name}: no operation completed during the job")
        return {"operations": len(inside), "worst_s": max(lat for _, lat in inside), "errors": len(self.errors)}
