"""Shipping and verifying: the steps of a sync, for any target.

ship: read the target's catalog; for every series of the chosen stores, ship the local
complete, verified backups that are not offsite yet and that offsite retention would
keep (the same policy for the series, :func:`dbops.offsite.retention.series_policy`: a
backup outside the offsite window and its tiers, or a PITR base backup outside the window,
is not shipped only to be expired), the newest first. A backup already offsite is never
sent again: a second sync with nothing new transfers nothing but the catalog's manifests.
An offsite backup with the same id and another manifest is a conflict and is never
overwritten.

verify: read the catalog again and check it against the manifests: every backup this
sync expected is complete offsite; every offsite backup's envelope matches its manifest
and every stored file has the recorded size, with nothing extra; the manifest of every
encrypted copy is authenticated by its ``manifest_mac`` (when the copy's key is at hand);
the backups shipped by this run (or all, with ``deep``) are checked by content (sha256
where the target can tell; with ``deep`` and the key, decrypted under each file's own
context). Any mismatch fails loudly, listing every problem.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dbops.backup.repository import Backup, BackupRepository, as_utc
from dbops.backup.retention import RetentionPolicy
from dbops.offsite.common import (
    CONTROL_FILES,
    Catalog,
    LogFn,
    OffsiteError,
    OffsiteVerificationError,
    SeriesKey,
    Target,
    TransferStats,
)
from dbops.offsite.crypto import HEADER_BYTES, TAG_BYTES, Encryption
from dbops.offsite.retention import judged, series_policy
from dbops.tools import human_bytes


def local_series(repo: BackupRepository, stores: Iterable[str]) -> list[SeriesKey]:
    """Every series of ``stores`` with at least one complete local backup."""
    found = []
    for store in stores:
        for subject in [None, *repo.subjects(store)]:
            if repo.list(store, subject):
                found.append(SeriesKey(store, subject))
    return found


@dataclass
class ShipPlan:
    to_ship: list[Backup] = field(default_factory=list)  # newest first
    present: list[Backup] = field(default_factory=list)
    not_shipped: list[tuple[Backup, str]] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    def expected(self) -> list[str]:
        """``series/backup_id`` of every backup that must be complete offsite after the sync."""
        return sorted(f"{SeriesKey.of(b)}/{b.backup_id}" for b in [*self.present, *self.to_ship])


def plan_shipping(
    repo: BackupRepository, catalog: Catalog, stores: Iterable[str], policy: RetentionPolicy, now: datetime
) -> ShipPlan:
    plan = ShipPlan()
    for key in local_series(repo, stores):
        offsite = catalog.backups.get(key, {})
        candidates = []
        for backup in repo.list(key.store, key.subject):
            there = offsite.get(backup.backup_id)
            if there is not None:
                if there.manifest_sha256 != backup.manifest.get("manifest_sha256"):
                    plan.conflicts.append(
                        f"{key}/{backup.backup_id}: offsite holds a backup with this id and another manifest"
                    )
                else:
                    plan.present.append(backup)
            elif not backup.verified:
                plan.not_shipped.append((backup, "its latest verify/drill failed: not shipped"))
            else:
                candidates.append(backup)
        if not candidates:
            continue
        local_by_id = {b.backup_id: b for b in repo.list(key.store, key.subject)}
        what_if = [judged(o, local_by_id.get(o.backup_id)) for o in offsite.values()] + candidates
        judge = series_policy(policy, key)  # as offsite retention judges the series (no tiers for PITR bases)
        decisions = {d.backup.backup_id: d for d in judge.evaluate(what_if, now)}
        for backup in candidates:
            decision = decisions[backup.backup_id]
            if decision.keep:
                plan.to_ship.append(backup)
            else:
                plan.not_shipped.append((backup, f"offsite retention would expire it at once: {decision.reason}"))
    plan.to_ship.sort(key=lambda b: b.sort_key, reverse=True)
    return plan


def ship_all(
    target: Target,
    repo: BackupRepository,
    stores: Iterable[str],
    policy: RetentionPolicy,
    *,
    encryption: Encryption | None,
    now: datetime,
    dry_run: bool,
    log: LogFn,
) -> dict:
    """Ship what the plan says; returns the report (XCom). Raises after trying every
    backup if any arrival check failed; a transport failure stops at once (the rerun
    resumes where it stopped)."""
    now = as_utc(now, "now")
    stores = list(stores)
    catalog = target.catalog(log)
    plan = plan_shipping(repo, catalog, stores, policy, now)
    if plan.conflicts:
        raise OffsiteError(f"{target.name}: refusing to overwrite offsite backups:\n  " + "\n  ".join(plan.conflicts))
    for backup, why in plan.not_shipped:
        log(f"not shipping {SeriesKey.of(backup)}/{backup.backup_id}: {why}")
    pending = sum(b.total_bytes for b in plan.to_ship)
    log(
        f"{target.name}: {len(plan.present)} backups already offsite, {len(plan.to_ship)} to ship "
        f"({human_bytes(pending)}){' [dry run]' if dry_run else ''}"
    )
    totals = TransferStats()
    shipped, failed = [], []
    if not dry_run:
        for backup in plan.to_ship:
            where = f"{SeriesKey.of(backup)}/{backup.backup_id}"
            try:
                _envelope, stats = target.ship(backup, encryption, log)
            except OffsiteVerificationError as exc:
                log(f"FAILED {where}: {exc}")
                failed.append(f"{where}: {exc}")
                continue
            totals.add(stats)
            shipped.append({"backup": where, "bytes": backup.total_bytes, **stats.to_dict()})
    else:
        for backup in plan.to_ship:
            log(f"dry run: would ship {SeriesKey.of(backup)}/{backup.backup_id} ({human_bytes(backup.total_bytes)})")
    report: dict[str, Any] = {
        "target": target.name,
        "location": target.location(),
        "dry_run": dry_run,
        "stores": stores,
        "shipped": [s["backup"] for s in shipped],
        "would_ship": [f"{SeriesKey.of(b)}/{b.backup_id}" for b in plan.to_ship] if dry_run else [],
        "present": len(plan.present),
        "not_shipped": {f"{SeriesKey.of(b)}/{b.backup_id}": why for b, why in plan.not_shipped},
        "expected": [] if dry_run else plan.expected(),
        "transfers": shipped,
        "bytes": totals.to_dict(),
        "catalog_bytes": catalog.wire_bytes,
        "wire_bytes": totals.bytes_sent + totals.bytes_received + catalog.wire_bytes,
    }
    report["summary"] = (
        f"{target.name}: shipped {len(shipped)} backups ({human_bytes(totals.literal_bytes)} of data, "
        f"{human_bytes(report['wire_bytes'])} on the wire incl. catalog), {len(plan.present)} already offsite"
    )
    log(report["summary"])
    if failed:
        raise OffsiteVerificationError(f"{target.name}: {len(failed)} backups failed their arrival check", failed)
    return report


def _expected_stored_size(plain_bytes: int, encryption: Mapping[str, Any] | None) -> int:
    if not encryption:
        return plain_bytes
    chunk = int(encryption.get("chunk_bytes", 0))
    if chunk <= 0:
        return -1
    full, rest = divmod(plain_bytes, chunk)
    return HEADER_BYTES + full * (chunk + TAG_BYTES) + rest + TAG_BYTES


def verify_all(
    target: Target,
    repo: BackupRepository,
    stores: Iterable[str],
    *,
    expected: Iterable[str],
    shipped: Iterable[str],
    deep: bool,
    encryption: Encryption | None,
    log: LogFn,
) -> dict:
    """Check the target against the manifests (see the module docstring)."""
    stores = set(stores)
    shipped = set(shipped)
    catalog = target.catalog(log)
    problems: list[str] = []
    for name in sorted(set(expected)):
        series, _, backup_id = name.rpartition("/")
        parts = series.split("/")
        key = SeriesKey(parts[0], parts[1] if len(parts) > 1 else None)
        if catalog.get(key, backup_id) is None:
            problems.append(f"{name}: not complete offsite after the sync")
    checked = content_checked = 0
    authenticated: list[str] = []
    unauthenticated: dict[str, str] = {}  # where -> why the manifest mac could not be checked
    for item in catalog.all():
        if item.key.store not in stores:
            continue
        where = f"{item.key}/{item.backup_id}"
        checked += 1
        local = next((b for b in repo.list(item.key.store, item.key.subject) if b.backup_id == item.backup_id), None)
        if local is not None and local.manifest.get("manifest_sha256") != item.manifest_sha256:
            problems.append(f"{where}: the offsite manifest differs from the local one")
        if item.envelope is None:
            problems.append(f"{where}: {item.envelope_problem}")
            continue
        problems += [f"{where}: {p}" for p in item.envelope.check_against(item.backup.manifest)]
        why = _mac_not_checkable(item.envelope, encryption)
        if why:
            unauthenticated[where] = why
        elif item.envelope.encryption or item.envelope.manifest_mac:
            bad = item.envelope.check_manifest_mac(item.manifest_bytes, encryption)
            problems += [f"{where}: {p}" for p in bad]
            if not bad:
                authenticated.append(where)
        sizes = catalog.sizes.get((item.key, item.backup_id), {})
        stored = {f.stored_path for f in item.envelope.files}
        for f in item.envelope.files:
            want = _expected_stored_size(f.plain_bytes, item.envelope.encryption)
            if f.bytes != want:
                problems.append(f"{where}: {f.stored_path} recorded as {f.bytes} bytes, the format gives {want}")
            if f.stored_path not in sizes:
                problems.append(f"{where}: {f.stored_path} missing")
            elif sizes[f.stored_path] != f.bytes:
                problems.append(f"{where}: {f.stored_path} is {sizes[f.stored_path]} bytes, expected {f.bytes}")
        for extra in sorted(set(sizes) - stored - set(CONTROL_FILES)):
            problems.append(f"{where}: {extra} is not part of the backup")
        if deep or where in shipped:
            content_checked += 1
            problems += [
                f"{where}: {p}" for p in target.verify_content(item, deep=deep, encryption=encryption, log=log)
            ]
    summary = (
        f"{target.name}: {checked} offsite backups match their manifests (sizes), "
        f"{content_checked} checked by content{' (deep)' if deep else ''}, "
        f"{len(authenticated)} encrypted manifests authenticated"
        + (f", {len(unauthenticated)} manifests NOT authenticated" if unauthenticated else "")
    )
    for where, why in sorted(unauthenticated.items()):
        log(f"{where}: manifest not authenticated: {why}")
    if problems:
        raise OffsiteVerificationError(f"{target.name} ({target.location()}): {len(problems)} problems", problems)
    log(summary)
    return {
        "target": target.name,
        "checked": checked,
        "content_checked": content_checked,
        "deep": deep,
        "authenticated": len(authenticated),
        "unauthenticated": unauthenticated,
        "summary": summary,
    }


def _mac_not_checkable(envelope, encryption: Encryption | None) -> str | None:
    """Why the manifest mac of an encrypted copy cannot be checked by this verify (the
    copy itself may be fine: encryption turned off, a rotated key, a copy made before
    macs existed), or None. A missing or wrong mac is not this: it is a problem."""
    if not envelope.encryption:
        return None if envelope.manifest_mac is None or encryption is not None else "no encryption key configured"
    if envelope.legacy_unauthenticated:
        return f"shipped as {envelope.encryption.get('scheme')} before manifests were authenticated"
    if encryption is None:
        return "encrypted, and no encryption key configured"
    if envelope.encryption.get("key_id") != encryption.key_id:
        return f"encrypted with key id {envelope.encryption.get('key_id')}, the configured key is {encryption.key_id}"
    return None
