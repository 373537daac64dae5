"""Concurrency: a manual trigger while the scheduled backup runs, maintenance and backup of
the same database at once (on a real Airflow: scheduler, LocalExecutor with parallelism 4,
the dbops pools), and two writers of one backup series in the repository itself."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from dbops.backup.adapter import Endpoint
from dbops.backup.repository import STAGING_DIR, BackupRepository, SeriesBusyError
from dbops.backup.runner import take_backup
from dbops.stores.redis.backup import RedisBackup
from tests.conftest import REPO
from tests.reliability.live_airflow import backup_manifests, dead_tuples, interval, overlaps, task_instances
from tests.support import Log

pytestmark = pytest.mark.integration

BACKUP_DAG, MAINTENANCE_DAG = "dbops_nightly_backup", "dbops_pg_maintenance"


def _runs(api, dag_id: str) -> list[dict]:
    return api.call("GET", f"/dags/{dag_id}/dagRuns?order_by=run_after")["dag_runs"]


def _wait(api, dag_id: str, run_ids: set[str], timeout: float = 300) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = {r["dag_run_id"]: r for r in _runs(api, dag_id) if r["dag_run_id"] in run_ids}
        if len(runs) == len(run_ids) and all(r["state"] in ("success", "failed") for r in runs.values()):
            return runs
        time.sleep(1)
    raise AssertionError(f"{dag_id}: runs {run_ids} not finished within {timeout}s")


def _trigger(api, dag_id: str, conf: dict) -> dict:
    now = datetime.now(UTC).isoformat()
    return api.call("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": now, "conf": conf})


def _ran(api, dag_id: str, run_id: str) -> list[dict]:
    return [t for t in task_instances(api, dag_id, run_id) if t["start_date"] and t["end_date"]]


# --------------------------------------------------------------------------- a real Airflow


def test_a_manual_trigger_while_the_scheduled_backup_runs_waits_its_turn(live_airflow):
    api, instance = live_airflow
    api.unpause(BACKUP_DAG)  # the scheduler starts the scheduled run of the latest 02:00
    deadline = time.monotonic() + 120
    while not (runs := [r for r in _runs(api, BACKUP_DAG) if r["state"] == "running"]):
        assert time.monotonic() < deadline, _runs(api, BACKUP_DAG)
        time.sleep(0.5)
    scheduled = runs[0]
    assert scheduled["run_type"] == "scheduled", scheduled
    manual = _trigger(api, BACKUP_DAG, {"stores": ["redis", "kafka"]})
    time.sleep(2)
    while_first_runs = {r["dag_run_id"]: r["state"] for r in _runs(api, BACKUP_DAG)}
    finished = _wait(api, BACKUP_DAG, {scheduled["dag_run_id"], manual["dag_run_id"]})
    first, second = finished[scheduled["dag_run_id"]], finished[manual["dag_run_id"]]
    assert first["state"] == second["state"] == "success", (first, second)
    if while_first_runs[scheduled["dag_run_id"]] == "running":
        assert while_first_runs[manual["dag_run_id"]] == "queued", while_first_runs  # max_active_runs=1
    # no task of the manual run started before the scheduled run's last task ended
    a, b = _ran(api, BACKUP_DAG, first["dag_run_id"]), _ran(api, BACKUP_DAG, second["dag_run_id"])
    assert len(a) >= 5 and len(b) >= 5, (a, b)  # plan, backup and retention of redis and kafka
    last_of_first = max(interval(t)[1] for t in a)
    first_of_second = min(interval(t)[0] for t in b)
    assert last_of_first <= first_of_second, (last_of_first, first_of_second)
    # each run made its own verified backup of every store; nothing left in staging
    for store in ("redis", "kafka"):
        manifests = backup_manifests(instance.root, store)
        by_run = {m["run_id"]: m for m in manifests}
        for run in (first, second):
            made = by_run.get(run["dag_run_id"])
            assert made is not None, (store, sorted(by_run))
            assert all(c["ok"] for c in made["checks"]), made["checks"]
        assert len({m["backup_id"] for m in manifests}) == len(manifests)
        assert not any((instance.root / store / STAGING_DIR).iterdir())
    print(
        "scheduled run",
        first["start_date"],
        "->",
        first["end_date"],
        "| manual run",
        second["start_date"],
        "->",
        second["end_date"],
        "| manual while the first ran:",
        while_first_runs.get(manual["dag_run_id"]),
    )


def test_maintenance_and_backup_of_one_database_are_serialised_by_the_pool(live_airflow):
    api, instance = live_airflow
    pool = api.call("GET", "/pools/dbops_postgres")
    assert pool["slots"] == 1, pool
    dead_tuples(instance.pg, instance.database)  # real work for VACUUM (ANALYZE)
    backup = _trigger(api, BACKUP_DAG, {"stores": ["postgres"]})
    api.unpause(MAINTENANCE_DAG)  # its scheduled run (the latest Sunday 03:00) starts now too
    deadline = time.monotonic() + 60
    while not (maintenance_runs := _runs(api, MAINTENANCE_DAG)):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    maintenance = maintenance_runs[0]
    done_backup = _wait(api, BACKUP_DAG, {backup["dag_run_id"]})[backup["dag_run_id"]]
    done_maintenance = _wait(api, MAINTENANCE_DAG, {maintenance["dag_run_id"]})[maintenance["dag_run_id"]]
    assert done_backup["state"] == "success", api.task_states(BACKUP_DAG, backup["dag_run_id"])
    assert done_maintenance["state"] == "success", api.task_states(MAINTENANCE_DAG, maintenance["dag_run_id"])

    # the two runs were active at the same time ...
    run_a = (datetime.fromisoformat(done_backup["start_date"]), datetime.fromisoformat(done_backup["end_date"]))
    run_b = (
        datetime.fromisoformat(done_maintenance["start_date"]),
        datetime.fromisoformat(done_maintenance["end_date"]),
    )
    assert overlaps(run_a, run_b), (run_a, run_b)
    # ... but no two tasks of the dbops_postgres pool ever were
    heavy_backup = [t for t in _ran(api, BACKUP_DAG, backup["dag_run_id"]) if t["pool"] == "dbops_postgres"]
    heavy_maintenance = [
        t for t in _ran(api, MAINTENANCE_DAG, maintenance["dag_run_id"]) if t["pool"] == "dbops_postgres"
    ]
    assert len(heavy_backup) >= 2 and len(heavy_maintenance) >= 4, (heavy_backup, heavy_maintenance)
    for x in heavy_backup:
        for y in heavy_maintenance:
            assert not overlaps(interval(x), interval(y)), (x["task_id"], interval(x), y["task_id"], interval(y))
    vacuum = next(
        t for t in task_instances(api, MAINTENANCE_DAG, maintenance["dag_run_id"]) if t["task_id"] == "vacuum_analyze"
    )
    assert vacuum["state"] == "success"
    print("backup run", run_a, "maintenance run", run_b)
    for t in sorted(heavy_backup + heavy_maintenance, key=lambda t: t["start_date"]):
        print(f"  {t['dag_id']:24} {t['task_id']:24} {t['start_date']} -> {t['end_date']}")


# --------------------------------------------------------------------------- the repository lock


def _redis_adapter(devstack) -> RedisBackup:
    conn = devstack.conn("dbops_redis")
    return RedisBackup(Endpoint(host=conn["host"], port=conn["port"], password=conn["password"]), timeout=120)


def _take(repo, adapter, run_id: str, log: Log):
    return take_backup(
        repo,
        adapter,
        store="redis",
        subject=None,
        run_id=run_id,
        dag_id="dbops_nightly_backup",
        logical_date=None,
        force=False,
        stale_staging=timedelta(hours=12),
        log=log,
    )


def test_two_writers_of_one_series_in_threads_one_waits_nothing_is_clobbered(devstack, tmp_path):
    """Two backups of the same store at once in one process: the second is refused while the
    first writes, naming it; the first seals a verified backup; no staging is left."""
    repo = BackupRepository(tmp_path / "backups")
    adapter = _redis_adapter(devstack)
    results: dict[str, object] = {}

    def first() -> None:
        try:
            results["first"] = _take(repo, adapter, "run-first", Log())
        except Exception as exc:  # reported below
            results["first"] = exc

    thread = threading.Thread(target=first)
    thread.start()
    staging = tmp_path / "backups" / "redis" / STAGING_DIR
    deadline = time.monotonic() + 30
    while not (staging.is_dir() and any(p.is_dir() for p in staging.iterdir())):
        assert time.monotonic() < deadline and thread.is_alive(), results
        time.sleep(0.01)
    writing = [p.name for p in staging.iterdir() if p.is_dir()]
    with pytest.raises(SeriesBusyError, match="another backup of redis is being written .*run-first"):
        _take(repo, adapter, "run-second", Log())
    assert [p.name for p in staging.iterdir() if p.is_dir()] == writing  # the first writer's staging, untouched
    thread.join(timeout=180)
    outcome = results["first"]
    assert not isinstance(outcome, Exception), outcome
    backups = repo.list("redis")
    assert [b.run_id for b in backups] == ["run-first"] and backups[0].verified
    assert not any(p.is_dir() for p in staging.iterdir())
    # once the first is done, the second runs normally
    second = _take(repo, adapter, "run-second", Log())
    assert not second.reused and [b.run_id for b in repo.list("redis")] == ["run-first", "run-second"]


def test_the_lock_holds_across_processes_and_dies_with_its_holder(devstack, tmp_path):
    repo = BackupRepository(tmp_path / "backups")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; sys.path[:0] = [sys.argv[2] + '/plugins']\n"
            "from dbops.backup.repository import BackupRepository\n"
            "with BackupRepository(sys.argv[1]).writer_lock('redis', holder='another worker'):\n"
            "    print('locked', flush=True); time.sleep(120)\n",
            str(repo.root),
            str(REPO),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SeriesBusyError, match=r"by another worker, pid \d+"):
            _take(repo, _redis_adapter(devstack), "run-blocked", Log())
        assert repo.list("redis") == [] and not any((repo.root / "redis" / STAGING_DIR).glob("*"))
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed worker: the kernel drops its lock
        holder.wait(timeout=10)
    outcome = _take(repo, _redis_adapter(devstack), "run-after", Log())
    assert not outcome.reused and [b.run_id for b in repo.list("redis")] == ["run-after"]
