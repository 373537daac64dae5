"""Every DAG file, now and later: imports cleanly and follows the dbops conventions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import DAG_FILES, REPO

POOLS = set(json.loads((REPO / "include" / "airflow" / "pools.json").read_text())) | {"default_pool"}

# README.md's table "The DAGs"; a new DAG must be added here (and there) with its schedule.
EXPECTED_SCHEDULES = {
    "dbops_bootstrap": None,
    "dbops_nightly_backup": "0 2 * * *",
    "dbops_offsite_sync": "assets",
    "dbops_pg_maintenance": "0 3 * * 0",
    "dbops_table_size_monitor": "0 0 * * *",
    "dbops_restore": None,
    "dbops_pin": None,
    "dbops_restore_drill": "0 6 * * 6",
    "dbops_health": "*/10 * * * *",
    "dbops_base_backup": "30 1 * * *",
    "dbops_wal_check": "*/15 * * * *",
    "dbops_recovery_check": "*/30 * * * *",
    "dbops_dr_drill": "0 7 1 * *",
}


def test_there_are_dag_files():
    assert DAG_FILES, "no DAG files found in dags/"


def test_no_import_errors(parsed_dags):
    assert parsed_dags.import_errors == {}, "\n".join(f"{k}: {v}" for k, v in parsed_dags.import_errors.items())


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_defines_the_dag_it_is_named_after(parsed_dags, path):
    dag_ids = {dag_id for dag_id, dag in parsed_dags.dags.items() if Path(dag.fileloc).name == path.name}
    assert dag_ids == {path.stem}


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_conventions(parsed_dags, path):
    dag = parsed_dags.dags[path.stem]
    assert dag.dag_id in EXPECTED_SCHEDULES, (
        f"{dag.dag_id}: add it to EXPECTED_SCHEDULES and to README.md's table of DAGs"
    )
    assert "dbops" in dag.tags
    assert dag.doc_md and len(dag.doc_md) > 200, "doc_md must say what the DAG does and what a rerun/backfill does"
    assert "backfill" in dag.doc_md.lower() or "rerun" in dag.doc_md.lower()
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    for t in dag.tasks:
        assert t.owner == "dbops", t.task_id
        assert t.retries >= 1 and t.retry_delay.total_seconds() > 0, t.task_id
        assert t.pool in POOLS, f"{t.task_id}: pool {t.pool!r} is not in include/airflow/pools.json"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_schedule_is_the_designed_one(parsed_dags, path):
    dag = parsed_dags.dags[path.stem]
    expected = EXPECTED_SCHEDULES[dag.dag_id]
    timetable = dag.timetable
    if expected is None:
        assert not timetable.can_be_scheduled, f"{dag.dag_id} must be manual only"
    elif expected == "assets":
        assert dag.timetable.asset_condition is not None
    else:
        assert timetable.expression == expected
        assert str(timetable.timezone) in ("UTC", "Timezone('UTC')")


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_params_defaults_are_valid(parsed_dags, path):
    dag = parsed_dags.dags[path.stem]
    # raises ParamValidationError when a default does not satisfy its own schema
    dag.params.validate()


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_heavy_tasks_have_a_time_limit_and_refusals_are_never_retried(parsed_dags, path):
    """A hung dump must fail and alert, not hold every later night's run; an error a retry
    cannot cure (a refusal, a mismatch, a bad setting) fails at once."""
    from airflow.sdk.definitions.retry_policy import RetryAction

    from dbops.backup.adapter import BackupRefused, RestoreRefused
    from dbops.backup.restore import CorruptBackup
    from dbops.backup.retention import RetentionRefused
    from dbops.config import ConfigError, load_config

    limit = load_config().executor.heavy_task_timeout_minutes * 60
    dag = parsed_dags.dags[path.stem]
    for t in dag.tasks:
        if t.pool.startswith("dbops_"):
            assert t.execution_timeout is not None and t.execution_timeout.total_seconds() == limit, t.task_id
        policy = t.retry_policy
        assert policy is not None, t.task_id
        for never in (
            RestoreRefused("x"),
            BackupRefused("x"),
            CorruptBackup("x", []),
            RetentionRefused("x"),
            ConfigError("x"),
        ):
            assert policy.evaluate(never, 1, 3).action == RetryAction.FAIL, (t.task_id, never)
        assert policy.evaluate(ConnectionError("server went away"), 1, 3).action == RetryAction.DEFAULT


def test_an_approval_asks_again_at_once_on_a_later_try(parsed_dags):
    """Retrying an approval does no work, it asks again: a dropped answer (Airflow 3.3) must not
    leave the run waiting out the DAG's backoff before anyone can answer again."""
    from dbops.tasks.approval import APPROVAL_RETRY_DELAY, DestructionApproval

    approvals = [t for dag in parsed_dags.dags.values() for t in dag.tasks if isinstance(t, DestructionApproval)]
    assert {t.task_id for t in approvals} == {"approve", "approve_vacuum_full"}
    for t in approvals:
        assert t.retries > 0 and t.retry_delay == APPROVAL_RETRY_DELAY, (t.task_id, t.retries, t.retry_delay)
        assert not t.retry_exponential_backoff, t.task_id
