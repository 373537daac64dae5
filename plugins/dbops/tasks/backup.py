"""Tasks of ``dbops_nightly_backup``, generic over the store registry: ``plan``, then per
store its series (``series_<store>``), one mapped ``backup_<store>`` task per series in the
store's pool, and ``retention_<store>``, which also publishes the store's Asset."""

from __future__ import annotations

import logging
from datetime import timedelta

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from dbops import connections
from dbops.config import DbopsConfig
from dbops.dagkit import BACKUP_ASSETS, on_store, selected_params
from dbops.runtime import runtime_config

log = logging.getLogger(__name__)


def repository(config: DbopsConfig):
    from dbops.backup.repository import BackupRepository

    return BackupRepository(config.backup.root, allowed_base=config.backup.allowed_base)


def store_adapter(store: str, config: DbopsConfig):
    """The store's adapter, reaching its stores through the Airflow connections."""
    from dbops.registry import adapter

    return adapter(store, config, connections)


def skip_unconfigured(call):
    """Run ``call()``; a store without a connection skips the task, saying so."""
    from dbops.backup.adapter import StoreNotConfigured

    try:
        return call()
    except StoreNotConfigured as exc:
        raise AirflowSkipException(f"skipped: {exc}") from None


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
             config.backup.retention_days, config.backup.min_keep)  # fmt: skip
    return {"stores": params["stores"], "root": str(repo.root)}


def series_task(store: str):
    """``series_<store>`` of a store backed up as several series: what its backup covers
    tonight (Postgres: every database and ``_globals``)."""

    @task(task_id=f"series_{store}")
    def series() -> list[str | None]:
        params = selected_params(store)
        adapter = store_adapter(store, _run_config(params))
        subjects = skip_unconfigured(lambda: adapter.series(log.info))
        log.info("%s: series to back up: %s", store, [s or store for s in subjects])
        return subjects

    series.__doc__ = f"The series of {store} this run backs up."
    return series


def backup_task(store: str):
    """``backup_<store>`` of one series (mapped over them where a store has several), in the store's pool."""

    @task(task_id=f"backup_{store}", map_index_template="{{ subject or '" + store + "' }}", **on_store(store))
    def backup(subject: str | None) -> dict:
        from dbops.backup.runner import take_backup

        context = get_current_context()
        params = selected_params(store)
        config = _run_config(params)
        series_backup = skip_unconfigured(lambda: store_adapter(store, config).series_backup(subject))
        outcome = take_backup(
            repository(config),
            series_backup,
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

    backup.__doc__ = f"Back up one series of {store}, verified (sha256 + the tool's own check) before it is visible."
    return backup


def run_started_at(dag_run):
    """When the run started by Airflow's clock (the scheduler's or the API server's, not this
    worker's): its start, or its run_after when later (``airflow dags test`` of a past date
    starts the run "at" that date); None when neither is known."""
    times = [t for t in (getattr(dag_run, "start_date", None), getattr(dag_run, "run_after", None)) if t is not None]
    return max(times, default=None)


def retention_task(store: str):
    """``retention_<store>``: runs only after the store's backups of this run all succeeded;
    its success updates the store's Asset (what the offsite sync waits for)."""

    @task(task_id=f"retention_{store}", outlets=[BACKUP_ASSETS[store]])
    def retention(subjects: list[str | None]) -> dict:
        from dbops.backup.repository import utc_now
        from dbops.backup.retention import RetentionPolicy
        from dbops.backup.runner import expire

        context = get_current_context()
        params = selected_params(store)
        config = _run_config(params)
        policy = RetentionPolicy.of(config.backup)  # days, min_keep and the weekly/monthly tiers
        repo = repository(config)
        adapter = store_adapter(store, config)
        results = [
            expire(
                repo,
                store,
                subject,
                policy,
                run_id=context["run_id"],
                dag_id=context["dag"].dag_id,
                now=utc_now(),
                run_started_at=run_started_at(context["dag_run"]),
                max_clock_skew=timedelta(minutes=config.backup.max_clock_skew_minutes),
                max_delay=timedelta(hours=config.backup.retention_max_delay_hours),
                dry_run=params["retention_dry_run"],
                log=log.info,
                before_delete=lambda backup: adapter.expire(backup, log.info),
            )
            for subject in subjects
        ]
        return {"store": store, "series": results}

    retention.__doc__ = f"Apply retention to {store} after this run's verified backup; publish its Asset."
    return retention
