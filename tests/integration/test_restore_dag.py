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


DEFAULTS = {
    "store": "postgres",
    "source": "local",
    "backup_id": "latest",
    "database": "",
    "target": "",
    "confirm_overwrite": "",
    "topics": [],
    "target_time": "",
    "target_lsn": "",
    "target_name": "",
}


def restore(dag, respond=None, **conf):
    # every Param given: dag.test() keeps the conf of the previous run in the DAG's params
    run = run_dag(dag, {**DEFAULTS, **conf}, respond=respond)
    return run, states(run)


def latest(src, store, subject=None):
    return src.repo.latest(store, subject).backup_id


# --------------------------------------------------------------------------- PostgreSQL


def test_postgres_into_a_new_database_equals_the_source_and_a_rerun_does_not_double_it(src, dag):
    backup_id = latest(src, "postgres", src.pg_db)
    target = f"{src.pg_db}_restored_{backup_id.lower()}"
    try:
        run, st = restore(dag, store="postgres", database=src.pg_db)  # no respond: a wait would fail the run
        assert run.state == "success", st
        assert st["restore_postgres"] == "success"
        # a new database destroys nothing: the approval passes at once, nobody is asked
        assert run.approvals == [] and task_result(run, "approve")["approved"] is None
        assert all(st[f"restore_{s}"] == "skipped" for s in ("mongo", "redis", "kafka", "weaviate"))
        result = task_result(run, "restore_postgres")
        assert result["target"] == target and result["backup_id"] == backup_id
        assert result["differences"] == [] and result["already"] is False and result["replaced"] is False
        assert result["tables"] == 2 and result["rows"] == 350
        assert pg_rows(src.pg, target) == pg_rows(src.pg, src.pg_db)  # vectors included
        # the run's summary (the `summary` task's return value) names the database it created
        text = task_result(run, "summary")
        created = f"restore_postgres: restored postgres backup {backup_id} of {src.pg_db} into {target} (created)"
        assert created in text, text

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

    for confirm, why in (
        ("", f"set confirm_overwrite to '{src.pg_db}' (exactly)"),
        ("yes", "must name the target exactly"),
        (src.pg_db.upper(), "must name the target exactly"),
    ):
        capfd.readouterr()
        run, st = restore(dag, store="postgres", database=src.pg_db, target=src.pg_db, confirm_overwrite=confirm)
        assert run.state == "failed" and st["plan"] == "failed", st
        assert st["restore_postgres"] == "upstream_failed"
        assert "refused before any work" in (out := "".join(capfd.readouterr())) and why in out
        assert pg_rows(src.pg, src.pg_db) == changed  # nothing was touched

    run, st = restore(
        dag, store="postgres", database=src.pg_db, target=src.pg_db, confirm_overwrite=src.pg_db, respond="Approve"
    )
    assert run.state == "success", st
    assert [a["task_id"] for a in run.approvals] == ["approve"] and task_result(run, "approve")["approved"] is True
    result = task_result(run, "restore_postgres")
    assert result["replaced"] is True and result["differences"] == []
    rows = pg_rows(src.pg, src.pg_db)
    assert len(rows) == 300 and rows[0][1] == "item 1"
    # the database it replaced is kept aside, as it was, never dropped
    aside = f"{src.pg_db}_dbops_old_{result['backup_id'].lower()}"
    with pg_connect(src.pg, "postgres") as c:
        leftovers = c.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", [f"{src.pg_db}%"]
        ).fetchall()
    assert leftovers == [(src.pg_db,), (aside,)]
    assert pg_rows(src.pg, aside) == changed
    text = task_result(run, "summary")  # the run's summary: what was replaced, and where the old one is
    assert (
        f"restore_postgres: replaced {src.pg_db} with postgres backup {result['backup_id']} of {src.pg_db}, "
        f"the old one set aside as {aside} in " in text
    ), text
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
        tasks._request(
            {
                "store": "postgres",
                "backup_id": "../../etc",
                "database": "",
                "target": "",
                "confirm_overwrite": "",
                "topics": [],
            }
        )
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
        run, st = restore(dag, store="redis", target=conn_id, confirm_overwrite=conn_id, respond="Approve")
        assert run.state == "success", st
        assert task_result(run, "restore_redis")["replaced_keys"] == 1
        assert target.get(src.prefix + "string") == b"plain value"


def _pg_names(src) -> list[str]:
    with pg_connect(src.pg, "postgres") as c:
        return [
            r[0]
            for r in c.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", [f"{src.pg_db}%"]
            ).fetchall()
        ]


