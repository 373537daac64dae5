"""Secrets: every DAG runs (``dag.test``) against the real stores with their generated
passwords, while a sampler reads every process's command line every ~20 ms. No password,
private key or their URL-encoded forms may appear on any command line, in the task logs
(the package logs its tools' output), in XCom, in rendered template fields, in a manifest,
report or any other file written; backup files are 0600 and folders 0700; the temporary
credential files (pgpass, mongo tools config, ssh key) are gone even when the task fails."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from dbops.migrations import MigrationRunner
from dbops.report import StoreReport
from dbops.stores.postgres.bootstrap import migrations
from tests.conftest import run_dag, without_retries
from tests.integration.restore_sources import drop_pg, states
from tests.offsite_support import empty_prefix, remote_dir, remove_remote
from tests.support import mongo_client, pg_connect

pytestmark = pytest.mark.integration

CONNECTIONS = ("postgres", "redis", "mongo", "s3", "offsite_ssh")
TOOLS = (
    "pg_dump",
    "pg_dumpall",
    "pg_restore",
    "redis-cli",
    "redis-server",
    "mongodump",
    "mongorestore",
    "rsync",
    "ssh",
)


def secrets_in_use() -> dict[str, str]:
    """The stores' passwords and the SSH private key, as the connections hold them."""
    found = {}
    for name in CONNECTIONS:
        conn = json.loads(os.environ[f"AIRFLOW_CONN_DBOPS_{name.upper()}"])
        if conn.get("password"):
            found[f"{name} password"] = conn["password"]
        key = (conn.get("extra") or {}).get("private_key")
        if key:
            body = [line for line in key.splitlines() if line and not line.startswith("-----")]
            for i, line in enumerate(body[1:-1]):  # whole base64 lines of the key (not the short header/footer)
                found[f"{name} private key line {i + 1}"] = line
    assert len(found) >= 5, found
    return found


def needles(secrets: dict[str, str]) -> dict[bytes, str]:
    """Each secret and its URL-encoded form (as a connection URI would carry it)."""
    out = {}
    for what, value in secrets.items():
        for form in {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)}:
            out[form.encode()] = what
    return out


def leaks(text: str | bytes, found: dict[bytes, str]) -> list[str]:
    data = text.encode(errors="replace") if isinstance(text, str) else text
    return sorted({what for needle, what in found.items() if needle in data})


# --------------------------------------------------------------------------- observers


