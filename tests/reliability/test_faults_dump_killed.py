"""The dump tool killed with SIGKILL mid-backup (pg_dump, mongodump under wine, redis-cli --rdb):
the backup fails with a clear error, nothing partial is listed, no staging is left, the older
backup is untouched byte for byte, and a rerun of the same run succeeds and verifies."""

from __future__ import annotations

import os

import pytest

from dbops.stores.mongo.backup import MongoBackup
from dbops.stores.postgres.backup import PostgresDatabaseBackup
from dbops.tools import ToolError
from tests.reliability.faults import (
    assert_verified,
    backup_now,
    endpoint_of,
    fill_redis,
    fingerprint,
    kill_tool_while_writing,
    redis_endpoint,
    staging_left,
    start_backup,
)
from tests.support import mongo_client, pg_connect

pytestmark = pytest.mark.integration


def _killed_then_rerun(repo, adapter, *, subject, tool, min_bytes, older_id):
    """The common part: kill ``tool`` mid-dump, check what is left, rerun the same run."""
    store = adapter.store
    before = fingerprint(repo.root)
    run_id = f"scheduled__fault_{tool}"
    job = start_backup(repo, adapter, subject=subject, run_id=run_id)
    seen = kill_tool_while_writing(job, repo, tool=tool, store=store, subject=subject, min_bytes=min_bytes)
    job.wait()

    assert job.outcome is None and isinstance(job.error, ToolError), job.error
    assert "failed with exit code -9" in str(job.error)  # names the tool and the signal
    assert [b.backup_id for b in repo.list(store, subject)] == [older_id]  # nothing new listed
    assert repo.problems(store, subject) == []
    assert staging_left(repo, store, subject) == []  # removed at once, not left for the sweep
    assert fingerprint(repo.root) == before  # the older backup: every file, manifest, byte

    outcome = backup_now(repo, adapter, subject=subject, run_id=run_id)  # the retry
    assert not outcome.reused
    assert [b.backup_id for b in repo.list(store, subject)] == [older_id, outcome.backup_id]
    assert_verified(repo, store, subject, outcome.backup_id)
    assert staging_left(repo, store, subject) == []
    print(f"{tool}: killed pid {seen['pid']} after {seen['bytes_when_killed']} bytes; rerun {outcome.summary()}")
    return seen, outcome


def test_pg_dump_killed_mid_backup(repo, pg_conn, pg_database):
    endpoint = endpoint_of(pg_conn)
    with pg_connect(pg_conn, pg_database) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, payload text)")
        conn.execute("INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 100) g")
        conn.commit()
    adapter = PostgresDatabaseBackup(endpoint, pg_database, jobs=2, compression="gzip:9")
    older = backup_now(repo, adapter, subject=pg_database, run_id="scheduled__yesterday")
    with pg_connect(pg_conn, pg_database) as conn:  # big enough to be caught mid-dump
        conn.execute("CREATE TABLE big_a (id int, payload text)")
        conn.execute("CREATE TABLE big_b (id int, payload text)")
        for table in ("big_a", "big_b"):
            conn.execute(
                f"INSERT INTO {table} SELECT g, md5(random()::text) || md5(random()::text) || md5(random()::text) "
                "FROM generate_series(1, 400000) g"
            )
        conn.commit()
    _killed_then_rerun(
        repo, adapter, subject=pg_database, tool="pg_dump", min_bytes=256 * 1024, older_id=older.backup_id
    )


def test_mongodump_killed_mid_backup(repo, mongo_conn, mongo_database):
    endpoint = endpoint_of(mongo_conn)
    with mongo_client(mongo_conn) as client:
        client[mongo_database].small.insert_one({"n": 1})
    adapter = MongoBackup(endpoint, mongo_database)
    older = backup_now(repo, adapter, run_id="scheduled__yesterday")
    with mongo_client(mongo_conn) as client:
        for batch in range(30):
            client[mongo_database].big.insert_many(
                [{"i": batch * 1000 + i, "payload": os.urandom(500).hex()} for i in range(1000)]
            )
    # under wine, the process run_tool started becomes mongodump.exe
    _killed_then_rerun(repo, adapter, subject=None, tool="mongodump", min_bytes=1024 * 1024, older_id=older.backup_id)


def test_redis_cli_killed_mid_snapshot(repo, scratch_redis):
    from dbops.stores.redis.backup import RedisBackup

    fill_redis(scratch_redis, 100)
    adapter = RedisBackup(redis_endpoint(scratch_redis))
    older = backup_now(repo, adapter, run_id="scheduled__yesterday")
    fill_redis(scratch_redis, 20_000)
    with scratch_redis.client() as client:  # the forked child sleeps 200 us per key: a 4 s stream
        client.config_set("rdb-key-save-delay", 200)
    try:
        job_adapter = RedisBackup(redis_endpoint(scratch_redis))
        before = fingerprint(repo.root)
        job = start_backup(repo, job_adapter, run_id="scheduled__fault_redis")
        seen = kill_tool_while_writing(job, repo, tool="redis-cli", store="redis", min_bytes=256 * 1024)
        job.wait()
    finally:
        with scratch_redis.client() as client:
            client.config_set("rdb-key-save-delay", 0)
    assert isinstance(job.error, ToolError) and "redis-cli failed with exit code -9" in str(job.error)
    assert [b.backup_id for b in repo.list("redis")] == [older.backup_id]
    assert staging_left(repo, "redis") == [] and fingerprint(repo.root) == before
    outcome = backup_now(repo, job_adapter, run_id="scheduled__fault_redis")
    assert [b.backup_id for b in repo.list("redis")] == [older.backup_id, outcome.backup_id]
    assert_verified(repo, "redis", None, outcome.backup_id)
    assert outcome.total_bytes > 20_000 * 1024
    print(f"redis-cli: killed pid {seen['pid']} after {seen['bytes_when_killed']} bytes; rerun {outcome.summary()}")
