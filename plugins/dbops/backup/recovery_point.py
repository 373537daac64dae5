"""Recovery-point monitoring: how old is the newest thing each store could be recovered from?

Barman's ``last_backup_maximum_age``, for every store and every place a backup lives. From
facts gathered elsewhere (the repository listing, the offsite catalogs' newest copies, the
drill results beside the backups, the last run of ``dbops_nightly_backup``, leftovers in the
staging folders, the repository's free space, the WAL check's ``check.json``) and ``now``,
:func:`evaluate` gives every store a status:

- ``green``: every check passed;
- ``late``: a warning: a figure is past ``late_fraction`` of its limit, a copy or a drill of a
  new series is still to come, a staging leftover waits for its sweep, free space holds the
  next backup but not the one after;
- ``failed``: an age over its limit, a failed run or drill, no backup at all, a time in the
  future beyond the allowed clock skew (a clock problem is never green), too little disk.

Nothing found is never a pass: a store without backups fails, no store to check fails, a
series never drilled fails once it is older than the drill limit. :func:`collect_local`
reads the local facts (repository and files beside it, no network); the offsite catalogs and
the DagRun table are read by the callers (task or page), which pass plain values in.

No Airflow import here: the task (``dbops.tasks.recovery_point``) and the DB Ops page
(``dbops.status.recovery_point``) build on this.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dbops.backup.repository import (
    DELETING_DIR,
    STAGING_DIR,
    UTC,
    Backup,
    BackupRepository,
    _tree_mtime,
    as_utc,
    format_time,
    parse_time,
)

GREEN, LATE, FAILED = "green", "late", "failed"
# a store not backed up at all by configuration (no connection for an optional store)
OFF = "off"
SEVERITY = {GREEN: 0, LATE: 1, FAILED: 2}
NIGHTLY_DAG = "dbops_nightly_backup"
# what dbops_recovery_check writes: the result in <backup.root>, the metrics beside the monitor's
RESULT_FILE = "recovery_point.json"
METRICS_FILE = "dbops_recovery_point.prom"
BASE_STORE = "postgres_pitr"  # dbops.pitr.wal.BASE_STORE (not imported: no pitr import in the core)
WAL_DIR = "postgres_wal"
WAL_CHECK_FILE = "check.json"
# Stores a missing connection turns off instead of failing the nightly run (the adapter
# raises StoreNotConfigured and the backup task skips, saying so).
OPTIONAL_STORES = ("weaviate",)

# check names (the ``check`` of every result, the label of the metrics)
BACKUP_AGE = "backup_age"
BACKUP_CLOCK = "backup_clock"
UNVERIFIED = "newest_unverified"
OFFSITE_AGE = "offsite_age"
DRILL_AGE = "drill_age"
NIGHTLY_RUN = "nightly_run"
STAGING = "staging_leftovers"
DISK = "disk_free"
PITR_BASE_AGE = "pitr_base_backup_age"
PITR_DRILL_AGE = "pitr_drill_age"
WAL_CHECK = "wal_check"
NO_STORES = "no_stores"
DR_DRILL_AGE = "dr_drill_age"
# what dbops_dr_drill writes in the fetch root (outside backup.root: the DR drill runs without it)
DR_DRILL_FILE = "dr_drill.json"


@dataclass(frozen=True, kw_only=True)
class Limits:
    """The thresholds (``recovery_point.*`` and ``backup.*`` of the config)."""

    max_backup_age_hours: float = 26.0
    max_offsite_age_hours: float = 50.0
    max_drill_age_days: float = 8.0
    # the last passed disaster-recovery drill of every store from every offsite target (monthly)
    max_dr_drill_age_days: float = 35.0
    max_base_backup_age_hours: float = 26.0
    # the last WAL check is stale after this (it runs every 15 minutes)
    max_wal_check_age_minutes: float = 45.0
    # the newest nightly run must have been scheduled at most this long ago
    max_nightly_gap_hours: float = 26.0
    stale_staging_hours: float = 12.0
    max_clock_skew_minutes: float = 15.0
    # an age past this fraction of its limit is late (a warning)
    late_fraction: float = 0.95
    # the next backups are expected as big as the newest ones plus this fraction
    disk_margin: float = 0.25

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"recovery-point limit {name} must be a number >= 0, got {value!r}")
        if not 0 < self.late_fraction <= 1:
            raise ValueError(f"late_fraction must be in (0, 1], got {self.late_fraction!r}")

    @classmethod
    def from_config(cls, config: Any) -> Limits:
        """The limits of a :class:`dbops.config.DbopsConfig`."""
        rp = config.recovery_point
        return cls(
            max_backup_age_hours=rp.max_backup_age_hours,
            max_offsite_age_hours=rp.max_offsite_age_hours,
            max_drill_age_days=rp.max_drill_age_days,
            max_dr_drill_age_days=rp.max_dr_drill_age_days,
            max_base_backup_age_hours=rp.max_base_backup_age_hours,
            max_wal_check_age_minutes=rp.max_wal_check_age_minutes,
            max_nightly_gap_hours=rp.max_nightly_gap_hours,
            stale_staging_hours=config.backup.stale_staging_hours,
            max_clock_skew_minutes=config.backup.max_clock_skew_minutes,
            late_fraction=rp.late_fraction,
            disk_margin=rp.disk_margin,
        )


# --------------------------------------------------------------------------- the facts


@dataclass(frozen=True)
class OffsiteCopy:
    """The newest usable copy of one series on one target (as its catalog lists it)."""

    store: str
    subject: str | None
    backup_id: str
    finished_at: datetime  # when the copied backup finished: the data's age
    shipped_at: datetime | None = None


@dataclass(frozen=True)
class NightlyRun:
    """The newest run of ``dbops_nightly_backup`` by logical date (not a backfill: those back
    up nothing; not a run triggered without a logical date: not a scheduled night)."""

    run_id: str
    state: str
    scheduled_at: datetime  # logical date (run_after when there is none)
    start_date: datetime | None = None
    end_date: datetime | None = None
    failed_tasks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Leftover:
    """A folder in a series' ``.staging`` or ``.deleting`` and when anything in it last changed."""

    store: str
    path: Path
    modified: datetime


