"""
### dbops_base_backup: a physical base backup of the Postgres cluster, for point-in-time recovery

Nightly (`schedules.base_backup`, 01:30 by default). With the WAL that the receiver service
streams into `<backup.root>/postgres_wal/` (outside Airflow: see `dbops_wal_check`), a base
backup can be recovered to any second after it. The nightly `pg_dump` backups stay: they
are portable and per database; this one is the whole cluster, consistent across databases.

| task | what it does |
|---|---|
| `base_backup` | checks the server's settings (wal_level, max_wal_senders, the replication role) and refuses naming what is missing; `pg_basebackup -Ft -X none --checkpoint=fast` with the best client-side compression the tools have, the server's `backup_manifest` kept; published (staging, manifest with sha256, one rename) only once the WAL from its start to its end is **sealed** in the archive, so a published base backup is always recoverable |
| `retention_pitr` | base backups by `pitr.retention_days` (default `backup.retention_days`) keeping at least `pitr.min_keep` verified and every pinned one; then exactly the WAL that no kept base backup needs: never a segment of the chain from the oldest kept base backup to now (a pinned older one keeps the WAL that makes it consistent). Refused when the worker's clock disagrees with the repository or the scheduler |

`publish_backups` then announces the new base backup (one event of the Asset `x-dbops://backups`,
which starts `dbops_offsite_sync`), and `summary` says what the run made and deleted.

Runs in the `dbops_postgres` pool (never beside a dump or maintenance of the cluster).

**Params**: `retention_dry_run` (take the backup, only log what retention would delete).

**Rerun**: a cleared `base_backup` takes a new base backup (a killed one leaves only staging,
swept on the next run); `retention_pitr` applies the policy again.

**Backfill**: refused: a base backup can only be taken now.
"""

from airflow.sdk import Param

from dbops.dagkit import CONFIG, cron, dbops_dag
from dbops.tasks.backup import publish_task
from dbops.tasks.pitr import base_backup, retention_pitr
from dbops.tasks.summary import summary

with dbops_dag(
    "dbops_base_backup",
    schedule=cron(CONFIG.schedules.base_backup),
    doc_md=__doc__,
    tags=["backup", "pitr"],
    allowed_run_types=["scheduled", "manual"],
    params={
        "retention_dry_run": Param(
            False,
            type="boolean",
            title="Retention dry run",
            description="Take the base backup; only log what retention would delete.",
        ),
    },
):
    retention_pitr(base_backup()) >> publish_task(["base_backup"])
    summary()
