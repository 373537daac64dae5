"""Rerun after a failure, as users do it on a real Airflow: the store is down, the backup
task fails; the store comes back, the task is cleared in the UI (here: the same REST call
the UI makes), and the run completes with the same result as an undisturbed run.

The module's Airflow backs up a Redis instance of its own (stopping the shared one would
disturb other tests); the code path is the production one: connection ``dbops_redis``.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from dbops.backup.repository import BackupRepository
from dbops.backup.runner import source_description

pytestmark = pytest.mark.integration

DAG = "dbops_nightly_backup"


@pytest.fixture(scope="module")
def redis_to_back_up(devstack):
    from devstack.services.redis import Redis

    instance = Redis(name="redis-rerun", port=56386)
    instance.up()
    with instance.client() as client:
        client.flushall()
        with client.pipeline(transaction=False) as pipe:
            for i in range(2000):
                pipe.set(f"session:{i}", f"user-{i}")
                pipe.hset(f"stats:{i % 50}", str(i), i)
            pipe.execute()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def airflow_extra_env(redis_to_back_up) -> dict[str, str]:
    conn = redis_to_back_up.connections()["dbops_redis_rerun"]
    return {"AIRFLOW_CONN_DBOPS_REDIS": json.dumps(conn)}


def _trigger(api) -> str:
    run = api.call(
        "POST",
        f"/dags/{DAG}/dagRuns",
        {"logical_date": datetime.now(UTC).isoformat(), "conf": {"stores": ["redis"]}},
    )
    return run["dag_run_id"]


def _wait_for_task(api, run_id: str, task_id: str, states: set[str], timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = api.task_states(DAG, run_id).get(task_id)
        if state in states:
            return state
        time.sleep(2)
    raise AssertionError(f"{task_id} of {run_id} not in {states} within {timeout}s")


def test_a_cleared_task_completes_the_run_after_the_store_is_back(airflow_api, backup_root, redis_to_back_up):
    api = airflow_api
    api.unpause_and_settle(DAG)

    undisturbed = _trigger(api)
    api.wait_until_idle(DAG)
    assert api.call("GET", f"/dags/{DAG}/dagRuns/{undisturbed}")["state"] == "success"
    repo = BackupRepository(backup_root)
    reference = repo.find_by_run("redis", None, undisturbed, dag_id=DAG)

    redis_to_back_up.stop()
    try:
        disturbed = _trigger(api)
        failed_as = _wait_for_task(api, disturbed, "backup_redis", {"up_for_retry", "failed"})
        assert api.task_states(DAG, disturbed)["retention_redis"] not in ("success", "running")
        assert repo.find_by_run("redis", None, disturbed, dag_id=DAG) is None
    finally:
        redis_to_back_up.up()

    cleared = api.call(
        "POST",
        f"/dags/{DAG}/clearTaskInstances",
        {
            "dag_run_id": disturbed,
            "task_ids": ["backup_redis"],
            "include_downstream": True,
            "only_failed": False,
            "reset_dag_runs": True,
            "dry_run": False,
        },
    )
    assert {t["task_id"] for t in cleared["task_instances"]} >= {"backup_redis", "retention_redis"}
    api.wait_until_idle(DAG)
    run = api.call("GET", f"/dags/{DAG}/dagRuns/{disturbed}")
    states = api.task_states(DAG, disturbed)
    assert run["state"] == "success", (failed_as, states)
    assert states["backup_redis"] == "success" and states["retention_redis"] == "success"

    # the same result as the undisturbed run: one verified backup of this run, same content
    repo = BackupRepository(backup_root)
    made = [b for b in repo.list("redis") if b.run_id == disturbed]
    assert len(made) == 1 and made[0].verified
    assert source_description(made[0]) == source_description(reference)
    assert {f["path"] for f in made[0].manifest["files"]} == {f["path"] for f in reference.manifest["files"]}
