"""The Airflow task process killed (SIGKILL) mid-backup on a real Airflow (``airflow standalone``,
LocalExecutor), then the task retried: nothing partial is listed, exactly one backup for the run.

The Airflow instance is this test's own (port from DBOPS_E2E_AIRFLOW_PORT, default 58091), with
``dbops_redis`` pointing at the scratch Redis of this folder, so the snapshot can be slowed down.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from datetime import UTC, datetime, timedelta

import psutil
import pytest

from dbops.backup.repository import BackupRepository
from tests.e2e.conftest import AirflowAPI
from tests.reliability.faults import STALE_STAGING, fill_redis, staging_bytes, staging_left, wait_until

pytestmark = pytest.mark.integration

DAG = "dbops_nightly_backup"
PORT = int(os.environ.get("DBOPS_E2E_AIRFLOW_PORT", "58091"))


@pytest.fixture(scope="module")
def airflow(devstack, scratch_redis, module_backup_root):
    from devstack.core import load_secrets
    from devstack.services.airflow import Airflow

    redis_conn = {
        "conn_type": "redis",
        "host": "127.0.0.1",
        "port": scratch_redis.port,
        "password": scratch_redis.password,
    }
    instance = Airflow(
        name=f"airflow-faults-{PORT}",
        port=PORT,
        extra_env={
            "DBOPS_BACKUP__ROOT": str(module_backup_root),
            "DBOPS_BACKUP__STORES": '["redis"]',
            "AIRFLOW_CONN_DBOPS_REDIS": json.dumps(redis_conn),
            "DBOPS_REDIS__SNAPSHOT_METHOD": "rdb",  # the test kills redis-cli mid-stream
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        },
    )
    shutil.rmtree(instance.dir, ignore_errors=True)  # a fresh home and metadata DB every time
    instance.drop_database()
    instance.up()
    try:
        yield AirflowAPI(instance.url(), load_secrets()["airflow_admin"])
    finally:
        instance.stop()
        instance.drop_database()


def _redis_cli_under(root: str) -> psutil.Process | None:
    """The redis-cli writing into ``root`` (its command line names the target file)."""
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.info["name"] == "redis-cli" and any(root in arg for arg in proc.info["cmdline"] or []):
                return proc
        except psutil.NoSuchProcess:
            continue
    return None


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _task_state(api: AirflowAPI, run_id: str) -> str | None:
    return api.task_states(DAG, run_id).get("backup_redis")


def test_the_task_process_killed_mid_backup_then_retried(airflow, scratch_redis, module_backup_root):
    repo = BackupRepository(module_backup_root)
    started = time.monotonic()
    phases = {}
    fill_redis(scratch_redis, 20_000)
    with scratch_redis.client() as client:
        client.config_set("rdb-key-save-delay", 500)  # a ~10 s stream
    airflow.unpause(DAG)  # starts the latest scheduled run (catchup off); it is the one killed
    run_id = wait_until(
        lambda: next((r["dag_run_id"] for r in airflow.call("GET", f"/dags/{DAG}/dagRuns")["dag_runs"]), None),
        timeout=120,
        what="the scheduled run",
        every=1,
    )

    state = wait_until(
        lambda: (s := _task_state(airflow, run_id)) not in (None, "scheduled", "queued", "none") and s,
        timeout=300,
        what="backup_redis to start",
        every=1,
    )
    assert state == "running", airflow.task_states(DAG, run_id)
    tool = wait_until(
        lambda: (p := _redis_cli_under(str(module_backup_root))) and staging_bytes(repo, "redis") > 64 * 1024 and p,
        timeout=120,
        what="redis-cli streaming inside the task",
        every=0.05,
    )
    phases["until the dump runs"] = round(time.monotonic() - started)
    worker = tool.parent()  # the task process: it runs the task code and started redis-cli
    assert "redis-cli" not in worker.name()
    worker_cmd = " ".join(worker.cmdline())
    written = staging_bytes(repo, "redis")
    os.kill(worker.pid, signal.SIGKILL)
    killed_at = time.monotonic()

    # Airflow sees the task die and schedules the retry (retries=2)
    state = wait_until(
        lambda: (s := _task_state(airflow, run_id)) in ("up_for_retry", "failed") and s,
        timeout=120,
        what="Airflow to notice the dead task",
        every=1,
    )
    assert state == "up_for_retry", state
    noticed = time.monotonic() - killed_at
    assert repo.find_by_run("redis", None, run_id, dag_id=DAG) is None  # nothing of the killed try listed
    assert repo.list("redis") == []
    # the tool died with the task process (PR_SET_PDEATHSIG): no orphan writes on unseen
    wait_until(lambda: not _alive(tool), timeout=15, what="redis-cli to die with the task process", every=0.1)
    bytes_left_behind = staging_bytes(repo, "redis")
    time.sleep(1)
    assert staging_bytes(repo, "redis") == bytes_left_behind  # nothing writes there any more

    with scratch_redis.client() as client:
        client.config_set("rdb-key-save-delay", 0)
    # the retry, now instead of after retry_delay: clear the task as an operator would
    airflow.call(
        "POST",
        f"/dags/{DAG}/clearTaskInstances",
        {
            "dag_run_id": run_id,
            "task_ids": ["backup_redis", "retention_redis"],
            "only_failed": False,
            "dry_run": False,
            "reset_dag_runs": True,
        },
    )
    final = wait_until(
        lambda: (r := airflow.call("GET", f"/dags/{DAG}/dagRuns/{run_id}"))["state"] in ("success", "failed") and r,
        timeout=180,
        what="the retried run",
        every=2,
    )
    states = airflow.task_states(DAG, run_id)
    phases["kill to retried run done"] = round(time.monotonic() - killed_at)
    assert final["state"] == "success", states
    assert states["backup_redis"] == "success" and states["retention_redis"] == "success"

    made = [b for b in repo.list("redis") if b.run_id == run_id]
    assert len(made) == 1 and made[0].verified, [b.backup_id for b in made]  # exactly one for the run
    assert [b.backup_id for b in repo.list("redis")] == [made[0].backup_id]
    assert made[0].manifest["details"]["keys"] == 20_000

    # The killed try could not clean up: its staging folder stays out of sight (never listed)
    # until a later run's sweep finds it stale (stale_staging_hours).
    left = staging_left(repo, "redis")
    assert len(left) <= 1 and all(name.split(".")[0] < made[0].backup_id for name in left), left
    later = datetime.now(UTC) + STALE_STAGING + timedelta(minutes=1)
    assert [p.name for p in repo.sweep("redis", older_than=STALE_STAGING, now=later)] == left
    assert staging_left(repo, "redis") == [] and [b.backup_id for b in repo.list("redis")] == [made[0].backup_id]
    print(
        f"killed the task process ({worker_cmd[:60]}) after {written} bytes; Airflow noticed in {noticed:.1f}s; "
        f"redis-cli died with it; staging left by the killed try: {left}; retry made {made[0].backup_id}; "
        f"phases: {phases}"
    )


WORKER = """
import os, sys
sys.path[:0] = sys.argv[1:3]
from dbops.backup.adapter import Endpoint
from dbops.backup.repository import BackupRepository
from dbops.stores.redis.backup import RedisBackup
from tests.reliability.faults import backup_now
endpoint = Endpoint(host="127.0.0.1", port=int(sys.argv[4]), password=os.environ["FAULT_REDIS_PASSWORD"])
backup_now(BackupRepository(sys.argv[3]), RedisBackup(endpoint), run_id="scheduled__worker")
"""


def test_a_worker_process_killed_mid_backup_takes_its_tool_along(scratch_redis, repo):
    """The same without Airflow: a worker process runs the backup and is SIGKILLed; its
    redis-cli dies with it, nothing is listed, and the retry makes exactly one backup."""
    import subprocess
    import sys
    from pathlib import Path

    from dbops.stores.redis.backup import RedisBackup
    from tests.reliability.faults import assert_verified, backup_now, find_tool_process, redis_endpoint

    fill_redis(scratch_redis, 20_000)
    with scratch_redis.client() as client:
        client.config_set("rdb-key-save-delay", 300)
    repo_dir = Path(__file__).resolve().parents[2]
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WORKER,
            str(repo_dir),
            str(repo_dir / "plugins"),
            str(repo.root),
            str(scratch_redis.port),
        ],
        env={**os.environ, "FAULT_REDIS_PASSWORD": scratch_redis.password},
    )
    try:
        tool = wait_until(
            lambda: (
                (p := find_tool_process("redis-cli", worker.pid)) and staging_bytes(repo, "redis") > 64 * 1024 and p
            ),
            timeout=60,
            what="redis-cli streaming in the worker",
        )
        worker.kill()
        worker.wait(timeout=10)
        wait_until(lambda: not _alive(tool), timeout=10, what="redis-cli to die with its worker", every=0.05)
    finally:
        worker.kill()
        with scratch_redis.client() as client:
            client.config_set("rdb-key-save-delay", 0)
    left = staging_left(repo, "redis")
    assert repo.list("redis") == [] and len(left) == 1  # out of sight, swept once stale
    outcome = backup_now(repo, RedisBackup(redis_endpoint(scratch_redis)), run_id="scheduled__worker")
    assert [b.backup_id for b in repo.list("redis")] == [outcome.backup_id]
    assert_verified(repo, "redis", None, outcome.backup_id)
    assert backup_now(repo, RedisBackup(redis_endpoint(scratch_redis)), run_id="scheduled__worker").reused
