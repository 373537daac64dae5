"""Running the stores' command-line tools: output to the log, progress, clean failure.

Secrets are passed by the caller through ``env`` or files, never argv. The child is
killed if this process is interrupted (Airflow stopping the task), and on Linux also when
this process dies without a chance to clean up (the worker SIGKILLed or OOM-killed): the
kernel sends it SIGKILL (``PR_SET_PDEATHSIG``), so no orphan keeps writing into a staging
folder.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

LogFn = Callable[[str], None]


_PR_SET_PDEATHSIG = 1
_PRCTL: Callable[..., int] | None
try:  # resolved here, not in the child between fork and exec
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _PRCTL = None


def _die_with(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when the thread that started it dies."""

    def arm() -> None:
        if _PRCTL is not None:  # only armed where it exists (Linux)
            _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent_pid:  # the parent died before the line above
            os._exit(128 + signal.SIGKILL)

    return arm


class ToolError(RuntimeError):
    """A tool exited non-zero (or could not be started); the message holds its last lines."""


# A write that failed with less than this free where it wrote failed for lack of space
# (tools word it in many ways: redis-cli "short write", mongodump "write error", ...).
LOW_SPACE_BYTES = 1024 * 1024
NO_SPACE = "No space left on device"


def free_bytes(path: Path) -> int | None:
    """Free bytes on the filesystem of ``path`` (or of its nearest existing parent)."""
    for folder in (Path(path), *Path(path).parents):
        try:
            return shutil.disk_usage(folder).free
        except FileNotFoundError:
            continue
        except OSError:
            return None
    return None


def find_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise ToolError(f"{name} not found on PATH; install it on the Airflow workers")
    return path


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def run_tool(
    argv: Sequence[str],
    *,
    log: LogFn,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    progress_path: Path | None = None,
    progress_every: float = 10.0,
    stdout_path: Path | None = None,
    stdin_path: Path | None = None,
    timeout: float | None = None,
) -> str:
    """Run ``argv``; return its stdout (unless sent to ``stdout_path``); raise ToolError on failure.

    stderr lines go to ``log`` as they come; every ``progress_every`` seconds the size
    of ``progress_path`` and the rate are logged.
    """
    name = Path(argv[0]).name
    full_env = {**os.environ, **(env or {})}
    tail: deque[str] = deque(maxlen=20)
    stdout_file = open(stdout_path, "wb") if stdout_path else None
    stdin_file = open(stdin_path, "rb") if stdin_path else None
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(argv),
            env=full_env,
            cwd=cwd,
            stdin=stdin_file or subprocess.DEVNULL,
            stdout=stdout_file or subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with(os.getpid()) if _PRCTL is not None else None,
        )
    except OSError as exc:
        raise ToolError(f"{name} could not be started: {exc}") from exc
    stdout_chunks: list[bytes] = []

    def pump_stderr() -> None:
        for raw in proc.stderr:  # type: ignore[union-attr]
            line = raw.decode(errors="replace").rstrip()
            if line:
                tail.append(line)
                log(f"{name}: {line}")

    def pump_stdout() -> None:
        for chunk in iter(lambda: proc.stdout.read(65536), b""):  # type: ignore[union-attr]
            stdout_chunks.append(chunk)

    threads = [threading.Thread(target=pump_stderr, daemon=True)]
    if stdout_file is None:
        threads.append(threading.Thread(target=pump_stdout, daemon=True))
    for t in threads:
        t.start()
    try:
        last = started
        while True:
            try:
                proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if timeout is not None and now - started > timeout:
                proc.kill()
                proc.wait()
                raise ToolError(f"{name} timed out after {timeout:.0f}s")
            if progress_path is not None and now - last >= progress_every:
                written = tree_bytes(progress_path)
                log(f"{name}: {human_bytes(written)} written, {human_bytes(written / (now - started))}/s")
                last = now
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    finally:
        for t in threads:
            t.join(timeout=5)
        if stdout_file:
            stdout_file.close()
        if stdin_file:
            stdin_file.close()
    if proc.returncode != 0:
        detail = "\n".join(tail) or "(no output)"
        free = None if progress_path is None else free_bytes(progress_path)
        if free is not None and free < LOW_SPACE_BYTES:  # measured before the caller removes the partial file
            detail += f"\n{NO_SPACE}: only {human_bytes(free)} free where {name} writes ({progress_path})"
        raise ToolError(f"{name} failed with exit code {proc.returncode}:\n{detail}")
    return b"".join(stdout_chunks).decode(errors="replace")


def write_secret_file(path: Path, text: str) -> Path:
    """Create ``path`` 0600 (never readable by others, even for a moment) with ``text``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path