class CommandLineSampler(threading.Thread):
    """Reads /proc/*/cmdline of every process every ``interval`` seconds."""

    def __init__(self, found: dict[bytes, str], interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.found, self.interval = found, interval
        self.stop_event = threading.Event()
        self.samples = 0
        self.hits: list[tuple[int, str, list[str]]] = []
        self.tools_seen: dict[str, set[int]] = {}
        self.me = os.getpid()

    def run(self) -> None:
        while not self.stop_event.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                        raw = fh.read()
                except OSError:
                    continue
                if not raw:
                    continue
                argv0 = os.path.basename(raw.split(b"\0", 1)[0].decode(errors="replace"))
                for tool in TOOLS:
                    if tool in argv0 or (tool.startswith("mongo") and tool.encode() in raw):
                        self.tools_seen.setdefault(tool, set()).add(int(entry.name))
                hit = leaks(raw, self.found)
                if hit:
                    self.hits.append((int(entry.name), raw.replace(b"\0", b" ").decode(errors="replace")[:200], hit))
            self.samples += 1
            time.sleep(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


class Tee(io.TextIOBase):
    """sys.stdout/sys.stderr as the runs print them (Airflow's task log lines), kept."""

    def __init__(self, inner, kept: list[str]) -> None:
        self.inner, self.kept = inner, kept

    def write(self, text: str) -> int:
        self.kept.append(text)
        return self.inner.write(text)

    def flush(self) -> None:
        self.inner.flush()


class KeepRecords(logging.Handler):
    """Every log record at the root, formatted with its traceback (the package's own log
    lines, which carry its tools' stderr)."""

    def __init__(self, kept: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.kept = kept
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.kept.append(self.format(record))
        except Exception:  # a record that cannot format is not a leak
            self.kept.append(str(record.msg))


# --------------------------------------------------------------------------- every DAG, once


def _platform_database(pg: dict, name: str) -> None:
    from psycopg import sql

    with pg_connect(pg, "postgres", autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with pg_connect(pg, name) as c:
        MigrationRunner(c, migrations()).run(StoreReport("postgres"))
        c.execute("CREATE TABLE public.items (id int PRIMARY KEY, label text)")
        c.execute("INSERT INTO public.items SELECT g, 'item ' || g FROM generate_series(1, 200) g")
        c.commit()


@pytest.fixture(scope="module")
def every_dag(devstack, dagbag, tmp_path_factory):
    """Run all eight DAGs (a scratch platform database, private folders) while observing."""
    from airflow.models.variable import Variable

    tag = uuid.uuid4().hex[:8]
    base = tmp_path_factory.mktemp("secrets")
    w = SimpleNamespace(
        pg=devstack.conn("dbops_postgres"),
        mongo=devstack.conn("dbops_mongo"),
        db=f"dbops_sec_{tag}",
        root=base / "backups",
        reports=base / "reports",
        remote=remote_dir(devstack),
        prefix=f"sec-{tag}",
        runs=[],
        logs=[],
        found=needles(secrets_in_use()),
    )
    s3 = devstack.service("s3")
    bucket = s3.environment()["DBOPS_OFFSITE__S3_BUCKET"]
    config = {
        "backup": {"root": str(w.root)},
        "postgres": {"databases": [w.db]},
        "mongo": {"database": w.db},
        "pitr": {"enabled": False},  # point-in-time recovery has its own tests (a scratch cluster and its receiver)
        # the way that starts redis-cli with the password (BGSAVE + copy talks through redis-py, no process)
        "redis": {"snapshot_method": "rdb"},
        "monitor": {"reports_dir": str(w.reports)},
        "offsite": {"rsync_remote_dir": str(w.remote), "s3_prefix": w.prefix, "s3_bucket": bucket},
    }
    _platform_database(w.pg, w.db)
    with mongo_client(w.mongo) as client:
        client[w.db].configurations.insert_many([{"k": i} for i in range(20)])
    platform = {
        "conn_type": "postgres",
        "host": w.pg["host"],
        "port": w.pg["port"],
        "login": w.pg["login"],
        "password": w.pg["password"],
        "schema": w.db,
    }
    stores = ["postgres", "mongo", "redis", "kafka"]
    plan = [
        ("dbops_bootstrap", {"stores": [*stores, "weaviate"], "dry_run": False, "apply_redis_settings": False}),
        (
            "dbops_nightly_backup",
            {"stores": stores, "retention_days": 30, "min_keep": 3, "retention_dry_run": False, "force": False},
        ),
        (
            "dbops_offsite_sync",
            {
                "targets": ["rsync", "s3"],
                "stores": stores,
                "retention_days": 30,
                "min_keep": 3,
                "dry_run": False,
                "retention_dry_run": False,
                "deep_verify": False,
            },
        ),
        (
            "dbops_restore",
            {
                "store": "postgres",
                "backup_id": "latest",
                "database": w.db,
                "target": "",
                "confirm_overwrite": "",
                "topics": [],
                "target_time": "",
            },
        ),
        (
            "dbops_restore",
            {
                "store": "mongo",
                "backup_id": "latest",
                "database": "",
                "target": "",
                "confirm_overwrite": "",
                "topics": [],
                "target_time": "",
            },
        ),
        ("dbops_restore_drill", {"stores": stores}),
        (
            "dbops_pg_maintenance",
            {"dry_run": False, "vacuum_full_tables": ["public.items"], "reindex_schemas": [], "window_minutes": None},
        ),
        ("dbops_table_size_monitor", {}),
        ("dbops_health", {"stores": stores}),
    ]
    sampler = CommandLineSampler(w.found)
    handler = KeepRecords(w.logs)
    saved = sys.stdout, sys.stderr
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AIRFLOW_CONN_DBOPS_POSTGRES", json.dumps(platform))
            mp.setenv("AIRFLOW_VAR_DBOPS_CONFIG", json.dumps(config))
            Variable.delete("dbops_config")  # the environment's Variable is the one in force
            logging.getLogger().addHandler(handler)
            sys.stdout, sys.stderr = Tee(saved[0], w.logs), Tee(saved[1], w.logs)
            sampler.start()
            for dag_id, conf in plan:
                dag = dagbag.get_dag(dag_id)
                run = run_dag(without_retries(dag), conf, respond="Approve")  # VACUUM FULL waits for an approval
                w.runs.append((dag_id, run.run_id, run.state, states(run)))
        w.sampler = sampler
        yield w
    finally:
        sampler.stop()
        sys.stdout, sys.stderr = saved
        logging.getLogger().removeHandler(handler)
        restored = [r for r in _pg_databases(w.pg) if r.startswith(f"{w.db}_restored_")]
        drop_pg(w.pg, w.db, *restored)
        with mongo_client(w.mongo) as client:
            for name in client.list_database_names():
                if name.startswith(w.db):
                    client.drop_database(name)
        remove_remote(w.remote)
        empty_prefix(s3.client(), bucket, w.prefix)


def _pg_databases(pg: dict) -> list[str]:
    with pg_connect(pg, "postgres") as c:
        return [r[0] for r in c.execute("SELECT datname FROM pg_database").fetchall()]


def test_the_sampler_sees_a_secret_on_a_command_line():
    """The observer itself: a process started with a (made-up) secret in its argv is caught."""
    bait = "bait-" + uuid.uuid4().hex
    sampler = CommandLineSampler(needles({"bait": bait}))
    sampler.start()
    proc = subprocess.Popen(["sh", "-c", "sleep 0.5", bait])
    proc.wait()
    sampler.stop()
    assert [hit[2] for hit in sampler.hits if hit[0] == proc.pid] and all(h[2] == ["bait"] for h in sampler.hits)


def test_every_dag_ran_green(every_dag):
    failed = [(dag_id, st) for dag_id, _run_id, state, st in every_dag.runs if state != "success"]
    assert not failed, failed
    assert len(every_dag.runs) == 9


def test_no_secret_on_any_command_line(every_dag):
    sampler = every_dag.sampler
    assert sampler.samples > 100, sampler.samples
    # the sampler really saw the tools that get credentials
    for tool in ("pg_dump", "pg_restore", "redis-cli", "mongodump", "mongorestore", "rsync", "ssh"):
        assert sampler.tools_seen.get(tool), (tool, {k: len(v) for k, v in sampler.tools_seen.items()})
    assert sampler.hits == []
    print("samples:", sampler.samples, "tool processes seen:", {k: len(v) for k, v in sampler.tools_seen.items()})


def test_no_secret_in_task_logs(every_dag):
    text = "".join(every_dag.logs)
    assert "pg_dump" in text and "mongodump" in text and "rsync" in text  # the logs are the real ones
    assert leaks(text, every_dag.found) == []
    home = Path(os.environ["AIRFLOW_HOME"])
    for path in home.rglob("*.log"):
        assert leaks(path.read_bytes(), every_dag.found) == [], path
    print("log characters scanned:", len(text))


def _our_rows(model, every_dag):
    from airflow.utils.session import create_session

    run_ids = {run_id for _d, run_id, _s, _st in every_dag.runs}
    with create_session() as session:
        return [r for r in session.query(model).filter(model.run_id.in_(run_ids))]


def test_no_secret_in_xcom(every_dag):
    from airflow.models.xcom import XComModel

    rows = _our_rows(XComModel, every_dag)
    assert len(rows) >= 20, len(rows)
    text = "\n".join(json.dumps(XComModel.deserialize_value(r), default=str) for r in rows)
    assert "backup_id" in text
    assert leaks(text, every_dag.found) == []


def test_no_secret_in_rendered_template_fields(every_dag):
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF

    rows = _our_rows(RTIF, every_dag)
    assert len(rows) >= 20, len(rows)
    text = "\n".join(json.dumps(r.rendered_fields, default=str) + json.dumps(r.k8s_pod_yaml, default=str) for r in rows)
    assert leaks(text, every_dag.found) == []


def test_no_secret_in_any_file_written(every_dag):
    """Backups (manifests, dumps, sidecars), reports, the offsite copy, the journal table."""
    scanned = 0
    for folder in (every_dag.root, every_dag.reports, every_dag.remote):
        for path in folder.rglob("*"):
            if path.is_file():
                assert leaks(path.read_bytes(), every_dag.found) == [], path
                scanned += 1
    manifests = list(every_dag.root.rglob("manifest.json"))
    assert len(manifests) >= 5 and list(every_dag.reports.rglob("*")), (manifests, every_dag.reports)
    with pg_connect(every_dag.pg, every_dag.db) as c:
        journal = "\n".join(r[0] for r in c.execute("SELECT t::text FROM dbops.maintenance_report t").fetchall())
    assert journal and leaks(journal, every_dag.found) == []
    print("files scanned:", scanned)


def test_backup_files_are_0600_and_folders_0700(every_dag):
    checked = 0
    for path in [every_dag.root, *every_dag.root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        expected = 0o700 if path.is_dir() else 0o600
        assert mode == expected, (str(path), oct(mode))
        checked += 1
    assert checked > 20
    print("paths checked:", checked)


# --------------------------------------------------------------------------- temporary credential files


class TempWatcher(threading.Thread):
    """Lists the (private) temporary folder every 5 ms: which credential folders existed."""

    def __init__(self, folder: Path, kill_tool: str | None = None, kill_after: str = "") -> None:
        super().__init__(daemon=True)
        self.folder, self.kill_tool, self.kill_after = folder, kill_tool, kill_after
        self.seen: set[str] = set()
        self.killed: list[int] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop_event.is_set():
            for entry in os.scandir(self.folder):
                self.seen.add(entry.name)
                for sub in Path(entry.path).glob("*") if entry.is_dir() else []:
                    self.seen.add(f"{entry.name}/{sub.name}")
            if self.kill_tool and not self.killed and any(n.startswith(self.kill_after) for n in self.seen):
                # the task fails after its credential file was written: its tool is killed
                for child in me.children(recursive=True):
                    try:
                        if self.kill_tool in " ".join(child.cmdline()):
                            child.send_signal(signal.SIGKILL)
                            self.killed.append(child.pid)
                    except psutil.Error:
                        pass
            time.sleep(0.005)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


@pytest.fixture
def private_tmp(monkeypatch):
    """An empty temporary folder for the task, short-named: ssh's control socket lives in the
    key's folder and a Unix socket path has at most 107 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="dbops-t-"))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    folder.rmdir()  # it must be empty: the assertion below says so first


CREDENTIAL_FILES = {  # the folder, the file, what the failure says
    "postgres": ("dbops-pg-", "pgpass", "failed with exit code -9"),
    "mongo": ("dbops-mongotools-", "tools.yaml", "mongodump failed with exit code -9"),
    "offsite_ssh": ("dbops-ssh-", "id_key", "/proc/dbops-cannot-exist"),
}


def _drop_database(conn: dict, database: str) -> None:
    with pg_connect(conn, "postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.mark.parametrize("kind", list(CREDENTIAL_FILES))
def test_temporary_credential_files_are_removed_when_the_task_fails(
    devstack, dagbag, tmp_path, private_tmp, monkeypatch, capfd, request, kind
):
    prefix, name, says = CREDENTIAL_FILES[kind]
    root = tmp_path / "backups"
    config: dict = {"backup": {"root": str(root)}}
    tool = {"mongo": "mongodump", "postgres": "pg_dump"}.get(kind)
    watcher = TempWatcher(private_tmp, kill_tool=tool, kill_after=prefix)
    if kind == "postgres":  # pg_dump is killed while it runs
        database = f"dbops_secrets_{uuid.uuid4().hex[:8]}"
        with pg_connect(devstack.conn("dbops_postgres"), "postgres", autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{database}"')
        request.addfinalizer(lambda: _drop_database(devstack.conn("dbops_postgres"), database))
        with pg_connect(devstack.conn("dbops_postgres"), database) as c:  # enough for pg_dump to run a while
            c.execute("CREATE TABLE filler AS SELECT g, md5(g::text) AS t FROM generate_series(1, 400000) g")
            c.commit()
        config["postgres"] = {"databases": [database]}
        dag_id, conf, task = (
            "dbops_nightly_backup",
            {"stores": ["postgres"], "retention_days": 30, "min_keep": 3, "retention_dry_run": False, "force": False},
            "backup_postgres",
        )
    elif kind == "mongo":  # mongodump is killed while it runs
        dag_id, conf, task = (
            "dbops_nightly_backup",
            {"stores": ["mongo"], "retention_days": 30, "min_keep": 3, "retention_dry_run": False, "force": False},
            "backup_mongo",
        )
    else:  # rsync fails: the remote folder cannot be created
        from dbops.backup.repository import BackupRepository
        from tests.offsite_support import make_backup

        make_backup(BackupRepository(root), "kafka", files={"topics.json": b"[]\n"})
        config["offsite"] = {"rsync_remote_dir": "/proc/dbops-cannot-exist"}
        dag_id, conf, task = (
            "dbops_offsite_sync",
            {
                "targets": ["rsync"],
                "stores": ["kafka"],
                "retention_days": 30,
                "min_keep": 3,
                "dry_run": False,
                "retention_dry_run": False,
                "deep_verify": False,
            },
            "ship_rsync",
        )
    monkeypatch.setenv("AIRFLOW_VAR_DBOPS_CONFIG", json.dumps(config))
    watcher.start()
    try:
        run = run_dag(without_retries(dagbag.get_dag(dag_id)), conf)
    finally:
        watcher.stop()
    st = states(run)
    # the killed tool fails its task (for Postgres, whichever series ran first: pg_dump or pg_dumpall)
    assert run.state == "failed" and any(
        name.split("[")[0] == task and state == "failed" for name, state in st.items()
    ), st
    assert says in "".join(capfd.readouterr())
    created = sorted(n for n in watcher.seen if n.startswith(prefix) and n.endswith("/" + name))
    assert created, f"no {prefix}*/{name} was seen: {sorted(watcher.seen)}"
    if tool:
        assert watcher.killed
    assert sorted(p.name for p in private_tmp.iterdir()) == []
    print(kind, "credential files seen while running:", created)
