"""Disk full while a backup is written: the backup root is a 2 MiB tmpfs (mounted by the test,
root only) and the Redis snapshot is bigger. dbops_nightly_backup runs as Airflow runs it."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from dbops.backup.repository import BackupRepository
from dbops.backup.runner import BackupSpaceError
from dbops.stores.redis.backup import RedisBackup
from tests.conftest import run_dag, without_retries
from tests.reliability.faults import backup_now, fill_redis, fingerprint, redis_endpoint, staging_left
from tests.support import Log

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, unmounted afterwards."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir(mode=0o700)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.fail(f"mounting a small tmpfs needs root: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def seed_old_backups(repo: BackupRepository, count: int, now: datetime) -> None:
    """``count`` small sealed backups, 40 days old and older: retention would delete them."""
    for age in range(40 + count, 40, -1):
        taken = now - timedelta(days=age)
        with repo.begin("redis", run_id=f"seed-{age}", dag_id="seed", logical_date=taken, now=taken) as staging:
            (staging.path / "dump.rdb").write_bytes(os.urandom(1024))
            staging.seal({"tool": "seed", "tool_version": "1", "server_version": "1", "compression": "none"}, now=taken)


def test_a_full_disk_fails_clearly_cleans_staging_keeps_old_backups_and_skips_retention(
    small_disk, scratch_redis, dagbag, dbops_variable, monkeypatch, capfd
):
    root = small_disk / "backups"
    repo = BackupRepository(root)
    seed_old_backups(repo, 3, datetime.now(UTC))
    before = fingerprint(root)
    fill_redis(scratch_redis, 4000)  # a ~4 MiB RDB for a 2 MiB disk
    dbops_variable({"backup": {"root": str(root), "keep_weekly": 0, "keep_monthly": 0}})  # the window alone
    conn = {"conn_type": "redis", "host": "127.0.0.1", "port": scratch_redis.port, "password": scratch_redis.password}
    monkeypatch.setenv("AIRFLOW_CONN_DBOPS_REDIS", json.dumps(conn))
    dag = without_retries(dagbag.get_dag("dbops_nightly_backup"))

    run = run_dag(dag, {"stores": ["redis"], "retention_days": 30, "min_keep": 1})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    out = capfd.readouterr()
    assert run.state == "failed" and states["backup_redis"] == "failed", states
    assert states["retention_redis"] == "upstream_failed"  # retention did not run
    logged = out.out + out.err
    assert "BackupSpaceError" in logged and "redis: backup failed, the backup filesystem is full" in logged
    assert fingerprint(root) == before and len(repo.list("redis")) == 3  # nothing new, nothing deleted
    assert staging_left(repo, "redis") == []
    assert os.statvfs(small_disk).f_bfree * os.statvfs(small_disk).f_frsize > 1024 * 1024  # the space came back

    # space freed (a smaller dataset): the rerun succeeds, and only now retention runs
    fill_redis(scratch_redis, 200)
    rerun = run_dag(dag, {"stores": ["redis"], "retention_days": 30, "min_keep": 1})
    assert rerun.state == "success", {ti.task_id: ti.state for ti in rerun.get_task_instances()}
    remaining = repo.list("redis")
    assert [b.run_id for b in remaining] == [rerun.run_id] and remaining[0].verified


def test_the_runner_names_the_full_disk(small_disk, scratch_redis):
    """The same at the runner level: the error class and message, whatever the tool said."""
    repo = BackupRepository(small_disk / "backups")
    fill_redis(scratch_redis, 4000)
    log = Log()
    with pytest.raises(BackupSpaceError) as failure:
        backup_now(repo, RedisBackup(redis_endpoint(scratch_redis)), run_id="scheduled__full", log=log)
    message = str(failure.value)
    assert message.startswith("redis: backup failed, the backup filesystem is full (No space left on device; ")
    assert f"at {repo.root})" in message and "The partial backup is removed" in message
    assert "redis-cli failed with exit code 1" in message and "short write" in message  # the tool's own words
    assert "No space left on device: only " in message  # measured by run_tool before the partial file went
    assert repo.list("redis") == [] and staging_left(repo, "redis") == []
