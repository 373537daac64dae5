"""Fixtures over the real local stores (``python -m devstack up``)."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import redis
from psycopg import sql

import tests.stack_env  # noqa: F401  (the local stack's connections and DBOPS_* settings)
from tests.support import pg_connect


@pytest.fixture
def scratch_pg(devstack):
    """A new, empty database on the local PostgreSQL; dropped afterwards. Yields (conn dict, name)."""
    conn = devstack.conn("dbops_postgres")
    name = f"dbops_test_{uuid.uuid4().hex[:10]}"
    with pg_connect(conn, "postgres", autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield conn, name
    finally:
        with pg_connect(conn, "postgres", autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def redis_target(tmp_path, monkeypatch):
    """A private redis-server the operator names as the target (Airflow connection in env)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    password = secrets.token_urlsafe(16)
    conf = tmp_path / "target.conf"
    conf.write_text(
        f'port {port}\nbind 127.0.0.1\nrequirepass "{password}"\nsave ""\nappendonly no\ndir "{tmp_path}"\n'
    )
    conf.chmod(0o600)
    proc = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    conn = {"host": "127.0.0.1", "port": port, "password": password}
    try:
        for _ in range(100):
            try:
                with redis.Redis(host=conn["host"], port=conn["port"], password=conn["password"]) as r:
                    if r.ping():
                        break
            except redis.ConnectionError:
                time.sleep(0.05)
        monkeypatch.setenv(
            "AIRFLOW_CONN_DBOPS_TEST_REDIS_TARGET", json.dumps({"conn_type": "redis", **conn, "extra": {"db": 0}})
        )
        yield "dbops_test_redis_target", conn
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def pitr_cluster():
    """The scratch PostgreSQL of the point-in-time recovery tests (tests/pitr_support.py): one
    per session, set up for WAL streaming; stopped at the end when this session started it."""
    from tests.pitr_support import PitrCluster

    cluster = PitrCluster.up()
    yield cluster
    if cluster.started_here:
        cluster.down()


@pytest.fixture
def pitr_stack(pitr_cluster, tmp_path):
    """A WAL receiver (not started yet) streaming from ``pitr_cluster`` into ``tmp_path/backups``
    over its own replication slot; stopped and its slot dropped afterwards."""
    stack = pitr_cluster.stack(tmp_path / "backups")
    yield stack
    stack.close()


@pytest.fixture
def alerts(monkeypatch):
    """A webhook receiver behind the Airflow connection dbops_alerts; yields the received bodies."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(
        "AIRFLOW_CONN_DBOPS_ALERTS",
        json.dumps(
            {
                "conn_type": "http",
                "host": "127.0.0.1",
                "port": server.server_port,
                "schema": "http",
                "extra": {"endpoint": "/alert"},
            }
        ),
    )
    yield received
    server.shutdown()
