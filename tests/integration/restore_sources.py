"""Sources for the restore and drill DAG tests: a Postgres database with a vector column, a
Mongo database with a TTL index, Redis keys of several types, a Kafka topic, all uniquely
named; backed up for real by ``dbops_nightly_backup`` into a private repository root."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from psycopg import sql

from tests.conftest import run_dag
from tests.support import kafka_admin, mongo_client, pg_connect, task_states

STORES = ["postgres", "mongo", "redis", "kafka"]


states = task_states  # the name the restore and drill tests import from here


def set_config(config: dict) -> None:
    from airflow.models.variable import Variable

    Variable.set("dbops_config", json.dumps(config))


def drop_pg(conn: dict, *names: str) -> None:
    with pg_connect(conn, "postgres", autocommit=True) as admin:
        for name in names:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def pg_rows(conn: dict, database: str) -> list[tuple]:
    with pg_connect(conn, database) as c:
        return c.execute("SELECT id, label, embedding::text FROM items ORDER BY id").fetchall()


def _postgres(conn: dict, name: str) -> None:
    with pg_connect(conn, "postgres", autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with pg_connect(conn, name) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        c.execute("CREATE TABLE items (id int PRIMARY KEY, label text, embedding vector(3))")
        c.execute(
            "INSERT INTO items SELECT g, 'item ' || g, ARRAY[g, g * 0.5, -g]::vector FROM generate_series(1, 300) g"
        )
        c.execute("CREATE TABLE notes (body text)")  # no primary key: sampled by row text
        c.execute("INSERT INTO notes SELECT md5(g::text) FROM generate_series(1, 50) g")
        c.commit()


def _mongo(conn: dict, name: str) -> None:
    now = datetime.now(UTC)
    with mongo_client(conn) as client:
        db = client[name]
        db.task_status_cache.create_index("last_updated", expireAfterSeconds=86400)
        db.task_status_cache.create_index("task_id", unique=True)
        db.task_status_cache.insert_many(
            [{"task_id": f"t{i}", "status": "done", "last_updated": now} for i in range(40)]
        )
        db.system_logs.insert_many([{"level": "INFO", "n": i, "message": "x" * (i % 7)} for i in range(60)])


def _redis(conn: dict, prefix: str) -> None:
    import redis

    with redis.Redis(host=conn["host"], port=conn["port"], password=conn["password"]) as r:
        r.set(prefix + "string", "plain value")
        r.set(prefix + "session", "expires later", ex=3600)
        r.hset(prefix + "hash", mapping={"a": "1", "b": "2"})
        r.rpush(prefix + "list", "first", "second", "first")
        r.zadd(prefix + "zset", {"low": 1.5, "high": 99.25})


def redis_client(conn: dict):
    import redis

    return redis.Redis(host=conn["host"], port=conn["port"], password=conn.get("password"))


def _kafka(conn: dict, topic: str) -> None:
    from confluent_kafka.admin import NewTopic

    admin = kafka_admin(conn)
    futures = admin.create_topics([NewTopic(topic, 2, 1, config={"retention.ms": "3600000"})], request_timeout=30)
    for future in futures.values():
        future.result(timeout=30)


def delete_topics(conn: dict, names: list[str]) -> None:
    admin = kafka_admin(conn)
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [t for t in names if t in existing]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=10).values():
            future.result(timeout=15)


def kafka_topics(conn: dict) -> set[str]:
    return set(kafka_admin(conn).list_topics(timeout=10).topics)


@contextmanager
def backed_up_sources(devstack, dagbag, root: Path) -> Iterator[SimpleNamespace]:
    """Create the sources, run dbops_nightly_backup into ``root``, yield; remove the sources."""
    tag = uuid.uuid4().hex[:8]
    src = SimpleNamespace(
        pg=devstack.conn("dbops_postgres"),
        mongo=devstack.conn("dbops_mongo"),
        redis=devstack.conn("dbops_redis"),
        kafka=devstack.conn("dbops_kafka"),
        pg_db=f"dbops_test_{tag}",
        mongo_db=f"dbops_test_{tag}",
        prefix=f"dbops_test_restore:{tag}:",
        topic=f"dbops_test_restore_{tag}",
        root=root,
    )
    src.config = {
        "backup": {"root": str(root)},
        "postgres": {"databases": [src.pg_db]},
        "mongo": {"database": src.mongo_db},
        "pitr": {"enabled": False},  # the dumps are the subject here; point-in-time recovery: test_pitr_*
    }
    from airflow.models.variable import Variable

    try:
        _postgres(src.pg, src.pg_db)
        _mongo(src.mongo, src.mongo_db)
        _redis(src.redis, src.prefix)
        _kafka(src.kafka, src.topic)
        set_config(src.config)
        run = run_dag(dagbag.get_dag("dbops_nightly_backup"), {"stores": STORES})
        assert run.state == "success", states(run)
        yield src
    finally:
        Variable.delete("dbops_config")
        drop_pg(src.pg, src.pg_db)
        with mongo_client(src.mongo) as client:
            client.drop_database(src.mongo_db)
        with redis_client(src.redis) as r:
            keys = list(r.scan_iter(match=src.prefix.replace("*", r"\*") + "*"))
            if keys:
                r.delete(*keys)
        delete_topics(src.kafka, [src.topic])
