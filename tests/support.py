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


def mongo_client(conn: dict):
    """A pymongo client from a devstack connection dict."""
    from pymongo import MongoClient

    return MongoClient(
        host=conn["host"],
        port=conn["port"],
        username=conn.get("login"),
        password=conn.get("password"),
        authSource=conn.get("extra", {}).get("authSource", "admin"),
        serverSelectionTimeoutMS=5000,
    )


def kafka_admin(conn: dict):
    from confluent_kafka.admin import AdminClient

    return AdminClient(dict(conn["extra"]))


class StaticLinks:
    """The Links an adapter gets (:class:`dbops.backup.adapter.Links`), over a plain table of
    endpoints instead of Airflow connections."""

    def __init__(self, endpoints: dict) -> None:
        self.endpoints = endpoints

    def endpoint(self, conn_id: str, store: str):
        return self.endpoints[conn_id]

    def connection_exists(self, conn_id: str) -> bool:
        return conn_id in self.endpoints


class Log:
    """A log function that keeps its lines, for asserting on what a task would log."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def store_drill(store: str, log=None):
    """The store adapter's drill (what ``drill_<store>`` runs), reaching the local stores
    through their Airflow connections (``AIRFLOW_CONN_*`` of the devstack)."""
    from dbops import connections
    from dbops.config import load_config
    from dbops.registry import adapter

    store_adapter = adapter(store, load_config(), connections)
    return lambda backup, found: store_adapter.drill(backup, found, log or Log())
