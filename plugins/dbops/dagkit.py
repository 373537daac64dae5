"""What every dbops DAG shares: defaults, schedules, Params, run-time configuration.

DAG files stay declarative: they call :func:`dbops_dag` and wire tasks from
``dbops.tasks``. Configuration is read at parse time from the YAML file and the
environment (cheap, no network, no metadata DB); the Airflow Variable ``dbops_config``
and the run's Params are applied at run time by :func:`runtime_config`.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, CronTriggerTimetable, ExceptionRetryPolicy, Param, RetryRule
from airflow.sdk.definitions.retry_policy import RetryAction

from dbops.config import ALL_STORES, DbopsConfig, Store
from dbops.runtime import base_config

CONFIG: DbopsConfig = base_config()

# Errors a retry cannot cure fail at once: a refusal, a bad name, a checksum mismatch, a bad
# setting. Retrying them only held the DAG's one run slot for ten minutes.
NEVER_RETRY = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception=["dbops.backup.adapter.NotRetryable", "dbops.config.ConfigError"],
            action=RetryAction.FAIL,
            reason="a refusal or a mismatch: retrying cannot change it",
        )
    ]
)

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "dbops",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=20),
    "retry_policy": NEVER_RETRY,
}

START_DATE = datetime(2026, 1, 1, tzinfo=UTC)

# Updated by dbops_nightly_backup when a store's backup (and its retention) succeeded;
# dbops_offsite_sync is scheduled on them. The URI scheme starts with "x-" (Airflow's
# convention for a user-defined scheme): Airflow then needs no provider's URI normaliser,
# and parsing a DAG file does not load every provider's asset handlers (~0.17 s).
BACKUP_ASSETS: dict[str, Asset] = {
    store: Asset(name=f"dbops_backups_{store}", uri=f"x-dbops://backups/{store}")
    for store in [*ALL_STORES, "postgres_pitr"]  # postgres_pitr: dbops_base_backup's base backups
}

# Updated once per run of dbops_nightly_backup / dbops_base_backup that made at least one new
# backup (its task ``publish_backups``; extra: the new backups): dbops_offsite_sync is scheduled
# on it alone, so one backup run starts one sync, and a rerun that made nothing new starts none.
NEW_BACKUPS = Asset(name="dbops_new_backups", uri="x-dbops://backups")


def on_store(store: str) -> dict[str, Any]:
    """Task arguments of heavy work on ``store``: its pool (one at a time per store), a time
    limit (``executor.heavy_task_timeout_minutes``: a hung dump fails and alerts instead of
    blocking every later night) and, when configured (``executor.queues``), its queue."""
    queue = CONFIG.executor.queues.get(Store(store))
    return {**in_pool(f"dbops_{store}"), **({"queue": queue} if queue else {})}


# offsite WAL ships (every 15 min), offsite expiries and pin changes never overlap: a retention
# never reads the pins or the WAL catalog while they change
OFFSITE_POOL = "dbops_offsite_wal"


def in_pool(pool: str) -> dict[str, Any]:
    """Task arguments of work serialised by ``pool``: the pool and the heavy-task time limit."""
    return {"pool": pool, "execution_timeout": timedelta(minutes=CONFIG.executor.heavy_task_timeout_minutes)}


def cron(expression: str) -> CronTriggerTimetable:
    """A cron schedule whose logical date is the fire time, in the configured timezone."""
    return CronTriggerTimetable(expression, timezone=CONFIG.schedules.timezone)


def _in_dags_test_command() -> bool:
    """``airflow dags test`` runs the DAG in this process without a scheduler, which deadline
    alerts need anyway; and Airflow 3.3.2's ``dag.test()`` hands the end of a successful run the
    DAG's unsaved alerts instead of their ids and fails there. So that command gets no deadline."""
    # `airflow dags test ...` or `python -m airflow dags test ...` (argv[0]: airflow/__main__.py)
    return sys.argv[1:3] == ["dags", "test"] and "airflow" in Path(sys.argv[0]).parts


def dbops_dag(
    dag_id: str,
    *,
    schedule: Any,
    doc_md: str | None,
    params: dict[str, Param],
    tags: list[str],
    deadline: Any = None,
    **kwargs: Any,
) -> DAG:
    """A DAG with the dbops conventions: one run at a time, retries, no catch-up storm, and
    run alerts and run-summary events when a run ends (see ``dbops.run_notifiers``).

    ``deadline``: a :class:`dbops.deadlines.RunDeadline` (a clock time the run must have
    finished by), alerting through the run alerts' channels when it passes, even mid-run."""
    from dbops.run_notifiers import run_callbacks

    # a dict of Any: the notifiers are callbacks to Airflow (its stubs expect a plain callable)
    callbacks: dict[str, Any] = run_callbacks()
    if deadline is not None and not _in_dags_test_command():
        kwargs["deadline"] = deadline.alert(schedule)
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
        **callbacks,
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


# An optional string Param: "" as default makes the trigger form treat it as required (its Trigger
# button stays disabled), null does not; tasks read None like "".
OPTIONAL_STRING = ["null", "string"]


def dry_run_param(description: str = "Show the plan; change nothing.") -> Param:
    return Param(False, type="boolean", title="Dry run", description=description)


def selected_params(store: str) -> dict[str, Any]:
    """The run's Params; skips the calling task when ``store`` is not among its stores."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowSkipException

    params = get_current_context()["params"]
    if store not in params["stores"]:
        raise AirflowSkipException(f"skipped: {store} is not in this run's stores {params['stores']}")
    return params
