"""Tasks of ``dbops_restore_drill``, generic over the store registry: ``plan`` picks the
latest verified backup of every series, ``drill_<store>`` (mapped over the store's series)
restores it into scratch targets through the store's adapter and compares, ``summary``
names every mismatch of the run.

The work is the store's adapter and :func:`dbops.backup.restore.run_drill` (no Airflow there).

``source`` s3 or rsync: the latest usable copy of every series on that target is fetched
into the fetch repository (:mod:`dbops.offsite.restore`) and drilled there, the result
recorded beside the fetched copy; the local repository is never opened.
"""

from __future__ import annotations

import logging

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from dbops.dagkit import on_store, selected_params
from dbops.runtime import runtime_config
from dbops.tasks.backup import repository, store_adapter

log = logging.getLogger(__name__)


def _source(params: dict) -> str:
    return params.get("source", "local")


def _plan_offsite(context, config, source: str) -> dict:
    """``plan`` of a drill from an offsite target: the latest usable copy of every series
    there, the key and the space for all of them, checked before any work."""
    from dbops.backup.restore import series_label
    from dbops.offsite.common import OffsiteError
    from dbops.offsite.restore import choose, fetch_repository, other_copies, space_needed
    from dbops.registry import DRILLED_STORES
    from dbops.runtime import open_target
    from dbops.tasks.restore import check_space, decryption

    params = context["params"]
    backups: dict[str, str] = {}
    manifests: dict[str, str] = {}
    chosen = []
    problems: list[str] = []
    notes: list[str] = []
    with open_target(source, config) as target:
        location = target.location()
        catalog = target.catalog(log.info)
    for store in params["stores"]:
        if store not in DRILLED_STORES:
            notes.append(f"{store}: not drilled (it has no scratch target)")
            continue
        keys = [k for k in catalog.series() if k.store == store]
        if not keys:
            problems.append(f"{store}: no backups on {location}: nothing to drill (a wrong target or prefix?)")
        for key in keys:
            label = series_label(key.store, key.subject)
            try:
                item, skipped = choose(catalog, key, "latest", location)
            except OffsiteError as exc:
                problems.append(str(exc))
                continue
            backups[label] = item.backup_id
            manifests[label] = item.manifest_sha256
            chosen.append(item)
            problems += [f"newer copy passed over: {line}" for line in skipped]
    enc = decryption(config, chosen)
    repo = fetch_repository(config, source)
    needed = reclaimable = 0
    for item in chosen:
        key = item.key
        if not any(b.backup_id == item.backup_id for b in repo.list(key.store, key.subject)):
            needed += space_needed(item)
        reclaimable += sum(b.total_bytes for b in other_copies(repo, key.store, key.subject, item.backup_id))
    space = check_space(repo, needed, reclaimable, f"{len(chosen)} backup(s) from {source}")
    if str(context["dag_run"].run_type).lower().endswith("backfill"):
        notes.append(
            f"backfilled run for {context['logical_date']}: it drills the latest copies now, not those of that date"
        )
    for line in notes + problems:
        log.info("%s", line)
    log.info("drilling %d backup(s) from %s, fetched into %s: %s", len(backups), location, repo.root, backups)
    offsite = {
        "target": source,
        "location": location,
        "encrypted": enc is not None,
        "fetch_root": str(repo.root),
        "manifests": manifests,
        **space,
    }
    return {"backups": backups, "problems": problems, "notes": notes, "root": str(repo.root), "offsite": offsite}


@task
def plan() -> dict:
    """The backup each drill restores: the latest verified one of every series, chosen once
    (a rerun of a drill task drills the same backup). A selected store with no backup at
    all, and newer backups that are not verified, are problems: the summary fails on them.
    From offsite: the latest usable copy of every series on that target."""
    from dbops.backup.restore import series_label, why_unverified
    from dbops.registry import DRILLED_STORES
    from dbops.tasks.restore import offsite_source

    context = get_current_context()
    params = context["params"]
    config = runtime_config()
    source = offsite_source(config, _source(params))
    if source is not None:
        return _plan_offsite(context, config, source)
    repo = repository(config)
    backups: dict[str, str] = {}
    problems: list[str] = []
    notes: list[str] = []
    for store in params["stores"]:
        if store not in DRILLED_STORES:
            notes.append(f"{store}: not drilled (it has no scratch target)")
            continue
        subjects = repo.subjects(store) or [None]
        if not any(repo.list(store, subject) for subject in subjects):
            problems.append(f"{store}: no backups in {repo.root}: nothing to drill (a wrong backup root?)")
        for subject in subjects:
            series = repo.list(store, subject)
            label = series_label(store, subject)
            if not series:
                continue
            chosen = repo.latest(store, subject)
            if chosen is None:
                problems.append(
                    f"{label}: no verified backup to drill (newest "
                    f"{series[-1].backup_id}: {why_unverified(series[-1])})"
                )
                continue
            backups[label] = chosen.backup_id
            for newer in (b for b in series if b.sort_key > chosen.sort_key):
                problems.append(f"{label}: newer backup {newer.backup_id} is not verified ({why_unverified(newer)})")
    if str(context["dag_run"].run_type).lower().endswith("backfill"):
        notes.append(
            f"backfilled run for {context['logical_date']}: it drills the latest backups now, not those of that date"
        )
    for line in notes + problems:
        log.info("%s", line)
    log.info("drilling %d backup(s) from %s: %s", len(backups), repo.root, backups)
    return {"backups": backups, "problems": problems, "notes": notes, "root": str(repo.root), "offsite": None}


