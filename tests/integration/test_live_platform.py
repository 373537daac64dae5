"""Recovery on a live platform: a writer runs against Postgres, Mongo, Redis and Kafka while
dbops_nightly_backup backs them up, dbops_restore_drill drills the backups and dbops_restore
restores them, all as Airflow runs them (``dag.test``) against the real local servers
(SecantusDB and Tansu stand in for mongod and Kafka: no real ones can run here).

Each backup, drill and restore must pass although the stores change under it: a drill judges
a backup by what the backup holds, never by a later read of the live store.
"""

from __future__ import annotations

import uuid

import pytest

from dbops.backup.repository import BackupRepository
from dbops.backup.runner import source_description
from tests.conftest import run_dag, task_result, without_retries
from tests.integration import restore_sources as sources
from tests.integration.writers import busy, kafka_writer, mongo_writer, postgres_writer, redis_writer
from tests.support import mongo_client, pg_connect

pytestmark = pytest.mark.integration

STORES = ["postgres", "mongo", "redis", "kafka"]
RESTORE = {
    "backup_id": "latest",
    "database": "",
    "target": "",
    "confirm_overwrite": "",
    "topics": [],
    "accept_unsafe_version": False,
}


@pytest.fixture(scope="module")
def live(devstack, dagbag, tmp_path_factory):
    from airflow.models.variable import Variable

    tag = uuid.uuid4().hex[:8]
    pg, mongo, redis_conn, kafka = (
        devstack.conn(c) for c in ("dbops_postgres", "dbops_mongo", "dbops_redis", "dbops_kafka")
    )
    names = {
        "pg_db": f"dbops_live_{tag}",
        "mongo_db": f"dbops_live_{tag}",
        "prefix": f"dbops_live:{tag}:",
        "topic": f"dbops_live_{tag}",
    }
    root = tmp_path_factory.mktemp("live") / "backups"
    sources._postgres(pg, names["pg_db"])
    sources._mongo(mongo, names["mongo_db"])
    sources._kafka(kafka, names["topic"])
    sources.set_config(
        {
            "backup": {"root": str(root)},
            "postgres": {"databases": [names["pg_db"]]},
            "mongo": {"database": names["mongo_db"]},
            "pitr": {"enabled": False},
        }
    )  # point-in-time recovery under a writer: test_pitr_*
    writers = (
        postgres_writer(pg, names["pg_db"]),
        mongo_writer(mongo, names["mongo_db"]),
        redis_writer(redis_conn, names["prefix"]),
        kafka_writer(kafka, names["topic"]),
    )
    try:
        with busy(*writers):
            yield {"pg": pg, "mongo": mongo, "repo": BackupRepository(root), "dagbag": dagbag, **names}
    finally:
        Variable.delete("dbops_config")
        sources.drop_pg(pg, names["pg_db"])
        with mongo_client(mongo) as client:
            for name in client.list_database_names():
                if name.startswith(f"dbops_live_{tag}"):
                    client.drop_database(name)
        sources.delete_topics(kafka, [names["topic"]])
        with sources.redis_client(redis_conn) as r:
            for db in (0, 3, 9):
                r.execute_command("SELECT", db)
                keys = list(r.scan_iter(match=names["prefix"] + "*"))
                if keys:
                    r.delete(*keys)


def test_backup_drill_and_restore_pass_while_every_store_is_written_to(live, redis_target):
    dagbag = live["dagbag"]
    backup = run_dag(
        without_retries(dagbag.get_dag("dbops_nightly_backup")),
        {"stores": STORES, "retention_days": 30, "min_keep": 3, "retention_dry_run": False, "force": False},
    )
    assert backup.state == "success", sources.states(backup)

    drill = run_dag(without_retries(dagbag.get_dag("dbops_restore_drill")), {"stores": STORES})
    assert drill.state == "success", (sources.states(drill), task_result(drill, "summary"))
    repo = live["repo"]
    for store, subject in (
        ("postgres", live["pg_db"]),
        ("postgres", "_globals"),
        ("mongo", None),
        ("redis", None),
        ("kafka", None),
    ):
        record = repo.latest(store, subject).sidecars["drill"]
        assert record["ok"] is True and record["run_id"] == drill.run_id, (store, record)

    restore_dag = without_retries(dagbag.get_dag("dbops_restore"))
    pg_run = run_dag(restore_dag, {**RESTORE, "store": "postgres", "database": live["pg_db"]})
    assert pg_run.state == "success", sources.states(pg_run)
    restored_pg = task_result(pg_run, "restore_postgres")
    mongo_run = run_dag(restore_dag, {**RESTORE, "store": "mongo", "database": live["mongo_db"]})
    assert mongo_run.state == "success", sources.states(mongo_run)
    redis_run = run_dag(restore_dag, {**RESTORE, "store": "redis", "target": redis_target[0]})
    assert redis_run.state == "success", sources.states(redis_run)

    # The stores really changed under the backup: the live table no longer has the row count
    # the backup holds, yet the restored copy has exactly the backup's.
    held = source_description(repo.latest("postgres", live["pg_db"]))["tables"]["public.live_writes"]["rows"]
    with pg_connect(live["pg"], live["pg_db"]) as c:
        now_live = c.execute("SELECT count(*) FROM live_writes").fetchone()[0]
    with pg_connect(live["pg"], restored_pg["target"]) as c:
        restored = c.execute("SELECT count(*) FROM live_writes").fetchone()[0]
    assert restored == held != now_live
    sources.drop_pg(live["pg"], restored_pg["target"])
