"""Small helpers shared by test modules."""

from __future__ import annotations

import psycopg


def pg_connect(conn: dict, dbname: str | None = None, autocommit: bool = False) -> psycopg.Connection:
    """A psycopg connection from a devstack connection dict."""
    return psycopg.connect(
        host=conn["host"],
        port=conn["port"],
        user=conn["login"],
        password=conn["password"],
        dbname=dbname or conn["schema"],
        autocommit=autocommit,
    )
