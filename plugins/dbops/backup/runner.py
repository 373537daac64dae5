"""Taking one backup of one series, and expiring old ones: the steps every store shares.

Pure Python (no Airflow import): the Airflow tasks call these with an adapter.

Order, for one series:
0. hold the series' writer lock (a second writer of the same series is refused);
1. sweep stale staging left by a killed worker;
2. if this run already made a complete backup of the series, stop (a rerun of a run
   whose backup is complete does nothing, unless ``force``);
3. dump into a fresh staging folder, together with the description of what the dump
   holds (taken in the dump's own snapshot or read from the artifact: the reference of
   every drill and restore), then seal: every file read twice to the same sha256 (once by the dump
   itself where it reads its files) and the tool-level check must pass before the
   single rename that makes the backup visible. Any failure leaves nothing visible.
Retention is a separate step that refuses to run without this run's verified backup.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

from dbops.backup.adapter import SeriesBackup
from dbops.backup.repository import Backup, BackupRepository, RepositoryError
from dbops.backup.retention import RetentionPolicy, RetentionRefused, apply_retention, check_clock
from dbops.tools import LOW_SPACE_BYTES, NO_SPACE, free_bytes, human_bytes

LogFn = Callable[[str], None]
DESCRIPTION_FILE = "source_description.json"
_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_SPACE_WORDS = (NO_SPACE, "Disk quota exceeded", "File too large")


class BackupSpaceError(RepositoryError):
    """The backup filesystem ran out of space (or quota) while a backup was written."""


def _space_problem(exc: BaseException, folder: os.PathLike[str] | str) -> str | None:
    """Why ``exc`` looks like a full backup filesystem, or None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _SPACE_ERRNOS:
            return os.strerror(seen.errno)
        seen = seen.__cause__ or seen.__context__
    word = next((w for w in _SPACE_WORDS if w.lower() in str(exc).lower()), None)
    if word:
        return word
    free = free_bytes(Path(folder))
    return f"only {human_bytes(free)} left free" if free is not None and free < LOW_SPACE_BYTES else None


def _space_error(
    exc: Exception, repo: BackupRepository, folder: os.PathLike[str], where: str
) -> BackupSpaceError | None:
    """A clear error when ``exc`` came from a full backup filesystem (measured before the
    partial backup is removed), else None."""
    problem = _space_problem(exc, folder)
    if problem is None:
        return None
    usage = shutil.disk_usage(folder)
    return BackupSpaceError(
        f"{where}: backup failed, the backup filesystem is full ({problem}; now {human_bytes(usage.free)} "
        f"free of {human_bytes(usage.total)} at {repo.root}). The partial backup is removed, older backups are "
        f"untouched, retention does not run. Free space or grow the filesystem, then clear the task. "
        f"The failure: {exc}"
    )


@dataclass(frozen=True)
class BackupOutcome:
    """What a backup task reports (XCom): where the backup is, never a secret."""

    store: str
    subject: str | None
    backup_id: str
    path: str
    total_bytes: int
    seconds: float
    reused: bool
    compression: str
    # the sizes people read: the backup's data, and apart the manifest / description / results
    data_bytes: int = 0
    sidecar_bytes: int = 0

    def size(self) -> str:
        return f"{human_bytes(self.data_bytes)} data (+{human_bytes(self.sidecar_bytes)} manifest and metadata)"

    def summary(self) -> str:
        where = f"{self.store}/{self.subject}" if self.subject else self.store
        if self.reused:
            return f"{where}: backup {self.backup_id} already made by this run ({self.size()}), nothing to do"
        return (
            f"{where}: backup {self.backup_id} verified, {self.size()} "
            f"({self.compression}) in {self.seconds:.1f}s -> {self.path}"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary()}


