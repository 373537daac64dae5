"""
### dbops_restore: one backup of one store into a target (a new database by default)

Manual only. The backup is chosen by id (or `latest`: the newest *verified* one), its
files are checked against the manifest again, restored with the store's own tool, and
the result is compared with what the backup holds (its description, taken in the dump's
own snapshot or read from the artifact: a store written to during the backup does not
make a good restore fail). Restores never destroy before they have built: the new copy
is complete and compared before anything old is set aside, and what is set aside is kept.

| task | what it does |
|---|---|
| `plan` | refuses, before any work: a bad `backup_id` (`../../etc` is not an id), a backup that does not exist, a target that exists (or is the live Redis) unless `confirm_overwrite` names it exactly; logs what will happen, line by line (what is created, replaced and set aside, which sessions end). From offsite (`source` `s3`/`rsync`): also a source that is not in `offsite.targets` (the configured ones named), a copy that is not usable there, a missing or other decryption key, and a fetch that does not fit: it logs the backup's size and the free space of the fetch repository |
| `approve` | when the plan replaces something that exists (an overwrite confirmed by `confirm_overwrite`, a restore into the live Redis): waits under **Required Actions** for an approval that shows what is replaced, which sessions end, and the backup's size and age. Reject: the restore tasks are skipped, nothing changes; no answer within `restore.approval_timeout_minutes` (default 60): it fails, nothing changes. Not destructive (a new database): passes at once. See docs/restore.md |
| `restore_postgres` | `pg_restore -j --exit-on-error` into a **new database** `<db>_restored_<backupid>` (or `target`), created with the source's encoding and locale, then its database-level state (settings, per-role settings, grants, comment, connection limit). Over an existing database only with confirm: the copy is built and compared beside it; then the old database's sessions are ended (named in the log) and it is **renamed aside** (`<target>_dbops_old_<backupid>`, kept) before the copy takes its name. The target is marked (setting `dbops.restored_from`) with the backup it holds |
| `restore_mongo` | one database out of the backup (a whole-instance archive on a replica set) with `mongorestore --nsInclude/--nsFrom/--nsTo` into a **new database** `<db>_restored_<backupid>` (or `target`), which gets a small `_dbops_restore` collection naming the backup. Over existing collections only with confirm: restored beside into a scratch database and compared, then the old collections are moved aside (`<target>_dbops_old_<id>`, kept) and the new ones moved in |
| `restore_redis` | `target` is the Airflow connection of the Redis to restore into: the RDB is loaded by a scratch `redis-server` on the worker, and the keys of **every database** it holds copied into the same database numbers with `MIGRATE ... COPY` (password via `AUTH2` in the protocol, never argv); a key that does not arrive is an error. Keys the target holds with another value, and the live Redis itself, only with confirm (`REPLACE`); keys not in the backup are never touched |
| `restore_kafka` | recreates the backup's missing topics (or only `topics`) under their own names, with partitions and configs; existing topics are compared and reported, never altered. Consumer group offsets of idle groups are set only when `confirm_overwrite` names the Kafka connection, else reported |
| `restore_postgres_pitr` | with `target_time` (a time with its zone, or `latest`), `target_lsn` or `target_name`: the whole cluster recovered from the newest verified base backup before the target and the WAL archive into a **scratch server** on a free 127.0.0.1 port (`recovery_target_action = promote`; files and WAL segments checked against their sha256 first). `database` empty: the server keeps running, its address in the result. `database` set: that database copied into the live cluster as `target` (default `<db>_restored_<target time>`) through the Postgres restore path above (compared, marked; an existing one only with confirm, set aside), then the scratch server removed. `plan` refuses a target in the future, outside the recovery window (named) or across a WAL gap (the segment named), before any work. See docs/pitr.md |
| `restore_postgres_pitr_offsite` | the same recovery with `source` `s3`/`rsync`, from the offsite copies alone: `plan` picks the newest usable base backup on that target consistent before the target (a restore point name: the oldest), checks that the target holds the WAL of its cluster, the key and the space; the task fetches the base backup (like any backup from offsite) and the WAL from it up to the target into the fetch repository (each file checked against the offsite WAL catalog; a rerun keeps what arrived intact), refuses a target outside what was fetched before starting the server, recovers into a scratch server under `pitr.scratch_dir` (default: the system temp folder), then removes the fetched copies and copies `database` out or keeps the server running, as above |
| `restore_weaviate` | Weaviate's restore API, into classes that do not exist; refused on servers up to 1.23.12 (Weaviate's own warning: they can corrupt data on restore) unless `accept_unsafe_version` is set; **skipped** when no `dbops_weaviate` connection exists |

**From offsite** (`source` `s3` or `rsync`, disaster recovery: the local repository is never
opened and may be gone): `plan` resolves the backup on that target (`latest`: the newest
complete copy whose `offsite.json` matches its manifest and whose manifest records its checks
passed; copies passed over are named) and names it. The restore task first fetches it, in the
store's pool, into the **fetch repository** (`offsite.fetch_dir`, default
`<restore.scratch_dir or the system temp folder>/dbops-offsite-fetch`, one folder per target):
downloaded into `<series>/.staging/<id>.download`, then checked before anything is restored
(manifest valid, `offsite.json` matches it, the manifest's MAC when encrypted, every file
decrypted and its size and sha256 checked); a tampered or damaged copy fails the task and
nothing is created. It then restores the fetched backup with the same adapter call as a local
one. Space: a fetch needs the backup's size (plus the encrypted size while both exist); `plan`
refuses when the fetch repository's disk has less free. The fetched copy is removed after the
restore succeeded and equal; a failed restore keeps it, and a failed download keeps what it
got, for the rerun (for `offsite.stale_staging_hours`). Point-in-time recovery from offsite: `restore_postgres_pitr_offsite`.

Each restore task runs in its store's pool (never beside a backup or maintenance of that
store) and returns its summary (target, counts, differences) as XCom. A restore whose
result differs from the backup fails, naming every difference, and leaves the target
for inspection. Refusals and checksum mismatches fail at once (no retries). The final task
`summary` returns the run's summary (its XCom tab): which database or target was created or
replaced (and what was set aside), or the differences found.

**Params**: `store`; `source` (`local`, or `s3` / `rsync`: fetched from that offsite target
first; only configured targets); `backup_id` (`latest` or `YYYYMMDDTHHMMSSZ[-N]`); `database` (the
source database, by its real name, of a Postgres series or a Mongo backup; default: the
connection's, for Mongo the configured one or the backup's only database); `target`
(Postgres/Mongo: the database to restore into, empty: a new `<db>_restored_<backupid>`; Redis: a
connection id, required; Kafka: ignored); `confirm_overwrite` (must equal the target exactly to
overwrite anything: the first key; the approval in `approve` is the second);
`topics` (Kafka only); `accept_unsafe_version` (Weaviate only); `target_time`, `target_lsn`,
`target_name` (Postgres point-in-time recovery: at most one; `backup_id` stays `latest`). The
optional ones are nullable and start empty: the form triggers with its defaults (a new database).

**Rerun**: idempotent. The rerun restores exactly the backup the plan chose. A target that
already holds this restore (its marker, or for Redis every key already equal, for Kafka
every topic already there) is reported and compared again, not restored twice; a failed
restore leaves nothing of its own (the partial copy is dropped) and the live target as it
was, and is started afresh. From offsite, the rerun fetches the same copy the plan chose,
resuming its download (files already complete are not fetched again) or reusing the copy
fetched before (checked again); after a successful restore the copy is gone, so a rerun
fetches it again to compare.

**Backfill**: not applicable (manual only, no schedule): a restore always uses the backups
that exist now.
"""

