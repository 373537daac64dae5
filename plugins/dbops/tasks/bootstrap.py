"""Tasks of ``dbops_bootstrap``: one per store, then ``verify``.

Store modules (psycopg, pymongo, confluent-kafka) are imported inside the tasks so
that parsing the DAG file stays fast.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from dbops import runtime
from dbops.config import DbopsConfig
from dbops.dagkit import on_store, selected_params
from dbops.report import StoreReport
from dbops.runtime import runtime_config
from dbops.sqlfiles import load_spec

log = logging.getLogger(__name__)

MONGO_SPEC = "mongo_collections.json"
KAFKA_SPEC = "kafka_topics.json"
WEAVIATE_SPEC = "weaviate_schema.json"
REDIS_SPEC = "redis_settings.json"


def _selected(store: str) -> tuple[DbopsConfig, dict]:
    """The run's config and Params; skip the task when the store is not selected."""
    params = selected_params(store)
    return runtime_config(), params


def _weaviate_configured(config: DbopsConfig) -> bool:
    if runtime.connection_exists(config.connections.weaviate):
        return True
    log.info("skipped: no Weaviate configured (no Airflow connection %r)", config.connections.weaviate)
    return False


def _finish(report: StoreReport) -> dict:
    log.info("%s", report.render())
    if report.problems:
        log.warning("%d difference(s) could not be repaired; verify will fail on them", len(report.problems))
    return report.to_dict()


@task(**on_store("postgres"))
def bootstrap_postgres() -> dict:
    """Versioned migrations (extensions, schemas, tables, indexes), then the ANN index, then
    the initial admin when a ``dbops_platform_admin`` connection exists (password hashed)."""
    from dbops.stores.postgres import bootstrap as postgres

    config, params = _selected("postgres")
    with runtime.postgres(config.connections.postgres) as conn:
        report = postgres.bootstrap(conn, config.postgres, dry_run=params["dry_run"])
        admin = runtime.optional(config.connections.platform_admin)
        if admin is not None:
            email = admin.extra_dejson.get("email") or f"{admin.login}@localhost"
            postgres.ensure_initial_admin(conn, admin.login, email, admin.password, report, dry_run=params["dry_run"])
        return _finish(report)


@task(**on_store("mongo"))
def bootstrap_mongo() -> dict:
    """Collections and indexes (TTL included) from include/scripts/mongo_collections.json,
    and the application user when a ``dbops_mongo_app`` connection exists."""
    from dbops.stores.mongo import bootstrap as mongo

    config, params = _selected("mongo")
    with runtime.mongo(config.connections.mongo, config.mongo.database) as db:
        report = mongo.bootstrap(db, load_spec(MONGO_SPEC), dry_run=params["dry_run"])
        app = runtime.optional(config.connections.mongo_app)
        if app is not None:
            mongo.ensure_app_user(db, app.login, app.password, report, dry_run=params["dry_run"])
        return _finish(report)


@task(**on_store("weaviate"))
def bootstrap_weaviate() -> dict:
    """Classes and properties from include/scripts/weaviate_schema.json, over REST."""
    from dbops.stores.weaviate import bootstrap as weaviate

    config, params = _selected("weaviate")
    runtime.require_weaviate(config.connections.weaviate)
    with runtime.weaviate(config.connections.weaviate) as api:
        spec = load_spec(WEAVIATE_SPEC)
        return _finish(weaviate.bootstrap(api.session, api.base_url, spec, dry_run=params["dry_run"]))


@task(**on_store("redis"))
def bootstrap_redis() -> dict:
    """Checks maxmemory, eviction policy and AOF; CONFIG SET only with apply_redis_settings."""
    from dbops.stores.redis import bootstrap as redis

    config, params = _selected("redis")
    with runtime.redis(config.connections.redis) as client:
        report = redis.bootstrap(
            client, load_spec(REDIS_SPEC), apply=params["apply_redis_settings"], dry_run=params["dry_run"]
        )
        return _finish(report)


@task(**on_store("kafka"))
def bootstrap_kafka() -> dict:
    """Topics with partitions, replication factor (from config) and topic configs."""
    from dbops.stores.kafka import bootstrap as kafka

    config, params = _selected("kafka")
    admin = runtime.kafka_admin(config.connections.kafka)
    report = kafka.bootstrap(
        admin,
        load_spec(KAFKA_SPEC),
        replication_factor=config.kafka.replication_factor,
        timeout=config.kafka.request_timeout_s,
        dry_run=params["dry_run"],
    )
    return _finish(report)


def _verify_postgres(config: DbopsConfig) -> StoreReport:
    from dbops.stores.postgres import bootstrap as postgres

    with runtime.postgres(config.connections.postgres) as conn:
        return postgres.verify(conn, config.postgres)


def _verify_mongo(config: DbopsConfig) -> StoreReport:
    from dbops.stores.mongo import bootstrap as mongo

    with runtime.mongo(config.connections.mongo, config.mongo.database) as db:
        return mongo.verify(db, load_spec(MONGO_SPEC))


def _verify_redis(config: DbopsConfig) -> StoreReport:
    from dbops.stores.redis import bootstrap as redis

    with runtime.redis(config.connections.redis) as client:
        return redis.verify(client, load_spec(REDIS_SPEC))


def _verify_kafka(config: DbopsConfig) -> StoreReport:
    from dbops.stores.kafka import bootstrap as kafka

    admin = runtime.kafka_admin(config.connections.kafka)
    return kafka.verify(
        admin,
        load_spec(KAFKA_SPEC),
        replication_factor=config.kafka.replication_factor,
        timeout=config.kafka.request_timeout_s,
    )


def _verify_weaviate(config: DbopsConfig) -> StoreReport:
    from dbops.stores.weaviate import bootstrap as weaviate

    with runtime.weaviate(config.connections.weaviate) as api:
        return weaviate.verify(api.session, api.base_url, load_spec(WEAVIATE_SPEC))


VERIFIERS: dict[str, Callable[[DbopsConfig], StoreReport]] = {
    "postgres": _verify_postgres,
    "mongo": _verify_mongo,
    "weaviate": _verify_weaviate,
    "redis": _verify_redis,
    "kafka": _verify_kafka,
}


@task(trigger_rule="none_failed")
def verify() -> dict:
    """Every object of every selected store exists as specified; fails naming what is not."""
    params = get_current_context()["params"]
    if params["dry_run"]:
        raise AirflowSkipException("skipped: dry run; the plan is in the bootstrap tasks' logs")
    config = runtime_config()
    problems: list[str] = []
    summary = {}
    for store in params["stores"]:
        if store == "weaviate" and not _weaviate_configured(config):
            summary[store] = "skipped: no Weaviate configured"
            continue
        report = VERIFIERS[store](config)
        log.info("%s", report.render())
        summary[store] = report.summary()
        problems += [f"{store}: {c.line()}" for c in report.problems]
    if problems:
        raise AirflowFailException("bootstrap verification failed:\n" + "\n".join(problems))
    return summary
