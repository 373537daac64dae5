"""Run-time wiring, the one place where dbops meets Airflow's Variables and Connections: the
configuration a running task (or the DB Ops page) uses, each store's client built from its
Airflow connection, the offsite targets opened from config and connection, and the offsite
encryption key.

Tasks, DAG callbacks and the page import this module; the pure core (backup repository,
manifests, retention, recovery-point checks, offsite targets' logic) never does: it is handed
what it needs (a config, a client, a target, or this module as the adapters' ``links``).

Secrets stay inside the hooks and clients: nothing here logs or returns a password.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from dbops.config import ConfigError, DbopsConfig, load_config

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- configuration

_PARSED: DbopsConfig | None = None


def base_config() -> DbopsConfig:
    """The YAML file and environment, read once per process (parse time: no Airflow call)."""
    global _PARSED
    if _PARSED is None:
        _PARSED = load_config()
    return _PARSED


def runtime_config(overrides: dict[str, Any] | None = None) -> DbopsConfig:
    """The parse-time config plus the ``dbops_config`` Variable (JSON) and ``overrides``."""
    from airflow.sdk import Variable

    raw = Variable.get("dbops_config", default=None)
    config = base_config()
    if raw:
        try:
            variable = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError as exc:
            raise ConfigError(f"Airflow Variable dbops_config is not valid JSON: {exc}") from None
        config = config.with_overrides(variable)
    return config.with_overrides(overrides)


# --------------------------------------------------------------------------- connections -> clients


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


# --------------------------------------------------------------------------- offsite targets

MIB = 1024 * 1024


def target_connection_id(config: DbopsConfig, target: str) -> str:
    return config.connections.offsite_ssh if target == "rsync" else config.connections.s3


@contextmanager
def open_target(name: str, config: DbopsConfig) -> Iterator:
    """The target ``name`` ("rsync" or "s3") built from its Airflow connection."""
    settings = config.offsite
    if name == "rsync":
        from dbops.offsite.rsync import RsyncTarget

        params = ssh_params(config.connections.offsite_ssh, settings.ssh_connect_timeout_s)
        work_dir = settings.work_dir or config.backup.root / ".offsite-outbox"
        with RsyncTarget(
            params,
            settings.rsync_remote_dir,
            rsync_path=settings.rsync_path,
            bwlimit_kib=settings.rsync_bwlimit_kib,
            io_timeout_s=settings.rsync_timeout_s,
            compress=settings.rsync_compress,
            work_dir=work_dir,
        ) as target:
            yield target
    elif name == "s3":
        from dbops.offsite.s3 import S3Settings, S3Target

        s3 = S3Settings(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            storage_class=settings.s3_storage_class,
            sse=settings.s3_sse,
            sse_kms_key_id=settings.s3_sse_kms_key_id,
            multipart_threshold=settings.s3_multipart_threshold_mib * MIB,
            multipart_chunksize=settings.s3_multipart_chunk_mib * MIB,
            max_concurrency=settings.s3_max_concurrency,
            object_lock=settings.s3_object_lock,
            retention_days=settings.retention_days,
        )
        with S3Target(s3_client(config.connections.s3), s3) as target:
            yield target
    else:  # pragma: no cover - Params and config refuse other names
        raise ValueError(f"unknown offsite target {name!r}")


def ssh_params(conn_id: str, connect_timeout: int = 15):
    """The offsite SSH target (:class:`dbops.offsite.rsync.SSHParams`) of an SSH connection.

    Read through the ssh provider's SSHHook, which checks the connection (a host_key
    together with no_host_key_check is refused, the private key must parse). The key
    text comes from the extra ``private_key`` (or ``key_file``), the host key from the
    extra ``host_key``; rsync runs with BatchMode, so a key with a passphrase is refused.
    """
    from airflow.providers.ssh.hooks.ssh import SSHHook

    from dbops.offsite.rsync import SSHParams

    extra = dict(get_connection(conn_id).extra_dejson or {})
    hook = SSHHook(ssh_conn_id=conn_id)
    if extra.get("private_key_passphrase"):
        raise ValueError(
            f"connection {conn_id!r}: rsync runs non-interactively and cannot use a key with a passphrase; "
            "use a dedicated key without one (restricted on the offsite host)"
        )
    if not hook.username:
        raise ValueError(f"connection {conn_id!r} has no login")
    host_key = None
    if hook.host_key is not None:
        host_key = f"{hook.host_key.get_name()} {hook.host_key.get_base64()}"
    return SSHParams(
        host=hook.remote_host,
        port=int(hook.port or 22),
        user=hook.username,
        private_key=extra.get("private_key") or None,
        key_file=None if extra.get("private_key") else hook.key_file,
        host_key=host_key,
        no_host_key_check=bool(hook.no_host_key_check) and host_key is None,
        connect_timeout=connect_timeout,
    )


def read_catalogs(
    config: DbopsConfig, log_fn: Callable[[str], None], *, only: Callable[[str, str], bool] | None = None
) -> dict[str, Any]:
    """``{target: Catalog or the reason it could not be read}`` of every configured target:
    a target without its connection, or unreadable, gives its error (never an exception).
    ``only(name, conn_id)`` false leaves a target out (the page's cache answers for it)."""
    found: dict[str, Any] = {}
    for name in config.offsite.targets:
        conn_id = target_connection_id(config, name)
        if only is not None and not only(name, conn_id):
            continue
        if not connection_exists(conn_id):
            found[name] = f"no Airflow connection {conn_id!r}"
            continue
        try:
            with open_target(name, config) as target:
                found[name] = target.catalog(log_fn)
        except Exception as exc:  # an unreachable target is a finding, shown or judged by the caller
            log.warning("offsite target %s unreadable: %s", name, exc)
            found[name] = f"{type(exc).__name__}: {exc}"
    return found


def offsite_encryption(config: DbopsConfig):
    """The client-side encryption of this config, or None; the key from the Variable or
    connection named by ``offsite.encryption_key``, never logged."""
    if not config.offsite.encryption:
        return None
    from airflow.sdk import Variable
    from airflow.sdk.exceptions import AirflowFailException

    from dbops.offsite.crypto import Encryption, parse_key

    kind, name = config.offsite.encryption_key.split(":", 1)
    if kind == "variable":
        text = Variable.get(name, default=None)
    else:
        text = get_connection(name).password if connection_exists(name) else None
    if not text:
        raise AirflowFailException(
            f"offsite encryption is on but {config.offsite.encryption_key} is missing or empty; "
            "set it (32 random bytes as hex or base64) or turn offsite.encryption off"
        )
    try:
        return Encryption(parse_key(text), config.offsite.encryption_chunk_kib * 1024)
    except ValueError as exc:
        raise AirflowFailException(f"{config.offsite.encryption_key}: {exc}") from None
