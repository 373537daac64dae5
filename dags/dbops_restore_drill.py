"""
### dbops_restore_drill: a backup nobody restored is not a backup

Weekly. Restores the latest verified backup of every series into scratch targets,
compares the result with the source as it was described right after the dump, records
the outcome beside the backup (`drill.json`), and removes the scratch targets, also
when the drill failed.

| task | what it does |
|---|---|
| `plan` | picks the latest verified backup of every series (every Postgres database, `_globals`, mongo, redis, kafka) once; names newer backups that are not verified; a selected store with **no** backup is a problem (a wrong root must not look green) |
| `series_postgres` → `drill_postgres` (one mapped task per series), `drill_<store>` | files re-verified (sha256), then the store's adapter restores into scratch targets (the drill connections `dbops_drill_postgres` / `dbops_drill_mongo` when they exist, else the production cluster, said in the log), compares with the backup's own description (taken in the dump's snapshot or read from the artifact, never a later read of the live store), and removes the scratch targets. Postgres: `pg_restore -j` into `dbops_drill_<db>_<backupid>`, row counts, sampled-row checksums, database-level state; `_globals`: roles compared, not applied. Mongo: one database at a time from the whole-instance archive. Redis: the RDB loaded by a scratch `redis-server`, copied into a second one with the restore's own copy path, every database compared. Kafka: topics recreated as `dbops_drill_<backupid>_<topic>` |
| `drill_postgres_pitr` | point-in-time recovery (when `pitr.enabled`): the newest verified base backup recovered into a scratch server to a moment between two markers of `dbops.pitr_markers` (written by `dbops_wal_check`; the drill writes two itself when there are not two after the base backup), and exactly the markers committed up to that moment must be there; `pg_verifybackup` on the extracted base first. Recorded beside the base backup (`drill.json`); a missing WAL segment fails it naming the segment |
| `local_only` → `drill_postgres_pitr` | `local_only` skips (and with it the point-in-time drill) when the run drills an offsite target |
| `summary` | reads the drill results of this run back from the sidecars; returns the run's summary (shown in its XCom tab, also when it fails: per series "equal" or the differences themselves); fails naming every mismatch, every drill that recorded nothing, every newer backup that is not verified, and a run that drilled nothing |

**From offsite** (`source` `s3` or `rsync`): the local repository is never opened (it may be
gone). `plan` reads that target's catalog and picks the latest usable copy of every series
there (complete, `offsite.json` matching its manifest, the manifest's checks passed); newer
copies passed over, and a selected store without copies there, are problems. It refuses before
any work a source not in `offsite.targets` (naming them), a missing or other decryption key,
and copies that do not fit in the fetch repository (`offsite.fetch_dir`, default
`<restore.scratch_dir or the system temp folder>/dbops-offsite-fetch/<target>`; it logs their
size and the free space there). Each drill task fetches its copy there (checked before anything
is restored: manifest, `offsite.json`, the manifest's MAC when encrypted, every file's size and
sha256 after decryption), drills it exactly like a local backup and records `drill.json`
**beside the fetched copy**; `summary` reads the results from there, with each download's
bytes and seconds. The fetched copies stay until the next fetch of their series from that
target replaces them (one copy per series and target); a failed download is kept and resumed
by the rerun. A copy that fails its checks fails its drill task and records nothing.

A drill that finds a corrupted file, fails to restore, or finds a difference fails loudly
(its task and `summary` name every mismatch) and records `ok: false`: the backup then
counts as **not verified**, so `latest` restores and retention's `min_keep` no longer count
on it. Tolerated, and reported as notes: documents a Mongo TTL index removed from the
restored copy (mongorestore must have restored exactly the archive's count), and Redis
keys with a TTL that expired since the backup. Weaviate is not drilled: it restores
classes only under their own names, so there is no scratch target on a live server.
A drill stopped by its environment (a port in use, a full disk, an unreachable drill
cluster) fails as an error of the drill and records nothing: the backup's verdict is
unchanged. Pools serialise each store's drill with its backups and maintenance.

**Params**: `stores` (which stores to drill; default: those of `backup.stores`); `source` (`local`, or `s3` / `rsync`: drill the
latest copies on that offsite target). Trigger it from the Airflow UI at any time (e.g. after a restore
of the backup host); a manual run drills the latest backups like a scheduled one.

**Rerun**: a cleared drill task drills the same backup as before (chosen by `plan`), after
removing scratch targets a killed attempt may have left; a passing rerun records
`ok: true` again. From offsite, the rerun reuses the copy already fetched (checked again) or
resumes its download.

**Backfill**: a drill cannot restore the past: a backfilled (or late) run drills the
*latest* backups that exist now, exactly like a scheduled one, and says so in `plan`'s log.
"""

from airflow.sdk import Param

from dbops.dagkit import CONFIG, cron, dbops_dag, stores_param
from dbops.registry import DRILLED_STORES, MULTI_SERIES_STORES
from dbops.tasks.drill import drill_task, local_only, plan, series_task, summary
from dbops.tasks.pitr import drill_postgres_pitr
from dbops.tasks.restore import LOCAL, SOURCES

with dbops_dag(
    "dbops_restore_drill",
    schedule=cron(CONFIG.schedules.restore_drill),
    doc_md=__doc__,
    tags=["backup", "restore"],
    params={
        # by default the stores that are backed up (backup.stores): a store never backed up has nothing to drill
        "stores": stores_param(
            [s for s in DRILLED_STORES if s in {b.value for b in CONFIG.backup.stores}] or list(DRILLED_STORES),
            "Stores whose latest backups are drilled.",
        ),
        "source": Param(
            LOCAL,
            type="string",
            enum=SOURCES,
            title="Source",
            description="'local' (the backup repository) or an offsite target ('s3', 'rsync'; only "
            "those in offsite.targets): its latest copies are fetched and drilled.",
        ),
    },
):
    planned = plan()
    drills = [
        drill_task(store).partial(planned=planned).expand(subject=series_task(store)(planned))
        if store in MULTI_SERIES_STORES
        else drill_task(store)(subject=None, planned=planned)
        for store in DRILLED_STORES
    ]
    pitr = drill_postgres_pitr()
    local_only() >> pitr
    [*drills, pitr] >> summary(planned)
