"""Tasks of ``dbops_nightly_backup``: plan, one backup task per store (Postgres mapped
per database), then retention per store, which also publishes the store's Asset."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from dbops import connections
from dbops.config import DbopsConfig
from dbops.dagkit import BACKUP_ASSETS, on_store, runtime_config, selected_params

log = logging.getLogger(__name__)
GLOBALS_SUBJECT = "_globals"


def repository(config: DbopsConfig):
    from dbops.backup.repository import BackupRepository

    return BackupRepository(config.backup.root, allowed_base=config.backup.allowed_base)


def _run_config(params: dict) -> DbopsConfig:
    """The config with this run's retention Params applied (validated again)."""
    return runtime_config(
        {"backup": {"retention_days": params["retention_days"], "min_keep": params["min_keep"]}}
    )


@task
def plan() -> dict:
    """Refuse bad input before any work; decide what a backfilled run does."""
    context = get_current_context()
    params, dag_run = context["params"], context["dag_run"]
    config = _run_config(params)
    repo = repository(config)  # refuses an unsafe root before anything is written
    if "postgres" in params["stores"]:
        _check_database_names(config.postgres.databases or [])
    if str(dag_run.run_type).lower().endswith("backfill") and not params["force"]:
        newest = {}
        for store in params["stores"]:
            for subject in repo.subjects(store) or [None]:
                latest = repo.latest(store, subject)
                newest[f"{store}/{subject}" if subject else store] = latest.backup_id if latest else None
        raise AirflowSkipException(
            "skipped: a backfilled run cannot back up the past, and a backup taken now must not be "
            f"labelled with {context['logical_date']}. Newest backups: {newest}. "
            "Trigger with force=true to take a backup now (it is named by the time it is taken)."
        )
    log.info("backing up %s into %s (retention %s days, min_keep %s)", params["stores"], repo.root,
             config.backup.retention_days, config.backup.min_keep)
    return {"stores": params["stores"], "root": str(repo.root)}


def _take(store: str, subject: str | None, make_adapter: Callable[[DbopsConfig], object]) -> dict:
    from dbops.backup.runner import take_backup

    context = get_current_context()
    params = context["params"]
    config = _run_config(params)
    outcome = take_backup(
        repository(config),
        make_adapter(config),
        store=store,
        subject=subject,
        run_id=context["run_id"],
        dag_id=context["dag"].dag_id,
        logical_date=context.get("logical_date"),
        force=params["force"],
        stale_staging=timedelta(hours=config.backup.stale_staging_hours),
        log=log.info,
    )
    return outcome.to_dict()


@task(**on_store("postgres"))
def postgres_databases() -> list[str]:
    """The databases to back up: the configured list, else every database of the server."""
    from dbops.stores.postgres.backup import pg_connect

    selected_params("postgres")
    config = runtime_config()
    databases = config.postgres.databases
    if databases is None:
        endpoint = connections.endpoint(config.connections.postgres, "postgres")
        with pg_connect(endpoint, endpoint.database or "postgres") as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname"
            ).fetchall()
        databases = [r[0] for r in rows]
    _check_database_names(databases)
    log.info("databases to back up: %s", databases)
    return databases


def _check_database_names(databases: list[str]) -> None:
    from dbops.backup.repository import check_subject_name

    for name in databases:
        try:
            check_subject_name(name)
        except ValueError:
            raise ValueError(
                f"database {name!r} cannot name a backup series (lower-case letters, digits, _ . -); "
                "list the databases to back up in postgres.databases"
            ) from None


@task(**on_store("postgres"), map_index_template="{{ database }}")
def backup_postgres(database: str) -> dict:
    """pg_dump -Fd -j of one database, verified (sha256 + pg_restore --list) before it is visible."""
    from dbops.stores.postgres.backup import PostgresDatabaseBackup

    def adapter(config: DbopsConfig):
        endpoint = connections.endpoint(config.connections.postgres, "postgres")
        return PostgresDatabaseBackup(
            endpoint, database, jobs=config.postgres.dump_jobs, compression=config.postgres.compression
        )

    return _take("postgres", database, adapter)


