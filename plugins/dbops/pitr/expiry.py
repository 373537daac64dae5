"""Applying point-in-time retention: base backups first, then the WAL no kept one needs.

The decisions are :func:`dbops.pitr.retention.plan_wal_retention` (pure); this module
holds them against the clock (as every retention of dbops does) and deletes in the safe
order: a crash after the base backups went and before the WAL did leaves only WAL that
the next run removes, never a base backup without its WAL. No Airflow here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from dbops.backup.repository import Backup, BackupRepository
from dbops.backup.retention import RetentionRefused, check_clock, pin_reason
from dbops.pitr.retention import BaseInfo, plan_wal_retention
from dbops.pitr.wal import BASE_STORE, WalArchive

LogFn = Callable[[str], None]


def base_info(backup: Backup) -> BaseInfo:
    """Retention's view of a base backup: its place in the WAL (manifest details), its
    verdict, and whether a ``pin`` sidecar holds it (``dbops_pin``; an unreadable one holds it too)."""
    return BaseInfo.of(
        backup.backup_id,
        backup.taken_at,
        backup.manifest.get("details") or {},
        verified=backup.verified,
        pinned=pin_reason(backup) is not None,
    )


def expire_pitr(
    repo: BackupRepository,
    archive: WalArchive,
    *,
    new_backup_id: str,
    retention_days: int,
    min_keep: int,
    now: datetime,
    run_started_at: datetime | None,
    max_clock_skew: timedelta,
    max_delay: timedelta,
    dry_run: bool,
    log: LogFn,
) -> dict[str, Any]:
    """Retention after this run's base backup ``new_backup_id`` (and only after it)."""
    backups = repo.list(BASE_STORE)
    new = next((b for b in backups if b.backup_id == new_backup_id), None)
    if new is None:
        raise RetentionRefused(
            f"retention of {BASE_STORE} not applied: this run's base backup {new_backup_id} is not in the repository"
        )
    check_clock(
        now=now,
        new=new,
        newest_other=max((b for b in backups if b is not new), key=lambda b: b.taken_at, default=None),
        run_started_at=run_started_at,
        max_skew=max_clock_skew,
        max_delay=max_delay,
        where=BASE_STORE,
    )
    plan = plan_wal_retention(
        [base_info(b) for b in backups],
        archive.entries(),
        now=now,
        retention_days=retention_days,
        min_keep=min_keep,
        segment_size=archive.segment_size,
    )
    for backup_id, reason in plan.backup_reasons.items():
        log(f"base backup {backup_id}: {reason}")
    for reason in plan.reasons:
        log(f"WAL: {reason}")
    expired = [b.backup_id for b in plan.expire_backups]
    files = [e.file for e in plan.expire_entries]
    if dry_run:
        log(f"dry run: would delete {len(expired)} base backup(s) {expired} and {len(files)} WAL file(s)")
        return {"dry_run": True, "expired_backups": expired, "expired_wal": len(files)}
    by_id = {b.backup_id: b for b in backups}
    for backup_id in expired:  # base backups first: WAL left over is harmless, the reverse is not
        repo.delete(by_id[backup_id])
        log(f"deleted base backup {backup_id}")
    removed = archive.remove(plan.expire_entries)
    log(
        f"deleted {len(removed)} WAL file(s) no kept base backup needs"
        + (f" ({removed[0]} .. {removed[-1]})" if removed else "")
    )
    return {
        "dry_run": False,
        "expired_backups": expired,
        "expired_wal": len(removed),
        "kept_backups": [b.backup_id for b in plan.keep_backups],
    }
