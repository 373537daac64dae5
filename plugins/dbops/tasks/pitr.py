"""Tasks of Postgres point-in-time recovery: ``dbops_base_backup`` (base backup, then the
retention that never breaks a chain), ``dbops_wal_check`` (marker, check), and the PITR
steps of ``dbops_restore`` and ``dbops_restore_drill``.

The WAL itself is streamed by the receiver service, outside Airflow; these tasks only read
its archive. The work is in :mod:`dbops.pitr` (no Airflow there).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from dbops import runtime
from dbops.alerting import DbopsAlert
from dbops.config import DbopsConfig
from dbops.dagkit import BACKUP_ASSETS, on_store
from dbops.runtime import runtime_config
from dbops.tasks.backup import repository, run_started_at

log = logging.getLogger(__name__)


def wal_archive(config: DbopsConfig):
    from dbops.pitr.wal import WAL_DIR, WalArchive

    return WalArchive(config.backup.root / WAL_DIR)


def _enabled_config() -> DbopsConfig:
    config = runtime_config()
    if not config.pitr.enabled:
        raise AirflowSkipException("skipped: point-in-time recovery is off (pitr.enabled)")
    return config


def replication_endpoint(config: DbopsConfig):
    """The replication role's connection (``connections.postgres_replication``), else the
    main Postgres connection (a superuser may stream too)."""
    conn_id = config.connections.postgres_replication
    if not runtime.connection_exists(conn_id):
        log.info("no connection %s: base backups connect as %s", conn_id, config.connections.postgres)
        conn_id = config.connections.postgres
    return runtime.endpoint(conn_id, "postgres")


def admin_endpoint(config: DbopsConfig):
    return runtime.endpoint(config.connections.postgres, "postgres")


def base_backups(config: DbopsConfig) -> list:
    from dbops.pitr.wal import BASE_STORE

    return repository(config).list(BASE_STORE)


# ----------------------------------------------------------------------------- dbops_base_backup


@task(outlets=[BACKUP_ASSETS["postgres_pitr"]], **on_store("postgres"))
def base_backup() -> dict:
    """pg_basebackup into the repository; published only once the WAL up to its end is sealed."""
    from dbops.pitr.basebackup import take_base_backup

    context = get_current_context()
    config = _enabled_config()
    backup = take_base_backup(
        repository(config),
        wal_archive(config),
        endpoint=replication_endpoint(config),
        admin=admin_endpoint(config),
        compression=config.pitr.base_backup_compression,
        wait_for_wal_s=config.pitr.wait_for_wal_s,
        run_id=context["run_id"],
        dag_id=context["dag"].dag_id,
        logical_date=context.get("logical_date"),
        log=log.info,
    )
    details = backup.manifest.get("details", {})
    log.info(
        "base backup %s: %s bytes, WAL %s..%s on timeline %s, consistent at %s",
        backup.backup_id,
        backup.total_bytes,
        details.get("start_lsn"),
        details.get("stop_lsn"),
        details.get("timeline"),
        details.get("consistent_at"),
    )
    from dbops.tools import human_bytes

    line = (
        f"base backup {backup.backup_id}: {human_bytes(backup.data_bytes)} data "
        f"(+{human_bytes(backup.sidecar_bytes)} manifest and results), WAL {details.get('start_lsn')}.."
        f"{details.get('stop_lsn')}, consistent at {details.get('consistent_at')}"
    )
    return {
        "backup_id": backup.backup_id,
        "path": str(backup.path),
        "bytes": backup.total_bytes,
        **details,
        "summary": line,
    }


@task
def retention_pitr(made: dict) -> dict:
    """Expire base backups by the window and min_keep, then exactly the WAL no kept base
    backup needs; refused when the clock disagrees with the repository or the scheduler."""
    from dbops.backup.repository import utc_now
    from dbops.pitr.expiry import expire_pitr

    context = get_current_context()
    config = _enabled_config()
    params = context["params"]
    result = expire_pitr(
        repository(config),
        wal_archive(config),
        new_backup_id=made["backup_id"],
        retention_days=config.pitr.retention_days or config.backup.retention_days,
        min_keep=config.pitr.min_keep,
        now=utc_now(),
        run_started_at=run_started_at(context["dag_run"]),
        max_clock_skew=timedelta(minutes=config.backup.max_clock_skew_minutes),
        max_delay=timedelta(hours=config.backup.retention_max_delay_hours),
        dry_run=params["retention_dry_run"],
        log=log.info,
    )
    verb = "would delete" if result.get("dry_run") else "deleted"
    expired = ", ".join(str(b) for b in result.get("expired_backups") or []) or "no base backup"
    return {**result, "summary": f"{verb} {expired} and {result.get('expired_wal', 0)} WAL file(s)"}


# ----------------------------------------------------------------------------- dbops_wal_check


def marker_database(config: DbopsConfig) -> str | None:
    return config.pitr.marker_database


@task(on_failure_callback=DbopsAlert())
def write_marker() -> dict:
    """A row in ``dbops.pitr_markers`` with its time: what the PITR drill restores between."""
    from dbops.pitr.recovery import write_marker as write

    config = _enabled_config()
    marker = write(admin_endpoint(config), marker_database(config))
    log.info("marker %s written at %s (LSN %s)", marker["id"], marker["at"], marker["lsn"])
    return marker


@task(on_failure_callback=DbopsAlert(), trigger_rule="all_done")
def check_wal() -> dict:
    """Receiver alive, its lag under pitr.max_lag_s, every completed segment sealed, the chain
    from the oldest base backup to now without a gap; alerts naming each problem."""
    from dbops.backup.repository import parse_time, utc_now
    from dbops.pitr import check

    config = _enabled_config()
    archive = wal_archive(config)
    now = utc_now()
    server, server_error = None, None
    try:
        with runtime.postgres(config.connections.postgres) as conn:
            server = check.measure_server(conn, config.pitr.slot)
    except Exception as exc:  # the check reports an unreachable server as its finding
        server_error = f"{type(exc).__name__}: {exc}"
    previous = check.read_json(archive.root / check.CHECK_FILE)
    since = parse_time(previous["at"]) if previous and previous.get("at") else None
    header = archive.header() if archive.catalog_path.exists() else None
    entries = archive.entries() if header else []
    rehashed, rehash_problems = check.rehash_new(archive, entries, since)
    result = check.evaluate(
        server=server,
        server_error=server_error,
        status=archive.status(),
        header=header,
        entries=entries,
        unsealed=check.unsealed_ages(archive, now) if archive.segments.exists() else [],
        bases=base_backups(config),
        rehash_problems=rehash_problems,
        latest_received=archive.latest_received(entries),
        end_segno=archive.received_end_segno(entries, header["wal_segment_size"]) if header else None,
        slot=config.pitr.slot,
        max_lag_s=config.pitr.max_lag_s,
        seal_timeout_s=config.pitr.seal_timeout_s,
        now=now,
    )
    result.rehashed = rehashed
    archive.ensure()
    check.write_result(archive, result)
    if not result.ok:
        raise AirflowFailException(f"WAL check: {len(result.problems)} problem(s):\n  " + "\n  ".join(result.problems))
    log.info(
        "WAL check ok: lag %.1f s, %d sealed segments, %d re-hashed, recoverable from %s to %s",
        result.lag_s or 0.0,
        result.segments,
        rehashed,
        result.earliest,
        result.latest,
    )
    return result.to_dict()


# ----------------------------------------------------------------------------- dbops_restore

RECOVERY_TARGET_PARAMS = ("target_time", "target_lsn", "target_name")


def pitr_requested(params: dict) -> bool:
    """Whether the restore run asks for a point-in-time recovery (any target Param set)."""
    return any(str(params.get(name) or "").strip() for name in RECOVERY_TARGET_PARAMS)


def scratch_dir(config: DbopsConfig):
    return config.pitr.scratch_dir or config.backup.root / ".scratch"


def check_pitr_params(params: dict, config: DbopsConfig, now) -> tuple:
    """``(target, database, copy)`` of a point-in-time recovery's Params: the recovery target,
    the database to copy out (or "") and its checked copy target (or None); RestoreRefused
    naming the bad Param. Shared by the local and the offsite recovery."""
    from dbops.backup.restore import LATEST, RestoreRefused, default_target
    from dbops.pitr.recovery import check_copy_target, target_from_params

    if params["store"] != "postgres":
        raise RestoreRefused(f"target_time/target_lsn/target_name are for Postgres, not {params['store']}")
    if params["backup_id"] != LATEST:
        raise RestoreRefused(
            "backup_id picks a pg_dump backup; a point-in-time recovery picks its base backup itself "
            "(leave backup_id 'latest')"
        )
    target = target_from_params(params["target_time"], params["target_lsn"], params["target_name"], now=now)
    database = (params["database"] or "").strip()
    copy = None
    if database:
        stamp = (target.time or now).strftime("%Y%m%dT%H%M%SZ")
        copy = check_copy_target(
            admin_endpoint(config), params["target"] or default_target(database, stamp), params["confirm_overwrite"]
        )
    elif params["target"] or params["confirm_overwrite"]:
        raise RestoreRefused(
            "target and confirm_overwrite need database: the database to copy out of the recovered cluster"
        )
    return target, database, copy


def plan_pitr_restore(params: dict) -> dict:
    """Every refusal of a point-in-time restore, before any work: the Params, the target
    against the recovery window, the WAL chain, the copy's target database."""
    from dbops.backup.repository import utc_now
    from dbops.backup.restore import RestoreRefused
    from dbops.pitr.recovery import plan_recovery

    try:
        now = utc_now()
        target, database, copy = check_pitr_params(params, runtime_config(), now)
        config = _enabled_config()
        plan = plan_recovery(repository(config), wal_archive(config), target, now=now)
    except RestoreRefused as exc:
        raise AirflowFailException(f"refused before any work: {exc}") from None
    planned = {"pitr": plan.to_dict(), "database": database or None, "copy": copy}
    log.info(
        "plan: recover the cluster from base backup %s to %s (window %s); then %s",
        plan.backup.backup_id,
        target.describe(),
        plan.window.text(),
        f"copy {database} into {copy['target']}" + (" (replacing it: confirmed)" if copy["overwrite"] else "")
        if copy
        else "keep the recovered server running and give its address",
    )
    return planned


