"""Tasks of ``dbops_restore_drill``: ``plan`` picks the latest verified backup of every
series, one drill task per store (Postgres mapped per database series) restores it into
scratch targets and compares, ``summary`` names every mismatch of the run.

The work itself is :mod:`dbops.backup.restore` (no Airflow there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from dbops import connections
from dbops.config import DbopsConfig
from dbops.dagkit import on_store, runtime_config, selected_params
from dbops.tasks.backup import repository

log = logging.getLogger(__name__)

# Weaviate restores classes only under their own names, into a server that lacks them:
# there is no scratch target on a live server.
DRILLED_STORES = ("postgres", "mongo", "redis", "kafka")


@task
def plan() -> dict:
    """The backup each drill restores: the latest verified one of every series, chosen once
    (a rerun of a drill task drills the same backup). Newer backups that are not verified
    are named: the summary fails on them."""
    from dbops.backup.restore import GLOBALS_SUBJECT, series_label, why_unverified

    context = get_current_context()
    params = context["params"]
    repo = repository(runtime_config())
    backups: dict[str, str] = {}
    problems: list[str] = []
    notes: list[str] = []
    for store in params["stores"]:
        if store not in DRILLED_STORES:
            notes.append(f"{store}: not drilled (Weaviate restores classes only under their own names: no scratch target)")
            continue
        subjects = repo.subjects(store) if store == "postgres" else [None]
        if not any(repo.list(store, subject) for subject in subjects):
            notes.append(f"{store}: no backups in {repo.root}: nothing to drill")
        for subject in subjects:
            series = repo.list(store, subject)
            label = series_label(store, subject)
            if not series:
                continue
            chosen = repo.latest(store, subject)
            if chosen is None:
                problems.append(f"{label}: no verified backup to drill (newest {series[-1].backup_id}: {why_unverified(series[-1])})")
                continue
            backups[label] = chosen.backup_id
            for newer in (b for b in series if b.sort_key > chosen.sort_key):
                problems.append(f"{label}: newer backup {newer.backup_id} is not verified ({why_unverified(newer)})")
    if str(context["dag_run"].run_type).lower().endswith("backfill"):
        notes.append(f"backfilled run for {context['logical_date']}: it drills the latest backups now, not those of that date")
    for line in notes + problems:
        log.info("%s", line)
    postgres = sorted(label.split("/", 1)[1] for label in backups if label.startswith("postgres/"))
    if postgres and GLOBALS_SUBJECT not in postgres:
        log.info("postgres: no %s backup to drill", GLOBALS_SUBJECT)
    log.info("drilling %d backup(s) from %s: %s", len(backups), repo.root, backups)
    return {"backups": backups, "problems": problems, "notes": notes, "root": str(repo.root)}


@task
def postgres_series(planned: dict) -> list[str]:
    """The Postgres series (databases, and ``_globals``) with a backup to drill."""
    selected_params("postgres")
    return sorted(label.split("/", 1)[1] for label in planned["backups"] if label.startswith("postgres/"))


def _drill(store: str, subject: str | None, planned: dict, make: Callable) -> dict:
    """Run one drill: ``make(config, backup)`` -> (target, drill function)."""
    from dbops.backup.restore import resolve_backup, run_drill, series_label

    context = get_current_context()
    label = series_label(store, subject)
    backup_id = planned["backups"].get(label)
    if backup_id is None:
        raise AirflowSkipException(f"skipped: no verified backup of {label} to drill (see plan)")
    config = runtime_config()
    repo = repository(config)
    backup = resolve_backup(repo, store, subject, backup_id)
    target, drill = make(config, backup)
    result = run_drill(
        repo, backup, target=target, drill=drill, run_id=context["run_id"], dag_id=context["dag"].dag_id, log=log.info
    )
    problems = [f"MISMATCH: {d}" for d in result["differences"]]
    problems += [f"scratch target NOT removed: {d}" for d in result["leftovers"]]
    if problems:
        verdict = "the backup is now marked not verified" if not result["ok"] else "the backup itself passed"
        raise AirflowFailException(
            f"restore drill of {label}/{backup_id} failed ({verdict}; recorded in drill.json):\n  " + "\n  ".join(problems)
        )
    log.info("drill of %s/%s passed: restored into %s and equal to the source", label, backup_id, target)
    return result


@task(**on_store("postgres"), map_index_template="{{ subject }}")
def drill_postgres(subject: str, planned: dict) -> dict:
    """pg_restore -j into scratch database dbops_drill_<db>_<id>, compare, drop it (_globals: roles compared)."""
    from dbops.backup import restore as r

    def make(config: DbopsConfig, backup):
        if subject == r.GLOBALS_SUBJECT:
            return "globals.sql (roles read and compared, not applied)", r.drill_postgres_globals(log.info)
        endpoint = connections.endpoint(config.connections.postgres, "postgres")
        target = r.drill_name(subject, backup.backup_id)
        return target, r.drill_postgres(endpoint, target=target, jobs=config.restore.jobs, log=log.info)

    return _drill("postgres", subject, planned, make)


@task(**on_store("mongo"))
def drill_mongo(planned: dict) -> dict:
    """mongorestore --nsFrom/--nsTo into scratch database dbops_drill_<db>_<id>, compare, drop it."""
    from dbops.backup import restore as r

    selected_params("mongo")

    def make(config: DbopsConfig, backup):
        endpoint = connections.endpoint(config.connections.mongo, "mongo")
        databases = list((backup.manifest.get("details") or {}).get("databases") or [])
        targets = {db: r.drill_name(db, backup.backup_id) for db in databases}
        return sorted(targets.values()), r.drill_mongo(endpoint, targets=targets, log=log.info)

    return _drill("mongo", None, planned, make)


@task(**on_store("redis"))
def drill_redis(planned: dict) -> dict:
    """Load the RDB into a scratch redis-server on 127.0.0.1, compare keys and values, stop it."""
    from dbops.backup import restore as r

    selected_params("redis")

    def make(config: DbopsConfig, backup):
        drill = r.drill_redis(port=config.redis.scratch_port, scratch_dir=config.restore.scratch_dir, log=log.info)
        return "scratch redis-server on 127.0.0.1", drill

    return _drill("redis", None, planned, make)


@task(**on_store("kafka"))
def drill_kafka(planned: dict) -> dict:
    """Recreate every topic as dbops_drill_<id>_<topic>, compare partitions and configs, delete them."""
    from dbops.backup import restore as r

    selected_params("kafka")

    def make(config: DbopsConfig, backup):
        drill = r.drill_kafka(
            lambda: connections.kafka_admin(config.connections.kafka), timeout=config.kafka.request_timeout_s, log=log.info
        )
        return f"{r.DRILL_PREFIX}{backup.backup_id.lower()}_<topic>", drill

    return _drill("kafka", None, planned, make)


@task(trigger_rule="all_done")
def summary(planned: dict) -> dict:
    """Every drill result of this run, read back from the drill sidecars; fails naming every
    mismatch, every series without a result, and every newer backup that is not verified."""
    from dbops.backup.restore import series_label

    context = get_current_context()
    repo = repository(runtime_config())
    problems = list(planned["problems"])
    results: dict[str, dict] = {}
    for label, backup_id in sorted(planned["backups"].items()):
        store, _, subject = label.partition("/")
        backup = next((b for b in repo.list(store, subject or None) if b.backup_id == backup_id), None)
        drill = (backup.sidecars.get("drill") if backup else None) or {}
        if drill.get("run_id") != context["run_id"]:
            problems.append(f"{label}/{backup_id}: no drill result from this run (its task failed before recording: see its log)")
            continue
        results[label] = {k: drill.get(k) for k in ("ok", "backup_id", "target", "seconds", "differences", "leftovers")}
        problems += [f"{series_label(store, subject or None)}/{backup_id}: {d}" for d in drill.get("differences", [])]
        problems += [f"{label}/{backup_id}: scratch target not removed: {d}" for d in drill.get("leftovers", [])]
    for note in planned["notes"]:
        log.info("%s", note)
    if problems:
        raise AirflowFailException(f"restore drill: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    log.info("restore drill: %d backup(s) restored into scratch targets and equal to their sources", len(results))
    return {"drilled": results, "notes": planned["notes"]}
