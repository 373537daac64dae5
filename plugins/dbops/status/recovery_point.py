"""The recovery-point status at the top of the DB Ops page: green / late / failed per store,
with the reasons, computed live by the same checks as ``dbops_recovery_check``
(:func:`dbops.backup.recovery_point.check_config`) on the repository as it is now.

The page reads the nightly run from Airflow's DagRun table itself (the API server has the
metadata database) and the offsite catalogs through the page's cache (reading a catalog
costs a round of S3 or SSH calls). Beside the live result it shows when the DAG last judged
and what it found (``<backup.root>/recovery_point.json``), so a check that stopped running
is visible too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from dbops.backup import recovery_point as rp
from dbops.backup.repository import BackupRepository, as_utc, parse_time

# the DAG runs every 30 minutes: a result older than two missed runs is stale
RESULT_STALE_AFTER_S = 90 * 60


def nightly_from_db(now: datetime) -> rp.NightlyRun | None:
    """The newest run of ``dbops_nightly_backup`` before ``now`` (by logical date, backfills
    left out: they back up nothing) and its failed tasks, from Airflow's metadata database."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalars(
            select(DagRun)
            .where(DagRun.dag_id == rp.NIGHTLY_DAG, DagRun.logical_date < now, DagRun.run_type != "backfill")
            .order_by(DagRun.logical_date.desc())
            .limit(1)
        ).first()
        if run is None:
            return None
        failed = session.scalars(
            select(TaskInstance.task_id).where(
                TaskInstance.dag_id == rp.NIGHTLY_DAG,
                TaskInstance.run_id == run.run_id,
                TaskInstance.state.in_(["failed", "upstream_failed"]),
            )
        ).all()
        return rp.NightlyRun(
            run.run_id,
            str(getattr(run.state, "value", run.state)),
            as_utc(run.logical_date or run.run_after),
            run.start_date,
            run.end_date,
            tuple(sorted(set(failed))),
        )


def last_dag_result(root: Path, now: datetime) -> dict[str, Any]:
    """What ``dbops_recovery_check`` last wrote: its time, age, status, and whether it is stale."""
    path = root / rp.RESULT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        at = parse_time(data["generated_at"])
    except FileNotFoundError:
        return {"at": None, "age_s": None, "status": None, "stale": True, "error": None}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {"at": None, "age_s": None, "status": None, "stale": True, "error": f"{path}: {exc}"}
    age = round((now - at).total_seconds(), 1)
    return {
        "at": data["generated_at"],
        "age_s": age,
        "status": data.get("status"),
        "stale": age > RESULT_STALE_AFTER_S,
        "error": None,
    }


def recovery_overview(
    config: Any,
    repo: BackupRepository,
    now: datetime,
    *,
    offsite: Mapping[str, list[rp.OffsiteCopy] | str],
    nightly: Callable[[datetime], rp.NightlyRun | None],
    connection_exists: Callable[[str], bool],
) -> dict[str, Any]:
    """The live status per store, plus the DAG's last result. ``nightly(now)`` reads the
    last nightly run; its failure is judged (the check fails naming it), never hidden."""
    try:
        run, run_error = nightly(now), None
    except Exception as exc:  # the metadata database's failure is a finding of the check
        run, run_error = None, f"{type(exc).__name__}: {exc}"
    from dbops.offsite.restore import fetch_root

    result = rp.check_config(
        config,
        repo,
        now=now,
        offsite=offsite,
        nightly=run,
        nightly_error=run_error,
        connection_exists=connection_exists,
        fetch_root=fetch_root(config),
    )
    return {**result, "dag": last_dag_result(repo.root, now), "error": None}
