"""A real Airflow (``airflow standalone``: scheduler, dag-processor, API server, LocalExecutor)
with the dbops DAGs and the local stores, on its own port, home and metadata database (on the
local PostgreSQL), for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import tests.stack_env  # noqa: F401  (the local stack's connections and DBOPS_* settings)
from devstack.services.airflow import AirflowClient


class AirflowAPI(AirflowClient):
    """The instance's REST API as the admin user, with the waits the end-to-end tests share."""

    def unpause(self, dag_id: str, timeout: float = 120) -> None:
        """Wait until the dag-processor has the DAG, then unpause it (new DAGs start paused)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})
                return
            except urllib.error.HTTPError:
                time.sleep(2)
        raise AssertionError(f"{dag_id} not parsed by the dag-processor within {timeout}s")

    def unpause_and_settle(self, dag_id: str, timeout: float = 600) -> list[dict]:
        """Unpause a scheduled DAG and wait until the run the unpause starts has finished.

        With ``catchup=False`` and a ``start_date`` in the past the scheduler creates a run for
        the latest fire time, but only on its next loop: right after the PATCH there may be
        no run yet, so waiting for "no unfinished runs" alone would return too early.
        """
        self.unpause(dag_id)
        self.wait_for_runs(dag_id, "run_type=scheduled", 1, timeout=timeout)
        return self.wait_until_idle(dag_id, timeout=timeout)

    def wait_until_idle(self, dag_id: str, timeout: float = 300) -> list[dict]:
        """Every run of the DAG finished (e.g. the scheduled run an unpause starts)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.call("GET", f"/dags/{dag_id}/dagRuns")["dag_runs"]
            if all(r["state"] in ("success", "failed") for r in runs):
                return runs
            time.sleep(3)
        raise AssertionError(f"{dag_id} still has unfinished runs after {timeout}s")

    def wait_for_runs(self, dag_id: str, query: str, count: int, timeout: float = 300) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.call("GET", f"/dags/{dag_id}/dagRuns?{query}")["dag_runs"]
            if len(runs) >= count and all(r["state"] in ("success", "failed") for r in runs):
                return runs
            time.sleep(3)
        raise AssertionError(f"{dag_id}: {count} finished runs ({query}) not seen within {timeout}s")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        tis = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=200")["task_instances"]
        return {t["task_id"] if t["map_index"] < 0 else f"{t['task_id']}[{t['map_index']}]": t["state"] for t in tis}


@pytest.fixture(scope="module")
def backup_root(module_backup_root):
    """Here the module's: the tests of a module share its Airflow, which reads the root at start."""
    return module_backup_root


# One port per concurrent test session (default 58090); the instance's folder follows it.
E2E_PORT = int(os.environ.get("DBOPS_E2E_AIRFLOW_PORT", "58090"))


@pytest.fixture(scope="module")
def airflow_extra_env() -> dict[str, str]:
    """More environment for the module's Airflow (a module overrides this fixture)."""
    return {}


@pytest.fixture(scope="module")
def airflow_api(devstack, backup_root, airflow_extra_env):
    from devstack.core import load_secrets
    from devstack.services.airflow import Airflow

    # DAGs start paused: a test unpauses only what it drives (no offsite copies of test data).
    # Backups default to the stores that need no bootstrapped data, so the scheduled run an
    # unpause starts does not depend on which other tests ran first.
    instance = Airflow(
        name="airflow-e2e" if E2E_PORT == 58090 else f"airflow-e2e-{E2E_PORT}",
        port=E2E_PORT,
        extra_env={
            "DBOPS_BACKUP__ROOT": str(backup_root),
            "DBOPS_BACKUP__STORES": '["redis", "kafka"]',
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            **airflow_extra_env,
        },
    )
    instance.stop()  # left over by an interrupted session
    shutil.rmtree(instance.dir, ignore_errors=True)  # a fresh home and metadata DB every time
    instance.drop_database()
    try:
        instance.up()
        api = AirflowAPI(instance.url(), load_secrets()["airflow_admin"])
        api.instance = instance  # for the CLI (`airflow backfill create`) with the same environment
        yield api
    finally:
        instance.stop()


ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def chromium():
    """Debian's chromium (installed when missing), never a downloaded browser."""
    from playwright.sync_api import sync_playwright

    from devstack.core import apt_install

    apt_install("chromium")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
