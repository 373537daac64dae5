"""How users operate dbops, on a real Airflow: schedules, REST triggers with Params and XCom,
and `airflow backfill create` over three days for every scheduled DAG, each checked against
what its doc_md promises."""

from __future__ import annotations

import json
import subprocess
import urllib.error
from datetime import UTC, datetime, timedelta

import pytest

from dbops.backup.repository import BackupRepository
from tests.support import pg_connect

pytestmark = pytest.mark.integration

# (dag_id, cron fields of README.md's table of DAGs: minute, hour, weekday (Mon=0) or None for any)
SCHEDULED = {
    "dbops_nightly_backup": ("0 2 * * *", timedelta(days=1)),
    "dbops_pg_maintenance": ("0 3 * * 0", timedelta(days=7)),
    "dbops_table_size_monitor": ("0 0 * * *", timedelta(days=1)),
    "dbops_restore_drill": ("0 6 * * 6", timedelta(days=7)),
    "dbops_health": ("*/10 * * * *", timedelta(minutes=10)),
    "dbops_base_backup": ("30 1 * * *", timedelta(days=1)),
    "dbops_wal_check": ("*/15 * * * *", timedelta(minutes=15)),
    "dbops_recovery_check": ("*/30 * * * *", timedelta(minutes=30)),
    "dbops_dr_drill": ("0 7 1 * *", timedelta(days=31)),  # the day of the month is not checked below
}
MANUAL = ("dbops_bootstrap", "dbops_restore", "dbops_pin")

# 2026-01-03 is a Saturday: the window holds one drill (Sat 06:00), one maintenance (Sun 03:00),
# and three nightly/monitor fire times.
BACKFILL_FROM, BACKFILL_TO = "2026-01-03T00:00:00+00:00", "2026-01-06T00:00:00+00:00"


def _fires_at(moment: datetime, expression: str) -> bool:
    """Whether a UTC time matches a five-field cron line of the forms used above."""
    minute, hour, _, _, weekday = expression.split()
    ok = moment.second == 0
    ok &= moment.minute % int(minute[2:]) == 0 if minute.startswith("*/") else moment.minute == int(minute)
    ok &= hour == "*" or moment.hour == int(hour)
    ok &= weekday == "*" or moment.isoweekday() % 7 == int(weekday)
    return ok


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _backfill(api, dag_id: str, conf: dict | None = None) -> subprocess.CompletedProcess:
    """`airflow backfill create`, as a user runs it, with the instance's environment."""
    argv = [
        "airflow",
        "backfill",
        "create",
        "--dag-id",
        dag_id,
        "--from-date",
        BACKFILL_FROM,
        "--to-date",
        BACKFILL_TO,
    ]
    if conf is not None:
        argv += ["--dag-run-conf", json.dumps(conf)]
    return subprocess.run(argv, env=api.instance.env(), capture_output=True, text=True, timeout=300)


def _xcom(api, dag_id: str, run_id: str, task_id: str, key: str = "return_value"):
    entry = api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}")
    value = entry["value"]
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value  # a text (such as a run summary)
    return value


def _trigger(api, dag_id: str, conf: dict) -> dict:
    run = api.call("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": datetime.now(UTC).isoformat(), "conf": conf})
    api.wait_until_idle(dag_id)
    return api.call("GET", f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}")


@pytest.fixture(scope="module")
def bootstrapped(airflow_api):
    """The platform's schemas exist (bootstrap triggered through the REST API, idempotent)."""
    airflow_api.unpause("dbops_bootstrap")
    run = _trigger(airflow_api, "dbops_bootstrap", {})
    assert run["state"] == "success", airflow_api.task_states("dbops_bootstrap", run["dag_run_id"])
    return airflow_api


def test_next_run_times_are_those_of_the_design(airflow_api):
    now = datetime.now(UTC)
    for dag_id, (expression, period) in SCHEDULED.items():
        airflow_api.unpause(dag_id)  # waits until the dag-processor has it
        dag = airflow_api.call("GET", f"/dags/{dag_id}")
        assert dag["timetable_summary"] == expression, dag_id
        run_after = _parse(dag["next_dagrun_run_after"])
        assert _fires_at(run_after, expression), (dag_id, run_after)
        # catchup is off: the next run is the latest fire time not yet run, or the next one
        assert now - period <= run_after <= now + period, (dag_id, run_after, now)
        airflow_api.call("PATCH", f"/dags/{dag_id}", {"is_paused": True})
    for dag_id in MANUAL:
        dag = airflow_api.call("GET", f"/dags/{dag_id}")
        assert dag["timetable_summary"] is None and dag["next_dagrun_run_after"] is None, dag
    offsite = airflow_api.call("GET", "/dags/dbops_offsite_sync")
    assert offsite["next_dagrun_run_after"] is None and "Asset" in offsite["timetable_summary"], offsite


