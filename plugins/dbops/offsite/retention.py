"""Offsite retention: the local policy (:class:`RetentionPolicy`) applied to a target's copy.

* The same rules as locally, with the offsite numbers (``offsite.retention_days``,
  ``min_keep``, ``keep_weekly``, ``keep_monthly``): the window, the weekly and monthly
  tiers and the newest ``min_keep`` verified backups. An offsite copy counts as verified
  when its arrival was checked (a valid ``offsite.json`` matching its manifest) and the
  local copy, if still there, is not known bad (a failed verify or drill).
* The base backups of point-in-time recovery (``postgres_pitr``) get no tiers offsite, as
  locally (:mod:`dbops.pitr.retention`): a base backup far older than the window would
  hold the offsite WAL chain to it (:func:`series_policy`).
* Pins: a backup pinned locally (its ``pin`` sidecar) or in the target's ``pins.json``
  (:mod:`dbops.offsite.pins`) is never deleted offsite. An unreadable ``pins.json``
  refuses retention on that target (nothing deleted).
* Offsite retention is independent of local deletions (no ``rsync --delete``
  mirroring): a backup deleted locally stays offsite until the offsite policy expires
  it, and a backup missing locally is never deleted while it is inside the window.
* pgBackRest's rule, offsite: a series is expired only when its newest verified local
  backup is complete offsite (this run's sync arrived). Otherwise nothing of it is
  deleted, and the reason is reported.
* Incomplete entries (remote staging, S3 folders without a manifest) are removed only
  when nothing will resume them: their backup is complete offsite already, or it is
  gone locally and they were untouched for ``stale_after``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from dbops.backup.repository import Backup, BackupRepository, as_utc, format_time
from dbops.backup.retention import RetentionPolicy
from dbops.offsite.common import Catalog, FileTarget, LogFn, OffsiteBackup, SeriesKey, StagingEntry, Target
from dbops.offsite.pins import read_pins, series_pins
from dbops.pitr.wal import BASE_STORE


@dataclass(frozen=True)
class OffsiteDecision:
    key: SeriesKey
    backup_id: str
    keep: bool
    reason: str
    local: bool  # a complete copy exists in the local repository

    def line(self) -> str:
        where = "" if self.local else " (missing locally)"
        return f"{'keep' if self.keep else 'delete'} {self.key}/{self.backup_id}{where}: {self.reason}"


def series_policy(policy: RetentionPolicy, key: SeriesKey) -> RetentionPolicy:
    """The policy for one series offsite: without the weekly and monthly tiers for the PITR
    base backups (their WAL retention keeps the chain from the oldest kept one)."""
    if key.store == BASE_STORE and (policy.keep_weekly or policy.keep_monthly):
        return dataclasses.replace(policy, keep_weekly=0, keep_monthly=0)
    return policy


def judged(item: OffsiteBackup, local: Backup | None) -> Backup:
    """The offsite copy as a Backup the policy can judge: ``verified`` means it arrived
    intact and the local copy (if any) is not known bad; the local copy's pin comes along."""
    ok = item.envelope is not None and not item.envelope.check_against(item.backup.manifest)
    if local is not None and not local.verified:
        ok = False
    at = item.envelope.shipped_at if item.envelope is not None else item.backup.finished_at
    sidecars: dict[str, Any] = {"verify": {"ok": ok, "at": format_time(at)}}
    if local is not None and "pin" in local.sidecars:
        sidecars["pin"] = local.sidecars["pin"]
    return dataclasses.replace(item.backup, sidecars=sidecars)


