"""
### dbops_dr_drill: disaster recovery from the offsite copies alone, timed

Monthly (`schedules.dr_drill`, `0 7 1 * *`), and from the UI at any time. Where
`dbops_restore_drill` proves the local backups restore, this proves the platform survives
the loss of the backup host: every store is restored from **each** offsite target without
reading the local repository (`backup.root` is never opened), compared, and the time it took
is recorded: the time to recover (RTO) per target and store.

| task | what it does |
|---|---|
| `plan` | reads each target's catalog (manifests and envelopes only) and picks, for every series of every selected store there, the latest usable copy: complete, its `offsite.json` matching its manifest, verified when shipped (what `latest` means for a restore from offsite). With `pitr.enabled`, the newest base backup there and the offsite WAL catalog. Refused before any work: a target not in `offsite.targets` or without its connection, a missing or wrong key for encrypted copies, a fetch folder without room for the largest copy of each store. A target that cannot be read, or holds no copy of a selected store, is a failure the summary names |
| `units_<store>` → `drill_<store>` (one mapped task per target and series) | fetches the copy into that target's fetch repository (`offsite.fetch_dir/<target>`: resumable download, manifest MAC, decryption bound to each file, every sha256 checked), then exactly the drill of `dbops_restore_drill` (files re-verified, the store's adapter restores into scratch targets, compares with the backup's own description, removes the scratch targets), then removes the fetched copy. Time to recover = fetch + restore + compare. Postgres, mongo, redis, kafka; Weaviate is not drilled (no scratch target on a live server) |
| `pitr_units` → `drill_postgres_pitr` (one per target) | point-in-time recovery from offsite: the newest base backup there, and the WAL after its start (`postgres_wal/` offsite, each file checked against the offsite catalog and decrypted), into a scratch WAL archive; recovered into a scratch server to a moment between two markers of `dbops.pitr_markers` that the offsite WAL holds (the drill writes none: what is not offsite cannot be recovered from it); exactly the live markers committed up to that moment must be there. Copies removed afterwards |
| `summary` | reads every drill's result of this run back, returns the run's summary (verdict, each failure, time to recover per target and store; in its XCom tab also when it fails; the structured results under the XCom key `result`), fails naming each failure (a mismatch, a fetch that failed, a drill without a result, a run that drilled nothing), logs the RTO table and returns it, and records the run in `<fetch root>/dr_drill.json` |

Each store's drills run in the store's pool, one at a time, like its backups and the weekly
drill. Nothing is written into `backup.root`; scratch databases, topics and servers are those
of the regular drill and are removed also when a drill fails. Keep `offsite.fetch_dir` on a
disk with room for the largest backup (plus its encrypted copy while it is decrypted) and
`pitr.scratch_dir` set when point-in-time recovery is on.

**Params**: `targets` (the offsite targets to recover from; default every configured one),
`stores` (which stores to drill; default: those of `backup.stores`).

**Rerun**: a cleared drill task drills the same copy as before (chosen by `plan`); an
interrupted download resumes (the fetch keeps it in the fetch repository's staging folder);
a rerun of `summary` reads the latest results and replaces its own entry in `dr_drill.json`.

**Backfill**: a drill cannot restore the past: a backfilled (or late) run drills the latest
offsite copies that exist now, like a scheduled one, and says so in `plan`'s log.
"""

from airflow.sdk import Param

from dbops.dagkit import CONFIG, cron, dbops_dag, stores_param
from dbops.registry import DRILLED_STORES
from dbops.tasks.dr_drill import drill_postgres_pitr, drill_task, pitr_units, plan, summary, units_task
from dbops.tasks.offsite import TARGETS

with dbops_dag(
    "dbops_dr_drill",
    schedule=cron(CONFIG.schedules.dr_drill),
    doc_md=__doc__,
    tags=["backup", "restore", "offsite"],
    params={
        "targets": Param(
            list(CONFIG.offsite.targets),
            type="array",
            items={"type": "string", "enum": TARGETS},
            uniqueItems=True,
            minItems=1,
            title="Targets",
            description="The offsite targets to recover from (each on its own).",
        ),
        # by default the stores that are backed up (backup.stores): a store never backed up has nothing to drill
        "stores": stores_param(
            [s for s in DRILLED_STORES if s in {b.value for b in CONFIG.backup.stores}] or list(DRILLED_STORES),
            "Stores restored from offsite and compared.",
        ),
    },
):
    planned = plan()
    drills = [drill_task(store).expand(unit=units_task(store)(planned)) for store in DRILLED_STORES]
    [*drills, drill_postgres_pitr.expand(unit=pitr_units(planned))] >> summary(planned)