def series_task(store: str):
    """``series_<store>``: the series of ``store`` with a backup to drill."""

    @task(task_id=f"series_{store}")
    def series(planned: dict) -> list[str | None]:
        selected_params(store)
        labels = [label for label in planned["backups"] if label.partition("/")[0] == store]
        return sorted((label.partition("/")[2] or None for label in labels), key=lambda s: s or "")

    series.__doc__ = f"The series of {store} with a backup to drill."
    return series


def drill_backup(repo, backup, adapter, context, *, fetched: bool = False) -> dict:
    """The store adapter's drill of ``backup`` (scratch targets, compare, remove), recorded
    beside it by :func:`dbops.backup.restore.run_drill`; shared by the DR drill. A copy
    ``fetched`` from offsite in this task had every file checked by the fetch."""
    from dbops.backup.restore import run_drill

    return run_drill(
        repo,
        backup,
        target=adapter.drill_target(backup),
        drill=lambda b, found: adapter.drill(b, found, log.info),
        run_id=context["run_id"],
        dag_id=context["dag"].dag_id,
        log=log.info,
        files_checked_by="the offsite fetch of this task" if fetched else None,
    )


def drill_task(store: str):
    """``drill_<store>`` of one series (mapped over them where a store has several), in the store's pool."""

    @task(task_id=f"drill_{store}", map_index_template="{{ subject or '" + store + "' }}", **on_store(store))
    def drill(subject: str | None, planned: dict) -> dict:
        from dbops.backup.restore import DrillEnvironmentError, resolve_backup, series_label

        selected_params(store)
        context = get_current_context()
        label = series_label(store, subject)
        backup_id = planned["backups"].get(label)
        if backup_id is None:
            raise AirflowSkipException(f"skipped: no verified backup of {label} to drill (see plan)")
        config = runtime_config()
        adapter = store_adapter(store, config)
        if planned.get("offsite"):
            from dbops.tasks.restore import fetch_planned

            # fetched and checked file by file; the result is recorded beside the fetched copy
            repo, backup = fetch_planned(config, planned["offsite"], store, subject, backup_id)
        else:
            repo = repository(config)
            backup = resolve_backup(repo, store, subject, backup_id)
        try:
            result = drill_backup(repo, backup, adapter, context, fetched=bool(planned.get("offsite")))
        except DrillEnvironmentError as exc:
            # retried by Airflow: the environment may recover; the backup's verdict is unchanged
            raise DrillEnvironmentError(
                f"the drill of {label}/{backup_id} could not run: {exc}. This is an error of the drill's "
                "environment, not a verdict on the backup (its verified state is unchanged)"
            ) from exc
        problems = [f"MISMATCH: {d}" for d in result["differences"]]
        problems += [f"scratch target NOT removed: {d}" for d in result["leftovers"]]
        if problems:
            verdict = "the backup is now marked not verified" if not result["ok"] else "the backup itself passed"
            raise AirflowFailException(
                f"restore drill of {label}/{backup_id} failed ({verdict}; recorded in drill.json):\n  "
                + "\n  ".join(problems)
            )
        log.info("drill of %s/%s passed: restored into %s and equal to the backup", label, backup_id, result["target"])
        return result

    drill.__doc__ = f"Restore the chosen {store} backup into scratch targets, compare, remove them."
    return drill


def _pitr_drill_of_run(context, repo) -> dict | None:
    """This run's point-in-time drill as recorded beside its base backup; None when the run
    did not drill Postgres or point-in-time recovery is off; ``ok: false`` when it recorded nothing."""
    from dbops.pitr.wal import BASE_STORE

    if "postgres" not in context["params"]["stores"] or not runtime_config().pitr.enabled:
        return None
    for backup in reversed(repo.list(BASE_STORE)):
        drill = backup.sidecars.get("drill") or {}
        if drill.get("run_id") == context["run_id"]:
            return {k: drill.get(k) for k in ("ok", "backup_id", "target", "seconds", "differences")}
    return {
        "ok": False,
        "differences": ["the point-in-time drill recorded nothing in this run (see drill_postgres_pitr)"],
    }


