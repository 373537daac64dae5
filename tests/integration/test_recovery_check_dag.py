"""dbops_recovery_check as Airflow runs it (``dag.test``), and the DB Ops page's
``/api/recovery``: a repository whose newest backup is older than
``recovery_point.max_backup_age_hours`` raises the alert (a real POST to the alert webhook,
the ``dbops_alerts`` connection) and turns the store red on the page; the same backup fresh
is green for that check. Offsite is the local SeaweedFS S3 under a prefix of this test
(empty: no copy); the nightly run (a real one, failed: Redis unreachable) is read from
Airflow's DagRun table."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from dbops.backup.repository import BackupRepository
from tests.conftest import run_dag, without_retries

pytestmark = pytest.mark.integration

UTC = UTC


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_backup(repo: BackupRepository, finished: datetime):
    """A verified, drilled Redis backup that finished at ``finished`` (the repository's own
    begin/seal, with that time as its clock)."""
    started = finished - timedelta(minutes=2)
    with repo.begin(
        "redis",
        None,
        run_id=f"scheduled__{started:%Y%m%dT%H%M%S}",
        dag_id="dbops_nightly_backup",
        logical_date=started,
        now=started,
    ) as staging:
        (staging.path / "dump.rdb").write_bytes(b"REDIS0011" + b"x" * 4000)
        made = staging.seal(
            {"tool": "redis-cli", "tool_version": "7.0.15", "server_version": "7.0.15", "compression": "none"},
            [{"name": "redis-check-rdb", "ok": True, "detail": ""}],
            now=finished,
        )
    repo.record(made, "drill", {"ok": True, "differences": []}, now=finished + timedelta(minutes=30))
    return made


@pytest.fixture
def setup(tmp_path, dbops_variable):
    root = tmp_path / "backups"
    config = {
        "backup": {"root": str(root), "stores": ["redis"]},
        "pitr": {"enabled": False},
        "offsite": {"targets": ["s3"], "s3_prefix": f"recovery-{uuid.uuid4().hex[:8]}"},
        "monitor": {"reports_dir": str(tmp_path / "reports")},
    }
    dbops_variable(config)
    return BackupRepository(root), config, tmp_path


def page(config: dict, monkeypatch):
    """The DB Ops app with this test's config, logged in (the real login is tested by
    tests/e2e/test_browser.py)."""
    from fastapi.testclient import TestClient

    from dbops.config import DbopsConfig
    from dbops.status import app as status_app

    monkeypatch.setattr(status_app, "_config", lambda: DbopsConfig().with_overrides(config))
    app = status_app.create_app()
    app.dependency_overrides[status_app.current_user] = lambda: "tester"
    return TestClient(app)


def test_an_old_backup_raises_the_alert_and_turns_the_page_red(dagbag, setup, alerts, monkeypatch):
    repo, config, tmp_path = setup
    old = redis_backup(repo, datetime.now(UTC) - timedelta(hours=30))
    # tonight's backup failed (Redis unreachable): the newest nightly run, read from the DagRun table
    redis = json.loads(os.environ["AIRFLOW_CONN_DBOPS_REDIS"])
    with monkeypatch.context() as patched:
        patched.setenv("AIRFLOW_CONN_DBOPS_REDIS", json.dumps({**redis, "port": _closed_port()}))
        nightly = run_dag(
            without_retries(dagbag.get_dag("dbops_nightly_backup")),
            {"stores": ["redis"]},
            logical_date=datetime.now(UTC),
        )  # a night has a logical date
    assert nightly.state == "failed"
    alerts.clear()

    started = time.monotonic()
    run = run_dag(without_retries(dagbag.get_dag("dbops_recovery_check")))
    seconds = time.monotonic() - started
    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {
        "offsite_catalogs": "success",
        "nightly_run": "success",
        "check_recovery_points": "failed",
        "summary": "success",
    }

    # the alert: a POST naming the task and the age over the limit
    deadline = time.monotonic() + 10
    while not alerts and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(alerts) == 1, alerts
    alert = alerts[0]
    assert alert["dag_id"] == "dbops_recovery_check" and alert["task_id"] == "check_recovery_points"
    assert (
        f"redis: the newest verified backup of redis ({old.backup_id}) is 30.0 h old: "
        "over recovery_point.max_backup_age_hours = 26.0 h"
    ) in alert["message"]
    assert (
        f"redis: the last run of dbops_nightly_backup ({nightly.run_id}) failed: backup_redis, retention_redis"
        in alert["message"]
    )
    # no offsite copy yet of a series younger than max_offsite_age_hours: a warning, no alert
    assert "offsite" not in alert["message"]

    # the files for the page and for Prometheus
    result = json.loads((repo.root / "recovery_point.json").read_text())
    assert result["status"] == "failed" and [s["status"] for s in result["stores"]] == ["failed"]
    (offsite,) = [c for c in result["stores"][0]["checks"] if c["check"] == "offsite_age"]
    assert offsite["status"] == "late" and offsite["target"] == "s3"
    metrics = (tmp_path / "reports" / "metrics" / "dbops_recovery_point.prom").read_text()
    assert 'dbops_recovery_point_status{store="redis"} 2' in metrics
    assert 'dbops_recovery_point_check_status{check="backup_age",store="redis",series="redis",target=""} 2' in metrics

    # the page: live, the same verdict, with the reason; it also knows when the DAG judged
    client = page(config, monkeypatch)
    body = client.get("/api/recovery").json()
    (redis,) = body["stores"]
    assert redis["store"] == "redis" and redis["status"] == "failed"
    assert any("over recovery_point.max_backup_age_hours" in r for r in redis["reasons"]), redis["reasons"]
    assert body["dag"]["status"] == "failed" and body["dag"]["stale"] is False
    assert any(c["check"] == "nightly_run" and nightly.run_id in c["reason"] for c in redis["checks"])

    # a fresh backup: the age check is green on the page (other checks still judge the rest)
    redis_backup(repo, datetime.now(UTC) - timedelta(hours=1))
    body = client.get("/api/recovery").json()
    (age,) = [c for c in body["stores"][0]["checks"] if c["check"] == "backup_age"]
    assert age["status"] == "green" and age["age_s"] < 2 * 3600
    assert seconds < 60
