"""
### dbops_restore: one backup of one store into a target (a new database by default)

Manual only. The backup is chosen by id (or `latest`: the newest *verified* one), its
files are checked against the manifest again, restored with the store's own tool, and
the result is compared with the source as it was described right after the dump.

| task | what it does |
|---|---|
| `plan` | refuses, before any work: a bad `backup_id` (`../../etc` is not an id), a backup that does not exist, a target that exists (or is the live Redis) unless `confirm_overwrite` names it exactly; logs what will happen |
| `restore_postgres` | `pg_restore -j --exit-on-error` into a **new database** `<db>_restored_<backupid>` (or `target`); over an existing one only with confirm: the copy is built beside it, then swapped in. The database is marked (its comment) with the backup it holds |
| `restore_mongo` | `mongorestore --nsInclude/--nsFrom/--nsTo` into a **new database** `<db>_restored_<backupid>` (or `target`), which gets a small `_dbops_restore` collection naming the backup; over existing collections only with confirm (`--drop`) |
| `restore_redis` | `target` is the Airflow connection of the Redis to restore into: the RDB is loaded by a scratch `redis-server` on the worker, and its keys copied with `MIGRATE ... COPY` (password via `AUTH2` in the protocol, never argv). Keys the target holds with another value, and the live Redis itself, only with confirm (`REPLACE`); keys not in the backup are never touched |
| `restore_kafka` | recreates the backup's missing topics (or only `topics`) under their own names, with partitions and configs; existing topics are compared and reported, never altered. Consumer group offsets of idle groups are set only when `confirm_overwrite` names the Kafka connection, else reported |
| `restore_weaviate` | Weaviate's restore API, into classes that do not exist; **skipped** when no `dbops_weaviate` connection exists |

Each restore task runs in its store's pool (never beside a backup or maintenance of that
store) and returns its summary (target, counts, differences) as XCom. A restore whose
result differs from the source fails, naming every difference, and leaves the target
for inspection.

**Params**: `store`; `backup_id` (`latest` or `YYYYMMDDTHHMMSSZ[-N]`); `database` (the
source database of a Postgres series or a Mongo backup; default: the connection's, for
Mongo the backup's only database); `target` (Postgres/Mongo: the database to restore
into; Redis: a connection id, required; Kafka: ignored); `confirm_overwrite` (must equal
the target exactly to overwrite anything); `topics` (Kafka only).

**Rerun**: idempotent. The rerun restores exactly the backup the plan chose. A target that
already holds this restore (its marker, or for Redis every key already equal, for Kafka
every topic already there) is reported and compared again, not restored twice; a failed
restore leaves nothing (pg_restore's partial database is dropped) and is started afresh.

**Backfill**: not applicable (manual only, no schedule): a restore always uses the backups
that exist now.
"""

from airflow.sdk import Param

from dbops.backup.restore import BACKUP_ID_PATTERN, LATEST
from dbops.dagkit import dbops_dag
from dbops.registry import STORES
from dbops.tasks.restore import plan, restore_task

with dbops_dag(
    "dbops_restore",
    schedule=None,
    doc_md=__doc__,
    tags=["restore"],
    params={
        "store": Param("postgres", type="string", enum=list(STORES), title="Store", description="The store to restore."),
        "backup_id": Param(LATEST, type="string", pattern=BACKUP_ID_PATTERN, title="Backup id",
                           description="'latest' (the newest verified backup) or an id such as 20260301T020000Z."),
        "database": Param("", type="string", maxLength=63, title="Source database",
                          description="Postgres: the database series; Mongo: the database in the backup. "
                                      "Empty: the connection's (Mongo: the backup's only database)."),
        "target": Param("", type="string", maxLength=250, title="Target",
                        description="Postgres/Mongo: database to restore into (default <db>_restored_<backupid>); "
                                    "Redis: the Airflow connection id of the target Redis (required); Kafka: ignored."),
        "confirm_overwrite": Param("", type="string", maxLength=250, title="Confirm overwrite",
                                   description="To restore over something that exists (or the live Redis), "
                                               "type the target's name exactly."),
        "topics": Param([], type="array", items={"type": "string", "pattern": "^[A-Za-z0-9._-]{1,249}$"},
                        uniqueItems=True, title="Kafka topics", description="Kafka: only these topics (empty: all)."),
        "accept_unsafe_version": Param(False, type="boolean", title="Accept an unsafe Weaviate version",
                                       description="Weaviate up to 1.23.12 can corrupt data on restore (Weaviate's "
                                                   "own warning): its restore is refused unless this is set."),
    },
):
    planned = plan()
    for store in STORES:
        restore_task(store)(planned)