@task(**on_store("postgres"))
def backup_postgres_globals() -> dict:
    """pg_dumpall --globals-only: roles and tablespaces, which per-database dumps lack."""
    from dbops.stores.postgres.backup import PostgresGlobalsBackup

    selected_params("postgres")
    return _take(
        "postgres",
        GLOBALS_SUBJECT,
        lambda config: PostgresGlobalsBackup(connections.endpoint(config.connections.postgres, "postgres")),
    )


@task(**on_store("mongo"))
def backup_mongo() -> dict:
    """mongodump --archive --gzip (--oplog on a replica set), credentials in a 0600 --config file."""
    from dbops.stores.mongo.backup import MongoBackup

    selected_params("mongo")
    return _take(
        "mongo",
        None,
        lambda config: MongoBackup(connections.endpoint(config.connections.mongo, "mongo"), config.mongo.database),
    )


@task(**on_store("redis"))
def backup_redis() -> dict:
    """redis-cli --rdb (a forked, non-blocking snapshot; never SAVE), checked by redis-check-rdb."""
    from dbops.stores.redis.backup import RedisBackup

    selected_params("redis")
    return _take(
        "redis",
        None,
        lambda config: RedisBackup(
            connections.endpoint(config.connections.redis, "redis"), timeout=config.redis.snapshot_timeout_s
        ),
    )


@task(**on_store("kafka"))
def backup_kafka() -> dict:
    """Topic definitions, configs and consumer group offsets as JSON."""
    from dbops.stores.kafka.backup import KafkaBackup

    selected_params("kafka")
    return _take(
        "kafka",
        None,
        lambda config: KafkaBackup(
            lambda: connections.kafka_admin(config.connections.kafka), timeout=config.kafka.request_timeout_s
        ),
    )


@task(**on_store("weaviate"))
def backup_weaviate() -> dict:
    """Weaviate's backup REST API (create, poll with a timeout); skipped when not configured."""
    from dbops.stores.weaviate.backup import WeaviateBackup

    selected_params("weaviate")
    config = runtime_config()
    connections.require_weaviate(config.connections.weaviate)
    with connections.weaviate(config.connections.weaviate) as api:
        return _take(
            "weaviate",
            None,
            lambda cfg: WeaviateBackup(
                api.session, api.base_url, backend=cfg.weaviate.backup_backend, timeout=cfg.weaviate.backup_timeout_s
            ),
        )


def _expire(store: str, subjects: list[str | None]) -> dict:
    from dbops.backup.repository import utc_now
    from dbops.backup.retention import RetentionPolicy
    from dbops.backup.runner import expire

    context = get_current_context()
    params = context["params"]
    config = _run_config(params)
    policy = RetentionPolicy(config.backup.retention_days, config.backup.min_keep)
    repo = repository(config)
    results = [
        expire(
            repo,
            store,
            subject,
            policy,
            run_id=context["run_id"],
            dag_id=context["dag"].dag_id,
            now=utc_now(),
            dry_run=params["retention_dry_run"],
            log=log.info,
        )
        for subject in subjects
    ]
    return {"store": store, "series": results}


def retention_task(store: str):
    """``retention_<store>``: runs only after the store's backups of this run all succeeded;
    its success updates the store's Asset (what the offsite sync waits for)."""

    @task(task_id=f"retention_{store}", outlets=[BACKUP_ASSETS[store]])
    def retention(databases: list[str] | None = None) -> dict:
        selected_params(store)
        if store == "postgres":
            return _expire(store, [*(databases or []), GLOBALS_SUBJECT])
        return _expire(store, [None])

    retention.__doc__ = f"Apply retention to {store} after this run's verified backup; publish its Asset."
    return retention
