"""Tasks of ``dbops_restore``: ``plan`` (every check that can refuse, before any work), then
one restore task per store, in that store's pool; the tasks of the other stores skip.

The work itself is :mod:`dbops.backup.restore` (no Airflow there); store modules are
imported inside the tasks so that parsing the DAG file stays fast.
"""

from __future__ import annotations

import logging

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from dbops import connections
from dbops.config import DbopsConfig
from dbops.dagkit import on_store, runtime_config
from dbops.tasks.backup import repository

log = logging.getLogger(__name__)


def _request(params: dict):
    from dbops.backup.restore import RestoreRefused, check_request

    try:
        return check_request(
            store=params["store"],
            backup_id=params["backup_id"],
            database=params["database"],
            target=params["target"],
            confirm=params["confirm_overwrite"],
            topics=params["topics"],
        )
    except RestoreRefused as exc:
        raise AirflowFailException(f"refused before any work: {exc}") from None


def _live_redis(config: DbopsConfig, conn_id: str, endpoint) -> bool:
    """The target is the live Redis: the configured connection, or the same host and port."""
    if conn_id == config.connections.redis:
        return True
    if not connections.connection_exists(config.connections.redis):
        return False
    live = connections.endpoint(config.connections.redis, "redis")
    return (live.host, live.port) == (endpoint.host, endpoint.port)


def _plan(request, config: DbopsConfig) -> dict:
    """The backup, the target and what restoring would overwrite; RestoreRefused when it may not."""
    from dbops.backup import restore as r

    repo = repository(config)
    store = request.store
    subject = None
    checked: dict = {}
    if store == "postgres":
        endpoint = connections.endpoint(config.connections.postgres, "postgres")
        subject = database = request.database or endpoint.database
        if not database:
            raise r.RestoreRefused(
                f"name the database: connection {config.connections.postgres!r} has none (schema) to default to"
            )
        backup = r.resolve_backup(repo, store, database, request.backup_id)
        target = request.target or r.default_target(database, backup.backup_id)
        checked = r.plan_postgres(endpoint, backup, target=target, confirm=request.confirm)
    elif store == "mongo":
        backup = r.resolve_backup(repo, store, None, request.backup_id)
        database = r.mongo_source_database(backup, request.database)
        target = request.target or r.default_target(database, backup.backup_id)
        endpoint = connections.endpoint(config.connections.mongo, "mongo")
        checked = r.plan_mongo(endpoint, backup, database=database, target=target, confirm=request.confirm)
    elif store == "redis":
        database, target = None, request.target
        if not connections.connection_exists(target):
            raise r.RestoreRefused(f"no Airflow connection {target!r}: target names the connection of the Redis to restore into")
        backup = r.resolve_backup(repo, store, None, request.backup_id)
        endpoint = connections.endpoint(target, "redis")
        checked = r.plan_redis(
            target, live=_live_redis(config, target, endpoint), tls=bool(endpoint.extra.get("ssl")), confirm=request.confirm
        )
    elif store == "kafka":
        database, target = None, config.connections.kafka
        if request.target:
            log.info("target %r ignored for kafka: topics are recreated under their own names", request.target)
        backup = r.resolve_backup(repo, store, None, request.backup_id)
        checked = r.plan_kafka(backup, topics=request.topics, target=target, confirm=request.confirm)
    else:  # weaviate
        connections.require_weaviate(config.connections.weaviate)
        database, target = None, config.connections.weaviate
        backup = r.resolve_backup(repo, store, None, request.backup_id)
    if not backup.verified:
        log.warning("backup %s is not verified (%s): its files are checked again before restoring",
                    backup.backup_id, r.why_unverified(backup))  # fmt: skip
    return {
        **checked,
        "store": store,
        "subject": subject,
        "backup_id": backup.backup_id,
        "path": str(backup.path),
        "verified": backup.verified,
        "database": database,
        "target": target,
    }


@task
def plan() -> dict:
    """Refuse bad Params, a missing or malformed backup id, and an unconfirmed overwrite, before any work."""
    from dbops.backup.restore import RestoreRefused

    params = get_current_context()["params"]
    request = _request(params)
    try:
        planned = _plan(request, runtime_config())
    except RestoreRefused as exc:
        raise AirflowFailException(f"refused before any work: {exc}") from None
    what = f"{planned['store']} backup {planned['backup_id']}" + (f" of {planned['database']}" if planned["database"] else "")
    if planned.get("already"):
        log.info("%s: %s already holds it; the restore task reports it and compares again", what, planned["target"])
    else:
        confirmed = planned.get("overwrite") or planned.get("confirmed") or planned.get("offsets")
        log.info("plan: restore %s into %s%s", what, planned["target"],
                 " (confirm_overwrite names it: existing data may be replaced)" if confirmed else "")  # fmt: skip
    return planned


def _restore(store: str, planned: dict) -> dict:
    from dbops.backup import restore as r

    params = get_current_context()["params"]
    if params["store"] != store:
        raise AirflowSkipException(f"skipped: this run restores {params['store']}")
    request = _request(params)
    config = runtime_config()
    repo = repository(config)
    try:
        # exactly the backup the plan chose: a rerun restores the same one, even if a newer appeared
        backup = r.resolve_backup(repo, store, planned["subject"], planned["backup_id"])
        r.verify_files(repo, backup, log.info)
        target = planned["target"]
        if store == "postgres":
            endpoint = connections.endpoint(config.connections.postgres, "postgres")
            result = r.restore_postgres(
                endpoint, backup, target=target, confirm=request.confirm, jobs=config.restore.jobs, log=log.info
            )
        elif store == "mongo":
            endpoint = connections.endpoint(config.connections.mongo, "mongo")
            result = r.restore_mongo(
                endpoint, backup, database=planned["database"], target=target, confirm=request.confirm, log=log.info
            )
        elif store == "redis":
            endpoint = connections.endpoint(target, "redis")
            result = r.restore_redis(
                backup,
                endpoint,
                target=target,
                live=_live_redis(config, target, endpoint),
                confirm=request.confirm,
                port=config.redis.scratch_port,
                scratch_dir=config.restore.scratch_dir,
                batch=config.restore.redis_migrate_batch,
                migrate_timeout_ms=config.restore.redis_migrate_timeout_ms,
                log=log.info,
            )
        elif store == "kafka":
            admin = connections.kafka_admin(config.connections.kafka)
            result = r.restore_kafka(
                admin, backup, topics=request.topics, target=target, confirm=request.confirm,
                timeout=config.kafka.request_timeout_s, log=log.info,
            )  # fmt: skip
        else:
            connections.require_weaviate(config.connections.weaviate)
            with connections.weaviate(config.connections.weaviate) as api:
                result = r.restore_weaviate(
                    api.session, api.base_url, backup, timeout=config.restore.weaviate_timeout_s, log=log.info
                )
    except (r.RestoreRefused, r.CorruptBackup) as exc:
        raise AirflowFailException(f"refused: {exc}") from None
    if result["differences"]:
        raise AirflowFailException(
            f"{result['summary']}. The restored {result['target']} is left for inspection. Differences:\n  "
            + "\n  ".join(result["differences"])
        )
    return result


def restore_task(store: str):
    """``restore_<store>``, in the store's pool; skipped unless the run restores ``store``."""

    @task(task_id=f"restore_{store}", **on_store(store))
    def restore(planned: dict) -> dict:
        return _restore(store, planned)

    restore.__doc__ = f"Restore the planned {store} backup (files verified again first), then compare with the source."
    return restore
