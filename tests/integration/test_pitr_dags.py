"""The point-in-time recovery DAGs as Airflow runs them (``dag.test``), against a real
PostgreSQL 16 with the WAL receiver streaming from it (tests/pitr_support.py), a writer
committing throughout: dbops_wal_check (red before the first base backup, naming why, green
after), dbops_base_backup, dbops_restore with a target time (one database copied out of the
recovered cluster into the live one, exactly the rows committed before the target; refusals
before any work), dbops_restore_drill's point-in-time drill. The tests run in file order.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dbops.backup.repository import BackupRepository
from dbops.pitr.wal import BASE_STORE, WAL_DIR, WalArchive
from tests.conftest import run_dag, task_result, without_retries
from tests.integration.restore_sources import drop_pg, set_config, states
from tests.offsite_support import empty_prefix, remote_dir, remove_remote
from tests.pitr_support import PitrCluster, wait_for

pytestmark = pytest.mark.integration

DB = "pitr_dag_app"
COPY = "pitr_dag_copy"
ADMIN_CONN, REPLICATION_CONN = "dbops_test_pitr_admin", "dbops_test_pitr_replication"
CLUSTER_NAME, CLUSTER_PORT = "postgres-pitr-dags", 55448


def fresh(dagbag, dag_id: str):
    """A copy of the DAG: ``dag.test()`` keeps a run's conf in the DAG's params, and the other
    modules' tests must not inherit this module's recovery targets (a copy loses the expansion
    of mapped tasks: only for dbops_restore, which has none)."""
    return without_retries(copy.deepcopy(dagbag.get_dag(dag_id)))


class Platform:
    def __init__(self, cluster: PitrCluster, root: Path, devstack) -> None:
        self.cluster, self.root = cluster, root
        # offsite: a folder and a prefix of this module's own (the WAL check ships every run)
        self.remote = remote_dir(devstack)
        self.s3 = devstack.service("s3")
        self.bucket = self.s3.environment()["DBOPS_OFFSITE__S3_BUCKET"]
        self.prefix = f"test-pitr-dags-{uuid.uuid4().hex[:8]}"
        self.stack = cluster.stack(root / "backups", slot="dbops_pitr_dags")
        self.repo = BackupRepository(root / "backups")
        self.archive = WalArchive(root / "backups" / WAL_DIR)
        self.scratch = root / "scratch"
        self.config = {
            "backup": {"root": str(root / "backups")},
            "connections": {"postgres": ADMIN_CONN, "postgres_replication": REPLICATION_CONN},
            "postgres": {"databases": [DB]},
            "pitr": {
                "slot": self.stack.slot,
                "scratch_dir": str(self.scratch),
                "scratch_os_user": "dbops-pg",
                "wait_for_wal_s": 60,
            },
            "offsite": {"rsync_remote_dir": str(self.remote), "s3_bucket": self.bucket, "s3_prefix": self.prefix},
        }

    def rows(self, database: str) -> list[int]:
        with self.cluster.connect(database) as conn:
            return [r[0] for r in conn.execute("SELECT id FROM orders ORDER BY id")]

    def insert(self, first: int, last: int) -> None:
        with self.cluster.connect(DB) as conn:
            for n in range(first, last + 1):
                conn.execute("INSERT INTO orders (id) VALUES (%s)", [n])  # one commit each

    def received_now(self) -> None:
        """Complete the current segment and wait until it is sealed: the WAL so far is in the archive."""
        with self.cluster.connect() as conn:
            segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        self.stack.wait_sealed(segment, timeout=60)


@pytest.fixture(scope="module")
def platform(airflow_db, devstack):
    cluster = PitrCluster.up(CLUSTER_NAME, CLUSTER_PORT)
    root = Path(tempfile.mkdtemp(prefix="dbops-pitr-dags-"))
    root.chmod(0o711)  # the scratch server's user (dbops-pg) passes through to its folder
    p = Platform(cluster, root, devstack)
    env = cluster.connection_env(ADMIN_CONN, REPLICATION_CONN)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cluster.fresh_database(
        DB, "CREATE TABLE orders (id integer PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())"
    )
    p.stack.start_receiver()
    p.stack.wait_streaming()
    set_config(p.config)
    try:
        yield p
    finally:
        from airflow.models.variable import Variable

        Variable.delete("dbops_config")
        p.stack.close()
        conn = {
            "host": cluster.host,
            "port": cluster.port,
            "login": cluster.superuser,
            "password": cluster.superuser_password,
        }
        drop_pg(conn, DB, COPY)
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        shutil.rmtree(root, ignore_errors=True)
        remove_remote(p.remote)
        empty_prefix(p.s3.client(), p.bucket, p.prefix)
        if cluster.started_here:
            cluster.down()


def test_the_wal_check_is_red_before_the_first_base_backup_naming_why(platform, dagbag):
    run = run_dag(without_retries(dagbag.get_dag("dbops_wal_check")))
    st = states(run)
    assert st["write_marker"] == "success" and st["check_wal"] == "failed", st
    found = json.loads((platform.archive.root / "check.json").read_text())
    assert found["ok"] is False
    assert "no base backup yet: nothing can be recovered (dbops_base_backup takes one)" in found["problems"]
    assert not any("receiver" in p for p in found["problems"]), found["problems"]  # the stream itself is fine


def test_base_backup_then_the_wal_check_is_green_with_the_window(platform, dagbag):
    platform.insert(1, 10)
    run = run_dag(without_retries(dagbag.get_dag("dbops_base_backup")), {"retention_dry_run": False})
    assert run.state == "success", states(run)
    made = task_result(run, "base_backup")
    backup = platform.repo.latest(BASE_STORE)
    assert backup is not None and backup.backup_id == made["backup_id"] and backup.verified
    assert task_result(run, "retention_pitr")["expired_backups"] == []

    platform.received_now()
    check = run_dag(without_retries(dagbag.get_dag("dbops_wal_check")))
    assert check.state == "success", states(check)
    result = task_result(check, "check_wal")
    assert result["ok"] and result["problems"] == [] and result["base_backups"] == 1
    # the sealed WAL went offsite in the same run, to both targets, as the local catalog has it
    sealed = {e.file for e in platform.archive.entries()}
    assert sealed <= {p.name for p in (platform.remote / "postgres_wal" / "segments").iterdir()}
    listed = platform.s3.client().list_objects_v2(
        Bucket=platform.bucket, Prefix=f"{platform.prefix}/postgres_wal/segments/"
    )
    assert sealed <= {o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", [])}
    assert result["earliest"] == backup.manifest["details"]["consistent_at"] and result["latest"] >= result["earliest"]


def test_restore_to_a_time_copies_exactly_the_rows_committed_before_it(platform, dagbag):
    platform.insert(11, 20)
    time.sleep(1.1)
    target = datetime.now(UTC)
    time.sleep(1.1)
    platform.insert(21, 30)  # committed after the target: must not be in the copy
    platform.received_now()
    assert platform.rows(DB) == list(range(1, 31))
    with platform.cluster.writer() as writer:  # the live cluster stays busy during the recovery and the copy
        run = run_dag(
            fresh(dagbag, "dbops_restore"),
            {
                "store": "postgres",
                "backup_id": "latest",
                "database": DB,
                "target": COPY,
                "confirm_overwrite": "",
                "topics": [],
                "target_time": target.isoformat(),
                "target_lsn": "",
                "target_name": "",
            },
        )
    assert writer.rows > 0
    st = states(run)
    assert run.state == "success", st
    assert st["restore_postgres"] == "skipped" and st["restore_postgres_pitr"] == "success", st
    assert platform.rows(COPY) == list(range(1, 21))
    result = task_result(run, "restore_postgres_pitr")
    assert result["kept"] is False and result["copied"]["target"] == COPY
    assert not any(platform.scratch.iterdir()), "the scratch server's folder is removed after the copy"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"target_time": "2999-01-01T00:00:00+00:00"}, "in the future"),
        ({"target_time": "2001-01-01T00:00:00+00:00"}, "recovery window"),
        ({"target_time": "yesterday"}, "target_time"),
        ({"target_time": "latest", "target_lsn": "0/3000000"}, "exactly one of"),
        ({"target_time": "latest", "store": "redis"}, "for Postgres, not redis"),
        ({"target_time": "latest", "target": COPY}, "need database"),
        ({"target_time": "latest", "database": DB, "target": COPY}, f"{COPY}"),  # exists now: needs confirm
    ],
)
def test_refused_before_any_work_naming_what_is_wrong(platform, dagbag, capfd, change, expected):
    capfd.readouterr()
    conf = {
        "store": "postgres",
        "backup_id": "latest",
        "database": "",
        "target": "",
        "confirm_overwrite": "",
        "topics": [],
        "target_time": "",
        "target_lsn": "",
        "target_name": "",
        **change,
    }
    run = run_dag(fresh(dagbag, "dbops_restore"), conf)
    st = states(run)
    assert st["plan"] == "failed" and st["restore_postgres_pitr"] != "success", st
    assert not platform.scratch.exists() or not any(platform.scratch.iterdir())
    out = "".join(capfd.readouterr())
    assert "refused before any work" in out and expected in out, out[-3000:]


def test_the_drill_dag_drills_point_in_time_recovery_beside_the_dumps(platform, dagbag):
    nightly = run_dag(
        without_retries(dagbag.get_dag("dbops_nightly_backup")),
        {"stores": ["postgres"], "retention_days": 30, "min_keep": 3, "retention_dry_run": False, "force": False},
    )
    assert nightly.state == "success", states(nightly)
    with platform.cluster.writer() as writer:  # the drill's markers and WAL wait happen under a writer
        run = run_dag(without_retries(dagbag.get_dag("dbops_restore_drill")), {"stores": ["postgres"]})
    assert writer.rows > 0
    st = states(run)
    assert run.state == "success", st
    assert st["drill_postgres_pitr"] == "success" and st["summary"] == "success", st
    drill = platform.repo.latest(BASE_STORE).sidecars["drill"]
    assert drill["ok"] is True and drill["run_id"] == run.run_id and drill["differences"] == []
    assert "postgres point-in-time" in task_result(run, "summary", key="result")["drilled"]
    wait_for(lambda: not any(platform.scratch.iterdir()), 10, "the drill's scratch server to be removed")
    assert datetime.now(UTC) - datetime.fromisoformat(drill["at"].replace("Z", "+00:00")) < timedelta(minutes=10)
