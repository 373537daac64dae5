"""Helpers of the fault tests: run a backup in the background, find and kill the dump tool
while it writes, and fingerprint what a backup repository holds."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import psutil

from dbops.backup.adapter import Endpoint
from dbops.backup.repository import STAGING_DIR, BackupRepository, checks_ok
from dbops.backup.runner import BackupOutcome, take_backup
from dbops.tools import tree_bytes
from tests.support import Log

DAG_ID = "dbops_nightly_backup"
STALE_STAGING = timedelta(hours=12)


def backup_now(
    repo: BackupRepository,
    adapter,
    *,
    subject: str | None = None,
    run_id: str,
    log: Log | None = None,
    force: bool = False,
) -> BackupOutcome:
    """``take_backup`` as the nightly backup task calls it."""
    return take_backup(
        repo,
        adapter,
        store=adapter.store,
        subject=subject,
        run_id=run_id,
        dag_id=DAG_ID,
        logical_date=None,
        force=force,
        stale_staging=STALE_STAGING,
        log=log or Log(),
    )


@dataclass
class Background:
    """A backup running in a thread of this process (its tools are children of this process)."""

    thread: threading.Thread
    log: Log
    outcome: BackupOutcome | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float = 120) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the backup did not end within {timeout}s"


def start_backup(repo: BackupRepository, adapter, *, subject: str | None = None, run_id: str) -> Background:
    log = Log()
    job = Background(thread=threading.Thread(daemon=True, target=lambda: None), log=log)

    def run() -> None:
        try:
            job.outcome = backup_now(repo, adapter, subject=subject, run_id=run_id, log=log)
        except BaseException as exc:  # noqa: BLE001 (handed to the test)
            job.error = exc
        finally:
            job.done.set()

    job.thread = threading.Thread(target=run, daemon=True, name="background-backup")
    job.thread.start()
    return job


def staging_folder(repo: BackupRepository, store: str, subject: str | None = None) -> Path:
    return repo.series_path(store, subject) / STAGING_DIR


def staging_bytes(repo: BackupRepository, store: str, subject: str | None = None) -> int:
    folder = staging_folder(repo, store, subject)
    return tree_bytes(folder) if folder.exists() else 0


def staging_left(repo: BackupRepository, store: str, subject: str | None = None) -> list[str]:
    folder = staging_folder(repo, store, subject)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def find_tool_process(name: str, parent_pid: int | None = None) -> psutil.Process | None:
    """The running child of ``parent_pid`` (default: this process) whose name starts with ``name``."""
    parent = psutil.Process(parent_pid or os.getpid())
    for child in parent.children(recursive=parent_pid is not None):
        try:
            if child.name().startswith(name) and child.status() != psutil.STATUS_ZOMBIE:
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def wait_until(condition, *, timeout: float, what: str, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def kill_tool_while_writing(
    job: Background,
    repo: BackupRepository,
    *,
    tool: str,
    store: str,
    subject: str | None = None,
    min_bytes: int,
    timeout: float = 90,
) -> dict:
    """Wait until ``tool`` runs as a child of this process and the staging folder holds
    ``min_bytes``, then SIGKILL it. Returns what was seen at that moment."""

    def writing():
        if job.done.is_set():
            raise AssertionError(f"the backup ended before {tool} could be killed: {job.error or job.outcome}")
        proc = find_tool_process(tool)
        written = staging_bytes(repo, store, subject)
        return (proc, written) if proc is not None and written >= min_bytes else None

    proc, written = wait_until(writing, timeout=timeout, what=f"{tool} writing {min_bytes} bytes")
    os.kill(proc.pid, signal.SIGKILL)
    return {"pid": proc.pid, "bytes_when_killed": written}


def fingerprint(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` outside staging and deletion folders (what is visible)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in (STAGING_DIR, ".deleting")]
        files = [f for f in files if f != ".lock"]  # the series writer lock, not backup content
        for name in files:
            path = Path(folder) / name
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def assert_verified(repo: BackupRepository, store: str, subject: str | None, backup_id: str) -> None:
    """The backup is listed, its sealing checks passed and every file matches its sha256 now."""
    backup = next(b for b in repo.list(store, subject) if b.backup_id == backup_id)
    assert backup.verified, backup.manifest.get("checks")
    checks = repo.verify(backup)
    assert checks_ok(checks), checks


def endpoint_of(conn: dict) -> Endpoint:
    return Endpoint(
        host=conn["host"],
        port=conn["port"],
        login=conn.get("login"),
        password=conn.get("password"),
        database=conn.get("schema"),
        extra=dict(conn.get("extra") or {}),
    )


def redis_endpoint(server) -> Endpoint:
    return Endpoint(host="127.0.0.1", port=server.port, password=server.password)


def fill_redis(server, keys: int, value_bytes: int = 1024) -> None:
    """``keys`` string keys of random bytes under ``fault:`` (replacing what was there)."""
    import os

    with server.client() as client:
        client.flushall()
        for start in range(0, keys, 1000):
            with client.pipeline(transaction=False) as pipe:
                for i in range(start, min(start + 1000, keys)):
                    pipe.set(f"fault:{i}", os.urandom(value_bytes))
                pipe.execute()
