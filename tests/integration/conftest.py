"""Fixtures over the real local stores (``python -m devstack up``)."""

from __future__ import annotations

import uuid

import pytest
from psycopg import sql

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