from airflow.sdk import Param

from dbops.backup.restore import BACKUP_ID_PATTERN, LATEST
from dbops.dagkit import OPTIONAL_STRING, dbops_dag
from dbops.registry import STORES
from dbops.tasks.approval import DestructionApproval, describe_restore
from dbops.tasks.pitr import restore_postgres_pitr
from dbops.tasks.restore import LOCAL, SOURCES, plan, restore_postgres_pitr_offsite, restore_task
from dbops.tasks.summary import summary

with dbops_dag(
    "dbops_restore",
    schedule=None,
    doc_md=__doc__,
    tags=["restore"],
    params={
        "store": Param(
            "postgres", type="string", enum=list(STORES), title="Store", description="The store to restore."
        ),
        "source": Param(
            LOCAL,
            type="string",
            enum=SOURCES,
            title="Source",
            description="Where the backup is: 'local' (the backup repository) or an offsite target "
            "('s3', 'rsync'; only those in offsite.targets), fetched first.",
        ),
        "backup_id": Param(
            LATEST,
            type="string",
            pattern=BACKUP_ID_PATTERN,
            title="Backup id",
            description="'latest' (the newest verified backup) or an id such as 20260301T020000Z.",
        ),
        "database": Param(
            None,
            type=OPTIONAL_STRING,
            maxLength=63,
            title="Source database",
            description="Postgres/Mongo: the database in the backup, by its real name. "
            "Empty: the connection's (Mongo: the configured or the backup's only database).",
        ),
        "target": Param(
            None,
            type=OPTIONAL_STRING,
            maxLength=250,
            title="Target",
            description="Postgres/Mongo: database to restore into (default <db>_restored_<backupid>); "
            "Redis: the Airflow connection id of the target Redis (required); Kafka: ignored.",
        ),
        "confirm_overwrite": Param(
            None,
            type=OPTIONAL_STRING,
            maxLength=250,
            title="Confirm overwrite",
            description="To restore over something that exists (or the live Redis), type the target's name exactly.",
        ),
        "topics": Param(
            [],
            type="array",
            items={"type": "string", "pattern": "^[A-Za-z0-9._-]{1,249}$"},
            uniqueItems=True,
            title="Kafka topics",
            description="Kafka: only these topics (empty: all).",
        ),
        "target_time": Param(
            None,
            type=OPTIONAL_STRING,
            maxLength=40,
            title="Point in time (Postgres)",
            description="Point-in-time recovery of the whole cluster from a base backup and the WAL: "
            "a time with its zone (2026-12-01T10:15:00+00:00) or 'latest'. "
            "Empty: restore the pg_dump backup of backup_id.",
        ),
        "target_lsn": Param(
            None,
            type=OPTIONAL_STRING,
            maxLength=40,
            title="Point in WAL (Postgres)",
            description="Point-in-time recovery up to this LSN (such as 0/3000028) instead of a time.",
        ),
        "target_name": Param(
            None,
            type=OPTIONAL_STRING,
            maxLength=63,
            title="Restore point (Postgres)",
            description="Point-in-time recovery up to this named restore point (pg_create_restore_point).",
        ),
        "accept_unsafe_version": Param(
            False,
            type="boolean",
            title="Accept an unsafe Weaviate version",
            description="Weaviate up to 1.23.12 can corrupt data on restore (Weaviate's "
            "own warning): its restore is refused unless this is set.",
        ),
    },
):
    planned = plan()
    # destructive plans wait here for a person's approval (the others pass at once)
    approval = DestructionApproval(task_id="approve", describe=describe_restore)
    planned >> approval
    for store in STORES:
        approval >> restore_task(store)(planned)
    approval >> restore_postgres_pitr(planned)
    approval >> restore_postgres_pitr_offsite(planned)
    summary()