@task(**on_store("postgres"))
def restore_postgres_pitr(planned: dict) -> dict:
    """Recover the cluster into a scratch server at the planned target; then copy one
    database into the live cluster (and stop the scratch) or keep it running."""
    from dbops.backup.repository import utc_now
    from dbops.backup.restore import RestoreRefused
    from dbops.pitr.recovery import RecoveryFailed, restore_pitr, target_from_params

    if planned.get("pitr_offsite"):
        raise AirflowSkipException(
            "skipped: this point-in-time recovery is from offsite (restore_postgres_pitr_offsite)"
        )
    if not planned.get("pitr"):
        raise AirflowSkipException("skipped: this run restores a backup, not a point in time")
    context = get_current_context()
    params = context["params"]
    config = _enabled_config()
    try:
        target = target_from_params(params["target_time"], params["target_lsn"], params["target_name"], now=utc_now())
        _plan, scratch = restore_pitr(
            repository(config),
            wal_archive(config),
            target,
            now=utc_now(),
            backup_id=planned["pitr"]["base_backup"],  # exactly the base backup the plan chose
            scratch_dir=scratch_dir(config),
            server_bin=config.pitr.server_bin,
            os_user=config.pitr.scratch_os_user,
            log=log.info,
        )
    except (RestoreRefused, RecoveryFailed) as exc:
        raise AirflowFailException(f"point-in-time recovery failed: {exc}") from None
    log.info("%s", scratch.summary())
    return finish_recovery(scratch, target, planned, config)


