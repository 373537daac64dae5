"""Tasks of ``dbops_nightly_backup``, generic over the store registry: ``plan``, then per
store its series (``series_<store>``), one mapped ``backup_<store>`` task per series in the
store's pool, and ``retention_<store>``, which also publishes the store's Asset."""

from __future__ import annotations

import logging
from datetime import timedelta

from airflow.sdk import TriggerRule, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from dbops import runtime
from dbops.config import DbopsConfig
from dbops.dagkit import BACKUP_ASSETS, NEW_BACKUPS, on_store, selected_params
from dbops.runtime import runtime_config
from dbops.tasks.summary import push_summary

log = logging.getLogger(__name__)


def repository(config: DbopsConfig):
    from dbops.backup.repository import BackupRepository

    return BackupRepository(config.backup.root, allowed_base=config.backup.allowed_base)


def store_adapter(store: str, config: DbopsConfig):
    """The store's adapter, reaching its stores through the Airflow connections."""
    from dbops.registry import adapter

    return adapter(store, config, runtime)


def skip_unconfigured(call):
    """Run ``call()``; a store without a connection skips the task, saying so."""
    from dbops.backup.adapter import StoreNotConfigured

    try:
        return call()
    except StoreNotConfigured as exc:
        raise AirflowSkipException(f"skipped: {exc}") from None


def _run_config(params: dict) -> DbopsConfig:
    """The config with this run's retention Params applied (validated again)."""
    return runtime_config({"backup": {"retention_days": params["retention_days"], "min_keep": params["min_keep"]}})


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
        reason = (
            "skipped: a backfilled run cannot back up the past, and a backup taken now must not be "
            f"labelled with {context['logical_date']}. Newest backups: {newest}. "
            "Trigger with force=true to take a backup now (it is named by the time it is taken)."
        )
        push_summary(reason)  # the run's summary says why (a skipped task has no return value)
        raise AirflowSkipException(reason)
    log.info(
        "backing up %s into %s (retention %s days, min_keep %s)",
        params["stores"],
        repo.root,
        config.backup.retention_days,
        config.backup.min_keep,
    )
    return {
        "stores": params["stores"],
        "root": str(repo.root),
        "summary": f"backing up {', '.join(params['stores'])} into {repo.root}",
    }


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
        return {"store": store, "series": results, "summary": retention_summary(results)}

    retention.__doc__ = f"Apply retention to {store} after this run's verified backup; publish its Asset."
    return retention


def retention_summary(results: list[dict]) -> str:
    """One line of what retention deleted (or would delete), by series, with the ids."""
    parts = []
    for r in results:
        verb = "would delete" if r["dry_run"] else "deleted"
        ids = ", ".join(r["obsolete"]) if r["obsolete"] else "nothing"
        parts.append(f"{r['series']}: kept {len(r['kept'])}, {verb} {ids}")
    return "; ".join(parts) or "no series"


def new_backups(dag, run_id: str, task_ids: list[str]) -> list[dict]:
    """The backups the run's tasks ``task_ids`` made (not those a rerun found already made)."""
    from airflow.sdk.execution_time.xcom import XCom

    found = []
    for task_id in task_ids:
        for result in XCom.get_all(key="return_value", dag_id=dag.dag_id, task_id=task_id, run_id=run_id) or []:
            if isinstance(result, dict) and result.get("backup_id") and not result.get("reused"):
                found.append(
                    {
                        "store": result.get("store", "postgres_pitr"),
                        "subject": result.get("subject"),
                        "backup_id": result["backup_id"],
                    }
                )
    return found


def publish_task(backup_task_ids: list[str]):
    """The task ``publish_backups`` (call it in the DAG, after the backups): one event of the
    Asset ``x-dbops://backups`` (what starts ``dbops_offsite_sync``) when this run made a backup
    not announced yet; skipped (no event) when it made nothing new: a cleared task that did nothing starts no sync."""

    @task(task_id="publish_backups", trigger_rule="all_done", outlets=[NEW_BACKUPS], inlets=[NEW_BACKUPS])
    def publish_backups() -> dict:
        context = get_current_context()
        dag, run_id = context["dag"], context["run_id"]
        made = new_backups(dag, run_id, backup_task_ids)
        # what earlier tries of this run already announced (a cleared task re-reads the same results)
        announced: set[str] = set()
        for event in context["inlet_events"][NEW_BACKUPS].ascending(False).limit(50):
            if event.source_dag_id == dag.dag_id and event.source_run_id == run_id:
                earlier = (event.extra or {}).get("backups")
                if isinstance(earlier, list):
                    announced.update(str(b) for b in earlier)
        fresh = [b for b in made if _label(b) not in announced]
        if not fresh:
            reason = (
                "skipped: this run made no new backup"
                if not made
                else f"skipped: this run's backups were already announced: {sorted(announced)}"
            )
            push_summary(reason)
            raise AirflowSkipException(reason)
        labels = [_label(b) for b in fresh]
        context["outlet_events"][NEW_BACKUPS].extra = {"backups": [*labels]}
        log.info("new backups announced to dbops_offsite_sync: %s", labels)
        return {"backups": labels, "summary": f"{len(labels)} new backup(s) for the offsite sync: {', '.join(labels)}"}

    publish_backups.__doc__ = "Announce this run's new backups (one Asset event) to the offsite sync."
    made = publish_backups()
    # a teardown: it runs when the rest is done, a cleared task clears it too, and its own
    # success never hides a failed backup (teardowns do not decide the run's state)
    publisher = made.operator  # type: ignore[attr-defined]  # a @task call gives a PlainXComArg
    publisher.as_teardown()
    publisher.trigger_rule = TriggerRule.ALL_DONE
    return made


def _label(backup: dict) -> str:
    where = f"{backup['store']}/{backup['subject']}" if backup.get("subject") else backup["store"]
    return f"{where}/{backup['backup_id']}"
