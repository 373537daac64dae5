"""Clients for each store, built from Airflow connections through the provider hooks.

This is the only place that turns a connection id into a client. Secrets stay inside
the hooks and clients: nothing here logs or returns a password.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException


def get_connection(conn_id: str):
    """The Airflow connection; a malformed ``AIRFLOW_CONN_<ID>`` is named as such.

    Airflow's secrets backends skip a value they cannot parse and then report the
    connection as not defined, which sends the operator looking for the wrong problem.
    """
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        variable = f"AIRFLOW_CONN_{conn_id.upper()}"
        raw = os.environ.get(variable)
        if raw is not None:
            problem = _parse_problem(raw, conn_id)
            if problem:
                # the parser's message names the bad part (a port, the JSON position), not the password
                raise ValueError(
                    f"Airflow connection {conn_id!r}: environment variable {variable} is malformed: {problem}"
                ) from None
        raise


def _parse_problem(raw: str, conn_id: str) -> str | None:
    from airflow.sdk.definitions.connection import Connection

    try:
        if raw.lstrip().startswith("{"):
            Connection.from_json(raw, conn_id=conn_id)
        else:
            Connection.from_uri(raw, conn_id=conn_id)
    except Exception as exc:  # any parse error
        return f"{type(exc).__name__}: {exc}"
    return None


def connection_exists(conn_id: str) -> bool:
    try:
        get_connection(conn_id)
    except AirflowNotFoundException:
        return False
    return True


def optional(conn_id: str):
    """The Airflow connection, or None when it is not defined (an optional feature is off)."""
    try:
        return get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def require_weaviate(conn_id: str) -> None:
    """Skip the calling task, saying so, when no Weaviate connection is configured."""
    from airflow.sdk.exceptions import AirflowSkipException

    if not connection_exists(conn_id):
        raise AirflowSkipException(f"skipped: no Weaviate configured (no Airflow connection {conn_id!r})")


@contextmanager
def postgres(conn_id: str, database: str | None = None) -> Iterator:
    """A psycopg 3 connection (autocommit off) to ``database`` or the connection's own.

    The same way the backup tools reach Postgres (:func:`endpoint`, with the libpq options
    of the connection's extra): one path from a connection id to the server.
    """
    from dbops.stores.postgres.backup import pg_connect

    conn = pg_connect(endpoint(conn_id, "postgres"), database)
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def mongo(conn_id: str, default_database: str) -> Iterator:
    """The platform database (the connection's schema, else the configured name)."""
    from airflow.providers.mongo.hooks.mongo import MongoHook

    get_connection(conn_id)
    hook = MongoHook(mongo_conn_id=conn_id)
    client = hook.get_conn()
    try:
        yield client[hook.connection.schema or default_database]
    finally:
        client.close()


@contextmanager
def redis(conn_id: str) -> Iterator:
    from airflow.providers.redis.hooks.redis import RedisHook

    get_connection(conn_id)
    client = RedisHook(redis_conn_id=conn_id).get_conn()
    try:
        yield client
    finally:
        client.close()


def kafka_admin(conn_id: str):
    """A confluent-kafka AdminClient; keep a reference until its futures resolve."""
    from airflow.providers.apache.kafka.hooks.client import KafkaAdminClientHook

    get_connection(conn_id)
    return KafkaAdminClientHook(kafka_config_id=conn_id).get_conn


@dataclass
class WeaviateEndpoint:
    base_url: str
    session: object


@contextmanager
def weaviate(conn_id: str) -> Iterator[WeaviateEndpoint]:
    """A requests session for the Weaviate REST API (API key from the connection password)."""
    import requests

    conn = get_connection(conn_id)
    scheme = conn.schema or (conn.extra_dejson.get("scheme") if conn.extra else None) or "http"
    port = f":{conn.port}" if conn.port else ""
    session = requests.Session()
    if conn.password:
        session.headers["Authorization"] = f"Bearer {conn.password}"
    try:
        yield WeaviateEndpoint(f"{scheme}://{conn.host}{port}", session)
    finally:
        session.close()


DEFAULT_PORTS = {"postgres": 5432, "mongo": 27017, "redis": 6379}


def endpoint(conn_id: str, store: str):
    """The connection as a :class:`dbops.backup.adapter.Endpoint` for the store's tools."""
    from dbops.backup.adapter import Endpoint

    conn = get_connection(conn_id)
    if not conn.host:
        raise ValueError(f"Airflow connection {conn_id!r} has no host")
    return Endpoint(
        host=conn.host,
        port=int(conn.port or DEFAULT_PORTS[store]),
        login=conn.login or None,
        password=conn.password or None,
        database=conn.schema or None,
        extra=dict(conn.extra_dejson or {}),
    )


def s3_client(conn_id: str):
    """A boto3 S3 client from the amazon provider's S3Hook: credentials, region,
    ``endpoint_url`` (MinIO, SeaweedFS) and ``config_kwargs`` from the connection."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    get_connection(conn_id)
    return S3Hook(aws_conn_id=conn_id).get_conn()
