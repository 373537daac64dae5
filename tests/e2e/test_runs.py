"""What one nightly run starts and says, on a real Airflow (scheduler, executor, dag-processor):
its deadline alert reaches the webhook while the run is still running, it starts exactly one
offsite sync, a cleared task that made nothing new starts none, and its summary says so."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytestmark = pytest.mark.integration

DAG = "dbops_nightly_backup"
SYNC = "dbops_offsite_sync"


class _Webhook(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def webhook():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    server.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def airflow_extra_env(webhook) -> dict[str, str]:
    # The nightly schedule fires at 02:00; a deadline of 02:01 gives every run one minute.
    return {
        "DBOPS_SCHEDULES__NIGHTLY_DEADLINE": "02:01",
        "DBOPS_NOTIFY__WEBHOOK": "true",
        "AIRFLOW_CONN_DBOPS_ALERTS": json.dumps(
            {
                "conn_type": "http",
                "host": "127.0.0.1",
                "port": webhook.server_port,
                "schema": "http",
                "extra": {"endpoint": "/alert"},
            }
        ),
    }


def _wait(what: str, check, timeout: float = 300, every: float = 2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"not seen within {timeout}s: {what}")


def _xcom(api, dag_id: str, run_id: str, task_id: str, key: str = "return_value"):
    try:
        entry = api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    return entry["value"]


def _sync_runs(api) -> list[dict]:
    return api.call("GET", f"/dags/{SYNC}/dagRuns")["dag_runs"]


def test_deadline_alert_one_sync_per_run_and_the_summary(airflow_api, webhook):
    api = airflow_api
    pool = api.call("GET", "/pools/dbops_redis")
    # the Redis backup cannot start while its pool has no slot: the run is still running at its deadline
    body = {k: pool[k] for k in ("description", "include_deferred")}
    api.call("PATCH", "/pools/dbops_redis", {**body, "pool": "dbops_redis", "slots": 0})
    api.unpause(SYNC)
    api.unpause(DAG)  # the scheduler creates the run of the latest fire time (catchup is off)
    run = _wait("the scheduled nightly run", lambda: api.call("GET", f"/dags/{DAG}/dagRuns")["dag_runs"])[0]
    run_id = run["dag_run_id"]

    alert = _wait(
        "the deadline alert at the webhook",
        lambda: [b for b in webhook.received if b.get("outcome") == "deadline_missed"],
        timeout=240,
    )
    assert len(alert) == 1, webhook.received
    assert alert[0]["dag_id"] == DAG and alert[0]["run_id"] == run_id, alert
    assert "02:01 UTC" in alert[0]["message"] and "running" in alert[0]["message"], alert
    # it came while the run was still running (it cannot end: its Redis backup has no pool slot)
    assert api.call("GET", f"/dags/{DAG}/dagRuns/{run_id}")["state"] == "running"
    assert api.task_states(DAG, run_id)["backup_redis"] in ("scheduled", "queued", None)

    api.call("PATCH", "/pools/dbops_redis", {**body, "pool": "dbops_redis", "slots": pool["slots"]})
    api.wait_until_idle(DAG)
    states = api.task_states(DAG, run_id)
    assert api.call("GET", f"/dags/{DAG}/dagRuns/{run_id}")["state"] == "success", states
    assert states["backup_redis"] == states["backup_kafka"] == states["publish_backups"] == "success", states

    # two stores backed up, one Asset event, one sync run
    published = _xcom(api, DAG, run_id, "publish_backups")
    assert sorted(b.split("/")[0] for b in published["backups"]) == ["kafka", "redis"], published
    _wait("the offsite sync the run started", lambda: _sync_runs(api), timeout=120)
    time.sleep(20)  # a second sync would be queued by now
    syncs = _sync_runs(api)
    assert len(syncs) == 1 and syncs[0]["run_type"] == "asset_triggered", syncs

    summary = _xcom(api, DAG, run_id, "summary")
    assert summary.startswith(f"{DAG} scheduled run {run_id}:"), summary
    for line in (
        "backup_redis: redis: backup ",
        "backup_kafka: kafka: backup ",
        "retention_redis: redis: kept ",
        "publish_backups: 2 new backup(s) for the offsite sync",
    ):
        assert line in summary, summary
    assert "failed" not in summary, summary

    # a cleared backup that finds this run's backup made does nothing: no new event, no sync
    api.call(
        "POST",
        f"/dags/{DAG}/clearTaskInstances",
        {
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": ["backup_redis"],
            "only_failed": False,
            "include_downstream": True,
        },
    )
    _wait(
        "the cleared run to finish",
        lambda: (
            api.call("GET", f"/dags/{DAG}/dagRuns/{run_id}")["state"] == "success"
            and api.task_states(DAG, run_id).get("summary") == "success"
        ),
        timeout=300,
    )
    states = api.task_states(DAG, run_id)
    assert states["backup_redis"] == "success" and states["publish_backups"] == "skipped", states
    assert _xcom(api, DAG, run_id, "backup_redis")["reused"] is True
    time.sleep(20)
    assert len(_sync_runs(api)) == 1, _sync_runs(api)
    summary = _xcom(api, DAG, run_id, "summary")
    assert "publish_backups: skipped: this run's backups were already announced" in summary, summary
    # the deadline of the first try alerted once; the run ended in time after the clear
    assert len([b for b in webhook.received if b.get("outcome") == "deadline_missed"]) == 1, webhook.received


def test_a_task_of_a_run_before_its_deadline_can_be_cleared(airflow_api, webhook):
    """Clearing a task while the run's deadline is still ahead (the usual rerun of a failed nightly
    before 06:00) works: Airflow 3.3.2 fails that clear (HTTP 500) for deadlines counted from the
    queued time, so the deadline is counted from the logical date."""
    api = airflow_api
    pool = api.call("GET", "/pools/dbops_redis")
    body = {k: pool[k] for k in ("description", "include_deferred")}
    api.call("PATCH", "/pools/dbops_redis", {**body, "pool": "dbops_redis", "slots": 0})
    try:
        api.wait_until_idle(DAG)
        run = api.call(
            "POST",
            f"/dags/{DAG}/dagRuns",
            {"logical_date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "conf": {}},
        )
        run_id = run["dag_run_id"]
        _wait("its Kafka backup", lambda: api.task_states(DAG, run_id).get("backup_kafka") == "success", timeout=180)
        # the deadline (logical date + 1 min) is still ahead: the clear must be accepted
        cleared = api.call(
            "POST",
            f"/dags/{DAG}/clearTaskInstances",
            {
                "dry_run": False,
                "dag_run_id": run_id,
                "task_ids": ["backup_kafka"],
                "only_failed": False,
                "include_downstream": False,
            },
        )
        assert [ti["task_id"] for ti in cleared["task_instances"]] == ["backup_kafka"], cleared
    finally:
        api.call("PATCH", "/pools/dbops_redis", {**body, "pool": "dbops_redis", "slots": pool["slots"]})
    api.wait_until_idle(DAG)
    assert api.call("GET", f"/dags/{DAG}/dagRuns/{run_id}")["state"] == "success"
