"""
### dbops_wal_check: is every second since the oldest base backup still recoverable?

Every 15 minutes (`schedules.wal_check`). The WAL is streamed by `pg_receivewal` with a
physical replication slot, run by the receiver service (`python -m dbops.pitr.receiver`,
a devstack service here, a container in docker-compose.yaml; Airflow is not a process
supervisor). Completed segments are compressed and sealed (size and sha256 in
`postgres_wal/catalog.jsonl`, files 0600). This DAG watches it and alerts.

| task | what it does |
|---|---|
| `write_marker` | a row in `dbops.pitr_markers` (`pitr.marker_database`, default the connection's) with its time: the PITR drill restores to a moment between two markers and proves exactly the earlier ones exist |
| `check_wal` | the server's settings (wal_level, max_wal_senders), the slot exists, is physical, in use and has lost no WAL; the receiver's heartbeat is fresh; its lag (what a crash of the server now would lose) is under `pitr.max_lag_s`; no completed segment unsealed longer than `pitr.seal_timeout_s`; the files sealed since the last check re-read against their sha256; the chain from the oldest base backup to now has no gap on any timeline. Fails naming every problem (an alert through `connections.alerts`); no base backup at all is a problem too. Writes `postgres_wal/check.json` for the DB Ops page (recovery window, lag) |

| `ship_wal_<target>` | sealed WAL is immutable: it goes to every configured offsite target (`offsite.targets`) soon, not only nightly; checked on arrival (see `dbops_offsite_sync`); skipped when the archive has no catalog yet |

Light reads in the default pool: a long backup never delays them.

**Backfill**: refused (Airflow refuses `backfill create` for this DAG): the WAL can only be
checked now. A rerun checks again, now.
"""

from dbops.dagkit import CONFIG, cron, dbops_dag
from dbops.tasks.offsite import TARGETS
from dbops.tasks.offsite_wal import ship_wal_task
from dbops.tasks.pitr import check_wal, write_marker
from dbops.tasks.summary import summary

with dbops_dag(
    "dbops_wal_check",
    schedule=cron(CONFIG.schedules.wal_check),
    doc_md=__doc__,
    tags=["monitor", "pitr"],
    allowed_run_types=["scheduled", "manual"],
    params={},
):
    write_marker() >> check_wal()
    for target in TARGETS:
        ship_wal_task(target)()  # no upstream: sealed WAL goes offsite even while the check alerts
    summary()