def plan_series(
    key: SeriesKey,
    offsite: Iterable[OffsiteBackup],
    local: Iterable[Backup],
    policy: RetentionPolicy,
    now: datetime,
    pins: dict[str, str] | None = None,
) -> tuple[list[OffsiteDecision], str | None]:
    """One decision per offsite backup of the series (oldest first), and why retention
    is refused for the series (None when it may delete). ``pins``: the series' pins in
    the target's pins.json (backup id -> reason); local pins come with the local backups."""
    now = as_utc(now, "now")
    offsite = list(offsite)
    local_by_id = {b.backup_id: b for b in local}
    offsite_by_id = {o.backup_id: o for o in offsite}
    verified_local = sorted((b for b in local_by_id.values() if b.verified), key=lambda b: b.sort_key)
    refused = None
    if not verified_local:
        refused = "no verified local backup of this series: the offsite copies may be the only ones"
    else:
        newest = verified_local[-1]
        arrived = offsite_by_id.get(newest.backup_id)
        if arrived is None or not judged(arrived, newest).verified:
            refused = f"the newest local backup {newest.backup_id} is not complete offsite yet"
    decisions = []
    for d in policy.evaluate([judged(o, local_by_id.get(o.backup_id)) for o in offsite], now, pins=pins):
        backup = d.backup
        is_local = backup.backup_id in local_by_id
        keep, reason = d.keep, d.reason
        if not keep and not is_local and now - backup.finished_at < policy.window:
            keep, reason = True, f"missing locally and inside the {policy.retention_days}-day window"  # guard
        if not keep and refused:
            keep, reason = True, f"retention refused ({refused}); the policy would delete it: {reason}"
        decisions.append(OffsiteDecision(key, backup.backup_id, keep, reason, is_local))
    return decisions, refused


def incomplete_to_remove(
    catalog: Catalog, repo: BackupRepository, *, stale_after: timedelta, now: datetime
) -> list[tuple[StagingEntry, str]]:
    """Incomplete entries nothing will resume, with the reason."""
    now = as_utc(now, "now")
    found = []
    for entry in catalog.staging:
        if catalog.get(entry.key, entry.name) is not None:
            found.append((entry, "its backup is complete offsite"))
            continue
        local_ids = {b.backup_id for b in repo.list(entry.key.store, entry.key.subject)}
        stale = entry.modified is None or now - entry.modified >= stale_after
        if entry.name not in local_ids and stale:
            found.append((entry, f"no local backup {entry.name} to resume it, untouched for {stale_after}"))
    return found


def apply_offsite_retention(
    target: Target,
    catalog: Catalog,
    repo: BackupRepository,
    stores: Iterable[str],
    policy: RetentionPolicy,
    *,
    now: datetime,
    dry_run: bool,
    stale_after: timedelta,
    log: LogFn,
) -> dict:
    """Evaluate and (unless ``dry_run``) apply the policy to every series of ``stores``
    on the target; returns what was kept, deleted (or would be) and refused. The target's
    pins.json is read first: unreadable, nothing is deleted (PinsUnreadable)."""
    stores = set(stores)
    pins = read_pins(cast(FileTarget, target), log)  # every concrete target (rsync, S3) is a FileTarget too
    verb = "would delete" if dry_run else "deleted"
    report: dict = {"target": target.name, "dry_run": dry_run, "series": [], "incomplete_removed": []}
    for key in catalog.series():
        if key.store not in stores:
            continue
        offsite = list(catalog.backups[key].values())
        judge = series_policy(policy, key)
        decisions, refused = plan_series(
            key, offsite, repo.list(key.store, key.subject), judge, now, series_pins(pins, key)
        )
        deleted = []
        for d in decisions:
            log(("dry run: " if dry_run and not d.keep else "") + d.line())
            if d.keep:
                continue
            if not dry_run:
                target.delete(d.key, d.backup_id, log)
            deleted.append(d.backup_id)
        if refused:
            log(f"{key}: offsite retention refused, nothing deleted: {refused}")
        kept = [d.backup_id for d in decisions if d.keep]
        log(f"{key} on {target.name}: kept {len(kept)}, {verb} {len(deleted)} ({judge.describe()})")
        report["series"].append(
            {
                "series": key.rel,
                "kept": kept,
                "obsolete": deleted,
                "refused": refused,
                "missing_locally": [d.backup_id for d in decisions if not d.local],
                "pinned": [d.backup_id for d in decisions if d.reason.startswith("pinned: ")],
            }
        )
    for entry, why in incomplete_to_remove(catalog, repo, stale_after=stale_after, now=now):
        if entry.key.store not in stores:
            continue
        log(f"{'dry run: would remove' if dry_run else 'removing'} incomplete {entry.key}/{entry.name}: {why}")
        if not dry_run:
            target.remove_incomplete(entry, log)
        report["incomplete_removed"].append(f"{entry.key}/{entry.name}")
    if not dry_run:
        report["housekeeping"] = target.housekeeping(stale_after, as_utc(now, "now"), log)
    return report
