"""
### dbops_recovery_check: how old is the newest thing every store could be recovered from?

Barman's `last_backup_maximum_age`, for every store and every place a backup lives. Every
30 minutes (`schedules.recovery_check`); each store gets a status, **green**, **late** (a
warning: logged, shown on the DB Ops page, no alert) or **failed** (the run fails and alerts
through `connections.alerts`, naming every failed check):

| task | what it does |
|---|---|
| `offsite_catalogs` | the newest usable copy of every series on every target of `offsite.targets`, read from the target's catalog; a target without its connection or unreachable is recorded as such (a failure of the check, not of this task) |
| `nightly_run` | the newest scheduled run of `dbops_nightly_backup` (Airflow's DagRun table) and its failed tasks |
| `check_recovery_points` | per store and database: the newest **verified** backup younger than `recovery_point.max_backup_age_hours` (26); on every offsite target a copy younger than `max_offsite_age_hours` (50); the last restore drill passed and younger than `max_drill_age_days` (8); for every drilled store and offsite target, the last DR drill (`dbops_dr_drill`, its `dr_drill.json` in the fetch root) passed and younger than `max_dr_drill_age_days` (35); the last nightly run not failed and scheduled within `max_nightly_gap_hours` (26); no staging leftover older than `backup.stale_staging_hours`; free space on the repository's disk for the next backups (the newest ones plus `disk_margin`). With `pitr.enabled`, for Postgres also: the newest verified base backup younger than `max_base_backup_age_hours`, the last PITR drill, the last WAL check (`postgres_wal/check.json`) passed and fresh. A time in the future beyond `backup.max_clock_skew_minutes` fails (the clocks are wrong, no age can be trusted); a store without backups fails; nothing to check fails. Writes `<backup.root>/recovery_point.json` and the Prometheus text file `metrics/dbops_recovery_point.prom` under `monitor.reports_dir` (`dbops_recovery_point_status{store}`, `dbops_recovery_point_age_seconds{check,store,series,target}`, ...), atomically |

A store whose connection is optional and missing (Weaviate) is **off**: shown, never green.
A series that will never get another backup (a dropped database) is named in
`recovery_point.ignore_series` (or `postgres.exclude_databases`). Light reads in the default pool.

**Rerun**: checks again, now (the repository as it is, the catalogs read again).

**Backfill**: refused (Airflow refuses `backfill create` for this DAG): a recovery point can
only be judged now.
"""

from dbops.dagkit import CONFIG, cron, dbops_dag
from dbops.tasks.recovery_point import check_recovery_points, nightly_run, offsite_catalogs
from dbops.tasks.summary import summary

with dbops_dag(
    "dbops_recovery_check",
    schedule=cron(CONFIG.schedules.recovery_check),
    doc_md=__doc__,
    tags=["monitor", "backup"],
    allowed_run_types=["scheduled", "manual"],
    params={},
):
    check_recovery_points(offsite_catalogs(), nightly_run())
    summary()