def _outcome(backup: Backup, seconds: float, reused: bool) -> BackupOutcome:
    return BackupOutcome(
        store=backup.store,
        subject=backup.subject,
        backup_id=backup.backup_id,
        path=str(backup.path),
        total_bytes=backup.total_bytes,
        seconds=round(seconds, 3),
        reused=reused,
        compression=str(backup.manifest.get("compression", "")),
        data_bytes=backup.data_bytes,
        sidecar_bytes=backup.sidecar_bytes,
    )


def take_backup(
    repo: BackupRepository,
    adapter: SeriesBackup,
    *,
    store: str,
    subject: str | None,
    run_id: str,
    dag_id: str,
    logical_date: datetime | None,
    force: bool,
    stale_staging: timedelta,
    log: LogFn,
) -> BackupOutcome:
    with repo.writer_lock(store, subject, holder=f"{dag_id} run {run_id}"):
        for removed in repo.sweep(store, subject, older_than=stale_staging):
            log(f"swept stale staging folder {removed}")
        existing = repo.find_by_run(store, subject, run_id, dag_id=dag_id)
        if existing is not None and not force:
            outcome = _outcome(existing, 0.0, reused=True)
            log(outcome.summary() + " (Param force takes another)")
            return outcome
        started = time.monotonic()
        with repo.begin(store, subject, run_id=run_id, dag_id=dag_id, logical_date=logical_date) as staging:
            log(f"writing into staging folder {staging.path}")
            try:
                result = adapter.dump(staging.path, log)
                if not result.description:  # a drill would have nothing to judge the backup by
                    raise RepositoryError(f"{store}: the dump gave no description of what it holds")
                (staging.path / DESCRIPTION_FILE).write_text(
                    json.dumps(result.description, indent=1, sort_keys=True, default=str)
                )
                backup = staging.seal(result, check=lambda path, draft: adapter.check(path, draft, log))
            except Exception as exc:
                full = _space_error(exc, repo, staging.path, f"{store}/{subject}" if subject else store)
                if full is None:
                    raise
                raise full from exc
    outcome = _outcome(backup, time.monotonic() - started, reused=False)
    log(outcome.summary())
    return outcome


def source_description(backup: Backup) -> dict:
    """What the backup holds, as described when it was taken (the reference of drills and restores)."""
    return json.loads((backup.path / DESCRIPTION_FILE).read_text())


def expire(
    repo: BackupRepository,
    store: str,
    subject: str | None,
    policy: RetentionPolicy,
    *,
    run_id: str,
    dag_id: str,
    now: datetime,
    run_started_at: datetime | None,
    max_clock_skew: timedelta,
    max_delay: timedelta,
    dry_run: bool,
    log: LogFn,
    before_delete: Callable[[Backup], None] | None = None,
) -> dict:
    """Apply retention to a series after (and only after) this run's backup of it, and only
    when the clock agrees with the backups (:func:`~dbops.backup.retention.check_clock`)."""
    new = repo.find_by_run(store, subject, run_id, dag_id=dag_id)
    where = f"{store}/{subject}" if subject else store
    if new is None:
        raise RetentionRefused(f"retention of {where} not applied: this run made no complete backup of it")
    others = [b for b in repo.list(store, subject) if b.backup_id != new.backup_id]
    check_clock(
        now=now,
        new=new,
        newest_other=max(others, key=lambda b: b.taken_at, default=None),
        run_started_at=run_started_at,
        max_skew=max_clock_skew,
        max_delay=max_delay,
        where=where,
    )
    decisions = apply_retention(
        repo,
        store,
        subject,
        policy,
        now=now,
        new_backup_id=new.backup_id,
        dry_run=dry_run,
        log=log,
        before_delete=before_delete,
    )
    obsolete = [d.backup.backup_id for d in decisions if not d.keep]
    kept = [d.backup.backup_id for d in decisions if d.keep]
    verb = "would delete" if dry_run else "deleted"
    log(f"{where}: kept {len(kept)}, {verb} {len(obsolete)} ({policy.describe()})")
    return {"series": where, "kept": kept, "obsolete": obsolete, "dry_run": dry_run}