@dataclass(frozen=True)
class LocalFacts:
    """What :func:`collect_local` read: per store its series' backups (or the error reading
    them), the leftovers, the disk, and for PITR the base backups and the last WAL check."""

    series: dict[str, dict[str | None, list[Backup]] | str]
    leftovers: list[Leftover] = field(default_factory=list)
    disk_free_bytes: int | None = None
    disk_error: str | None = None
    base_backups: list[Backup] | str | None = None  # None: PITR off
    wal_check: Mapping[str, Any] | None = None
    wal_check_error: str | None = None


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip() or type(exc).__name__}"


def _leftovers(repo: BackupRepository, store: str, folder_store: str, subjects: Iterable[str | None]) -> list[Leftover]:
    found = []
    for subject in subjects:
        series = repo.series_path(folder_store, subject)
        for sub in (STAGING_DIR, DELETING_DIR):
            folder = series / sub
            if not folder.is_dir() or folder.is_symlink():
                continue
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                try:
                    modified = datetime.fromtimestamp(_tree_mtime(Path(entry.path)), tz=UTC)
                except FileNotFoundError:
                    continue
                found.append(Leftover(store, Path(entry.path), modified))
    return found


def collect_local(repo: BackupRepository, stores: Sequence[str], *, pitr_enabled: bool) -> LocalFacts:
    """The local facts of ``stores``: every complete backup per series, staging and deleting
    leftovers, the free space of the repository's file system and, when PITR is on, the base
    backups and ``postgres_wal/check.json``. A store that cannot be read keeps its error."""
    series: dict[str, dict[str | None, list[Backup]] | str] = {}
    leftovers: list[Leftover] = []
    for store in stores:
        try:
            subjects = [None, *repo.subjects(store)]
            listed = {s: repo.list(store, s) for s in subjects}
            series[store] = {s: b for s, b in listed.items() if b or s is not None}
            leftovers += _leftovers(repo, store, store, subjects)
        except (OSError, ValueError, RuntimeError) as exc:
            series[store] = _error(exc)
    free, disk_error = None, None
    try:
        free = shutil.disk_usage(repo.root).free
    except OSError as exc:
        disk_error = _error(exc)
    bases: list[Backup] | str | None = None
    wal_check, wal_error = None, None
    if pitr_enabled:
        try:
            bases = repo.list(BASE_STORE)
            leftovers += _leftovers(repo, "postgres", BASE_STORE, [None])
        except (OSError, ValueError, RuntimeError) as exc:
            bases = _error(exc)
        path = repo.root / WAL_DIR / WAL_CHECK_FILE
        try:
            wal_check = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(wal_check, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            wal_check = None
        except (OSError, ValueError) as exc:
            wal_check, wal_error = None, f"{path} unreadable: {_error(exc)}"
    return LocalFacts(
        series=series,
        leftovers=leftovers,
        disk_free_bytes=free,
        disk_error=disk_error,
        base_backups=bases,
        wal_check=wal_check,
        wal_check_error=wal_error,
    )


def newest_copies(catalog: Any) -> list[OffsiteCopy]:
    """The newest usable copy of every series in an offsite catalog
    (:class:`dbops.offsite.common.Catalog`): complete, with an envelope, its manifest's
    checks passed. Copies whose envelope is missing or unreadable do not count."""
    newest: dict[tuple[str, str | None], OffsiteCopy] = {}
    for item in catalog.all():  # oldest first within a series
        backup = item.backup
        if item.envelope is None or not backup.verified:
            continue
        newest[(backup.store, backup.subject)] = OffsiteCopy(
            backup.store,
            backup.subject,
            backup.backup_id,
            backup.finished_at,
            getattr(item.envelope, "shipped_at", None),
        )
    return list(newest.values())


def unconfigured_stores(
    stores: Iterable[str], connection_ids: Mapping[str, str], exists: Callable[[str], bool]
) -> dict[str, str]:
    """The optional stores among ``stores`` that have no connection, with the reason
    (the nightly backup skips them; they are shown as off, never as green)."""
    off = {}
    for store in stores:
        conn_id = connection_ids.get(store)
        if store in OPTIONAL_STORES and conn_id and not exists(conn_id):
            off[store] = f"not backed up: no Airflow connection {conn_id!r}"
    return off


# --------------------------------------------------------------------------- evaluation


@dataclass
class Check:
    check: str
    store: str | None  # None: every store (nightly run, disk)
    status: str
    reason: str
    series: str | None = None
    target: str | None = None
    age_s: float | None = None
    limit_s: float | None = None
    at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def human(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


def size_text(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def series_label(store: str, subject: str | None) -> str:
    return store if subject is None else f"{store}/{subject}"


class _Evaluation:
    def __init__(self, limits: Limits, now: datetime) -> None:
        self.limits = limits
        self.now = as_utc(now, "now")
        self.skew_s = limits.max_clock_skew_minutes * 60
        self.checks: list[Check] = []
        self.disk: dict[str, int] | None = None

    def add(self, check: str, store: str | None, status: str, reason: str, **extra: Any) -> Check:
        found = Check(check, store, status, reason, **extra)
        self.checks.append(found)
        return found

    def future(self, at: datetime) -> bool:
        return (at - self.now).total_seconds() > self.skew_s

    def clock_reason(self, what: str, at: datetime) -> str:
        return (
            f"clock problem: {what} is dated {format_time(at)}, {human((at - self.now).total_seconds())} ahead of "
            f"this clock ({format_time(self.now)}; more than backup.max_clock_skew_minutes = "
            f"{self.limits.max_clock_skew_minutes:g}): fix the clocks, an age cannot be trusted"
        )

    def age(
        self,
        check: str,
        store: str | None,
        what: str,
        at: datetime | None,
        limit_s: float,
        *,
        missing: str,
        grace_since: datetime | None = None,
        setting: str,
        **extra: Any,
    ) -> Check:
        """An age check: failed over ``limit_s``, late past ``late_fraction`` of it, failed for
        a time in the future. Nothing there (``at`` None) fails, unless the series itself is
        younger than the limit (``grace_since``): then it is late (still to come)."""
        if at is None:
            series_age = None if grace_since is None else (self.now - grace_since).total_seconds()
            if series_age is not None and series_age <= limit_s:
                return self.add(
                    check,
                    store,
                    LATE,
                    f"{missing} yet (the series is {human(series_age)} old, {setting} = {human(limit_s)})",
                    limit_s=limit_s,
                    **extra,
                )
            return self.add(check, store, FAILED, missing, limit_s=limit_s, **extra)
        age_s = (self.now - at).total_seconds()
        common = {"age_s": round(age_s, 1), "limit_s": limit_s, "at": format_time(at), **extra}
        if self.future(at):
            return self.add(check, store, FAILED, self.clock_reason(what, at), **common)
        text = f"{what} is {human(max(age_s, 0))} old"
        if age_s > limit_s:
            return self.add(check, store, FAILED, f"{text}: over {setting} = {human(limit_s)}", **common)
        if age_s > self.limits.late_fraction * limit_s:
            return self.add(check, store, LATE, f"{text}: close to {setting} = {human(limit_s)}", **common)
        return self.add(check, store, GREEN, f"{text} (limit {human(limit_s)})", **common)


def _drill_time(result: Mapping[str, Any]) -> datetime | None:
    try:
        return parse_time(result["at"])
    except (KeyError, TypeError, ValueError):
        return None


def _drills(backups: Iterable[Backup]) -> list[tuple[datetime | None, Mapping[str, Any], Backup]]:
    return [(_drill_time(b.sidecars["drill"]), b.sidecars["drill"], b) for b in backups if "drill" in b.sidecars]


def _check_drills(
    ev: _Evaluation, check: str, store: str, label: str, backups: list[Backup], limit_s: float, setting: str
) -> None:
    """The newest drill must have passed; the newest passed drill must be younger than the
    limit. An unreadable drill time counts as a failed drill (never as a pass)."""
    drills = _drills(backups)
    unreadable = [d for at, d, b in drills if at is None]
    dated = sorted(((at, d, b) for at, d, b in drills if at is not None), key=lambda x: x[0])
    if unreadable:
        ev.add(check, store, FAILED, f"a drill result of {label} has no readable time", series=label)
    if dated and dated[-1][1].get("ok") is not True:
        at, result, backup = dated[-1]
        found = "; ".join(str(x) for x in (result.get("differences") or [])[:3]) or str(result.get("detail") or "")
        ev.add(
            check,
            store,
            FAILED,
            f"the last drill of {label} (backup {backup.backup_id}, {format_time(at)}) failed"
            + (f": {found}" if found else ""),
            series=label,
            at=format_time(at),
        )
        return
    passed = [at for at, d, _b in dated if d.get("ok") is True]
    first = min((b.finished_at for b in backups), default=None)
    ev.age(
        check,
        store,
        f"the last passed drill of {label}",
        passed[-1] if passed else None,
        limit_s,
        missing=f"no passed drill of {label}",
        grace_since=first,
        setting=setting,
        series=label,
    )


def _store_facts(
    ev: _Evaluation,
    store: str,
    series: Mapping[str | None, list[Backup]],
    *,
    drilled: bool,
    ignore: set[str],
    offsite: Mapping[str, list[OffsiteCopy] | str],
    root: str,
) -> list[Backup]:
    """The checks of one store's series; returns the newest backup of each checked series."""
    lim = ev.limits
    checked = {s: b for s, b in series.items() if b and series_label(store, s) not in ignore}
    if not checked:
        ev.add(BACKUP_AGE, store, FAILED, f"no backup of {store} in {root}: nothing to recover from", series=store)
        return []
    newest = []
    for subject, backups in sorted(checked.items(), key=lambda kv: kv[0] or ""):
        label = series_label(store, subject)
        backups = sorted(backups, key=lambda b: b.sort_key)
        newest.append(backups[-1])
        future = [b for b in backups if ev.future(b.finished_at)]
        if future:
            ev.add(
                BACKUP_CLOCK,
                store,
                FAILED,
                ev.clock_reason(f"backup {label}/{future[-1].backup_id}", future[-1].finished_at),
                series=label,
            )
        good = [b for b in backups if b.verified and not ev.future(b.finished_at)]
        ev.age(
            BACKUP_AGE,
            store,
            f"the newest verified backup of {label} ({good[-1].backup_id})" if good else label,
            good[-1].finished_at if good else None,
            lim.max_backup_age_hours * 3600,
            missing=f"no verified backup of {label} (newest {backups[-1].backup_id} is not verified)",
            setting="recovery_point.max_backup_age_hours",
            series=label,
        )
        if good and backups[-1].sort_key > good[-1].sort_key and not ev.future(backups[-1].finished_at):
            ev.add(
                UNVERIFIED,
                store,
                LATE,
                f"the newest backup of {label} ({backups[-1].backup_id}) is not verified: "
                f"the recovery point is {good[-1].backup_id}",
                series=label,
            )
        if drilled:
            _check_drills(
                ev,
                DRILL_AGE,
                store,
                label,
                backups,
                lim.max_drill_age_days * 86400,
                "recovery_point.max_drill_age_days",
            )
        for target, copies in sorted(offsite.items()):
            if isinstance(copies, str):
                continue  # one failure per target, added by the caller
            copy = next((c for c in copies if c.store == store and c.subject == subject), None)
            ev.age(
                OFFSITE_AGE,
                store,
                f"the newest copy of {label} on {target} ({copy.backup_id})" if copy else label,
                copy.finished_at if copy else None,
                lim.max_offsite_age_hours * 3600,
                missing=f"no copy of {label} on offsite target {target}",
                grace_since=backups[0].finished_at,
                setting="recovery_point.max_offsite_age_hours",
                series=label,
                target=target,
            )
    return newest


def _nightly(ev: _Evaluation, run: NightlyRun | None, error: str | None, stores: Sequence[str]) -> None:
    limit_s = ev.limits.max_nightly_gap_hours * 3600
    if error:
        ev.add(NIGHTLY_RUN, None, FAILED, f"the runs of {NIGHTLY_DAG} could not be read: {error}")
        return
    if run is None:
        ev.add(
            NIGHTLY_RUN,
            None,
            FAILED,
            f"{NIGHTLY_DAG} has no scheduled run (paused, or never scheduled)",
            limit_s=limit_s,
        )
        return
    at = format_time(run.scheduled_at)
    if str(run.state) == "failed":
        # the nightly's tasks are series_<store>, backup_<store>, retention_<store>
        affected = sorted({s for s in stores for t in run.failed_tasks if t.partition("_")[2] == s})
        tasks = ", ".join(run.failed_tasks) or "no task named"
        reason = f"the last run of {NIGHTLY_DAG} ({run.run_id}) failed: {tasks}"
        stores_hit: list[str | None] = [*affected] or [None]
        for store in stores_hit:  # a failure outside a store's tasks (plan) is every store's
            ev.add(NIGHTLY_RUN, store, FAILED, reason, at=at)
        return
    ev.age(
        NIGHTLY_RUN,
        None,
        f"the last run of {NIGHTLY_DAG} ({run.run_id}, {run.state})",
        run.scheduled_at,
        limit_s,
        missing="",
        setting="recovery_point.max_nightly_gap_hours",
    )


def evaluate(
    local: LocalFacts,
    *,
    stores: Sequence[str],
    now: datetime,
    limits: Limits = Limits(),
    offsite: Mapping[str, list[OffsiteCopy] | str] | None = None,
    dr_drills: Sequence[Mapping[str, Any]] | str | None = None,
    nightly: NightlyRun | None = None,
    nightly_error: str | None = None,
    off: Mapping[str, str] | None = None,
    drilled: Iterable[str] = (),
    ignore_series: Iterable[str] = (),
    root: str = "the repository",
) -> dict[str, Any]:
    """Every check of every store in ``stores``; see the module docstring.

    ``offsite`` maps each configured target to its newest copies (:func:`newest_copies`) or
    to the error reading it (a target without its connection is such an error: the offsite
    sync fails on it too). ``dr_drills``: the runs of ``dbops_dr_drill`` (:func:`read_dr_drills`,
    newest first) or the error reading them; None when no DR drill is expected (no target).
    ``off``: stores not backed up by configuration (shown, never green).
    Returns ``{"status", "generated_at", "stores": [...], "problems": [...], "checks": [...]}``.
    """
    ev = _Evaluation(limits, now)
    off = dict(off or {})
    offsite = dict(offsite or {})
    ignore = set(ignore_series)
    drilled = set(drilled)
    checked = [s for s in stores if s not in off]
    if not checked:
        ev.add(NO_STORES, None, FAILED, "no store to check: backup.stores names none that is backed up")
    newest: list[Backup] = []
    for store in checked:
        series = local.series.get(store, {})
        if isinstance(series, str):
            ev.add(BACKUP_AGE, store, FAILED, f"the backups of {store} cannot be read: {series}", series=store)
            continue
        newest += _store_facts(ev, store, series, drilled=store in drilled, ignore=ignore, offsite=offsite, root=root)
        if store in drilled and dr_drills is not None:
            _dr_drills(ev, store, series, offsite, dr_drills)
        for target, copies in sorted(offsite.items()):
            if isinstance(copies, str):
                ev.add(OFFSITE_AGE, store, FAILED, f"offsite target {target} cannot be read: {copies}", target=target)
    if "postgres" in checked and local.base_backups is not None:
        _pitr(ev, local, newest)
    _nightly(ev, nightly, nightly_error, checked)
    stale_s = limits.stale_staging_hours * 3600
    for store in checked:
        old = [x for x in local.leftovers if x.store == store and (ev.now - x.modified).total_seconds() > stale_s]
        if old:
            ev.add(
                STAGING,
                store,
                LATE,
                f"{len(old)} leftover(s) of a crashed backup or deletion older than "
                f"backup.stale_staging_hours = {limits.stale_staging_hours:g} h: "
                + ", ".join(str(x.path) for x in old[:3])
                + " (the next backup of the series sweeps them; they take disk space)",
            )
    _disk(ev, local, newest)
    return _result(ev, stores, off)


def read_dr_drills(fetch_root: Path) -> list[Mapping[str, Any]] | str:
    """The runs ``dbops_dr_drill`` recorded in ``<fetch_root>/dr_drill.json``, newest first
    (none when it never ran), or the error reading them."""
    try:
        data = json.loads((fetch_root / DR_DRILL_FILE).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        return _error(exc)
    runs = data.get("runs") if isinstance(data, Mapping) else None
    if not isinstance(runs, list):
        return f"{fetch_root / DR_DRILL_FILE} holds no list of runs"
    return [r for r in runs if isinstance(r, Mapping)]


def _dr_drills(
    ev: _Evaluation,
    store: str,
    series: Mapping[str | None, list[Backup]],
    offsite: Mapping[str, list[OffsiteCopy] | str],
    runs: Sequence[Mapping[str, Any]] | str,
) -> None:
    """Per target: the newest DR drill that covered ``store`` there must have passed for it,
    and the newest passed one be younger than ``max_dr_drill_age_days``."""
    limit_s = ev.limits.max_dr_drill_age_days * 86400
    if isinstance(runs, str):
        ev.add(DR_DRILL_AGE, store, FAILED, f"the DR drill results cannot be read: {runs}")
        return
    first = min((b.finished_at for backups in series.values() for b in backups), default=None)
    for target in sorted(offsite):
        covered = []
        for run in runs:
            if target not in (run.get("targets") or []) or store not in (run.get("stores") or []):
                continue
            mine = [
                r
                for r in run.get("rto") or []
                if r.get("target") == target and str(r.get("series", "")).partition("/")[0] == store
            ]
            try:
                at = parse_time(run.get("at"))
            except (TypeError, ValueError):
                at = None
            covered.append(
                (
                    at,
                    run,
                    bool(mine)
                    and all(r.get("ok") is True for r in mine)
                    and not any(f.startswith(f"{target}: {store}") for f in run.get("failures") or []),
                )
            )
        if covered and not covered[0][2]:
            at, run, _ok = covered[0]
            mine = [f for f in run.get("failures") or [] if f.startswith(f"{target}: {store}")]
            ev.add(
                DR_DRILL_AGE,
                store,
                FAILED,
                f"the last DR drill of {store} from {target} ({run.get('run_id')}) "
                "failed" + (f": {'; '.join(mine[:2])}" if mine else " or recorded nothing for it"),
                target=target,
            )
            continue
        passed = [at for at, _run, ok in covered if ok and at is not None]
        ev.age(
            DR_DRILL_AGE,
            store,
            f"the last passed DR drill of {store} from {target}",
            passed[0] if passed else None,
            limit_s,
            missing=f"no passed DR drill of {store} from offsite target {target} (dbops_dr_drill)",
            grace_since=first,
            setting="recovery_point.max_dr_drill_age_days",
            target=target,
        )


def _pitr(ev: _Evaluation, local: LocalFacts, newest: list[Backup]) -> None:
    lim = ev.limits
    bases = local.base_backups
    if isinstance(bases, str):
        ev.add(PITR_BASE_AGE, "postgres", FAILED, f"the base backups cannot be read: {bases}", series=BASE_STORE)
    else:
        bases = sorted(bases or [], key=lambda b: b.sort_key)
        good = [b for b in bases if b.verified and not ev.future(b.finished_at)]
        for b in bases:
            if ev.future(b.finished_at):
                ev.add(
                    BACKUP_CLOCK,
                    "postgres",
                    FAILED,
                    ev.clock_reason(f"base backup {b.backup_id}", b.finished_at),
                    series=BASE_STORE,
                )
        ev.age(
            PITR_BASE_AGE,
            "postgres",
            f"the newest verified base backup ({good[-1].backup_id})" if good else "",
            good[-1].finished_at if good else None,
            lim.max_base_backup_age_hours * 3600,
            missing="no verified base backup: no point-in-time recovery possible",
            setting="recovery_point.max_base_backup_age_hours",
            series=BASE_STORE,
        )
        if bases:
            _check_drills(
                ev,
                PITR_DRILL_AGE,
                "postgres",
                BASE_STORE,
                bases,
                lim.max_drill_age_days * 86400,
                "recovery_point.max_drill_age_days",
            )
            newest.append(bases[-1])
    limit_s = lim.max_wal_check_age_minutes * 60
    if local.wal_check_error:
        ev.add(WAL_CHECK, "postgres", FAILED, local.wal_check_error, series=WAL_DIR)
        return
    result = local.wal_check
    if result is None:
        ev.add(WAL_CHECK, "postgres", FAILED, "the WAL check (dbops_wal_check) has never run", series=WAL_DIR)
        return
    try:
        at = parse_time(result.get("at"))
    except (TypeError, ValueError):
        ev.add(
            WAL_CHECK,
            "postgres",
            FAILED,
            f"the last WAL check has no readable time: {result.get('at')!r}",
            series=WAL_DIR,
        )
        return
    if result.get("ok") is not True and not ev.future(at):
        problems = [str(p) for p in result.get("problems") or []] or ["it named no problem"]
        ev.add(
            WAL_CHECK,
            "postgres",
            FAILED,
            f"the last WAL check ({format_time(at)}) failed: " + "; ".join(problems[:3]),
            series=WAL_DIR,
            at=format_time(at),
            age_s=round((ev.now - at).total_seconds(), 1),
            limit_s=limit_s,
        )
        return
    found = ev.age(
        WAL_CHECK,
        "postgres",
        "the last passed WAL check",
        at,
        limit_s,
        missing="",
        setting="recovery_point.max_wal_check_age_minutes",
        series=WAL_DIR,
    )
    if found.status == FAILED and not ev.future(at):
        found.status = LATE  # a stale check is unmonitored WAL, not a known loss: dbops_wal_check alerts on loss
        found.reason += " (is dbops_wal_check paused?)"


def _disk(ev: _Evaluation, local: LocalFacts, newest: list[Backup]) -> None:
    if local.disk_error:
        ev.add(DISK, None, FAILED, f"the free space of the repository cannot be read: {local.disk_error}")
        return
    if local.disk_free_bytes is None:
        return
    expected = int(sum(b.total_bytes for b in newest) * (1 + ev.limits.disk_margin))
    free = local.disk_free_bytes
    extra = {"age_s": None, "limit_s": None}
    text = (
        f"{size_text(free)} free in the repository, the next backups need about {size_text(expected)} "
        f"(the newest ones plus {ev.limits.disk_margin:.0%})"
    )
    if free < expected:
        ev.add(DISK, None, FAILED, f"{text}: the next backup will not fit", **extra)
    elif free < 2 * expected:
        ev.add(DISK, None, LATE, f"{text}: room for one more night only", **extra)
    else:
        ev.add(DISK, None, GREEN, text, **extra)
    ev.disk = {"free_bytes": free, "expected_bytes": expected}


def worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=lambda s: SEVERITY[s], default=GREEN)


def _result(ev: _Evaluation, stores: Sequence[str], off: Mapping[str, str]) -> dict[str, Any]:
    per_store: list[dict[str, Any]] = []
    for store in stores:
        if store in off:
            per_store.append({"store": store, "status": OFF, "reasons": [off[store]], "checks": []})
            continue
        mine = [c for c in ev.checks if c.store in (store, None)]
        status = worst(c.status for c in mine)
        reasons = [c.reason for c in mine if c.status == status] if status != GREEN else []
        per_store.append(
            {
                "store": store,
                "status": status,
                "reasons": reasons,
                "checks": [c.to_dict() for c in mine if c.store == store],
            }
        )
    problems = [c.to_dict() for c in ev.checks if c.status != GREEN]
    overall = worst([c.status for c in ev.checks] or [FAILED])
    return {
        "status": overall,
        "generated_at": format_time(ev.now),
        "limits": dict(ev.limits.__dict__),
        "stores": per_store,
        "common": [c.to_dict() for c in ev.checks if c.store is None],
        "problems": problems,
        "disk": ev.disk,
    }


def failures(result: Mapping[str, Any]) -> list[str]:
    """One line per failed check: ``<store or all stores>: <reason>``."""
    return [f"{p['store'] or 'all stores'}: {p['reason']}" for p in result["problems"] if p["status"] == FAILED]


def warnings(result: Mapping[str, Any]) -> list[str]:
    return [f"{p['store'] or 'all stores'}: {p['reason']}" for p in result["problems"] if p["status"] == LATE]


# --------------------------------------------------------------------------- Prometheus


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**pairs: Any) -> str:
    # every sample of a family carries the same label names (node_exporter refuses a mix): "" for none
    return "{" + ",".join(f'{k}="{_label("" if v is None else v)}"' for k, v in pairs.items()) + "}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(round(float(value), 3))


def render_metrics(result: Mapping[str, Any]) -> str:
    """The result in Prometheus' text format (node_exporter's textfile collector): a status
    per store (0 green, 1 late, 2 failed, -1 off), the status, age and limit of every check."""
    out: list[str] = []

    def family(name: str, help_text: str, samples: list[str]) -> None:
        out.extend([f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *samples])

    code = {**SEVERITY, OFF: -1}
    family(
        "dbops_recovery_point_status",
        "Recovery-point status per store: 0 green, 1 late, 2 failed, -1 off.",
        [f"dbops_recovery_point_status{_labels(store=s['store'])} {code[s['status']]}" for s in result["stores"]],
    )
    checks = [c for s in result["stores"] for c in s["checks"]] + list(result["common"])
    keys = ("check", "store", "series", "target")
    family(
        "dbops_recovery_point_check_status",
        "Status of one recovery-point check: 0 green, 1 late, 2 failed.",
        [
            f"dbops_recovery_point_check_status{_labels(**{k: c[k] for k in keys})} {SEVERITY[c['status']]}"
            for c in checks
        ],
    )
    family(
        "dbops_recovery_point_age_seconds",
        "Age of the newest backup, copy, drill, run or check the check found.",
        [
            f"dbops_recovery_point_age_seconds{_labels(**{k: c[k] for k in keys})} {_num(c['age_s'])}"
            for c in checks
            if c["age_s"] is not None
        ],
    )
    family(
        "dbops_recovery_point_age_limit_seconds",
        "The age limit of the check.",
        [
            f"dbops_recovery_point_age_limit_seconds{_labels(**{k: c[k] for k in keys})} {_num(c['limit_s'])}"
            for c in checks
            if c["limit_s"] is not None
        ],
    )
    disk = result.get("disk") or {}
    if disk:
        family(
            "dbops_recovery_point_disk_free_bytes",
            "Free bytes on the repository's file system.",
            [f"dbops_recovery_point_disk_free_bytes {disk['free_bytes']}"],
        )
        family(
            "dbops_recovery_point_next_backup_bytes",
            "Expected size of the next backups (newest plus margin).",
            [f"dbops_recovery_point_next_backup_bytes {disk['expected_bytes']}"],
        )
    family(
        "dbops_recovery_point_failed_checks",
        "Failed recovery-point checks.",
        [f"dbops_recovery_point_failed_checks {sum(1 for p in result['problems'] if p['status'] == FAILED)}"],
    )
    family(
        "dbops_recovery_point_timestamp_seconds",
        "When the checks ran (Unix seconds).",
        [f"dbops_recovery_point_timestamp_seconds {_num(parse_time(result['generated_at']).timestamp())}"],
    )
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- from the config


def check_config(
    config: Any,
    repo: BackupRepository,
    *,
    now: datetime,
    offsite: Mapping[str, list[OffsiteCopy] | str],
    nightly: NightlyRun | None,
    nightly_error: str | None,
    connection_exists: Callable[[str], bool],
    fetch_root: Path | None = None,
) -> dict[str, Any]:
    """:func:`evaluate` for a :class:`dbops.config.DbopsConfig`, the repository read now: the
    one way the task and the DB Ops page judge (they differ only in how they read the
    offsite catalogs and the DagRun table)."""
    from dbops.registry import DRILLED_STORES

    stores = [str(getattr(s, "value", s)) for s in config.backup.stores]
    off = unconfigured_stores(stores, {s: getattr(config.connections, s, "") for s in stores}, connection_exists)
    local = collect_local(repo, [s for s in stores if s not in off], pitr_enabled=config.pitr.enabled)
    ignored = [*config.recovery_point.ignore_series, *(f"postgres/{db}" for db in config.postgres.exclude_databases)]
    # the DR drill restores from the offsite targets into the fetch root (dbops.offsite.restore.fetch_root)
    dr_drills = read_dr_drills(fetch_root) if fetch_root is not None and offsite else None
    return evaluate(
        local,
        stores=stores,
        now=now,
        limits=Limits.from_config(config),
        offsite=offsite,
        dr_drills=dr_drills,
        nightly=nightly,
        nightly_error=nightly_error,
        off=off,
        drilled=DRILLED_STORES,
        ignore_series=ignored,
        root=str(repo.root),
    )