@task
def local_only() -> None:
    """Skips (and with it the point-in-time drill) when the run drills an offsite target:
    point-in-time recovery reads the local base backups and WAL archive."""
    source = _source(get_current_context()["params"])
    if source != "local":
        raise AirflowSkipException(f"skipped: this run drills the copies on {source}; the point-in-time drill is local")


@task(trigger_rule="all_done")
def summary(planned: dict) -> str:
    """Every drill result of this run, read back from the drill sidecars (beside the fetched
    copies when drilling from offsite); fails naming every mismatch, every series without a
    result, every newer backup that is not verified, and a run that drilled nothing."""
    from dbops.backup.restore import series_label

    context = get_current_context()
    config = runtime_config()
    offsite = planned.get("offsite")
    if offsite:
        from dbops.offsite.restore import fetch_repository

        repo = fetch_repository(config, offsite["target"])
    else:
        repo = repository(config)
    problems = list(planned["problems"])
    results: dict[str, dict] = {}
    for label, backup_id in sorted(planned["backups"].items()):
        store, _, subject = label.partition("/")
        backup = next((b for b in repo.list(store, subject or None) if b.backup_id == backup_id), None)
        drill = (backup.sidecars.get("drill") if backup else None) or {}
        if drill.get("run_id") != context["run_id"]:
            failed = "its fetch or drill failed" if offsite else "its task failed"
            problems.append(
                f"{label}/{backup_id}: no drill result from this run ({failed} before recording: see its log)"
            )
            continue
        results[label] = {k: drill.get(k) for k in ("ok", "backup_id", "target", "seconds", "differences", "leftovers")}
        if offsite and backup is not None:  # what bringing it back took: the other half of the time to recover
            results[label]["download"] = (backup.sidecars.get("fetched") or {}).get("download")
        problems += [f"{series_label(store, subject or None)}/{backup_id}: {d}" for d in drill.get("differences", [])]
        problems += [f"{label}/{backup_id}: scratch target not removed: {d}" for d in drill.get("leftovers", [])]
    pitr = None if offsite else _pitr_drill_of_run(context, repo)
    if pitr is not None:
        results["postgres point-in-time"] = pitr
        if not pitr.get("ok"):
            problems += [
                f"postgres point-in-time: {d}"
                for d in pitr.get("differences") or ["failed or recorded nothing (see drill_postgres_pitr)"]
            ]
    if not planned["backups"] and not problems:
        problems.append("nothing was drilled: no store of this run has a backup")
    for note in planned["notes"]:
        log.info("%s", note)
    outcome = {
        "drilled": results,
        "notes": planned["notes"],
        "source": offsite["target"] if offsite else "local",
        "root": str(repo.root),
    }
    text = drill_text(outcome, problems)
    ti = context["ti"]
    ti.xcom_push(key="result", value=outcome)  # the structured results, for tools and tests
    log.info("run summary:\n%s", text)
    if problems:
        ti.xcom_push(key="return_value", value=text)  # a failing task returns nothing: its summary still shows
        raise AirflowFailException(f"restore drill: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    where = f" from {offsite['location']} (recorded beside the fetched copies in {repo.root})" if offsite else ""
    log.info(
        "restore drill: %d backup(s) restored into scratch targets and equal to their backups%s", len(results), where
    )
    return text


def drill_text(outcome: dict, problems: list[str]) -> str:
    """The run's summary (the contract of ``dbops.tasks.summary``): per series what the drill
    found, the differences themselves, every other problem; at most 25 lines."""
    from dbops.tasks.summary import compose

    source = outcome["source"]
    header = (
        f"restore drill of the {'local' if source == 'local' else source} backups: "
        f"{len(outcome['drilled'])} drilled, {'FAILED' if problems else 'all equal to their backups'}"
    )
    entries = []
    for label, r in sorted(outcome["drilled"].items()):
        found = "; ".join(r.get("differences") or []) or f"equal, restored into {r.get('target')} and removed"
        entries.append((f"{label}/{r.get('backup_id')}", found))
    listed = {
        f"{label}/{r.get('backup_id')}: {d}"
        for label, r in outcome["drilled"].items()
        for d in r.get("differences") or []
    }
    entries += [("problem", p) for p in problems if p not in listed]
    return compose(header, entries, [])
