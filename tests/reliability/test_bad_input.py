"""Bad input, the way a user hits it: a trigger (REST API, Param schema), a DAG run whose
config or connection is wrong (``dag.test``), a broken config file (the dag-processor).
Each case asserts that the error names the bad thing and that nothing changed: no backup
written or removed, no database created or dropped, the canary table and its rows intact."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import uuid
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from psycopg import sql

from tests.conftest import REPO, run_dag, without_retries
from tests.integration.restore_sources import drop_pg, states
from tests.support import mongo_client, pg_connect

pytestmark = pytest.mark.integration

BACKUP_DAG, RESTORE_DAG, MAINTENANCE_DAG = "dbops_nightly_backup", "dbops_restore", "dbops_pg_maintenance"
INJECTION = 'x"; DROP TABLE canary; --'


def backup_conf(**params) -> dict:
    """Every Param, given: under ``dag.test`` a run's conf stays in the DAG's Param objects."""
    return {
        "stores": ["redis"],
        "retention_days": 30,
        "min_keep": 3,
        "retention_dry_run": False,
        "force": False,
        **params,
    }


def restore_conf(**params) -> dict:
    return {
        "store": "postgres",
        "backup_id": "latest",
        "database": "",
        "target": "",
        "confirm_overwrite": "",
        "topics": [],
        **params,
    }


def maintenance_conf(**params) -> dict:
    return {"dry_run": False, "vacuum_full_tables": [], "reindex_schemas": [], "window_minutes": None, **params}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


# --------------------------------------------------------------------------- the world and its snapshot


@pytest.fixture(scope="module")
def world(devstack, dagbag, tmp_path_factory):
    """A scratch Postgres database with a canary table, a Mongo database, Redis keys, and real
    backups of them (taken by dbops_nightly_backup) in a private repository root."""
    from airflow.models.variable import Variable

    tag = uuid.uuid4().hex[:8]
    w = SimpleNamespace(
        tag=tag,
        pg=devstack.conn("dbops_postgres"),
        mongo=devstack.conn("dbops_mongo"),
        redis=devstack.conn("dbops_redis"),
        db=f"dbops_bad_{tag}",
        root=tmp_path_factory.mktemp("bad") / "backups",
    )
    w.config = {"backup": {"root": str(w.root)}, "postgres": {"databases": [w.db]}, "mongo": {"database": w.db}}
    with pg_connect(w.pg, "postgres", autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(w.db)))
    with pg_connect(w.pg, w.db) as c:
        c.execute("CREATE TABLE canary (id int PRIMARY KEY, body text)")
        c.execute("INSERT INTO canary SELECT g, 'canary ' || g FROM generate_series(1, 100) g")
        c.commit()
    with mongo_client(w.mongo) as client:
        client[w.db].things.insert_many([{"n": i} for i in range(10)])
    import redis

    with redis.Redis(host=w.redis["host"], port=w.redis["port"], password=w.redis["password"]) as r:
        r.set(f"dbops_bad:{tag}:key", "value")
    try:
        Variable.set("dbops_config", json.dumps(w.config))
        run = run_dag(dagbag.get_dag(BACKUP_DAG), backup_conf(stores=["postgres", "mongo", "redis"]))
        assert run.state == "success", states(run)
        yield w
    finally:
        Variable.delete("dbops_config")
        drop_pg(w.pg, w.db)
        with mongo_client(w.mongo) as client:
            client.drop_database(w.db)
        with redis.Redis(host=w.redis["host"], port=w.redis["port"], password=w.redis["password"]) as r:
            r.delete(f"dbops_bad:{tag}:key")


def snapshot(w) -> dict:
    """What a refused run must leave as it was. The series' writer lock file (``.lock``) notes
    its last holder: its existence counts, its content and time do not."""
    files = {}
    for path in sorted(w.root.rglob("*")):
        rel = str(path.relative_to(w.root))
        st = path.lstat()
        files[rel] = "dir" if path.is_dir() or path.name == ".lock" else (st.st_size, st.st_mtime_ns, st.st_mode)
    with pg_connect(w.pg, "postgres") as c:
        names = [r[0] for r in c.execute("SELECT datname FROM pg_database").fetchall()]
    with pg_connect(w.pg, w.db) as c:
        canary = c.execute("SELECT count(*), md5(string_agg(body, ',' ORDER BY id)) FROM canary").fetchone()
    with mongo_client(w.mongo) as client:
        mongo = sorted(n for n in client.list_database_names() if w.tag in n)
    return {
        "files": files,
        # other engineers create databases meanwhile: only ours, and any name an injection could make
        "pg_databases": sorted(n for n in names if w.tag in n or '"' in n or ";" in n),
        "canary": canary,
        "mongo_databases": mongo,
    }


@contextmanager
def variable(config: dict, back_to: dict):
    """The Airflow Variable dbops_config for one case, then ``back_to``."""
    from airflow.models.variable import Variable

    Variable.set("dbops_config", json.dumps(config))
    try:
        yield
    finally:
        Variable.set("dbops_config", json.dumps(back_to))


def refused_run(w, dag, conf: dict, capfd, *, failed: str, says: list[str], config: dict | None = None) -> str:
    """Run ``dag`` with ``conf`` (and ``config`` as the Variable dbops_config): the run fails at
    ``failed``, the log says every item of ``says``, and the snapshot is unchanged. Returns the log."""
    before = snapshot(w)
    capfd.readouterr()
    with variable(config or w.config, back_to=w.config):
        run = run_dag(without_retries(dag), conf)
    out = "".join(capfd.readouterr())
    st = states(run)
    assert run.state == "failed", st
    assert st[failed] == "failed", st
    for text in says:
        assert text in out, f"{text!r} not in the log:\n{out[-4000:]}"
    assert snapshot(w) == before
    print("refused:", next(line for line in out.splitlines() if says[0] in line)[:400])  # shown by pytest -rA
    return out


# --------------------------------------------------------------------------- the trigger form: Param schema


PARAM_CASES = [
    ("retention_days_0", BACKUP_DAG, backup_conf(retention_days=0), "retention_days"),
    ("retention_days_-1", BACKUP_DAG, backup_conf(retention_days=-1), "retention_days"),
    ("retention_days_abc", BACKUP_DAG, backup_conf(retention_days="abc"), "retention_days"),
    ("unknown_store", BACKUP_DAG, backup_conf(stores=["oracle"]), "stores"),
    ("backup_id_dotdot", RESTORE_DAG, restore_conf(backup_id="../../etc"), "backup_id"),
    ("backup_id_semicolon", RESTORE_DAG, restore_conf(backup_id="latest;rm"), "backup_id"),
    ("restore_unknown_store", RESTORE_DAG, restore_conf(store="oracle"), "store"),
    (
        "vacuum_full_injection",
        MAINTENANCE_DAG,
        maintenance_conf(vacuum_full_tables=[f"public.{INJECTION}"]),
        "vacuum_full_tables",
    ),
]


@pytest.mark.parametrize("dag_id,conf,param", [c[1:] for c in PARAM_CASES], ids=[c[0] for c in PARAM_CASES])
def test_a_param_out_of_schema_is_refused_before_a_run_exists(world, dagbag, dag_id, conf, param):
    """dag.test creates its run as a trigger does: the Param schema refuses the conf, naming the Param."""
    from airflow.exceptions import ParamValidationError

    dag = dagbag.get_dag(dag_id)
    before = snapshot(world)
    with pytest.raises(ParamValidationError) as err:
        run_dag(dag, conf)
    assert param in str(err.value)
    assert _runs_with_conf(dag_id, conf) == 0 and snapshot(world) == before
    # the DAG's own Params keep their defaults (a refused conf must not stick)
    dag.params.validate()


def _runs_with_conf(dag_id: str, conf: dict) -> int:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return sum(1 for run in session.query(DagRun).filter(DagRun.dag_id == dag_id) if run.conf == conf)


REST_CASES = [
    c
    for c in PARAM_CASES
    if c[0] in ("retention_days_0", "retention_days_abc", "unknown_store", "backup_id_dotdot", "backup_id_semicolon")
]


def test_the_rest_api_refuses_bad_params_with_400_naming_them(live_airflow):
    """POST /api/v2/dags/{id}/dagRuns on a real Airflow: 400, the detail names the Param, no run."""
    api, _instance = live_airflow
    for dag_id in (BACKUP_DAG, RESTORE_DAG):
        _wait_parsed(api, dag_id)
    seen = {}
    for case, dag_id, conf, param in REST_CASES:
        with pytest.raises(urllib.error.HTTPError) as err:
            api.call("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        detail = json.loads(err.value.read())["detail"]
        seen[case] = (err.value.code, detail)
        assert err.value.code == 400 and param in str(detail), (case, detail)
        assert api.call("GET", f"/dags/{dag_id}/dagRuns")["total_entries"] == 0, case
    print("REST answers:", json.dumps(seen, indent=1))


def _wait_parsed(api, dag_id: str, timeout: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            api.call("GET", f"/dags/{dag_id}")
            return
        except urllib.error.HTTPError:
            time.sleep(2)
    raise AssertionError(f"{dag_id} not parsed within {timeout}s")


# --------------------------------------------------------------------------- restore targets


def test_restore_over_the_live_database_without_confirm_is_refused(world, dagbag, capfd):
    refused_run(
        world,
        dagbag.get_dag(RESTORE_DAG),
        restore_conf(database=world.db, target=world.db),
        capfd,
        failed="plan",
        says=["refused before any work", f"set confirm_overwrite to '{world.db}' (exactly)"],
    )


def test_a_confirm_naming_another_target_is_refused(world, dagbag, capfd):
    refused_run(
        world,
        dagbag.get_dag(RESTORE_DAG),
        restore_conf(database=world.db, target=world.db, confirm_overwrite=f"{world.db}_other"),
        capfd,
        failed="plan",
        says=["refused before any work", "must name the target exactly"],
    )


def test_a_backup_id_that_does_not_exist_is_refused(world, dagbag, capfd):
    refused_run(
        world,
        dagbag.get_dag(RESTORE_DAG),
        restore_conf(database=world.db, backup_id="20200101T000000Z"),
        capfd,
        failed="plan",
        says=[f"no backup 20200101T000000Z of postgres/{world.db}"],
    )


# --------------------------------------------------------------------------- connections


def _conn(name: str) -> dict:
    return json.loads(os.environ[f"AIRFLOW_CONN_{name.upper()}"])


def test_a_missing_connection_is_named(world, dagbag, capfd):
    refused_run(
        world,
        dagbag.get_dag(BACKUP_DAG),
        backup_conf(),
        capfd,
        failed="backup_redis",
        says=["dbops_no_such_connection", "isn't defined"],
        config={**world.config, "connections": {"redis": "dbops_no_such_connection"}},
    )


def test_a_malformed_connection_uri_is_named(world, dagbag, capfd, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_DBOPS_REDIS", "redis://127.0.0.1:not-a-port/0")
    refused_run(
        world,
        dagbag.get_dag(BACKUP_DAG),
        backup_conf(),
        capfd,
        failed="backup_redis",
        says=["AIRFLOW_CONN_DBOPS_REDIS is malformed", "not-a-port"],
    )


WRONG_PASSWORD = {
    "postgres": ("series_postgres", ["password authentication failed"]),
    "redis": ("backup_redis", ["invalid username-password pair"]),
    "mongo": ("backup_mongo", ["authentication failed"]),
}


@pytest.mark.parametrize("store", list(WRONG_PASSWORD))
def test_a_wrong_password_fails_the_backup_and_writes_nothing(world, dagbag, capfd, monkeypatch, store):
    conn_id = f"dbops_{store}"
    wrong = "Wrong-" + uuid.uuid4().hex
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({**_conn(conn_id), "password": wrong}))
    failed, says = WRONG_PASSWORD[store]
    out = refused_run(world, dagbag.get_dag(BACKUP_DAG), backup_conf(stores=[store]), capfd, failed=failed, says=says)
    assert wrong not in out  # even a wrong password is a secret


@pytest.mark.parametrize("store", ["postgres", "redis"])
def test_an_unreachable_host_is_named(world, dagbag, capfd, monkeypatch, store):
    conn_id = f"dbops_{store}"
    port = closed_port()
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({**_conn(conn_id), "port": port}))
    failed = "series_postgres" if store == "postgres" else "backup_redis"
    refused_run(
        world,
        dagbag.get_dag(BACKUP_DAG),
        backup_conf(stores=[store]),
        capfd,
        failed=failed,
        says=[str(port), "refused"],
    )


# --------------------------------------------------------------------------- configuration


def _import_errors(config_text: str, tmp_path: Path) -> dict[str, str]:
    """Parse the dags folder in a fresh process with DBOPS_CONFIG naming ``config_text``, as the
    dag-processor does; its import errors by file."""
    path = tmp_path / "dbops.yaml"
    path.write_text(config_text)
    script = (
        "import json, sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/plugins']\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag(dag_folder=sys.argv[1] + '/dags')\n"
        "print('IMPORT-ERRORS' + json.dumps(bag.import_errors))\n"
    )
    env = {**os.environ, "DBOPS_CONFIG": str(path)}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(REPO)], env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("IMPORT-ERRORS", 1)[1])


@pytest.mark.parametrize(
    "text,says",
    [
        ("backup:\n  root: [unclosed\n", "is not valid YAML"),
        ("backup:\n  retension_days: 7\n", "backup.retension_days: Extra inputs are not permitted"),
    ],
    ids=["invalid_yaml", "unknown_key"],
)
def test_a_broken_config_file_fails_every_dag_at_parse_time_naming_it(tmp_path, text, says):
    errors = _import_errors(text, tmp_path)
    dag_files = sorted(p.name for p in (REPO / "dags").glob("dbops_*.py"))
    assert sorted(Path(f).name for f in errors) == dag_files
    assert all(says in e and "dbops.yaml" in e for e in errors.values()), errors


def test_an_unknown_key_in_the_variable_is_named_before_any_work(world, dagbag, capfd):
    refused_run(
        world,
        dagbag.get_dag(BACKUP_DAG),
        backup_conf(),
        capfd,
        failed="plan",
        says=["backup.retension_days: Extra inputs are not permitted"],
        config={**world.config, "backup": {"root": str(world.root), "retension_days": 7}},
    )


@pytest.mark.parametrize("root", ["/", "/etc"])
def test_a_system_folder_as_backup_root_is_refused(world, dagbag, capfd, root):
    refused_run(
        world,
        dagbag.get_dag(BACKUP_DAG),
        backup_conf(),
        capfd,
        failed="plan",
        says=["backup.root", f"'{root}' is a system folder"],
        config={**world.config, "backup": {"root": root}},
    )


def test_a_backup_root_outside_the_allowed_base_is_refused(world, dagbag, capfd, tmp_path):
    outside = tmp_path / "elsewhere" / "backups"
    refused_run(
        world,
        dagbag.get_dag(BACKUP_DAG),
        backup_conf(),
        capfd,
        failed="plan",
        says=["is outside backup.allowed_base"],
        config={**world.config, "backup": {"root": str(outside), "allowed_base": str(world.root.parent)}},
    )
    assert not outside.exists() and not outside.parent.exists()


# --------------------------------------------------------------------------- identifiers: no SQL injection


def test_a_database_name_with_quotes_and_semicolons_is_refused_for_backup(world, dagbag, capfd):
    """Not a database of the server: refused before any backup (globals included), no SQL ran.
    (A real database with such a name is backed up: see the Postgres recovery tests.)"""
    refused_run(
        world,
        dagbag.get_dag(BACKUP_DAG),
        backup_conf(stores=["postgres"]),
        capfd,
        failed="series_postgres",
        says=["do not exist", repr(INJECTION)],
        config={**world.config, "postgres": {"databases": [INJECTION]}},
    )


def test_a_refusal_fails_at_once_and_is_not_retried(world, dagbag, capfd):
    """With the DAG's own retries (2, backing off): a database that does not exist cannot
    appear on a retry. On the old main this held the DAG's only run slot for ten minutes."""
    import time

    absent = f"dbops_absent_{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    with variable({**world.config, "postgres": {"databases": [absent]}}, back_to=world.config):
        run = run_dag(dagbag.get_dag(BACKUP_DAG), backup_conf(stores=["postgres"]))
    seconds = time.monotonic() - started
    st = states(run)
    assert run.state == "failed" and st["series_postgres"] == "failed", st
    series = next(ti for ti in run.get_task_instances() if ti.task_id == "series_postgres")
    assert series.try_number == 1 and seconds < 120, (series.try_number, seconds)
    assert absent in "".join(capfd.readouterr())


def test_a_maintenance_database_with_quotes_and_semicolons_is_refused(world, dagbag, capfd):
    refused_run(
        world,
        dagbag.get_dag(MAINTENANCE_DAG),
        maintenance_conf(),
        capfd,
        failed="plan",
        says=["refused before any work", "do not exist"],
        config={**world.config, "maintenance": {"databases": [f"{world.db}{INJECTION}"]}},
    )


def test_a_restore_target_with_quotes_and_semicolons_is_quoted_not_executed(world, dagbag):
    """A legal (if odd) PostgreSQL name: the restore creates exactly that database; no SQL ran."""
    target = f"{world.tag}{INJECTION}"
    before = snapshot(world)
    try:
        run = run_dag(without_retries(dagbag.get_dag(RESTORE_DAG)), restore_conf(database=world.db, target=target))
        assert run.state == "success", states(run)
        after = snapshot(world)
        assert after["canary"] == before["canary"]  # DROP TABLE canary never ran
        assert set(after["pg_databases"]) - set(before["pg_databases"]) == {target}
        with pg_connect(world.pg, target) as c:
            assert c.execute("SELECT count(*) FROM canary").fetchone()[0] == 100
    finally:
        drop_pg(world.pg, target)
