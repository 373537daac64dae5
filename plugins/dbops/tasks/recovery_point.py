"""Tasks of ``dbops_recovery_check``: read the offsite catalogs and the nightly backup's last
run, then judge every store's recovery point (:mod:`dbops.backup.recovery_point`, no Airflow
there), write ``<backup.root>/recovery_point.json`` and the Prometheus text file, and fail
(an alert through the dbops notifier) when a check failed."""

from __future__ import annotations

import json
import logging
from typing import Any

from airflow.sdk import task
from airflow.sdk.exceptions import AirflowFailException

from dbops import runtime
from dbops.alerting import DbopsAlert
from dbops.config import DbopsConfig
from dbops.runtime import runtime_config
from dbops.tasks.backup import repository

log = logging.getLogger(__name__)


def metrics_path(config: DbopsConfig):
    """Beside the table-size monitor's text file (one folder for node_exporter's collector)."""
    from dbops.backup.recovery_point import METRICS_FILE
    from dbops.maintenance.sizes import metrics_path as monitor_metrics

    return monitor_metrics(config.monitor.reports_dir).parent / METRICS_FILE


def _copy_dict(copy) -> dict[str, Any]:
    from dbops.backup.repository import format_time

    return {
        "store": copy.store,
        "subject": copy.subject,
        "backup_id": copy.backup_id,
        "finished_at": format_time(copy.finished_at),
        "shipped_at": format_time(copy.shipped_at) if copy.shipped_at else None,
    }


@task
def offsite_catalogs() -> dict[str, Any]:
    """The newest usable copy of every series on every configured offsite target, read from
    the target's catalog; a target without its connection, or unreadable, gives its error
    (judged by the next task, never a failure of this one)."""
    from dbops.backup.recovery_point import newest_copies

    found: dict[str, Any] = {}
    for name, catalog in runtime.read_catalogs(runtime_config(), log.info).items():
        if isinstance(catalog, str):  # no connection or unreadable: a finding of the check
            found[name] = catalog
            continue
        found[name] = [_copy_dict(c) for c in newest_copies(catalog)]
        log.info("offsite %s: newest copies of %d series", name, len(found[name]))
    return found


def _value(item: Any) -> str:
    return str(getattr(item, "value", item))


MAX_BACKFILL_RUNS_SKIPPED = 100


@task
def nightly_run() -> dict[str, Any] | None:
    """The newest run of dbops_nightly_backup by logical date, backfills left out (Airflow's
    DagRun table, through the task API), and its failed tasks; None when it has none. A run
    triggered without a logical date is not a scheduled night and is not looked at."""
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.comms import GetPreviousDagRun

    from dbops.backup.recovery_point import NIGHTLY_DAG
    from dbops.backup.repository import format_time, utc_now
    from dbops.events import split_state_key
    from dbops.registry import STORES

    run, before = None, utc_now()
    for _ in range(MAX_BACKFILL_RUNS_SKIPPED):  # a backfilled run backs up nothing (its plan skips): not the last
        run = getattr(
            task_runner.SUPERVISOR_COMMS.send(GetPreviousDagRun(dag_id=NIGHTLY_DAG, logical_date=before)),
            "dag_run",
            None,
        )
        if run is None or not _value(run.run_type).endswith("backfill"):
            break
        before = run.logical_date
    if run is None:
        log.info("%s has no run with a logical date yet", NIGHTLY_DAG)
        return None
    states = task_runner.RuntimeTaskInstance.get_task_states(dag_id=NIGHTLY_DAG, run_ids=[run.run_id])
    states = states.get(run.run_id, {})
    known = ["plan", *(f"{kind}_{store}" for kind in ("series", "backup", "retention") for store in STORES)]
    failed = sorted(
        {
            split_state_key(key, known)[0]
            for key, state in states.items()
            if _value(state) in ("failed", "upstream_failed")
        }
    )
    result = {
        "run_id": run.run_id,
        "state": _value(run.state),
        "scheduled_at": format_time(run.logical_date or run.run_after),
        "start_date": format_time(run.start_date) if run.start_date else None,
        "end_date": format_time(run.end_date) if run.end_date else None,
        "failed_tasks": failed,
    }
    log.info("last run of %s: %s", NIGHTLY_DAG, result)
    return result


def nightly_from_dict(data: dict[str, Any] | None):
    from dbops.backup.recovery_point import NightlyRun
    from dbops.backup.repository import parse_time

    if data is None:
        return None
    times = {k: parse_time(data[k]) if data.get(k) else None for k in ("start_date", "end_date")}
    return NightlyRun(
        data["run_id"],
        data["state"],
        parse_time(data["scheduled_at"]),
        failed_tasks=tuple(data.get("failed_tasks") or ()),
        **times,
    )


def offsite_from_dict(data: dict[str, Any]) -> dict[str, Any]:
    from dbops.backup.recovery_point import OffsiteCopy
    from dbops.backup.repository import parse_time

    return {
        name: held
        if isinstance(held, str)
        else [
            OffsiteCopy(
                c["store"],
                c["subject"],
                c["backup_id"],
                parse_time(c["finished_at"]),
                parse_time(c["shipped_at"]) if c.get("shipped_at") else None,
            )
            for c in held
        ]
        for name, held in data.items()
    }


@task(on_failure_callback=DbopsAlert(), trigger_rule="all_done")
def check_recovery_points(offsite: dict[str, Any] | None, nightly: dict[str, Any] | None) -> dict[str, Any]:
    """Judge every store (green / late / failed), write ``recovery_point.json`` and the
    metrics, fail naming every failed check; late is logged as a warning."""
    from dbops.backup import recovery_point as rp
    from dbops.backup.repository import utc_now
    from dbops.maintenance.sizes import atomic_write
    from dbops.offsite.restore import fetch_root

    config = runtime_config()
    # an upstream that failed gives None: judged as unreadable, never as nothing to report
    offsite_facts = (
        offsite_from_dict(offsite)
        if offsite is not None
        else {t: "the catalog task failed (see offsite_catalogs)" for t in config.offsite.targets}
    )
    nightly_error = None
    if nightly is None:
        from airflow.sdk import get_current_context

        ti = get_current_context()["ti"]
        states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id]).get(ti.run_id, {})
        if _value(states.get("nightly_run")) != "success":
            nightly_error = f"the nightly_run task ended {_value(states.get('nightly_run'))}"
    result = rp.check_config(
        config,
        repository(config),
        now=utc_now(),
        offsite=offsite_facts,
        nightly=nightly_from_dict(nightly),
        nightly_error=nightly_error,
        connection_exists=runtime.connection_exists,
        fetch_root=fetch_root(config),
    )
    written = [atomic_write(metrics_path(config), rp.render_metrics(result), mode=0o644)]
    if config.backup.root.is_dir():  # never created here: the repository makes its root private
        written.append(atomic_write(config.backup.root / rp.RESULT_FILE, json.dumps(result, indent=1) + "\n"))
    for store in result["stores"]:
        log.info("%s: %s%s", store["store"], store["status"], "".join(f"\n  {r}" for r in store["reasons"]))
    for line in rp.warnings(result):
        log.warning("late: %s", line)
    log.info("wrote %s", ", ".join(str(p) for p in written))
    failed = rp.failures(result)
    if failed:
        raise AirflowFailException(f"recovery points: {len(failed)} failed check(s):\n  " + "\n  ".join(failed))
    return {
        "status": result["status"],
        "stores": {s["store"]: s["status"] for s in result["stores"]},
        "warnings": rp.warnings(result),
    }