def test_rest_trigger_with_params_returns_summaries_matching_the_repository(airflow_api, backup_root):
    dag_id = "dbops_nightly_backup"
    airflow_api.unpause_and_settle(dag_id)
    run = _trigger(airflow_api, dag_id, {"stores": ["redis"], "retention_days": 30, "min_keep": 2})
    states = airflow_api.task_states(dag_id, run["dag_run_id"])
    assert run["state"] == "success", states
    assert states["backup_redis"] == "success" and states["backup_kafka"] == "skipped", states
    assert run["conf"]["min_keep"] == 2

    summary = _xcom(airflow_api, dag_id, run["dag_run_id"], "backup_redis")
    backup = BackupRepository(backup_root).find_by_run("redis", None, run["dag_run_id"], dag_id=dag_id)
    assert backup is not None and backup.verified
    assert summary["backup_id"] == backup.backup_id
    assert summary["total_bytes"] == backup.total_bytes > 0
    retention = _xcom(airflow_api, dag_id, run["dag_run_id"], "retention_redis")
    assert backup.backup_id in retention["series"][0]["kept"]
    airflow_api.call("PATCH", f"/dags/{dag_id}", {"is_paused": True})


def test_a_param_out_of_range_is_refused_at_trigger_time(airflow_api):
    with pytest.raises(urllib.error.HTTPError) as refused:
        airflow_api.call(
            "POST",
            "/dags/dbops_nightly_backup/dagRuns",
            {"logical_date": datetime.now(UTC).isoformat(), "conf": {"retention_days": 0}},
        )
    assert refused.value.code == 400
    assert "retention_days" in refused.value.read().decode()


def test_backfilled_monitor_runs_record_nothing(bootstrapped, devstack):
    api, dag_id = bootstrapped, "dbops_table_size_monitor"
    conn = devstack.conn("dbops_postgres")
    api.unpause_and_settle(dag_id)  # the scheduled run an unpause starts (it measures now)
    with pg_connect(conn, conn["schema"]) as db:
        before = db.execute("SELECT count(*), max(captured_at) FROM dbops.table_size_history").fetchone()

    created = _backfill(api, dag_id)
    assert created.returncode == 0, created.stderr
    runs = api.wait_for_runs(dag_id, "run_type=backfill", 3)
    for run in runs:
        states = api.task_states(dag_id, run["dag_run_id"])
        assert states == {
            "capture_sizes": "skipped",
            "size_report": "skipped",
            "check_thresholds": "skipped",
            "summary": "success",
        }, states
    with pg_connect(conn, conn["schema"]) as db:
        after = db.execute("SELECT count(*), max(captured_at) FROM dbops.table_size_history").fetchone()
    assert after == before  # nothing recorded under a date it was not measured at
    api.call("PATCH", f"/dags/{dag_id}", {"is_paused": True})


def test_a_backfilled_maintenance_run_does_todays_maintenance_once(bootstrapped, devstack):
    api, dag_id = bootstrapped, "dbops_pg_maintenance"
    conn = devstack.conn("dbops_postgres")
    api.unpause_and_settle(dag_id)
    started = datetime.now(UTC)

    created = _backfill(api, dag_id)
    assert created.returncode == 0, created.stderr
    runs = api.wait_for_runs(dag_id, "run_type=backfill", 1)
    assert len(runs) == 1 and _parse(runs[0]["logical_date"]) == datetime(2026, 1, 4, 3, tzinfo=UTC)
    assert runs[0]["state"] == "success", api.task_states(dag_id, runs[0]["dag_run_id"])
    with pg_connect(conn, conn["schema"]) as db:
        journal = db.execute(
            "SELECT min(started_at) FROM dbops.maintenance_report WHERE run_id = %s", (runs[0]["dag_run_id"],)
        ).fetchone()[0]
    # journalled under the real time it ran, not the backfilled Sunday
    assert journal is not None and journal >= started
    api.call("PATCH", f"/dags/{dag_id}", {"is_paused": True})


def test_a_backfilled_drill_drills_the_latest_backups_now(bootstrapped, backup_root):
    api, dag_id = bootstrapped, "dbops_restore_drill"
    repo = BackupRepository(backup_root)
    if repo.latest("redis") is None:  # the drill needs a backup to drill
        api.unpause("dbops_nightly_backup")
        assert _trigger(api, "dbops_nightly_backup", {"stores": ["redis"]})["state"] == "success"
        api.call("PATCH", "/dags/dbops_nightly_backup", {"is_paused": True})
    latest = BackupRepository(backup_root).latest("redis")

    api.unpause_and_settle(dag_id)
    created = _backfill(api, dag_id, {"stores": ["redis"]})
    assert created.returncode == 0, created.stderr
    runs = api.wait_for_runs(dag_id, "run_type=backfill", 1)
    assert len(runs) == 1 and _parse(runs[0]["logical_date"]) == datetime(2026, 1, 3, 6, tzinfo=UTC)
    assert runs[0]["state"] == "success", api.task_states(dag_id, runs[0]["dag_run_id"])
    planned = _xcom(api, dag_id, runs[0]["dag_run_id"], "plan")
    assert latest.backup_id in json.dumps(planned["backups"]), planned
    assert any("drills the latest backups now" in note for note in planned["notes"]), planned
    api.call("PATCH", f"/dags/{dag_id}", {"is_paused": True})


def test_health_refuses_backfills_and_offsite_has_none(airflow_api):
    refused = _backfill(airflow_api, "dbops_health")
    assert refused.returncode != 0
    assert "does not allow backfill" in refused.stdout + refused.stderr
    refused = _backfill(airflow_api, "dbops_offsite_sync")
    assert refused.returncode != 0
    assert "non-periodic schedule" in refused.stdout + refused.stderr
    for dag_id in ("dbops_health", "dbops_offsite_sync"):
        runs = airflow_api.call("GET", f"/dags/{dag_id}/dagRuns?run_type=backfill")["dag_runs"]
        assert runs == [], dag_id