def finish_recovery(scratch, target, planned: dict, config, **extra) -> dict:
    """After a recovery into ``scratch``: keep the server running (no ``database``), or copy
    ``database`` into the live cluster and stop it. ``extra`` goes into the result."""
    from dbops.backup.restore import RestoreRefused
    from dbops.pitr.recovery import RecoveryFailed, copy_database

    context = get_current_context()
    if not planned["copy"]:
        log.info(
            "the recovered server keeps running: stop it with pg_ctl -D %s stop (then remove %s)",
            scratch.data_dir,
            scratch.root,
        )
        return {"kept": True, **extra, **scratch.to_dict()}
    try:
        copied = copy_database(
            scratch,
            planned["database"],
            admin_endpoint(config),
            planned["copy"]["target"],
            context["params"]["confirm_overwrite"],
            run_id=context["run_id"],
            dag_id=context["dag"].dag_id,
            jobs=config.restore.jobs,
            log=log.info,
        )
    except (RestoreRefused, RecoveryFailed) as exc:
        raise AirflowFailException(
            f"copy out of the recovered cluster failed (the scratch server is kept for inspection: "
            f"{scratch.summary()}): {exc}"
        ) from None
    scratch.stop(log=log.info)
    log.info("%s of the cluster at %s is now database %s", planned["database"], target.describe(), copied["target"])
    return {"kept": False, **extra, "copied": copied}


# ----------------------------------------------------------------------------- dbops_restore_drill


@task(**on_store("postgres"))
def drill_postgres_pitr() -> dict:
    """Recover the newest base backup to a time between two markers; exactly the markers up
    to that time must be there; pg_verifybackup on the base. Recorded beside the base backup."""
    from dbops.backup.restore import DrillEnvironmentError
    from dbops.pitr.recovery import drill_pitr

    context = get_current_context()
    if "postgres" not in context["params"]["stores"]:
        raise AirflowSkipException("skipped: postgres is not in this run's stores")
    config = _enabled_config()
    try:
        result = drill_pitr(
            repository(config),
            wal_archive(config),
            admin_endpoint(config),
            marker_database(config),
            scratch_dir=scratch_dir(config),
            server_bin=config.pitr.server_bin,
            os_user=config.pitr.scratch_os_user,
            wait_for_wal_s=config.pitr.wait_for_wal_s,
            run_id=context["run_id"],
            dag_id=context["dag"].dag_id,
            log=log.info,
        )
    except DrillEnvironmentError as exc:
        raise DrillEnvironmentError(
            f"the point-in-time drill could not run: {exc}. Not a verdict on the base backup"
        ) from exc
    if not result["ok"]:
        raise AirflowFailException(
            "point-in-time drill failed (recorded in the base backup's drill.json):\n  "
            + "\n  ".join(result["differences"])
        )
    log.info(
        "point-in-time drill passed: base backup %s recovered to %s", result.get("backup_id"), result.get("target")
    )
    return result
