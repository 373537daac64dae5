"""
### dbops_nightly_backup: every enabled store, verified, then retention

Replaces `pg_dumpall | gzip`, `mongodump`, `redis-cli SAVE` + copy and `find -mtime +30 -delete`.

| task | what it does |
|---|---|
| `plan` | refuses bad Params and an unsafe backup root before any work; decides what a backfilled run does |
| `series_postgres` | what the store's backup covers: Postgres every real database (not templates, Airflow's metadata database, dbops' restore targets and drill scratch databases, `postgres.exclude_databases`) plus `_globals` |
| `backup_<store>` (Postgres: one mapped task per series) | Postgres `pg_dump -Fd -j` in an exported snapshot (best compression the binary has) and `pg_dumpall --globals-only`; Mongo `mongodump --archive --gzip` of the whole instance with `--oplog` on a replica set; Redis `BGSAVE` + copy where the worker can read the server's RDB file, else `redis-cli --rdb` (never `SAVE`) checked by `redis-check-rdb`; Kafka topic definitions and group offsets; Weaviate's backup API (**skipped** when no `dbops_weaviate` connection exists). Each writes, with the dump, the description of what the dump holds (the drill's reference) |
| `retention_<store>` | only after that store's backups of this run succeeded and verified, and only when the worker's clock agrees with the backups and with the scheduler's start of the run: keeps `retention_days`, and always `min_keep` verified backups; updates the Asset `x-dbops://backups/<store>` |
| `publish_backups` | when every other task is done: one event of the Asset `x-dbops://backups` naming the backups this run made, which starts **one** `dbops_offsite_sync`; skipped (no event, no sync) when the run made nothing new, also when a cleared task re-ran and found its backup already made |
| `summary` | the run's summary (its return value, in the XCom tab, and at the top of its log): the backups made with their data size, what retention deleted (ids), why a backfilled run skipped, what failed |

**Deadline**: a run not finished by `schedules.nightly_deadline` (default 06:00, in
`schedules.timezone`; counted from the run's logical date, the cron's fire time for a scheduled
run; a backfilled run is never alerted) alerts through the run alerts' channels (`DBOPS ALERT` log line, `notify.email_to`,
`notify.webhook`) while it is still running (an Airflow deadline alert, listed on the run's page).

Every backup is written into a staging folder, every file's sha256 re-read and the tool's
own check passed (`pg_restore --list`, archive walk, `redis-check-rdb`, JSON schema)
before one atomic rename makes it visible with its manifest. A failed backup leaves
nothing visible and deletes nothing. Stores run in parallel; pools keep two heavy jobs
off one store.

**Params**: `stores`, `retention_days` (1-3650), `min_keep` (>= 1), `retention_dry_run`
(log what retention would delete), `force` (take another backup even if this run has one).

**Rerun**: clearing a failed task starts from a clean staging folder; a task whose backup
this run already completed does nothing (unless `force`). Retention only ever runs after
this run's verified backup, so a rerun never deletes more than the rules allow.

**Backfill**: a backfilled run cannot back up the past: `plan` skips it (and so every
task), saying which backups are the newest. With `force` it takes a backup *now*, named
by the time it is taken, never labelled as if taken on the backfilled date. A rerun of an
old scheduled run also backs up now, under the real time.
"""

from airflow.sdk import Param

from dbops.dagkit import CONFIG, cron, dbops_dag, stores_param
from dbops.deadlines import nightly_deadline
from dbops.registry import MULTI_SERIES_STORES, STORES
from dbops.tasks.backup import backup_task, plan, publish_task, retention_task, series_task
from dbops.tasks.summary import summary

with dbops_dag(
    "dbops_nightly_backup",
    schedule=cron(CONFIG.schedules.nightly_backup),
    doc_md=__doc__,
    tags=["backup"],
    deadline=nightly_deadline(CONFIG.schedules),
    params={
        "stores": stores_param([s.value for s in CONFIG.backup.stores], "Stores to back up."),
        "retention_days": Param(
            CONFIG.backup.retention_days,
            type="integer",
            minimum=1,
            maximum=3650,
            title="Retention (days)",
            description="Keep backups younger than this.",
        ),
        "min_keep": Param(
            CONFIG.backup.min_keep,
            type="integer",
            minimum=1,
            maximum=1000,
            title="Min keep",
            description="Always keep at least this many verified backups per database/store.",
        ),
        "retention_dry_run": Param(
            False,
            type="boolean",
            title="Retention dry run",
            description="Log what retention would delete; delete nothing.",
        ),
        "force": Param(
            False,
            type="boolean",
            title="Force",
            description="Back up even if this run already has a backup, or the run is a backfill.",
        ),
    },
):
    planned = plan()
    retentions = []
    for store in STORES:
        if store in MULTI_SERIES_STORES:
            series = series_task(store)()
            planned >> series
            backup_task(store).expand(subject=series) >> (retention := retention_task(store)(series))
        else:
            planned >> backup_task(store)(subject=None) >> (retention := retention_task(store)([None]))
        retentions.append(retention)
    retentions >> publish_task([f"backup_{store}" for store in STORES])
    summary()
