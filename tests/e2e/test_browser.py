"""A real browser (Debian's headless Chromium driven by Playwright) on a real Airflow:
log in, trigger ``dbops_bootstrap`` through its Params form, and read the DB Ops page.

Screenshots of every step go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dbops.backup.repository import BackupRepository
from dbops.config import PLATFORM_SCHEMAS
from dbops.maintenance import sizes
from dbops.migrations import MigrationRunner
from dbops.report import StoreReport
from dbops.stores.postgres.bootstrap import migrations
from tests.support import pg_connect

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
STORES = ("redis", "kafka")  # what the airflow_api fixture backs up


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


@pytest.fixture
def ui(chromium, airflow_api):
    """A page logged into the Airflow UI through its login form."""
    from devstack.core import load_secrets

    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{airflow_api.base_url}/")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(load_secrets()["airflow_admin"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{airflow_api.base_url}/")
    try:
        yield page
    finally:
        context.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def wait_for_run(airflow_api, dag_id: str, run_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = airflow_api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        if run["state"] in ("success", "failed"):
            return run
        time.sleep(3)
    raise AssertionError(f"{dag_id} run {run_id} not finished within {timeout}s")


def test_trigger_bootstrap_through_the_params_form(ui, airflow_api):
    dag = "dbops_bootstrap"
    airflow_api.unpause(dag)  # waits until the dag-processor has it; a manual DAG starts no run
    ui.goto(f"{airflow_api.base_url}/dags/{dag}")
    trigger = ui.get_by_role("button", name="Trigger").first
    trigger.click()
    form = ui.get_by_role("dialog")
    form.get_by_text("Run Parameters").wait_for()
    shot(ui, "01-trigger-form")

    # Params through the form: only the stores that need no other store, as a dry run
    form.locator("textarea").first.fill("redis\nkafka")
    dry_run = form.locator("input[name='element_dry_run']")
    dry_run.locator("xpath=..").click()  # the switch: its input is visually hidden
    assert dry_run.is_checked()
    shot(ui, "02-params-set")
    form.get_by_role("button", name="Trigger").click()

    runs: list[dict] = []
    deadline = time.monotonic() + 60
    while not runs and time.monotonic() < deadline:
        runs = airflow_api.call("GET", f"/dags/{dag}/dagRuns")["dag_runs"]
        time.sleep(1)
    assert len(runs) == 1, runs
    run = runs[0]
    assert run["conf"]["dry_run"] is True and run["conf"]["stores"] == ["redis", "kafka"], run["conf"]
    assert run["conf"]["apply_redis_settings"] is False

    finished = wait_for_run(airflow_api, dag, run["dag_run_id"])
    states = airflow_api.task_states(dag, run["dag_run_id"])
    assert finished["state"] == "success", states
    assert states["bootstrap_redis"] == "success" and states["bootstrap_postgres"] == "skipped", states

    # the UI shows the run as a success
    ui.goto(f"{airflow_api.base_url}/dags/{dag}/runs/{run['dag_run_id']}")
    ui.get_by_text(re.compile("^success$", re.I)).first.wait_for()
    shot(ui, "03-run-success")


@pytest.fixture
def past_capture(devstack):
    """One table-size capture labelled a day ago (sizes measured now), through the
    monitor's own recording code, so growth over a day exists; removed afterwards.
    The platform schema is migrated first, as bootstrap does (a fresh stack has none)."""
    conn_info = devstack.conn("dbops_postgres")
    at = datetime.now(timezone.utc) - timedelta(days=1, hours=1)
    with pg_connect(conn_info) as conn:
        MigrationRunner(conn, migrations()).run(StoreReport("postgres"))
        captured_at, count = sizes.capture(conn, PLATFORM_SCHEMAS, captured_at=at)
    assert count > 0
    try:
        yield captured_at
    finally:
        with pg_connect(conn_info) as conn:
            conn.execute("DELETE FROM dbops.table_size_history WHERE captured_at = %s", (captured_at,))


def test_db_ops_page_shows_the_catalog(ui, airflow_api, backup_root, past_capture):
    # real data: the scheduled nightly backup the unpause starts, one more triggered run,
    # and a real table-size monitor run
    for dag in ("dbops_nightly_backup", "dbops_table_size_monitor"):
        airflow_api.unpause_and_settle(dag)
        now = datetime.now(timezone.utc).isoformat()
        run = airflow_api.call("POST", f"/dags/{dag}/dagRuns", {"logical_date": now})
        finished = wait_for_run(airflow_api, dag, run["dag_run_id"])
        assert finished["state"] == "success", airflow_api.task_states(dag, run["dag_run_id"])

    repo = BackupRepository(backup_root)
    assert all(len(repo.list(store)) >= 2 for store in STORES), {s: repo.list(s) for s in STORES}

    # the nav link opens the page inside the UI
    ui.goto(f"{airflow_api.base_url}/")
    ui.get_by_role("link", name="DB Ops").click()
    ui.wait_for_url(re.compile(r"/plugin/dbops"))
    frame = ui.frame_locator("iframe")
    for part in ("overview", "offsite", "sizes", "pitr", "recovery"):
        frame.locator(f"body[data-{part}='loaded']").wait_for()
    shot(ui, "04-db-ops-page-in-the-ui")

    # recovery points at the top: one badge per store, as api/recovery judges it now
    recovery = ui.context.request.get(f"{airflow_api.base_url}/dbops/api/recovery").json()
    shown = frame.locator("#recovery .recovery-store")
    assert [(b.get_attribute("data-store"), b.get_attribute("data-status")) for b in shown.all()] == [
        (s["store"], s["status"]) for s in recovery["stores"]]
    for store in STORES:  # backed up just now: their backup age is green whatever else is judged
        ages = [c for s in recovery["stores"] if s["store"] == store for c in s["checks"] if c["check"] == "backup_age"]
        assert ages and all(c["status"] == "green" for c in ages), ages

    api = ui.context.request
    overview = api.get(f"{airflow_api.base_url}/dbops/api/overview").json()
    by_store = {s["store"]: s for s in overview["stores"]}
    for store in STORES:
        backups = list(reversed(repo.list(store)))  # newest first, as the page lists them
        block = frame.locator(f".store[data-store='{store}']")
        rows = block.locator("tr[data-backup-id]")
        assert block.locator(".count").inner_text() == str(len(backups))
        assert rows.locator("td.backup-id").all_inner_texts() == [b.backup_id for b in backups]
        assert rows.locator("td.bytes").all_inner_texts() == [str(b.total_bytes) for b in backups]
        assert rows.locator("td.verified").all_inner_texts() == ["yes" if b.verified else "no" for b in backups]
        latest = repo.latest(store)
        assert block.locator(".last-good-id").inner_text() == latest.backup_id
        # the JSON API says the same
        (series,) = by_store[store]["series"]
        assert [(b["backup_id"], b["total_bytes"], b["verified"]) for b in series["backups"]] == [
            (b.backup_id, b.total_bytes, b.verified) for b in backups
        ]
        assert series["last_good"]["backup_id"] == latest.backup_id
        assert series["retention"]["would_delete"] == []  # all younger than 30 days
    # a store not backed up here says so instead of failing
    assert "postgres" not in by_store or by_store["postgres"]["status"] in ("ok", "no backup yet")

    # table sizes: the monitor's capture and the past one are points; growth over a day is known
    chart = api.get(f"{airflow_api.base_url}/dbops/api/table-sizes").json()
    assert chart["error"] is None and chart["tables"], chart
    top = chart["tables"][0]
    times = [p[0] for p in top["points"]]
    assert past_capture.isoformat().replace("+00:00", "Z") in times and len(times) >= 2
    assert top["growth_1d"] is not None
    assert frame.locator("svg polyline").count() == len(chart["tables"])
    growth_rows = frame.locator("table.growth tr[data-table]")
    assert growth_rows.count() == len(chart["tables"])
    assert growth_rows.first.get_attribute("data-table") == top["table"]
    assert growth_rows.first.locator(".captures").inner_text() == str(len(top["points"]))
    assert growth_rows.first.locator(".growth-1d").inner_text().endswith("/day")

    # point-in-time recovery: the page shows what api/pitr says (whatever state the stack's
    # receiver and WAL check are in), each part in a state it names
    pitr = api.get(f"{airflow_api.base_url}/dbops/api/pitr").json()
    assert pitr["error"] is None, pitr
    section = frame.locator("#pitr")
    if not pitr["enabled"]:
        assert section.locator(".pitr-off").inner_text() == pitr["message"]
    else:
        assert section.locator(".receiver-state").inner_text() == pitr["receiver"]["state"]
        assert section.locator(".check").get_attribute("data-status") == pitr["last_check"]["status"]
        assert section.locator(".window").get_attribute("data-proven") == str(pitr["window"]["proven"]).lower()
        rows = section.locator("table.base-backups tr[data-backup-id]")
        assert rows.locator("td.backup-id").all_inner_texts() == [b["backup_id"] for b in pitr["base_backups"]]
        if not pitr["base_backups"]:
            assert section.locator(".no-base-backup").inner_text() == pitr["base_backups_status"]

    # the maintenance part shows the API's latest run (or says there is none), never an error box
    if overview["maintenance"] is not None:
        assert frame.locator("#maintenance-report .run-id").inner_text() == overview["maintenance"]["run_id"]
    assert overview["maintenance_error"] is None
    assert frame.locator(".error").count() == 0, frame.locator(".error").all_inner_texts()

    # the page on its own, whole (the README screenshot)
    ui.goto(f"{airflow_api.base_url}/dbops/")
    ui.locator("body[data-offsite='loaded'][data-sizes='loaded']").wait_for()
    shot(ui, "05-db-ops-page")


def test_db_ops_page_and_api_need_the_airflow_login(chromium, airflow_api):
    context = chromium.new_context()
    try:
        for api in ("overview", "pitr"):
            response = context.request.get(f"{airflow_api.base_url}/dbops/api/{api}")
            assert response.status == 401, api
        page = context.new_page()
        page.goto(f"{airflow_api.base_url}/dbops/")
        assert "/auth/login" in page.url
    finally:
        context.close()
