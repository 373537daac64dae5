"""Airflow itself (``airflow standalone``) with the dbops DAGs, against the local stores.

The metadata database is a database of the local PostgreSQL (``airflow_<name>``), as in
production: with SQLite, a CLI command such as ``airflow backfill create`` fails with
"database is locked" while the scheduler writes.

First start (``first_start=True``, the ``make run`` instance): the DAGs are created paused and
stay paused until the platform is bootstrapped and has its first backups, so no scheduled run
fires against empty databases or fails in red on the first login (see :class:`FirstStart`).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from urllib.parse import quote

from devstack.core import (
    REPO,
    VENV_BIN,
    DevstackError,
    Process,
    Service,
    load_secrets,
    log,
    secret,
    state_dir,
    wait_until,
    write_private,
)

POOLS_FILE = REPO / "include" / "airflow" / "pools.json"


class Airflow(Service):
    name = "airflow"
    port = 58080

    def __init__(
        self,
        name: str = "airflow",
        port: int = 58080,
        extra_env: dict[str, str] | None = None,
        first_start: bool = False,
    ) -> None:
        """A second instance (own name, home, port) serves end-to-end tests beside ``make run``.

        ``first_start``: DAGs paused at creation, then bootstrap, first backups and unpause in
        order, once per metadata database (:class:`FirstStart`)."""
        self.name, self.port = name, port
        self.extra_env = extra_env or {}
        self.first_start = first_start
        super().__init__()
        self.process = Process(self.dir, "standalone", marker="airflow standalone")
        self.home = self.dir / "home"
        self.database = "airflow_" + name.replace("-", "_")

    def env(self) -> dict[str, str]:
        """The environment of every Airflow process: connections, dbops config, settings."""
        from devstack.__main__ import stack_environment

        passwords = write_private(self.dir / "passwords.json", json.dumps({"admin": secret("airflow_admin")}))
        env = dict(os.environ)
        env.update(stack_environment())
        env.update(
            {
                "PATH": f"{state_dir() / 'bin'}:{VENV_BIN}:{env.get('PATH', '')}",
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.port}",
                "AIRFLOW__API_AUTH__JWT_SECRET": secret("airflow_jwt") * 3,
                "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database_url(),
            }
        )
        if self.first_start:
            env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] = "True"
        env.update(self.extra_env)
        return env

    def running(self) -> bool:
        return self.process.running()

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.port}/api/v2/monitor/health"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def database_url(self) -> str:
        login = _postgres_login()
        return (
            f"postgresql+psycopg2://{quote(login['login'], safe='')}:{quote(login['password'], safe='')}"
            f"@{login['host']}:{login['port']}/{self.database}"
        )

    def create_database(self) -> None:
        with _postgres_admin() as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone():
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def drop_database(self) -> None:
        """Forget every run, connection and setting of this instance (tests start fresh)."""
        with _postgres_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.create_database()
        env = self.env()
        self.process.spawn([str(VENV_BIN / "airflow"), "standalone"], env=env, cwd=self.dir)
        wait_until(self.ready, timeout=180, what="Airflow API server")
        subprocess.run(
            [str(VENV_BIN / "airflow"), "pools", "import", str(POOLS_FILE)],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def up(self) -> None:
        super().up()
        # also after a restart or a failed first start: FirstStart does nothing once it succeeded
        if self.first_start:
            FirstStart(self).run()

    def api(self) -> AirflowClient:
        return AirflowClient(self.url(), load_secrets()["airflow_admin"])

    def stop(self) -> None:
        self.process.stop(timeout=60)

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class AirflowClient:
    """The REST API of one instance (``/api/v2``), as the admin user."""

    def __init__(self, base_url: str, password: str) -> None:
        self.base_url = base_url
        body = json.dumps({"username": "admin", "password": password}).encode()
        request = urllib.request.Request(
            f"{base_url}/auth/token", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            self.token = json.load(resp)["access_token"]

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"{self.base_url}/api/v2{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            return json.load(resp)

    def runs(self, dag_id: str, query: str = "") -> list[dict]:
        return self.call("GET", f"/dags/{dag_id}/dagRuns?limit=100&{query}")["dag_runs"]


# The order of the first start: each DAG is unpaused only when what its runs need exists.
# (dag_id, wait): wait for the scheduled run the unpause starts (catchup=False: the latest fire
# time) and for every run it leads to; a failure stops the sequence, the rest stays paused.
FIRST_START_ORDER: list[tuple[str, bool]] = [
    # PITR: the first base backup, so the WAL check has a chain to check
    ("dbops_base_backup", True),
    # asset-scheduled: unpaused before the first nightly run, which it then follows
    ("dbops_offsite_sync", False),
    ("dbops_nightly_backup", True),
    ("dbops_wal_check", True),
    ("dbops_restore_drill", True),
    ("dbops_dr_drill", True),
    ("dbops_health", True),
    ("dbops_table_size_monitor", True),
    ("dbops_pg_maintenance", True),
    ("dbops_pin", False),
    ("dbops_restore", False),
    # last: it judges everything above
    ("dbops_recovery_check", True),
]
BOOTSTRAP_DAG = "dbops_bootstrap"
# an Airflow Variable in the instance's metadata DB: set once the first start succeeded
DONE_VARIABLE = "dbops_first_start"


class FirstStart:
    """Bootstrap the platform before any scheduled DAG can fire, once per metadata database.

    With every DAG paused at creation: wait until the dag-processor has all DAG files (no
    import error), run ``dbops_bootstrap`` and wait for its success, then unpause the other
    DAGs in :data:`FIRST_START_ORDER`, waiting for the run each unpause starts (the first base
    backup, the first nightly backup and its offsite copy, the first drills, ...), the recovery
    check last. Anything failed: the rest stays paused, :class:`DevstackError` names it. Done:
    the Variable ``dbops_first_start`` records it, a restart leaves the pause state alone.
    """

    def __init__(self, airflow: Airflow, timeout_per_dag: float = 1800) -> None:
        self.airflow = airflow
        self.timeout = timeout_per_dag
        self.client = airflow.api()
        self.done: list[str] = []

    def say(self, message: str) -> None:
        log(f"{self.airflow.name} first start: {message}")

    def already_done(self) -> str | None:
        try:
            return self.client.call("GET", f"/variables/{DONE_VARIABLE}")["value"]
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def run(self) -> list[str]:
        done = self.already_done()
        if done:
            self.say(f"already done ({done}); pause states left as they are")
            return []
        expected = sorted(p.stem for p in (REPO / "dags").glob("dbops_*.py"))
        self.wait_for_dags(expected)
        self.unpause(BOOTSTRAP_DAG)
        ok = self.client.runs(BOOTSTRAP_DAG, "state=success")
        if not ok:  # an earlier first start may have bootstrapped before a later step failed
            run = self.trigger(BOOTSTRAP_DAG)
            self.say(f"{BOOTSTRAP_DAG}: triggered {run['dag_run_id']}, waiting")
            ok = [self.wait_run(BOOTSTRAP_DAG, run["dag_run_id"])]
        self.check_finished(BOOTSTRAP_DAG, ok)
        for dag_id, wait in FIRST_START_ORDER:
            if dag_id not in expected:
                continue
            self.retry_failed(dag_id)
            self.unpause(dag_id)
            if wait:
                self.check_finished(dag_id, self.wait_first_runs(dag_id))
        # asset-triggered runs (offsite sync after the nightly run) must be green too
        for dag_id in expected:
            self.check_finished(dag_id, self.wait_idle(dag_id))
        at = datetime.now(UTC).isoformat(timespec="seconds")
        self.client.call(
            "POST",
            "/variables",
            {
                "key": DONE_VARIABLE,
                "value": f"{at}: bootstrapped, first runs green, {len(expected)} DAGs unpaused",
                "description": "dbops first start done (python -m devstack up airflow); delete it to redo",
            },
        )
        self.say(f"done: {len(expected)} DAGs unpaused, {len(self.done)} runs, none failed")
        return self.done

    def fail(self, what: str) -> None:
        paused = [d["dag_id"] for d in self.client.call("GET", "/dags?limit=100&paused=true")["dags"]]
        raise DevstackError(
            f"{self.airflow.name} first start failed: {what}. Still paused: {', '.join(paused) or 'none'}. "
            f"Fix the cause and run `python -m devstack up airflow` again (UI {self.airflow.url()})"
        )

    def wait_for_dags(self, expected: list[str], timeout: float = 300) -> None:
        self.say(f"waiting for the dag-processor to parse {len(expected)} DAG files")
        deadline = time.monotonic() + timeout
        while True:
            errors = self.client.call("GET", "/importErrors")["import_errors"]
            if errors:
                self.fail(
                    "DAG import errors: " + "; ".join(f"{e['filename']}: {e['stack_trace'][-300:]}" for e in errors)
                )
            have = {d["dag_id"] for d in self.client.call("GET", "/dags?limit=100")["dags"]}
            missing = [d for d in expected if d not in have]
            if not missing:
                return
            if time.monotonic() > deadline:
                self.fail(f"DAGs not parsed within {timeout:.0f}s: {', '.join(missing)}")
            time.sleep(3)

    def retry_failed(self, dag_id: str) -> None:
        """A first start run again after a failure: the failed tasks of its runs run again."""
        for run in self.client.runs(dag_id, "state=failed"):
            path = f"/dags/{dag_id}/dagRuns/{quote(run['dag_run_id'], safe='')}/clear"
            try:
                self.client.call("POST", path, {"dry_run": False, "only_failed": True})
            except urllib.error.HTTPError as exc:
                self.fail(
                    f"{dag_id}: the failed run {run['dag_run_id']} could not be cleared (HTTP {exc.code}); "
                    "clear it in the UI"
                )
            self.say(f"{dag_id}: run {run['dag_run_id']} failed before: its failed tasks cleared, run again")

    def unpause(self, dag_id: str) -> None:
        self.client.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})
        self.say(f"{dag_id}: unpaused")

    def trigger(self, dag_id: str) -> dict:
        now = datetime.now(UTC).isoformat()
        return self.client.call(
            "POST", f"/dags/{dag_id}/dagRuns", {"logical_date": now, "conf": {}, "note": "first start of the platform"}
        )

    def wait_run(self, dag_id: str, run_id: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            run = self.client.call("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(3)
        self.fail(f"{dag_id} run {run_id} not finished within {self.timeout:.0f}s")
        raise AssertionError  # unreachable: fail() raises

    def wait_first_runs(self, dag_id: str) -> list[dict]:
        """The run the unpause starts appears on the scheduler's next loop; then wait for it."""
        deadline = time.monotonic() + 180
        while not self.client.runs(dag_id, "run_type=scheduled"):
            if time.monotonic() > deadline:
                self.fail(f"{dag_id}: no scheduled run within 180s of its unpause")
            time.sleep(2)
        return self.wait_idle(dag_id)

    def wait_idle(self, dag_id: str) -> list[dict]:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            runs = self.client.runs(dag_id)
            if all(r["state"] in ("success", "failed") for r in runs):
                return runs
            time.sleep(3)
        self.fail(f"{dag_id} still has unfinished runs after {self.timeout:.0f}s")
        return []

    def check_finished(self, dag_id: str, runs: list[dict]) -> None:
        failed = [r["dag_run_id"] for r in runs if r["state"] == "failed"]
        if failed:
            tis = self.client.call("GET", f"/dags/{dag_id}/dagRuns/{quote(failed[0], safe='')}/taskInstances")
            tasks = [t["task_id"] for t in tis["task_instances"] if t["state"] in ("failed", "upstream_failed")]
            self.fail(f"{dag_id} run {failed[0]} failed (tasks: {', '.join(tasks) or '?'})")
        for run in runs:
            line = f"{dag_id}: {run['run_type']} run {run['dag_run_id']} {run['state']}"
            if line not in self.done:
                self.done.append(line)
                self.say(line)


def main_instance() -> Airflow:
    """The ``make run`` instance (``python -m devstack up airflow``): with the first start."""
    return Airflow(first_start=True)


def _postgres_login() -> dict:
    from devstack.services.postgres import Postgres

    return Postgres().connections()["dbops_postgres"]


def _postgres_admin():
    import psycopg

    login = _postgres_login()
    return psycopg.connect(
        host=login["host"],
        port=login["port"],
        user=login["login"],
        password=login["password"],
        dbname="postgres",
        autocommit=True,
    )


def _fernet_key() -> str:
    import base64

    raw = secret("airflow_fernet")
    return base64.urlsafe_b64encode(raw.encode()[:32].ljust(32, b"0")).decode()
