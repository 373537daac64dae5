"""dbops_restore as Airflow runs it (``dag.test``), from real backups taken by
dbops_nightly_backup of the local stores (PostgreSQL 16 + pgvector, SecantusDB with the
real mongorestore, Redis 7, Tansu)."""

from __future__ import annotations

import time

import pytest

from dbops.backup.repository import BackupRepository
from tests.conftest import run_dag, task_result, without_retries
from tests.integration.restore_sources import (
    backed_up_sources,
    delete_topics,
    drop_pg,
    kafka_topics,
    pg_rows,
    redis_client,
    states,
)
from tests.support import kafka_admin, mongo_client, pg_connect

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def src(devstack, dagbag, tmp_path_factory):
    root = tmp_path_factory.mktemp("restore") / "backups"
    with backed_up_sources(devstack, dagbag, root) as sources:
        sources.repo = BackupRepository(root)
        yield sources


@pytest.fixture(scope="module")
def dag(dagbag):
    return without_retries(dagbag.get_dag("dbops_restore"))


DEFAULTS = {"store": "postgres", "source": "local", "backup_id": "latest", "database": "", "target": "",
            "confirm_overwrite": "", "topics": [], "target_time": "", "target_lsn": "", "target_name": ""}


def restore(dag, **conf):
    # every Param given: dag.test() keeps the conf of the previous run in the DAG's params
    run = run_dag(dag, {**DEFAULTS, **conf})
    return run, states(run)


def latest(src, store, subject=None):
    return src.repo.latest(store, subject).backup_id


# --------------------------------------------------------------------------- PostgreSQL


def test_postgres_into_a_new_database_equals_the_source_and_a_rerun_does_not_double_it(src, dag):
    backup_id = latest(src, "postgres", src.pg_db)
    target = f"{src.pg_db}_restored_{backup_id.lower()}"
    try:
        run, st = restore(dag, store="postgres", database=src.pg_db)
        assert run.state == "success", st
        assert st["restore_postgres"] == "success"
        assert all(st[f"restore_{s}"] == "skipped" for s in ("mongo", "redis", "kafka", "weaviate"))
        result = task_result(run, "restore_postgres")
        assert result["target"] == target and result["backup_id"] == backup_id
        assert result["differences"] == [] and result["already"] is False and result["replaced"] is False
        assert result["tables"] == 2 and result["rows"] == 350
        assert pg_rows(src.pg, target) == pg_rows(src.pg, src.pg_db)  # vectors included

        again, st = restore(dag, store="postgres", database=src.pg_db)
        assert again.state == "success", st
        second = task_result(again, "restore_postgres")
        assert second["already"] is True and second["differences"] == []
        assert "already holds" in second["summary"]
        assert len(pg_rows(src.pg, target)) == 300
    finally:
        drop_pg(src.pg, target)


def test_postgres_over_an_existing_database_needs_confirm_naming_it(src, dag, capfd):
    with pg_connect(src.pg, src.pg_db) as c:  # the live database changes after the backup
        c.execute("DELETE FROM items WHERE id > 250")
        c.execute("UPDATE items SET label = 'changed' WHERE id = 1")
        c.commit()
    changed = pg_rows(src.pg, src.pg_db)

    for confirm, why in (("", f"set confirm_overwrite to '{src.pg_db}' (exactly)"),
                         ("yes", "must name the target exactly"), (src.pg_db.upper(), "must name the target exactly")):
        capfd.readouterr()
        run, st = restore(dag, store="postgres", database=src.pg_db, target=src.pg_db, confirm_overwrite=confirm)
        assert run.state == "failed" and st["plan"] == "failed", st
        assert st["restore_postgres"] == "upstream_failed"
        assert "refused before any work" in (out := "".join(capfd.readouterr())) and why in out
        assert pg_rows(src.pg, src.pg_db) == changed  # nothing was touched

    run, st = restore(dag, store="postgres", database=src.pg_db, target=src.pg_db, confirm_overwrite=src.pg_db)
    assert run.state == "success", st
    result = task_result(run, "restore_postgres")
    assert result["replaced"] is True and result["differences"] == []
    rows = pg_rows(src.pg, src.pg_db)
    assert len(rows) == 300 and rows[0][1] == "item 1"
    # the database it replaced is kept aside, as it was, never dropped
    aside = f"{src.pg_db}_dbops_old_{result['backup_id'].lower()}"
    with pg_connect(src.pg, "postgres") as c:
        leftovers = c.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
                              [f"{src.pg_db}%"]).fetchall()  # fmt: skip
    assert leftovers == [(src.pg_db,), (aside,)]
    assert pg_rows(src.pg, aside) == changed
    drop_pg(src.pg, aside)


def test_malformed_or_missing_backup_ids_are_refused_before_any_work(src, dag, capfd):
    import copy

    params = copy.deepcopy(dag.params)
    with pytest.raises(Exception, match="backup_id"):
        params["backup_id"] = "../../etc"
        params.validate()
    # and the plan refuses them even when the Param schema is bypassed
    from dbops.tasks import restore as tasks

    with pytest.raises(Exception, match="refused before any work: backup_id '../../etc'"):
        tasks._request({"store": "postgres", "backup_id": "../../etc", "database": "", "target": "",
                        "confirm_overwrite": "", "topics": []})
    capfd.readouterr()
    run, st = restore(dag, store="postgres", database=src.pg_db, backup_id="20200101T000000Z")
    assert run.state == "failed" and st["plan"] == "failed" and st["restore_postgres"] == "upstream_failed"
    assert f"no backup 20200101T000000Z of postgres/{src.pg_db}" in "".join(capfd.readouterr())


