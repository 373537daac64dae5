"""Fixtures of the fault tests: the shared local stores (never stopped here) and scratch
instances of this folder's own, which the tests may stop or kill."""

from __future__ import annotations

import uuid

import pytest
from psycopg import sql

import tests.stack_env  # noqa: F401  (the local stack's connections and DBOPS_* settings)
from tests.support import pg_connect

# A Redis of the fault tests only: stopped and killed mid-backup (the shared one never is).
SCRATCH_REDIS_PORT = 56397


@pytest.fixture
def pg_conn(devstack) -> dict:
    return devstack.conn("dbops_postgres")


@pytest.fixture
def pg_database(pg_conn):
    """A new database on the shared PostgreSQL, dropped afterwards."""
    name = f"dbops_fault_{uuid.uuid4().hex[:10]}"
    with pg_connect(pg_conn, "postgres", autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with pg_connect(pg_conn, "postgres", autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def mongo_conn(devstack) -> dict:
    return devstack.conn("dbops_mongo")


@pytest.fixture
def mongo_database(mongo_conn):
    """A database name on the shared Mongo (SecantusDB), dropped afterwards."""
    from tests.support import mongo_client

    name = f"dbops_fault_{uuid.uuid4().hex[:10]}"
    yield name
    with mongo_client(mongo_conn) as client:
        client.drop_database(name)


@pytest.fixture(scope="module")
def scratch_redis():
    """A Redis 7 of this folder only (devstack class, own port, own data folder), streaming
    snapshots at once (no repl-diskless-sync-delay); stopped afterwards."""
    from devstack.services.redis import Redis

    server = Redis("redis-faults", SCRATCH_REDIS_PORT)
    server.start()
    try:
        with server.client() as client:
            client.config_set("repl-diskless-sync-delay", 0)
        yield server
    finally:
        server.stop()


# the session-wide real Airflow of the bad-input and concurrency tests
from tests.reliability.live_airflow import live_airflow  # noqa: E402,F401
