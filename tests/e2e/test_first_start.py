"""The first start of ``make run`` on a fresh instance: a real Airflow with ``first_start=True``
(DAGs paused at creation; bootstrap, first backups and drills, then every DAG unpaused in order),
its own home, port, metadata database, backup repository and offsite places. The first page a
user sees after it (the Airflow home, in Debian's Chromium) shows no failed run; a restart
leaves the pause states alone; the shell environment file drives the same instance's CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import ARTIFACTS
from tests.offsite_support import empty_prefix, remote_dir, remove_remote

pytestmark = pytest.mark.integration

PORT = int(os.environ.get("DBOPS_E2E_FIRST_START_PORT", "58095"))
PREFIX = f"e2e-first-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def first_started(devstack, tmp_path_factory):
    """A fresh instance brought up with the first start (which raises if anything failed)."""
    from devstack.services.airflow import Airflow

    work = tmp_path_factory.mktemp("first-start")
    backups = work / "backups"
    backups.mkdir(mode=0o700)
    remote = remote_dir(devstack)
    s3 = devstack.service("s3")
    instance = Airflow(
        name=f"airflow-first-start-{PORT}",
        port=PORT,
        first_start=True,
        extra_env={
            "DBOPS_BACKUP__ROOT": str(backups),
            # the stores whose backups need no data of other tests; PITR streams into the
            # make-run repository only, so it is off here
            "DBOPS_BACKUP__STORES": '["redis", "kafka"]',
            "DBOPS_PITR__ENABLED": "false",
            "DBOPS_MONITOR__REPORTS_DIR": str(work / "reports"),
            "DBOPS_OFFSITE__S3_PREFIX": PREFIX,
            "DBOPS_OFFSITE__RSYNC_REMOTE_DIR": str(remote),
            "DBOPS_OFFSITE__FETCH_DIR": str(work / "fetch"),
        },
    )
    instance.stop()  # left over by an interrupted session
    shutil.rmtree(instance.dir, ignore_errors=True)
    instance.drop_database()
    try:
        instance.up()  # the first start runs inside; a failed step raises naming it
        yield instance
    finally:
        instance.stop()
        remove_remote(remote)
        empty_prefix(s3.client(), s3.environment()["DBOPS_OFFSITE__S3_BUCKET"], PREFIX)


def test_first_start_bootstraps_before_anything_fires_and_nothing_is_red(first_started, chromium):
    from devstack.core import load_secrets

    api = first_started.api()
    dags = api.call("GET", "/dags?limit=100")["dags"]
    assert len(dags) == len(list((Path(__file__).parents[2] / "dags").glob("dbops_*.py")))
    assert [d["dag_id"] for d in dags if d["is_paused"]] == []  # every DAG unpaused at the end
    failed = api.call("GET", "/dags/~/dagRuns?state=failed&limit=100")
    assert failed["total_entries"] == 0, [(r["dag_id"], r["dag_run_id"]) for r in failed["dag_runs"]]

    # the bootstrap finished before any other run started: nothing ran against empty stores
    runs = api.call("GET", "/dags/~/dagRuns?limit=200")["dag_runs"]
    (bootstrap,) = [r for r in runs if r["dag_id"] == "dbops_bootstrap"]
    others = [r for r in runs if r["dag_id"] != "dbops_bootstrap"]
    assert bootstrap["state"] == "success" and others
    assert all(r["start_date"] >= bootstrap["end_date"] for r in others), others
    nightly = [r for r in runs if r["dag_id"] == "dbops_nightly_backup"]
    assert [(r["run_type"], r["state"]) for r in nightly] == [("scheduled", "success")]
    checks = [r for r in runs if r["dag_id"] == "dbops_recovery_check"]
    assert checks and all(r["state"] == "success" for r in checks)
    assert "bootstrapped" in api.call("GET", "/variables/dbops_first_start")["value"]

    # the first page a user sees: no failed DAG, no failed run in the last 24 hours
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(f"{first_started.url()}/")
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill(load_secrets()["airflow_admin"])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{first_started.url()}/")
        page.get_by_text("Failed Dags").wait_for()
        page.get_by_text("Task Instances").first.wait_for()
        page.wait_for_timeout(2_000)  # the history counts load after the headings
        text = page.inner_text("body")
        page.screenshot(path=str(ARTIFACTS / "first-start-home.png"), full_page=True)
    finally:
        context.close()
    assert re.search(r"(\d+)\s*Failed Dags", text).group(1) == "0", text
    history = text.split("Dag Runs", 1)[1].split("Task Instances", 1)[0]
    assert re.search(r"(\d+)\s*Failed", history).group(1) == "0", history
    assert int(re.search(r"(\d+)\s*Success", history).group(1)) > 0  # the runs of the last 24 hours


def test_a_restart_does_not_redo_the_first_start(first_started):
    api = first_started.api()
    api.call("PATCH", "/dags/dbops_health", {"is_paused": True})  # an operator's choice
    bootstraps = len(api.runs("dbops_bootstrap"))
    first_started.stop()
    first_started.up()
    api = first_started.api()
    assert api.call("GET", "/dags/dbops_health")["is_paused"] is True
    assert len(api.runs("dbops_bootstrap")) == bootstraps
    api.call("PATCH", "/dags/dbops_health", {"is_paused": False})


def test_the_shell_env_file_drives_the_instance_cli(first_started, tmp_path):
    from devstack.__main__ import write_env_file

    env_file = Path(write_env_file(first_started, tmp_path / "airflow.env"))
    assert env_file.stat().st_mode & 0o777 == 0o600  # it holds secrets
    # a fresh shell with nothing but the source line (no virtualenv on PATH, no AIRFLOW_HOME)
    clean = {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/local/bin:/usr/bin:/bin"}

    def shell(command: str) -> str:
        done = subprocess.run(
            ["bash", "-c", f"source {env_file} && {command}"],
            env=clean,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    listed = json.loads(shell("airflow dags list -o json 2>/dev/null"))
    assert {d["dag_id"] for d in listed} >= {"dbops_bootstrap", "dbops_nightly_backup"}
    # the same metadata database as the instance: the first start's runs are there
    runs = json.loads(shell("airflow dags list-runs dbops_bootstrap -o json 2>/dev/null"))
    assert [r["state"] for r in runs] == ["success"]
    # README's backfill, as written: the scheduler of the instance takes the queued runs
    shell("airflow backfill create --dag-id dbops_table_size_monitor --from-date 2026-01-05 --to-date 2026-01-05")
    api = first_started.api()
    backfilled = [r for r in api.runs("dbops_table_size_monitor") if r["run_type"] == "backfill"]
    assert [r["logical_date"][:10] for r in backfilled] == ["2026-01-05"]