# --------------------------------------------------------------------------- MongoDB


def test_mongo_into_a_new_database_keeps_the_ttl_index_and_equals_the_source(src, dag):
    backup_id = latest(src, "mongo")
    target = f"{src.mongo_db}_restored_{backup_id.lower()}"
    try:
        run, st = restore(dag, store="mongo")  # database: the backup's only one
        assert run.state == "success", st
        result = task_result(run, "restore_mongo")
        assert result["target"] == target and result["source"] == src.mongo_db
        assert result["differences"] == [] and result["documents_restored"] == 100
        with mongo_client(src.mongo) as client:
            indexes = {ix["name"]: ix for ix in client[target].task_status_cache.list_indexes()}
            assert indexes["last_updated_1"]["expireAfterSeconds"] == 86400
            assert client[target].system_logs.count_documents({}) == 60
            marker = client[target]["_dbops_restore"].find_one({"_id": "restore"})
            assert marker["backup"].endswith(f"mongo/{src.mongo_db}/{backup_id}")

        # the live database without confirm: refused, untouched
        run, st = restore(dag, store="mongo", target=src.mongo_db)
        assert run.state == "failed" and st["plan"] == "failed", st

        again, st = restore(dag, store="mongo")
        assert again.state == "success", st
        assert task_result(again, "restore_mongo")["already"] is True
    finally:
        with mongo_client(src.mongo) as client:
            client.drop_database(target)


# --------------------------------------------------------------------------- Redis


def test_redis_into_a_named_instance_copies_keys_then_refuses_conflicts_without_confirm(src, dag, redis_target, capfd):
    conn_id, conn = redis_target
    with redis_client(conn) as target, redis_client(src.redis) as live:
        target.set("unrelated", "kept")  # keys not in the backup are never touched
        run, st = restore(dag, store="redis", target=conn_id)
        assert run.state == "success", st
        result = task_result(run, "restore_redis")
        assert result["differences"] == [] and result["copied_keys"] >= 5 and result["replaced_keys"] == 0
        for key in ("string", "hash", "list", "zset", "session"):
            assert target.dump(src.prefix + key) == live.dump(src.prefix + key), key
        assert 0 < target.ttl(src.prefix + "session") <= 3600
        assert target.ttl(src.prefix + "string") == -1 and target.get("unrelated") == b"kept"

        # a rerun copies nothing again
        again, st = restore(dag, store="redis", target=conn_id)
        assert again.state == "success", st
        second = task_result(again, "restore_redis")
        assert second["already"] is True and second["copied_keys"] == 0

        # a key that now differs in the target: refused without confirm, nothing written
        target.set(src.prefix + "string", "edited in the target")
        capfd.readouterr()
        run, st = restore(dag, store="redis", target=conn_id)
        assert run.state == "failed" and st["restore_redis"] == "failed", st
        out = "".join(capfd.readouterr())
        assert "1 key(s) of the backup exist in 'dbops_test_redis_target' with other values" in out
        assert f"set confirm_overwrite to '{conn_id}'" in out
        assert target.get(src.prefix + "string") == b"edited in the target"
        run, st = restore(dag, store="redis", target=conn_id, confirm_overwrite=conn_id)
        assert run.state == "success", st
        assert task_result(run, "restore_redis")["replaced_keys"] == 1
        assert target.get(src.prefix + "string") == b"plain value"


def test_redis_into_the_live_instance_needs_confirm(src, dag, capfd):
    capfd.readouterr()
    run, st = restore(dag, store="redis", target="dbops_redis")
    assert run.state == "failed" and st["plan"] == "failed" and st["restore_redis"] == "upstream_failed", st
    assert "'dbops_redis' is the live Redis" in "".join(capfd.readouterr())
    run, st = restore(dag, store="redis")  # no target at all
    assert run.state == "failed" and st["plan"] == "failed", st


# --------------------------------------------------------------------------- Kafka


def test_kafka_recreates_a_deleted_topic_and_reports_existing_ones(src, dag):
    delete_topics(src.kafka, [src.topic])
    for _ in range(50):
        if src.topic not in kafka_topics(src.kafka):
            break
        time.sleep(0.1)
    run, st = restore(dag, store="kafka", topics=[src.topic])
    assert run.state == "success", st
    result = task_result(run, "restore_kafka")
    assert result["created_topics"] == [src.topic] and result["differences"] == []
    admin = kafka_admin(src.kafka)
    assert len(admin.list_topics(topic=src.topic, timeout=10).topics[src.topic].partitions) == 2

    again, st = restore(dag, store="kafka", topics=[src.topic])
    assert again.state == "success", st
    second = task_result(again, "restore_kafka")
    assert second["created_topics"] == [] and second["unchanged_topics"] == [src.topic] and second["already"]

    run, st = restore(dag, store="kafka", topics=["no_such_topic_in_the_backup"])
    assert run.state == "failed" and st["plan"] == "failed", st


def test_weaviate_without_a_connection_is_skipped_clearly(src, dag):
    run, st = restore(dag, store="weaviate")
    assert st["plan"] == "skipped" and st["restore_weaviate"] == "skipped", st
