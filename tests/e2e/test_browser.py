"""A real browser (Debian's headless Chromium driven by Playwright) on a real Airflow:
log in, trigger ``dbops_bootstrap`` through its Params form, and read the DB Ops page.

Screenshots of every step go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import pytest

from dbops.backup.repository import BackupRepository
from dbops.config import PLATFORM_SCHEMAS
from dbops.maintenance import sizes
from dbops.migrations import MigrationRunner
from dbops.report import StoreReport
from dbops.stores.postgres.bootstrap import migrations
from tests.e2e.conftest import ARTIFACTS
from tests.support import pg_connect

pytestmark = pytest.mark.integration

STORES = ("redis", "kafka")  # what the airflow_api fixture backs up


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
    at = datetime.now(UTC) - timedelta(days=1, hours=1)
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
        now = datetime.now(UTC).isoformat()
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
        (s["store"], s["status"]) for s in recovery["stores"]
    ]
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
        # sizes are the backup's data as on disk; the manifest, description and results apart
        data = [
            sum(
                (b.path / f["path"]).stat().st_size
                for f in b.manifest["files"]
                if f["path"] != "source_description.json"
            )
            for b in backups
        ]
        folder = [sum(p.stat().st_size for p in b.path.rglob("*") if p.is_file()) for b in backups]
        assert rows.locator("td.bytes").all_inner_texts() == [str(n) for n in data]
        assert [b.data_bytes for b in backups] == data
        assert [b.sidecar_bytes for b in backups] == [f - d for f, d in zip(folder, data, strict=True)]
        assert rows.locator("td.verified").all_inner_texts() == ["yes" if b.verified else "no" for b in backups]
        latest = repo.latest(store)
        assert block.locator(".last-good-id").inner_text() == latest.backup_id
        # the JSON API says the same
        (series,) = by_store[store]["series"]
        assert [(b["backup_id"], b["data_bytes"], b["sidecar_bytes"], b["verified"]) for b in series["backups"]] == [
            (b.backup_id, b.data_bytes, b.sidecar_bytes, b.verified) for b in backups
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


def test_the_summary_of_a_backfilled_nightly_run_says_why_it_skipped(ui, airflow_api):
    dag = "dbops_nightly_backup"
    airflow_api.unpause_and_settle(dag)  # a backfill needs the DAG active; unpausing runs the latest fire time
    # (backfill dates mean midnight UTC: 03-10 to 03-11 covers the 02:00 run of the 10th; no other test uses it)
    airflow_api.call(
        "POST", "/backfills", {"dag_id": dag, "from_date": "2026-03-10T00:00:00Z", "to_date": "2026-03-11T00:00:00Z"}
    )
    runs = [
        r for r in airflow_api.wait_for_runs(dag, "run_type=backfill", 1) if r["logical_date"].startswith("2026-03-10")
    ]
    assert len(runs) == 1, runs
    run_id = runs[0]["dag_run_id"]
    assert airflow_api.task_states(dag, run_id)["summary"] == "success"

    # the summary task's return value, read in its XCom tab: no log group to open
    ui.goto(f"{airflow_api.base_url}/dags/{dag}/runs/{run_id}/tasks/summary/xcom")
    reason = ui.get_by_text(re.compile("a backfilled run cannot back up the past")).first
    reason.wait_for()
    shot(ui, "10-backfilled-run-summary")
    text = reason.inner_text()
    assert "plan: skipped: a backfilled run cannot back up the past" in text, text
    assert "Trigger with force=true" in text, text


# --------------------------------------------------------------------------- restore: form and approval

RESTORE = "dbops_restore"


def _set_variable(airflow_api, key: str, value: dict | None) -> None:
    import json
    import urllib.error

    try:
        airflow_api.call("DELETE", f"/variables/{key}")
    except (urllib.error.HTTPError, ValueError):  # absent (404), or deleted (204: no JSON body)
        pass
    if value is not None:
        airflow_api.call("POST", "/variables", {"key": key, "value": json.dumps(value)})


def _wait_for_state(airflow_api, dag_id: str, run_id: str, task_id: str, state: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = airflow_api.task_states(dag_id, run_id)
        if states.get(task_id) == state:
            return
        run = airflow_api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        assert run["state"] not in ("success", "failed"), (run["state"], states)
        time.sleep(2)
    states = airflow_api.task_states(dag_id, run_id)
    raise AssertionError(f"{task_id} of {run_id} not {state} within {timeout}s: {states}")


@pytest.fixture(scope="module")
def pg_backup(devstack, airflow_api):
    """A Postgres database backed up by the instance's own nightly backup, and a second one that
    exists for an overwrite to replace; both removed afterwards."""
    import uuid
    from types import SimpleNamespace

    from psycopg import sql

    conn = devstack.conn("dbops_postgres")
    tag = uuid.uuid4().hex[:8]
    src = SimpleNamespace(conn=conn, db=f"dbops_e2e_{tag}", occupied=f"dbops_e2e_{tag}_occupied")

    def drop_all() -> None:
        with pg_connect(conn, "postgres", autocommit=True) as admin:
            names = [
                r[0]
                for r in admin.execute(
                    "SELECT datname FROM pg_database WHERE datname LIKE %s", [f"dbops_e2e_{tag}%"]
                ).fetchall()
            ]
            for name in names:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    with pg_connect(conn, "postgres", autocommit=True) as admin:
        for name in (src.db, src.occupied):
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with pg_connect(conn, src.db) as c:
        c.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
        c.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 50) g")
        c.commit()
    with pg_connect(conn, src.occupied) as c:
        c.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        c.execute("INSERT INTO notes VALUES (1, 'there before the restore')")
        c.commit()
    try:
        _set_variable(airflow_api, "dbops_config", {"postgres": {"databases": [src.db]}})
        dag = "dbops_nightly_backup"
        airflow_api.unpause_and_settle(dag)
        run = airflow_api.call(
            "POST",
            f"/dags/{dag}/dagRuns",
            {"logical_date": datetime.now(UTC).isoformat(), "conf": {"stores": ["postgres"]}},
        )
        finished = wait_for_run(airflow_api, dag, run["dag_run_id"])
        assert finished["state"] == "success", airflow_api.task_states(dag, run["dag_run_id"])
        airflow_api.unpause(RESTORE)
        yield src
    finally:
        _set_variable(airflow_api, "dbops_config", None)
        drop_all()


def _restore_run(airflow_api, src, target: str) -> str:
    conf = {"store": "postgres", "database": src.db, "target": target, "confirm_overwrite": target}
    run = airflow_api.call(
        "POST", f"/dags/{RESTORE}/dagRuns", {"logical_date": datetime.now(UTC).isoformat(), "conf": conf}
    )
    return run["dag_run_id"]


def _rows(src, database: str, table: str) -> list[tuple]:
    with pg_connect(src.conn, database) as c:
        return c.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


def _names(src) -> list[str]:
    with pg_connect(src.conn, "postgres") as c:
        return [
            r[0]
            for r in c.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", [f"{src.db}%"]
            ).fetchall()
        ]


def test_the_restore_form_triggers_with_its_defaults(ui, airflow_api, pg_backup):
    ui.goto(f"{airflow_api.base_url}/dags/{RESTORE}")
    ui.get_by_role("button", name="Trigger").first.click()
    form = ui.get_by_role("dialog")
    form.get_by_text("Run Parameters").wait_for()
    shot(ui, "20-restore-form-defaults")
    before = {r["dag_run_id"] for r in airflow_api.call("GET", f"/dags/{RESTORE}/dagRuns")["dag_runs"]}
    submit = form.get_by_role("button", name="Trigger")
    assert submit.is_enabled(), "the Trigger button of the restore form is disabled with the form's own defaults"
    submit.click()

    runs: list[dict] = []
    deadline = time.monotonic() + 60
    while not runs and time.monotonic() < deadline:
        runs = [
            r for r in airflow_api.call("GET", f"/dags/{RESTORE}/dagRuns")["dag_runs"] if r["dag_run_id"] not in before
        ]
        time.sleep(1)
    assert len(runs) == 1, runs
    conf = runs[0]["conf"]
    # the optional Params arrive empty: database = the connection's, target = <db>_restored_<id>
    assert conf["store"] == "postgres" and conf["backup_id"] == "latest", conf
    assert not conf.get("target") and not conf.get("confirm_overwrite") and not conf.get("database"), conf
    run_id = runs[0]["dag_run_id"]
    finished = wait_for_run(airflow_api, RESTORE, run_id)  # one run at a time: let it end
    states = airflow_api.task_states(RESTORE, run_id)
    assert states["plan"] in ("success", "failed") and finished["state"] in ("success", "failed"), states
    assert states.get("approve") != "awaiting_input", states  # a new database: nobody is asked
    if states.get("restore_postgres") == "success":  # the new <db>_restored_<id>: not kept after the test
        from psycopg import sql

        entry = airflow_api.call(
            "GET",
            f"/dags/{RESTORE}/dagRuns/{run_id}/taskInstances/restore_postgres/"
            "xcomEntries/return_value?deserialize=true",
        )
        value = entry["value"]
        if isinstance(value, str):  # the API may give the value as its text
            import ast

            value = ast.literal_eval(value)
        target = value["target"]
        assert "_restored_" in target, target
        with pg_connect(pg_backup.conn, "postgres", autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target)))


# A person reads the plan before answering. Answered sooner, Airflow 3.3 can drop the answer: its
# scheduler takes a task resumed before it has seen the parked try's worker end (up to about
# [workers] min_heartbeat_interval, 5 s, later) for one killed externally, and retries it (fixed in
# Airflow 3.4). dbops then asks again (docs/restore.md); a test answering at machine speed would only
# measure that race.
READING_TIME = 10.0


def _answer_each_ask(airflow_api, run_id: str, answer, timeout: float = 300) -> tuple[dict, list[dict]]:
    """Answer the run's approval each time it asks, as a person does (after READING_TIME), until the
    run ends; return the finished run and the requests answered (each try's HITL detail, with its
    ``try_number``). A later try asks again, pending again: it is answered again."""
    answered: list[dict] = []
    pending_since: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ti = airflow_api.call("GET", f"/dags/{RESTORE}/dagRuns/{run_id}/taskInstances/approve")
        tried = ti["try_number"]
        if ti["state"] == "awaiting_input" and tried not in {a["try_number"] for a in answered}:
            if time.monotonic() - pending_since.setdefault(tried, time.monotonic()) >= READING_TIME:
                detail = airflow_api.call(
                    "GET", f"/dags/{RESTORE}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails"
                )
                assert not detail["response_received"], detail  # pending: an earlier answer is never carried over
                answer(tried)
                answered.append({**detail, "try_number": tried})
        run = airflow_api.call("GET", f"/dags/{RESTORE}/dagRuns/{run_id}")
        if run["state"] in ("success", "failed"):
            return run, answered
        time.sleep(1)
    states = airflow_api.task_states(RESTORE, run_id)
    raise AssertionError(f"{RESTORE} run {run_id} not finished within {timeout}s (answered {answered}): {states}")


def _reply(airflow_api, run_id: str, choice: str):
    def answer(try_number: int) -> None:
        airflow_api.call(
            "PATCH",
            f"/dags/{RESTORE}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails",
            {"chosen_options": [choice], "params_input": {}},
        )

    return answer


def test_an_overwrite_restore_waits_for_an_approval_given_in_the_ui(ui, airflow_api, pg_backup):
    src = pg_backup
    run_id = _restore_run(airflow_api, src, src.occupied)
    _wait_for_state(airflow_api, RESTORE, run_id, "approve", "awaiting_input")
    assert _rows(src, src.occupied, "notes") == [(1, "there before the restore")]  # nothing done while it waits

    # the run's required action, in the UI: the plan shown, approved by a click
    def approve_in_the_ui(try_number: int) -> None:
        ui.goto(f"{airflow_api.base_url}/dags/{RESTORE}/runs/{run_id}/tasks/approve/required_actions")
        ui.get_by_text(re.compile(f"Restore over {src.occupied}")).first.wait_for()
        ui.get_by_text("Sessions that end").first.wait_for()
        shot(ui, f"21-restore-waits-for-approval-try-{try_number}")
        ui.get_by_role("button", name="Approve", exact=True).click()

    finished, _ = _answer_each_ask(airflow_api, run_id, approve_in_the_ui)
    states = airflow_api.task_states(RESTORE, run_id)
    assert finished["state"] == "success" and states["restore_postgres"] == "success", states
    detail = airflow_api.call("GET", f"/dags/{RESTORE}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails")
    assert detail["chosen_options"] == ["Approve"] and detail["responded_by_user"]["name"] == "admin", detail
    assert _rows(src, src.occupied, "items") == _rows(src, src.db, "items")  # replaced by the backup
    aside = [n for n in _names(src) if n.startswith(f"{src.occupied}_dbops_old_")]
    assert len(aside) == 1 and _rows(src, aside[0], "notes") == [(1, "there before the restore")]  # kept
    ui.goto(f"{airflow_api.base_url}/dags/{RESTORE}/runs/{run_id}")
    ui.get_by_text(re.compile("^success$", re.I)).first.wait_for()
    shot(ui, "22-approved-restore-ran")


def test_a_rejected_overwrite_restore_changes_nothing_and_a_cleared_approval_asks_again(ui, airflow_api, pg_backup):
    from psycopg import sql

    src = pg_backup
    other = f"{src.db}_other"  # another database that exists, never restored into
    with pg_connect(src.conn, "postgres", autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(other)))
    with pg_connect(src.conn, other) as c:
        c.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
        c.execute("INSERT INTO items VALUES (1, 'there before the rejected restore')")
        c.commit()
    rows, names = _rows(src, other, "items"), _names(src)
    run_id = _restore_run(airflow_api, src, other)
    finished, answered = _answer_each_ask(airflow_api, run_id, _reply(airflow_api, run_id, "Reject"))
    states = airflow_api.task_states(RESTORE, run_id)
    assert finished["state"] == "success", states  # a rejection is an answer, not a failure
    assert states["approve"] == "success" and states["restore_postgres"] == "skipped", states
    assert _rows(src, other, "items") == rows and _names(src) == names  # nothing restored, nothing set aside
    ui.goto(f"{airflow_api.base_url}/dags/{RESTORE}/runs/{run_id}")
    ui.get_by_text(re.compile("^success$", re.I)).first.wait_for()
    shot(ui, "23-rejected-restore-changed-nothing")

    # cleared, the approval asks again (an earlier answer is never carried over), and says so
    airflow_api.call(
        "POST",
        f"/dags/{RESTORE}/clearTaskInstances",
        {
            "dry_run": False,
            "only_failed": False,
            "dag_run_id": run_id,
            "task_ids": ["approve"],
            "include_downstream": True,
        },
    )
    finished, asked_again = _answer_each_ask(airflow_api, run_id, _reply(airflow_api, run_id, "Reject"))
    assert asked_again and asked_again[0]["try_number"] > answered[-1]["try_number"], (answered, asked_again)
    assert f"Restore over {other}" in asked_again[0]["subject"], asked_again
    try_number = asked_again[0]["try_number"]
    log = airflow_api.call(
        "GET", f"/dags/{RESTORE}/dagRuns/{run_id}/taskInstances/approve/logs/{try_number}?full_content=true"
    )
    assert f"asked again (try {try_number})" in str(log), log
    states = airflow_api.task_states(RESTORE, run_id)
    assert finished["state"] == "success" and states["restore_postgres"] == "skipped", states
    assert _rows(src, other, "items") == rows and _names(src) == names
