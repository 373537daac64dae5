"""What every dbops DAG shares: defaults, schedules, Params, run-time configuration.

DAG files stay declarative: they call :func:`dbops_dag` and wire tasks from
``dbops.tasks``. Configuration is read at parse time from the YAML file and the
environment (cheap, no network, no metadata DB); the Airflow Variable ``dbops_config``
and the run's Params are applied at run time by :func:`runtime_config`.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import DAG, CronTriggerTimetable, Param

from dbops.config import ALL_STORES, DbopsConfig, load_config

CONFIG: DbopsConfig = load_config()

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "dbops",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=20),
}

START_DATE = datetime(2026, 1, 1, tzinfo=timezone.utc)


def cron(expression: str) -> CronTriggerTimetable:
    """A cron schedule whose logical date is the fire time, in the configured timezone."""
    return CronTriggerTimetable(expression, timezone=CONFIG.schedules.timezone)


def dbops_dag(
    dag_id: str,
    *,
    schedule: Any,
    doc_md: str | None,
    params: dict[str, Param],
    tags: list[str],
    **kwargs: Any,
) -> DAG:
    """A DAG with the dbops conventions: one run at a time, retries, no catch-up storm."""
    return DAG(
        dag_id=dag_id,
        schedule=schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        doc_md=doc_md,
        params=params,
        tags=["dbops", *tags],
        **kwargs,
    )


def stores_param(default: list[str] | None = None, description: str = "") -> Param:
    return Param(
        default or list(ALL_STORES),
        type="array",
        items={"type": "string", "enum": list(ALL_STORES)},
        uniqueItems=True,
        minItems=1,
        title="Stores",
        description=description or "Which stores this run works on.",
    )


def dry_run_param(description: str = "Show the plan; change nothing.") -> Param:
    return Param(False, type="boolean", title="Dry run", description=description)


def runtime_config(overrides: dict[str, Any] | None = None) -> DbopsConfig:
    """The parse-time config plus the ``dbops_config`` Variable (JSON) and ``overrides``."""
    import json

    from airflow.sdk import Variable

    from dbops.config import ConfigError

    raw = Variable.get("dbops_config", default=None)
    config = CONFIG
    if raw:
        try:
            variable = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError as exc:
            raise ConfigError(f"Airflow Variable dbops_config is not valid JSON: {exc}") from None
        config = config.with_overrides(variable)
    return config.with_overrides(overrides)
