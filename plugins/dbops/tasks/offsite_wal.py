"""Offsite tasks of the sealed WAL: ``ship_wal_<target>`` (in ``dbops_wal_check``, every
15 minutes, and in ``dbops_offsite_sync``), ``verify_wal_<target>`` and
``retention_wal_<target>`` (in ``dbops_offsite_sync``, after the base backups' retention).

Base backups themselves (store ``postgres_pitr``) ship, verify and expire with every other
series in ``dbops_offsite_sync``; :data:`OFFSITE_STORES` is the enum of its ``stores`` Param.
The work is in :mod:`dbops.offsite.wal`.
"""

from __future__ import annotations

import logging

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from dbops import runtime
from dbops.config import ALL_STORES, DbopsConfig
from dbops.dagkit import OFFSITE_POOL, in_pool
from dbops.pitr.wal import BASE_STORE
from dbops.runtime import offsite_encryption, open_target, runtime_config, target_connection_id

log = logging.getLogger(__name__)
# the stores dbops_offsite_sync can ship: every store's dumps, and the PITR base backups
OFFSITE_STORES = [*ALL_STORES, BASE_STORE]


def _wal_config(target_name: str) -> tuple[DbopsConfig, dict]:
    """The config (with the sync's retention Params when there are any) and the run's
    Params; skips when PITR is off, the target is not selected, or (in the sync) the
    base backups are not among its stores."""
    params = dict(get_current_context().get("params") or {})
    if "retention_days" in params:  # dbops_offsite_sync
        config = runtime_config(
            {"offsite": {"retention_days": params["retention_days"], "min_keep": params["min_keep"]}}
        )
    else:  # dbops_wal_check: the configured targets
        config = runtime_config()
    if not config.pitr.enabled:
        raise AirflowSkipException("skipped: point-in-time recovery is off (pitr.enabled)")
    targets = params.get("targets", config.offsite.targets)
    if target_name not in targets:
        raise AirflowSkipException(f"skipped: {target_name} is not among the offsite targets {targets}")
    if "stores" in params and BASE_STORE not in params["stores"]:
        raise AirflowSkipException(f"skipped: {BASE_STORE} is not among this run's stores")
    conn_id = target_connection_id(config, target_name)
    if not runtime.connection_exists(conn_id):
        raise AirflowFailException(f"offsite target {target_name}: no Airflow connection {conn_id!r}")
    return config, params


def _archive(config: DbopsConfig):
    from dbops.pitr.wal import WAL_DIR, WalArchive

    return WalArchive(config.backup.root / WAL_DIR)


def ship_wal_task(target_name: str):
    """``ship_wal_<target>``: every sealed WAL file not offsite yet, checked on arrival."""

    @task(task_id=f"ship_wal_{target_name}", **in_pool(OFFSITE_POOL))
    def ship_wal() -> dict:
        from dbops.offsite.wal import ship_wal as ship

        config, params = _wal_config(target_name)
        archive = _archive(config)
        if archive.header() is None:
            raise AirflowSkipException(
                f"skipped: the WAL archive {archive.root} has no catalog yet (receiver not started)"
            )
        work_dir = config.offsite.work_dir or config.backup.root / ".offsite-outbox"
        with open_target(target_name, config) as target:
            log.info("%s", target.describe())
            # a failed arrival check raises after the other files were tried; the bad files
            # were removed offsite, so the retry (or the next run) resends them
            return ship(
                target,
                archive,
                offsite_encryption(config),
                log.info,
                dry_run=bool(params.get("dry_run", False)),
                work_dir=work_dir,
            )

    ship_wal.__doc__ = f"Ship sealed WAL files to {target_name}; catalogue each only after its arrival check."
    return ship_wal


def verify_wal_task(target_name: str):
    """``verify_wal_<target>``: the offsite WAL against its catalog and the local archive,
    and the chain from the oldest base backup offsite; fails naming every problem."""

    @task(task_id=f"verify_wal_{target_name}")
    def verify_wal(shipped: dict | None = None) -> dict:
        from dbops.offsite.common import SeriesKey
        from dbops.offsite.wal import verify_wal as verify

        config, params = _wal_config(target_name)
        deep = bool(params.get("deep_verify")) or config.offsite.deep_verify
        with open_target(target_name, config) as target:
            catalog = target.catalog(log.info)
            bases = [item.backup for item in catalog.all() if item.key == SeriesKey(BASE_STORE)]
            problems = verify(
                target,
                _archive(config),
                deep=deep,
                log=log.info,
                expected=(shipped or {}).get("shipped", []),
                bases=bases,
            )
        if problems:
            raise AirflowFailException(
                f"offsite WAL on {target_name}: {len(problems)} problems:\n  " + "\n  ".join(problems)
            )
        return {"target": target_name, "deep": deep, "base_backups": len(bases)}

    verify_wal.__doc__ = f"Check the WAL on {target_name}: catalog, sizes (content with deep_verify), the chain."
    return verify_wal


def retention_wal_task(target_name: str):
    """``retention_wal_<target>``: expire the offsite WAL that no base backup offsite needs
    (the local chain rule). Not ordered after ``retention_<target>``: run before it, it only
    keeps more (the oldest base backup offsite can only be older), and ``retention_<target>``
    stays a leaf of the run, so its failure fails the run."""

    @task(task_id=f"retention_wal_{target_name}", **in_pool(OFFSITE_POOL))
    def retention_wal(verified: dict) -> dict:
        from dbops.backup.repository import utc_now
        from dbops.offsite.common import SeriesKey
        from dbops.offsite.pins import read_pins, series_pins
        from dbops.offsite.wal import expire_wal, plan_offsite_wal, read_offsite_catalog
        from dbops.tasks.backup import repository

        config, params = _wal_config(target_name)
        if not verified:
            raise AirflowFailException("WAL retention needs this run's WAL verification; nothing deleted")
        dry_run = bool(params.get("dry_run")) or bool(params.get("retention_dry_run"))
        with open_target(target_name, config) as target:
            catalog = target.catalog(log.info)  # after the base backups' retention
            bases = [item for item in catalog.all() if item.key == SeriesKey(BASE_STORE)]
            # an unreadable pins.json raises (PinsUnreadable): nothing expired
            pins = series_pins(read_pins(target, log.info), SeriesKey(BASE_STORE))
            names, reasons = plan_offsite_wal(
                bases,
                read_offsite_catalog(target, log.info),
                now=utc_now(),
                retention_days=config.offsite.retention_days,
                min_keep=config.offsite.min_keep,
                pins=pins,
                local=repository(config).list(BASE_STORE),
            )
            for reason in reasons:
                log.info("%s", reason)
            expired = expire_wal(target, names, log.info, dry_run=dry_run)
        return {
            "target": target_name,
            "dry_run": dry_run,
            "expired": len(expired),
            "first": expired[0] if expired else None,
            "last": expired[-1] if expired else None,
        }

    retention_wal.__doc__ = f"Expire the WAL on {target_name} that no base backup kept there needs."
    return retention_wal
