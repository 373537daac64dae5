"""Disaster recovery as a user drives it from Airflow (REST API of a real Airflow with the
dbops DAGs, as the UI does), against the devstack stores and offsite targets (SeaweedFS S3,
sshd): a nightly backup shipped offsite, a pin, the DR drill restoring from S3 with its time
to recover, and the recovery-point check judging it all, each run green."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from dbops.backup.repository import BackupRepository
from tests.e2e.test_operations import _trigger, _xcom
from tests.offsite_support import empty_prefix, remote_dir, remove_remote

pytestmark = pytest.mark.integration

PREFIX = f"e2e-dr-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def offsite_places(devstack, tmp_path_factory):
    """A folder on the offsite host, an S3 prefix and a fetch folder of this module's own."""
    places = {"remote": remote_dir(devstack), "fetch": tmp_path_factory.mktemp("e2e-dr-fetch")}
    yield places
    remove_remote(places["remote"])
    s3 = devstack.service("s3")
    empty_prefix(s3.client(), s3.environment()["DBOPS_OFFSITE__S3_BUCKET"], PREFIX)
    shutil.rmtree(places["fetch"], ignore_errors=True)


@pytest.fixture(scope="module")
def airflow_extra_env(offsite_places):
    return {
        "DBOPS_OFFSITE__S3_PREFIX": PREFIX,
        "DBOPS_OFFSITE__RSYNC_REMOTE_DIR": str(offsite_places["remote"]),
        "DBOPS_OFFSITE__FETCH_DIR": str(offsite_places["fetch"]),
        "DBOPS_PITR__ENABLED": "false",  # this module drives the pg_dump-free stores (redis, kafka)
    }


def _ok(api, dag_id: str, conf: dict) -> dict:
    api.unpause(dag_id)
    run = _trigger(api, dag_id, conf)
    assert run["state"] == "success", (dag_id, api.task_states(dag_id, run["dag_run_id"]))
    return run


def test_backup_offsite_pin_dr_drill_and_recovery_check_from_the_ui(airflow_api, backup_root, offsite_places):
    api = airflow_api
    # the scheduled night (what the recovery check looks at), then the copies on both targets
    runs = api.unpause_and_settle("dbops_nightly_backup")
    assert [r["state"] for r in runs] == ["success"], runs
    api.unpause("dbops_offsite_sync")
    api.wait_until_idle("dbops_offsite_sync")  # the run the backup's Assets started, if any
    _ok(
        api,
        "dbops_offsite_sync",
        {
            "targets": ["rsync", "s3"],
            "stores": ["redis", "kafka"],
            "retention_days": 30,
            "min_keep": 3,
            "dry_run": False,
            "retention_dry_run": False,
            "deep_verify": False,
        },
    )
    redis = BackupRepository(backup_root).latest("redis")
    assert redis is not None

    run = _ok(
        api,
        "dbops_pin",
        {
            "store": "redis",
            "subject": "",
            "backup_id": redis.backup_id,
            "action": "pin",
            "reason": "before the schema migration",
        },
    )
    assert api.task_states("dbops_pin", run["dag_run_id"]) == {
        "plan": "success",
        "pin_local": "success",
        "pin_rsync": "success",
        "pin_s3": "success",
        "summary": "success",
    }
    pin = json.loads((redis.path / "pin.json").read_text())
    assert pin["pinned"] is True and pin["reason"] == "before the schema migration"

    run = _ok(api, "dbops_dr_drill", {"targets": ["s3"], "stores": ["redis", "kafka"]})
    summary = _xcom(api, "dbops_dr_drill", run["dag_run_id"], "summary", key="result")
    assert "DR drill from s3 of redis, kafka: passed" in _xcom(api, "dbops_dr_drill", run["dag_run_id"], "summary")
    assert summary["ok"] is True and summary["failures"] == []
    drilled = {(r["target"], r["series"]) for r in summary["rto"] if r["ok"]}
    assert drilled == {("s3", "redis"), ("s3", "kafka")}, summary["rto"]
    assert all(r["rto_s"] > 0 for r in summary["rto"]) and "redis" in summary["table"]
    assert not list(Path(offsite_places["fetch"]).rglob("manifest.json")), "fetched copies were left behind"

    run = _ok(api, "dbops_recovery_check", {})
    returned = _xcom(api, "dbops_recovery_check", run["dag_run_id"], "check_recovery_points")
    # fresh backups, copies on both targets, passed DR drills (the unpause also started the
    # scheduled DR drill, from both targets); the regular drill has not run yet, which a series
    # younger than its limit makes "late", not failed
    assert returned["stores"] == {"redis": "late", "kafka": "late"}, returned
    result = json.loads((backup_root / "recovery_point.json").read_text())
    by_check = {(c["check"], c["store"], c.get("target")): c["status"] for s in result["stores"] for c in s["checks"]}
    assert {k: v for k, v in by_check.items() if v != "green"} == {
        ("drill_age", "redis", None): "late",
        ("drill_age", "kafka", None): "late",
    }, result["problems"]
    assert by_check[("dr_drill_age", "redis", "s3")] == by_check[("dr_drill_age", "redis", "rsync")] == "green"
