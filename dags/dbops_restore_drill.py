"""
### dbops_restore_drill: a backup nobody restored is not a backup

Weekly. Restores the latest verified backup of every series into scratch targets,
compares the result with the source as it was described right after the dump, records
the outcome beside the backup (`drill.json`), and removes the scratch targets, also
when the drill failed.

| task | what it does |
|---|---|
| `plan` | picks the latest verified backup of every series (every Postgres database, `_globals`, mongo, redis, kafka) once; names newer backups that are not verified |
| `postgres_series` → `drill_postgres` (one mapped task per series) | files re-verified (sha256), `pg_restore -j` into `dbops_drill_<db>_<backupid>` (owned by the restoring role), exact row counts and checksums of sampled rows per table (vector columns included) and extensions compared, database dropped. `_globals`: roles (superuser, login) in `globals.sql` compared with the source's (roles are cluster-wide: read, not applied) |
| `drill_mongo` | `mongorestore --nsFrom/--nsTo` into `dbops_drill_<db>_<backupid>`: collections, document counts, indexes (TTL included), sampled documents compared; database dropped |
| `drill_redis` | the RDB loaded by a scratch `redis-server` on 127.0.0.1: key counts, types, TTL flags and values compared; server stopped, its folder removed |
| `drill_kafka` | every topic recreated as `dbops_drill_<backupid>_<topic>`: partitions, replication, configs compared; topics deleted |
| `summary` | reads the drill results of this run back from the sidecars; fails naming every mismatch, every drill that recorded nothing, every newer backup that is not verified |

A drill that finds a corrupted file, fails to restore, or finds a difference fails loudly
(its task and `summary` name every mismatch) and records `ok: false`: the backup then
counts as **not verified**, so `latest` restores and retention's `min_keep` no longer count
on it. Tolerated, and reported as notes: documents a Mongo TTL index removed from the
restored copy (mongorestore must have restored exactly the archive's count), and Redis
keys with a TTL that expired since the backup. Weaviate is not drilled: it restores
classes only under their own names, so there is no scratch target on a live server.
Pools serialise each store's drill with its backups and maintenance.

**Params**: `stores` (which stores to drill). Trigger it from the Airflow UI at any time (e.g. after a restore
of the backup host); a manual run drills the latest backups like a scheduled one.

**Rerun**: a cleared drill task drills the same backup as before (chosen by `plan`), after
removing scratch targets a killed attempt may have left; a passing rerun records
`ok: true` again.

**Backfill**: a drill cannot restore the past: a backfilled (or late) run drills the
*latest* backups that exist now, exactly like a scheduled one, and says so in `plan`'s log.
"""

from dbops.dagkit import CONFIG, cron, dbops_dag, stores_param
from dbops.tasks.drill import (
    DRILLED_STORES,
    drill_kafka,
    drill_mongo,
    drill_postgres,
    drill_redis,
    plan,
    postgres_series,
    summary,
)

with dbops_dag(
    "dbops_restore_drill",
    schedule=cron(CONFIG.schedules.restore_drill),
    doc_md=__doc__,
    tags=["backup", "restore"],
    params={"stores": stores_param(list(DRILLED_STORES), "Stores whose latest backups are drilled.")},
):
    planned = plan()
    drills = [
        drill_postgres.partial(planned=planned).expand(subject=postgres_series(planned)),
        drill_mongo(planned),
        drill_redis(planned),
        drill_kafka(planned),
    ]
    drills >> summary(planned)
