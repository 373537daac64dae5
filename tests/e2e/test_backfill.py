"""Backfill and REST triggers on a real Airflow (scheduler and executor), as users run them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dbops.backup.repository import BackupRepository
from tests.e2e.test_operations import _xcom

pytestmark = pytest.mark.integration

DAG = "dbops_nightly_backup"


def _backups(root) -> dict[str, list[str]]:
    repo = BackupRepository(root)
    found = {}
    for store in ("postgres", "mongo", "redis", "kafka", "weaviate"):
        for subject in repo.subjects(store) or [None]:
            found[f"{store}/{subject}" if subject else store] = [b.backup_id for b in repo.list(store, subject)]
    return {k: v for k, v in found.items() if v}


def test_rest_trigger_then_a_backfill_makes_no_backup_labelled_in_the_past(airflow_api, backup_root):
    airflow_api.unpause_and_settle(DAG)  # the most recent scheduled run (catchup is off)
    # (Backfill dates mean midnight UTC: 01-05 to 01-08 covers the 02:00 runs of the 5th, 6th, 7th.)
    now = datetime.now(UTC).isoformat()
    run = airflow_api.call(
        "POST", f"/dags/{DAG}/dagRuns", {"logical_date": now, "conf": {"stores": ["redis", "kafka"]}}
    )
    airflow_api.wait_until_idle(DAG)
    finished = airflow_api.call("GET", f"/dags/{DAG}/dagRuns/{run['dag_run_id']}")
    states = airflow_api.task_states(DAG, run["dag_run_id"])
    assert finished["state"] == "success", states
    assert states["backup_redis"] == "success" and states["retention_redis"] == "success"
    assert states["backup_mongo"] == "skipped"
    repo = BackupRepository(backup_root)
    assert repo.find_by_run("redis", None, run["dag_run_id"], dag_id=DAG) is not None
    before = _backups(backup_root)

    airflow_api.call(
        "POST",
        "/backfills",
        {
            "dag_id": DAG,
            "from_date": "2026-01-05T00:00:00Z",
            "to_date": "2026-01-08T00:00:00Z",
            "dag_run_conf": {"stores": ["redis", "kafka"]},
        },
    )
    runs = airflow_api.wait_for_runs(DAG, "run_type=backfill", 3)
    assert len(runs) == 3
    for backfilled in runs:
        states = airflow_api.task_states(DAG, backfilled["dag_run_id"])
        assert states["plan"] == "skipped", states
        summary = states.pop("summary")
        assert all(state == "skipped" for state in states.values()), states
        # the run's summary (the `summary` task's return value) says why, without opening a log
        assert summary == "success"
        text = _xcom(airflow_api, DAG, backfilled["dag_run_id"], "summary")
        assert f"{DAG} backfill run {backfilled['dag_run_id']}: " in text, text
        assert "plan: skipped: a backfilled run cannot back up the past" in text, text
        assert "Trigger with force=true to take a backup now" in text, text
    # no new backup, none labelled with a backfilled date, no retention run
    assert _backups(backup_root) == before
