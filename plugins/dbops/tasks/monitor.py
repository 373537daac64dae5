"""Tasks of ``dbops_table_size_monitor`` (sizes, growth, thresholds) and ``dbops_health``.

Measuring is cheap catalog work: these tasks use the default pool, so a long backup
holding ``dbops_postgres`` does not delay them. A run whose logical date lies in the
past (backfill, catch-up, a trigger with an old date) measures nothing: the present
cannot be recorded as the past. Threshold checks fail with a message naming what is
over which threshold, and notify through :class:`dbops.alerting.DbopsAlert`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from dbops import runtime
from dbops.alerting import DbopsAlert
from dbops.config import DbopsConfig
from dbops.runtime import runtime_config
from dbops.sqlfiles import load_spec

log = logging.getLogger(__name__)

KAFKA_SPEC = "kafka_topics.json"
HEALTH_STORES = ["postgres", "redis", "mongo", "kafka"]


def _now() -> datetime:
    return datetime.now(UTC)


def _refuse_past(context: Mapping[str, Any], max_delay_hours: float, **wording: str) -> None:
    from dbops.maintenance.sizes import measurement_refusal

    refusal = measurement_refusal(context["dag_run"].logical_date, _now(), max_delay_hours, **wording)
    if refusal:
        from dbops.tasks.summary import push_summary

        log.warning("skipped: %s", refusal)
        push_summary(f"skipped: {refusal}")  # the run's summary says why
        raise AirflowSkipException(f"skipped: {refusal}")


# ----------------------------------------------------------------------------- sizes


@task
def capture_sizes() -> dict:
    """Append a snapshot of every table of monitor.schemas to dbops.table_size_history."""
    from dbops.maintenance import sizes

    context = get_current_context()
    config = runtime_config()
    m = config.monitor
    _refuse_past(context, m.max_start_delay_hours)
    with runtime.postgres(config.connections.postgres, m.database) as conn:
        sizes.prepare_session(conn, m)
        try:
            sizes.ensure_ready(conn)
        except sizes.HistoryNotReady as exc:
            raise AirflowFailException(str(exc)) from None
        captured_at, tables = sizes.capture(conn, m.schemas)
        pruned = sizes.prune_history(conn, m.history_retention_days)
        database = conn.info.dbname
    if captured_at is None:
        log.warning("no table found in schemas %s of database %s: nothing captured", m.schemas, database)
    log.info(
        "captured %d tables of %s (schemas %s) at %s; %d history rows older than %d days pruned",
        tables,
        database,
        ", ".join(m.schemas),
        captured_at,
        pruned,
        m.history_retention_days,
    )
    return {
        "captured_at": captured_at.isoformat() if captured_at else None,
        "tables": tables,
        "database": database,
        "pruned_rows": pruned,
    }


@task
def size_report(captured: dict) -> dict:
    """Growth over 1/7/30 days; the report file, the Prometheus file, the report in the log."""
    from dbops.maintenance import sizes

    config = runtime_config()
    m = config.monitor
    if captured["captured_at"] is None:
        raise AirflowSkipException("skipped: the capture found no table")
    captured_at = datetime.fromisoformat(captured["captured_at"])
    with runtime.postgres(config.connections.postgres, m.database) as conn:
        sizes.prepare_session(conn, m)
        rows = sizes.growth(conn, captured_at, m)
    found = sizes.alerts(rows, m)
    text = sizes.render_report(rows, found, captured_at=captured_at, database=captured["database"], schemas=m.schemas)
    report_file = sizes.atomic_write(sizes.report_path(m.reports_dir, captured_at), text)
    metrics_file = sizes.atomic_write(
        sizes.metrics_path(m.reports_dir), sizes.render_metrics(rows, found, captured_at), mode=0o644
    )
    gone = sizes.prune_reports(m.reports_dir, m.report_retention_days, _now())
    log.info("%s", text)
    log.info(
        "report: %s; metrics: %s; %d report files older than %d days removed",
        report_file,
        metrics_file,
        len(gone),
        m.report_retention_days,
    )
    keep = (
        "schema_name",
        "table_name",
        "total_bytes",
        "growth_1d",
        "growth_7d",
        "growth_30d",
        "days_to_limit",
        "limit_bytes",
    )
    return {
        "captured_at": captured["captured_at"],
        "report_file": str(report_file),
        "metrics_file": str(metrics_file),
        "tables": [{k: r[k] for k in keep} for r in rows],
        "alerts": [{"table": a.table, "rule": a.rule, "message": a.message} for a in found],
    }


@task(on_failure_callback=DbopsAlert())
def check_thresholds(report: dict) -> dict:
    """Fails, naming each table and the threshold it passed, when any alert fired."""
    alerts = report["alerts"]
    if alerts:
        lines = "\n  ".join(a["message"] for a in alerts)
        raise AirflowFailException(f"{len(alerts)} table size threshold(s) passed:\n  {lines}")
    log.info("no table over its size limit or growth thresholds (%d tables)", len(report["tables"]))
    return {"alerts": 0, "tables": len(report["tables"])}


# ----------------------------------------------------------------------------- health


def _health_start(store: str) -> DbopsConfig:
    context = get_current_context()
    if store not in context["params"]["stores"]:
        raise AirflowSkipException(f"skipped: {store} is not in this run's stores {context['params']['stores']}")
    config = runtime_config()
    _refuse_past(
        context,
        config.health.max_start_delay_minutes / 60,
        setting="health.max_start_delay_minutes / 60",
        consequence="the health of a store can only be checked now, not at a past date; nothing was checked.",
    )
    return config


def _conclude(check) -> dict:
    log.info("%s %s: %s", check.store, check.rule, check.summary)
    if not check.applicable:
        raise AirflowSkipException(f"skipped: {check.summary}")
    if not check.ok:
        raise AirflowFailException("\n".join(check.problems))
    return check.to_dict()


@task(on_failure_callback=DbopsAlert())
def check_postgres() -> dict:
    """Client connections to the platform database against health.pg_max_connections."""
    from dbops.maintenance import health

    config = _health_start("postgres")
    with runtime.postgres(config.connections.postgres) as conn:
        database = conn.info.dbname
        measured = health.measure_pg_connections(conn)
    return _conclude(health.evaluate_pg_connections(measured, database, config.health.pg_max_connections))


@task(on_failure_callback=DbopsAlert())
def check_redis() -> dict:
    """used_memory against maxmemory and health.redis_max_memory_percent."""
    from dbops.maintenance import health

    config = _health_start("redis")
    with runtime.redis(config.connections.redis) as client:
        info = health.measure_redis_memory(client)
    return _conclude(health.evaluate_redis_memory(info, config.health.redis_max_memory_percent))


@task(on_failure_callback=DbopsAlert())
def check_mongo() -> dict:
    """Replication lag of every secondary (skipped on a standalone server)."""
    from dbops.maintenance import health

    config = _health_start("mongo")
    with runtime.mongo(config.connections.mongo, config.mongo.database) as db:
        status = health.measure_mongo_status(db.client)
    return _conclude(health.evaluate_mongo_lag(status, config.health.mongo_max_replication_lag_s))


@task(on_failure_callback=DbopsAlert())
def check_kafka() -> dict:
    """Every topic of include/scripts/kafka_topics.json present with its partitions."""
    from dbops.maintenance import health
    from dbops.stores.kafka import bootstrap as kafka

    config = _health_start("kafka")
    admin = runtime.kafka_admin(config.connections.kafka)
    actual = kafka.describe_topics(admin, config.kafka.request_timeout_s)
    spec = kafka.topic_specs(load_spec(KAFKA_SPEC))
    return _conclude(health.evaluate_kafka_topics(actual, spec))
