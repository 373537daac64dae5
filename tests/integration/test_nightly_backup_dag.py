"""dbops_nightly_backup as Airflow runs it (``dag.test``), against the real local stores:
PostgreSQL 16, Redis 7 and the real mongodump under wine against SecantusDB (a
MongoDB-wire-compatible server), Kafka definitions from Tansu (a Kafka-compatible broker).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pytest

from dbops.backup.repository import BackupRepository
from dbops.tools import human_bytes
from tests.conftest import run_dag, task_result, without_retries
from tests.support import pg_connect, task_states

pytestmark = pytest.mark.integration

ALL = ["postgres", "mongo", "weaviate", "redis", "kafka"]


@pytest.fixture
def sample_database(scratch_pg):
    conn_info, name = scratch_pg
    with pg_connect(conn_info, name) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, label text, embedding vector(3))")
        conn.execute(
            "INSERT INTO items SELECT g, 'item ' || g, ARRAY[g, g * 2, g * 3]::vector FROM generate_series(1, 500) g"
        )
        conn.commit()
    return name


def test_nightly_backup_of_every_store_is_verified_and_published(dagbag, dbops_variable, backup_root, sample_database):
    dbops_variable({"backup": {"root": str(backup_root)}, "postgres": {"databases": [sample_database]}})
    dag = dagbag.get_dag("dbops_nightly_backup")
    run = run_dag(dag, {"stores": ALL})
    states = task_states(run)
    assert run.state == "success", states
    assert states["backup_weaviate"] == "skipped" and states["retention_weaviate"] == "skipped"
    for store in ("postgres", "mongo", "redis", "kafka"):
        assert states[f"retention_{store}"] == "success"

    repo = BackupRepository(backup_root)
    series = {
        ("postgres", sample_database): "pg_dump",
        ("postgres", "_globals"): "pg_dumpall",
        ("mongo", None): "mongodump",
        ("redis", None): "redis BGSAVE + copy",  # auto: the worker reads the local server's RDB file
        ("kafka", None): None,
    }
    for (store, subject), tool in series.items():
        backups = repo.list(store, subject)
        assert len(backups) == 1, (store, subject)
        backup = backups[0]
        assert backup.verified and backup.run_id == run.run_id
        if tool:
            assert tool in backup.manifest["tool"]
        assert all(f["sha256"] for f in backup.manifest["files"])
        assert oct(backup.path.stat().st_mode & 0o777) == "0o700"
        for f in backup.manifest["files"]:
            assert oct((backup.path / f["path"]).stat().st_mode & 0o777) == "0o600", f["path"]
    result = task_result(run, "backup_redis")
    assert result["backup_id"] == repo.list("redis")[0].backup_id and result["reused"] is False


def _seed_old_backups(repo: BackupRepository, store: str, days: int, now: datetime) -> None:
    """``days`` daily backups, the newest yesterday, sealed like real ones (for retention)."""
    for age in range(days, 0, -1):
        taken = now - timedelta(days=age)
        with repo.begin(store, run_id=f"seed-{age}", dag_id="seed", logical_date=taken, now=taken) as staging:
            (staging.path / "data.bin").write_bytes(os.urandom(64))
            staging.seal({"tool": "seed", "tool_version": "1", "server_version": "1", "compression": "none"}, now=taken)


def test_retention_after_a_good_backup_keeps_exactly_the_window(dagbag, dbops_variable, backup_root):
    # the window alone (weekly and monthly tiers off: tests/unit/test_retention_tiers.py has them)
    dbops_variable({"backup": {"root": str(backup_root), "keep_weekly": 0, "keep_monthly": 0}})
    now = datetime.now(UTC)
    repo = BackupRepository(backup_root)
    _seed_old_backups(repo, "redis", 40, now)
    run = run_dag(dagbag.get_dag("dbops_nightly_backup"), {"stores": ["redis"], "retention_days": 30, "min_keep": 3})
    assert run.state == "success", task_states(run)
    remaining = repo.list("redis")
    ages = sorted((now - b.finished_at).days for b in remaining)
    # 29 seeded backups younger than 30 days (ages 1..29) plus tonight's
    assert len(remaining) == 30 and max(ages) == 29
    deleted = task_result(run, "retention_redis")["series"][0]["obsolete"]
    assert len(deleted) == 11
    # the run's summary (the `summary` task's return value): the backup with its size, the ids deleted
    made = task_result(run, "backup_redis")
    text = task_result(run, "summary")
    assert isinstance(text, str) and len(text.splitlines()) <= 25, text
    assert f"backup_redis: redis: backup {made['backup_id']} verified, " in text, text
    assert f"{human_bytes(made['data_bytes'])} data (+" in text, text  # the data's size, the metadata apart
    assert f"retention_redis: redis: kept 30, deleted {', '.join(deleted)}" in text, text
    assert f"publish_backups: 1 new backup(s) for the offsite sync: redis/{made['backup_id']}" in text, text
    assert "failed" not in text, text


def test_a_failed_backup_deletes_nothing(dagbag, dbops_variable, backup_root, monkeypatch):
    dbops_variable({"backup": {"root": str(backup_root)}})
    now = datetime.now(UTC)
    repo = BackupRepository(backup_root)
    _seed_old_backups(repo, "redis", 40, now)
    before = [b.backup_id for b in repo.list("redis")]
    conn = json.loads(os.environ["AIRFLOW_CONN_DBOPS_REDIS"])
    monkeypatch.setenv("AIRFLOW_CONN_DBOPS_REDIS", json.dumps({**conn, "password": "wrong-password"}))
    run = run_dag(without_retries(dagbag.get_dag("dbops_nightly_backup")), {"stores": ["redis"]})
    states = task_states(run)
    assert run.state == "failed" and states["backup_redis"] == "failed", states
    assert states["retention_redis"] == "upstream_failed"
    # the summary runs and says what failed, and its success does not turn the run green
    assert states["summary"] == "success" and states["publish_backups"] == "skipped", states
    text = task_result(run, "summary")
    assert "failed: backup_redis, retention_redis" in text and "this run made no new backup" in text, text
    assert [b.backup_id for b in repo.list("redis")] == before
    assert not list((backup_root / "redis" / ".staging").iterdir())


@pytest.mark.parametrize(
    "bad",
    [
        {"retention_days": 0},
        {"retention_days": -1},
        {"retention_days": "thirty"},
        {"min_keep": 0},
        {"stores": ["oracle"]},
        {"stores": []},
        {"force": "yes"},
    ],
)
def test_bad_params_are_refused_naming_the_param(dagbag, bad):
    """What the trigger form and the REST API do before a run is created."""
    import copy

    params = copy.deepcopy(dagbag.get_dag("dbops_nightly_backup").params)
    with pytest.raises(Exception) as err:
        for key, value in bad.items():
            params[key] = value
        params.validate()
    assert list(bad)[0] in str(err.value)