@pytest.fixture
def occupied(src):
    """A database that exists (holding other data than any backup) for an overwrite to replace."""
    name = f"{src.pg_db}_occupied"
    drop_pg(src.pg, name)
    with pg_connect(src.pg, "postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    with pg_connect(src.pg, name) as c:
        c.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        c.execute("INSERT INTO notes VALUES (1, 'must survive a rejection')")
        c.commit()
    yield name
    drop_pg(src.pg, *[n for n in _pg_names(src) if n.startswith(name)])


def _notes(src, name) -> list[tuple]:
    with pg_connect(src.pg, name) as c:
        return c.execute("SELECT * FROM notes ORDER BY id").fetchall()


def test_postgres_overwrite_waits_for_an_approval_that_shows_the_plan_and_a_rejection_changes_nothing(
    src, dag, occupied
):
    import psycopg

    names = _pg_names(src)
    backup = src.repo.latest("postgres", src.pg_db)
    # a client connected to the database the restore would replace: the approval names its session
    client = psycopg.connect(
        host=src.pg["host"],
        port=src.pg["port"],
        user=src.pg["login"],
        password=src.pg["password"],
        dbname=occupied,
        application_name="approval-test-client",
    )
    try:
        run, st = restore(
            dag, store="postgres", database=src.pg_db, target=occupied, confirm_overwrite=occupied, respond="Reject"
        )
        assert run.state == "success", st  # a rejection is an answer, not a failure
        assert st["approve"] == "success" and st["restore_postgres"] == "skipped", st
        assert task_result(run, "approve", key="approval")["approved"] is False
        assert client.execute("SELECT 1").fetchone() == (1,)  # its session was not ended
    finally:
        client.close()
    # nothing changed: the old database as it was, no new copy, nothing set aside
    assert _notes(src, occupied) == [(1, "must survive a rejection")] and _pg_names(src) == names

    [asked] = run.approvals
    assert asked["task_id"] == "approve" and occupied in asked["subject"]
    body = asked["body"]
    from dbops.tools import human_bytes

    assert f"`{occupied}`" in body and f"{occupied}_dbops_old_{backup.backup_id.lower()}" in body  # replaced, kept as
    assert "Sessions that end" in body and "application approval-test-client" in body
    assert backup.backup_id in body and f"{human_bytes(backup.total_bytes)} ({backup.total_bytes} bytes)" in body
    assert f"taken {backup.taken_at.isoformat()}" in body and " old" in body  # the age
    assert "Reject" in body and "nothing changes" in body

    # approved, the same restore replaces it (the old one kept aside)
    run, st = restore(
        dag, store="postgres", database=src.pg_db, target=occupied, confirm_overwrite=occupied, respond="Approve"
    )
    assert run.state == "success" and st["restore_postgres"] == "success", st
    assert pg_rows(src.pg, occupied) == pg_rows(src.pg, src.pg_db)
    assert _notes(src, f"{occupied}_dbops_old_{backup.backup_id.lower()}") == [(1, "must survive a rejection")]


def test_an_unanswered_approval_times_out_and_changes_nothing(src, dag, occupied):
    from tests.integration.restore_sources import set_config

    names = _pg_names(src)
    set_config({**src.config, "restore": {"approval_timeout_minutes": 0.05}})
    try:
        # the scheduler's own timeout sweep, once the 3 s passed
        run, st = restore(
            dag, store="postgres", database=src.pg_db, target=occupied, confirm_overwrite=occupied, respond="timeout"
        )
    finally:
        set_config(src.config)
    assert run.state == "failed" and st["approve"] == "failed", st
    assert st["restore_postgres"] == "upstream_failed", st
    assert _notes(src, occupied) == [(1, "must survive a rejection")] and _pg_names(src) == names


def test_redis_into_the_live_instance_needs_confirm(src, dag, capfd):
    capfd.readouterr()
    run, st = restore(dag, store="redis", target="dbops_redis")
    assert run.state == "failed" and st["plan"] == "failed" and st["restore_redis"] == "upstream_failed", st
    assert "'dbops_redis' is the live Redis" in "".join(capfd.readouterr())
    run, st = restore(dag, store="redis")  # no target at all
    assert run.state == "failed" and st["plan"] == "failed", st
    # confirmed, it still waits for an approval naming the live Redis; rejected, nothing is written
    run, st = restore(dag, store="redis", target="dbops_redis", confirm_overwrite="dbops_redis", respond="Reject")
    assert run.state == "success" and st["approve"] == "success" and st["restore_redis"] == "skipped", st
    [asked] = run.approvals
    assert "is the live Redis" in asked["body"] and "dbops_redis" in asked["subject"]


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
