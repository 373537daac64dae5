"""dbops_offsite_sync as Airflow runs it (``dag.test``), against the real local sshd and SeaweedFS."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from dbops.backup.repository import BackupRepository
from tests.conftest import run_dag, task_result
from tests.offsite_support import daily_backups, empty_prefix, make_backup, remote_dir, remove_remote
from tests.support import task_states

pytestmark = pytest.mark.integration
UTC = UTC


def conf(**overrides) -> dict:
    """Every Param, given: under ``dag.test`` a run's conf is written into the DAG's Param
    objects (airflow.sdk process_params) and would leak into later runs of this process."""
    return {
        "targets": ["rsync", "s3"],
        "stores": ["postgres", "redis", "kafka"],
        "retention_days": 30,
        "min_keep": 3,
        "dry_run": False,
        "retention_dry_run": False,
        "deep_verify": False,
        **overrides,
    }


@pytest.fixture
def offsite_env(devstack, airflow_db, tmp_path, monkeypatch):
    """A local repository with real small backups (40 days of redis, two postgres
    databases, a kafka one, a staging folder) and unique offsite locations, wired in
    through the Airflow Variable ``dbops_config``."""
    now = datetime.now(UTC)
    repo = BackupRepository(tmp_path / "backups")
    daily_backups(repo, "redis", 40, now=now, size=2048)
    make_backup(repo, "postgres", "ai_platform", files={"toc.dat": 3000, "3456.dat.gz": 200_000})
    make_backup(repo, "postgres", "_globals", files={"globals.sql": b"CREATE ROLE x;\n"})
    make_backup(repo, "kafka", files={"topics.json": b"[]\n"})
    stray = repo.begin("kafka", run_id="r", dag_id="test", logical_date=None)  # never sealed: staging only
    (stray.path / "half.bin").write_bytes(b"x" * 1000)
    remote = remote_dir(devstack)
    prefix = f"dag-test-{uuid.uuid4().hex[:12]}"
    s3 = devstack.service("s3")
    variable = {
        "backup": {"root": str(repo.root)},
        "offsite": {
            "rsync_remote_dir": str(remote),
            "s3_prefix": prefix,
            "s3_bucket": s3.environment()["DBOPS_OFFSITE__S3_BUCKET"],
            "keep_weekly": 0,
            "keep_monthly": 0,
        },  # the window alone: counts below
    }
    monkeypatch.setenv("AIRFLOW_VAR_DBOPS_CONFIG", json.dumps(variable))
    yield repo, remote, prefix
    remove_remote(remote)
    empty_prefix(s3.client(), variable["offsite"]["s3_bucket"], prefix)


def test_offsite_sync_runs_green_and_a_second_run_ships_nothing(dagbag, offsite_env):
    repo, remote, prefix = offsite_env
    dag = dagbag.get_dag("dbops_offsite_sync")
    first = run_dag(dag, conf())
    assert first.state == "success", task_states(first)
    for target in ("rsync", "s3"):
        shipped = task_result(first, f"ship_{target}")
        # 30 days of redis (10 are older than the offsite window: not shipped), 2 postgres, 1 kafka
        assert len(shipped["shipped"]) == 33, shipped["summary"]
        assert len(shipped["not_shipped"]) == 10
        assert all("expire it at once" in why for why in shipped["not_shipped"].values())
        assert shipped["bytes"]["literal_bytes"] >= 200_000
        verified = task_result(first, f"verify_{target}")
        assert verified["checked"] == 33 and verified["content_checked"] == 33
        kept = task_result(first, f"retention_{target}")
        assert sum(len(s["obsolete"]) for s in kept["series"]) == 0
    # the rsync copy is laid out like the repository, no staging left
    assert (remote / "postgres" / "ai_platform").is_dir()
    assert not any(p.name == ".staging" and any(p.iterdir()) for p in remote.rglob(".staging"))

    second = run_dag(dag, conf())
    assert second.state == "success", task_states(second)
    for target in ("rsync", "s3"):
        again = task_result(second, f"ship_{target}")
        assert again["shipped"] == [] and again["present"] == 33
        assert again["bytes"]["literal_bytes"] == 0 and again["bytes"]["bytes_sent"] == 0
        # only the catalog (manifests and envelopes) moved
        assert again["wire_bytes"] == again["catalog_bytes"] < 200_000


def test_offsite_sync_dry_run_changes_nothing(dagbag, offsite_env):
    repo, remote, prefix = offsite_env
    dag = dagbag.get_dag("dbops_offsite_sync")
    run = run_dag(dag, conf(targets=["rsync"], stores=["kafka"], dry_run=True))
    assert run.state == "success", task_states(run)
    states = task_states(run)
    assert states["ship_s3"] == "skipped"
    result = task_result(run, "ship_rsync")
    assert result["shipped"] == [] and len(result["would_ship"]) == 1
    assert not (remote / "kafka").exists()


def test_bad_params_are_refused_before_any_work(dagbag, offsite_env):
    repo, remote, prefix = offsite_env
    dag = dagbag.get_dag("dbops_offsite_sync")
    with pytest.raises(Exception, match="targets|ftp"):
        run_dag(dag, conf(targets=["ftp"]))


def test_encrypted_sync_with_the_key_from_a_variable_and_a_clear_failure_without_it(dagbag, offsite_env, monkeypatch):
    import os

    from dbops.offsite.crypto import Encryption

    repo, remote, prefix = offsite_env
    variable = json.loads(os.environ["AIRFLOW_VAR_DBOPS_CONFIG"])
    variable["offsite"]["encryption"] = True
    monkeypatch.setenv("AIRFLOW_VAR_DBOPS_CONFIG", json.dumps(variable))
    dag = dagbag.get_dag("dbops_offsite_sync")

    monkeypatch.delenv("AIRFLOW_VAR_DBOPS_OFFSITE_KEY", raising=False)
    refused = run_dag(dag, conf(stores=["kafka"]))
    assert refused.state == "failed" and task_states(refused)["plan"] == "failed"
    assert not (remote / "kafka").exists()  # nothing left the host

    key = os.urandom(32)
    monkeypatch.setenv("AIRFLOW_VAR_DBOPS_OFFSITE_KEY", key.hex())
    run = run_dag(dag, conf(stores=["kafka"]))
    assert run.state == "success", task_states(run)
    (backup,) = repo.list("kafka")
    assert task_result(run, "plan")["encryption_key_id"] == Encryption(key).key_id
    folder = remote / "kafka" / backup.backup_id
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "offsite.json", "topics.json.enc"]
    assert json.loads((folder / "offsite.json").read_text())["encryption"]["key_id"] == Encryption(key).key_id
    assert not any((repo.root / ".offsite-outbox").rglob("*"))  # the encrypted copy was removed


def test_a_target_without_its_connection_fails_in_plan_before_any_transfer(dagbag, offsite_env, monkeypatch):
    import os

    repo, remote, prefix = offsite_env
    variable = json.loads(os.environ["AIRFLOW_VAR_DBOPS_CONFIG"])
    variable["connections"] = {"offsite_ssh": "dbops_offsite_ssh_missing"}
    monkeypatch.setenv("AIRFLOW_VAR_DBOPS_CONFIG", json.dumps(variable))
    run = run_dag(dagbag.get_dag("dbops_offsite_sync"), conf(stores=["kafka"]))
    states = task_states(run)
    assert run.state == "failed" and states["plan"] == "failed"
    assert states["ship_s3"] != "success" and states["ship_rsync"] != "success"
    assert not remote.exists()
