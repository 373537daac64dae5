"""dbops_restore's point-in-time recovery from offsite (``source`` rsync), as Airflow runs it
(``dag.test``): a base backup by ``dbops_base_backup`` with the real WAL receiver, the WAL
shipped (encrypted) by ``dbops_wal_check``, the base backup by ``dbops_offsite_sync``; then
the local repository gone and one database recovered to a time between two commits from the
offsite copies alone."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import run_dag, task_result, without_retries
from tests.integration.restore_sources import drop_pg, set_config, states
from tests.integration.test_restore_offsite import RESTORE
from tests.offsite_support import local_repository_gone, remote_dir, remove_remote

pytestmark = pytest.mark.integration

DB, COPY = "dbops_test_offsite_pitr", "dbops_test_offsite_pitr_copy"
ADMIN_CONN, REPLICATION_CONN = "dbops_test_offsite_pitr_admin", "dbops_test_offsite_pitr_replication"


def _rows(cluster, database: str) -> list[int]:
    with cluster.connect(database) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM orders ORDER BY id")]


def _insert(cluster, first: int, last: int) -> None:
    with cluster.connect(DB) as conn:
        for n in range(first, last + 1):
            conn.execute("INSERT INTO orders (id) VALUES (%s)", [n])  # one commit each


def test_a_database_recovered_to_a_time_from_the_offsite_copies_alone(pitr_cluster, dagbag, devstack):
    cluster = pitr_cluster
    tmp = Path(tempfile.mkdtemp(prefix="dbops-offsite-pitr-"))
    tmp.chmod(0o711)  # the scratch server's user passes through to its folder
    root = tmp / "backups"
    stack = cluster.stack(root, slot="dbops_offsite_pitr")
    remote = remote_dir(devstack)
    config = {
        "backup": {"root": str(root)},
        "connections": {"postgres": ADMIN_CONN, "postgres_replication": REPLICATION_CONN},
        "postgres": {"databases": [DB]},
        "pitr": {
            "slot": stack.slot,
            "scratch_dir": str(tmp / "scratch"),
            "scratch_os_user": "dbops-pg",
            "wait_for_wal_s": 60,
        },
        "offsite": {
            "targets": ["rsync"],
            "rsync_remote_dir": str(remote),
            "encryption": True,
            "fetch_dir": str(tmp / "fetch"),
        },
    }
    env = {
        **cluster.connection_env(ADMIN_CONN, REPLICATION_CONN),
        "AIRFLOW_VAR_DBOPS_OFFSITE_KEY": os.urandom(32).hex(),
    }
    dag = dagbag.get_dag("dbops_restore")
    admin = {
        "host": cluster.host,
        "port": cluster.port,
        "login": cluster.superuser,
        "password": cluster.superuser_password,
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        try:
            cluster.fresh_database(DB, "CREATE TABLE orders (id integer PRIMARY KEY)")
            stack.start_receiver()
            stack.wait_streaming()
            set_config(config)

            _insert(cluster, 1, 10)
            base = run_dag(without_retries(dagbag.get_dag("dbops_base_backup")), {"retention_dry_run": False})
            assert base.state == "success", states(base)
            wal_check = without_retries(dagbag.get_dag("dbops_wal_check"))
            _insert(cluster, 11, 20)
            time.sleep(1.1)
            target_time = datetime.now(UTC)
            time.sleep(1.1)
            _insert(cluster, 21, 30)  # committed after the target: must not come back
            with cluster.connect() as conn:
                segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
            stack.wait_sealed(segment, timeout=60)
            assert run_dag(wal_check).state == "success"  # ships the sealed WAL
            sync = run_dag(
                without_retries(dagbag.get_dag("dbops_offsite_sync")),
                {
                    "targets": ["rsync"],
                    "stores": ["postgres_pitr"],
                    "retention_days": 30,
                    "min_keep": 3,
                    "dry_run": False,
                    "retention_dry_run": False,
                    "deep_verify": False,
                },
            )
            assert sync.state == "success", states(sync)
            stack.stop_receiver()  # lost with the backup host

            with local_repository_gone(root):
                run = run_dag(
                    without_retries(dag),
                    {
                        **RESTORE,
                        "source": "rsync",
                        "database": DB,
                        "target": COPY,
                        "target_time": target_time.isoformat(),
                    },
                )
            st = states(run)
            assert run.state == "success", st
            assert st["restore_postgres_pitr_offsite"] == "success", st
            assert st["restore_postgres"] == st["restore_postgres_pitr"] == "skipped", st
            planned = task_result(run, "plan")
            assert planned["offsite"]["encrypted"] is True and planned["pitr_offsite"]["base_backup"]
            result = task_result(run, "restore_postgres_pitr_offsite")
            assert result["kept"] is False and result["source"] == "rsync"
            assert _rows(cluster, COPY) == list(range(1, 21))  # up to the target, nothing after it
            fetch = tmp / "fetch" / "rsync"
            assert not [p for p in fetch.rglob("manifest.json") if ".staging" not in p.parts]  # copies given back
            assert not (fetch / ".restore-wal").exists()
        finally:
            from airflow.models.variable import Variable

            Variable.delete("dbops_config")
            stack.close()
            drop_pg(admin, DB, COPY)
            remove_remote(remote)
            shutil.rmtree(tmp, ignore_errors=True)
