"""The disaster-recovery drill as Airflow runs it (``dag.test``), on the real local servers:
backups taken by ``dbops_nightly_backup`` (and ``dbops_base_backup`` with the WAL receiver),
shipped by ``dbops_offsite_sync`` / ``dbops_wal_check`` to sshd (rsync) and SeaweedFS (S3),
then the local repository made unavailable and everything recovered from offsite alone.

"Unavailable": the tests run as root, for whom chmod stops nothing, so the backup root is
renamed away and a regular *file* put at its path: any read, listing or write under
``backup.root`` (even a ``mkdir`` that would silently re-create it) fails loudly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import run_dag, task_result, without_retries
from tests.integration.restore_sources import STORES, backed_up_sources, drop_pg, kafka_topics, set_config, states
from tests.integration.writers import busy, kafka_writer, mongo_writer, postgres_writer, redis_writer
from tests.offsite_support import empty_prefix, local_repository_gone, remote_dir, remove_remote, ssh_params
from tests.pitr_support import PitrCluster
from tests.support import mongo_client, pg_connect

pytestmark = pytest.mark.integration


def offsite_config(devstack, tmp: Path) -> dict:
    s3 = devstack.service("s3")
    return {
        "rsync_remote_dir": str(remote_dir(devstack)),
        "s3_bucket": s3.environment()["DBOPS_OFFSITE__S3_BUCKET"],
        "s3_prefix": f"test-dr-{uuid.uuid4().hex[:8]}",
        "fetch_dir": str(tmp / "fetch"),
    }


def remove_offsite(devstack, offsite: dict) -> None:
    remove_remote(Path(offsite["rsync_remote_dir"]))
    empty_prefix(devstack.service("s3").client(), offsite["s3_bucket"], offsite["s3_prefix"])


def fetched_backups(fetch_dir: Path) -> list[Path]:
    """Backups left in the fetch repositories (their manifests), staging excluded."""
    return [
        p.parent for p in fetch_dir.rglob("manifest.json") if ".staging" not in p.parts and ".dr_drill" not in p.parts
    ]


# --------------------------------------------------------------------------- every store, each target


@pytest.fixture(scope="module")
def shipped(devstack, dagbag, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dr")
    root = tmp / "backups"
    with backed_up_sources(devstack, dagbag, root) as src:
        src.offsite = offsite_config(devstack, tmp)
        src.config = {**src.config, "offsite": src.offsite}
        set_config(src.config)
        try:
            sync = run_dag(
                without_retries(dagbag.get_dag("dbops_offsite_sync")),
                {
                    "targets": ["rsync", "s3"],
                    "stores": STORES,
                    "retention_days": 30,
                    "min_keep": 3,
                    "dry_run": False,
                    "retention_dry_run": False,
                    "deep_verify": False,
                },
            )
            assert sync.state == "success", states(sync)
            yield src
        finally:
            remove_offsite(devstack, src.offsite)


def test_the_dr_drill_restores_every_store_from_each_target_without_the_local_repository(shipped, dagbag):
    src = shipped
    fetch_dir = Path(src.offsite["fetch_dir"])
    # the live stores are written to throughout: the drill compares with the backups, not the live data
    writers = (
        postgres_writer(src.pg, src.pg_db),
        mongo_writer(src.mongo, src.mongo_db),
        redis_writer(src.redis, src.prefix, databases=(0,)),
        kafka_writer(src.kafka, src.topic),
    )
    with local_repository_gone(src.root), busy(*writers):
        run = run_dag(without_retries(dagbag.get_dag("dbops_dr_drill")), {"targets": ["rsync", "s3"], "stores": STORES})
    st = states(run)
    assert run.state == "success", st
    for store in STORES:
        drills = {k: v for k, v in st.items() if k.startswith(f"drill_{store}[")}
        assert drills and set(drills.values()) == {"success"}, (store, st)
    assert st["drill_postgres_pitr"] == "skipped"  # pitr.enabled is off here: the second test drills it

    result = task_result(run, "summary", key="result")
    series = {f"postgres/{src.pg_db}", "postgres/_globals", "mongo", "redis", "kafka"}
    assert {(r["target"], r["series"]) for r in result["rto"]} == {(t, s) for t in ("rsync", "s3") for s in series}
    for row in result["rto"]:
        assert row["ok"] is True and row["rto_s"] > 0 and row["rto_s"] >= row["fetch_s"] + row["drill_s"] - 0.5, row
    assert set(result["rto_by_store"]) == {"rsync", "s3"}
    assert set(result["rto_by_store"]["s3"]) == set(STORES)
    assert "RTO s" in result["table"] and f"postgres/{src.pg_db}" in result["table"]
    # the outcome is recorded where the recovery-point checks read it, beside the fetch repositories
    recorded = json.loads((fetch_dir / "dr_drill.json").read_text())["runs"][0]
    assert recorded["run_id"] == run.run_id and recorded["ok"] is True and len(recorded["rto"]) == 10
    # nothing fetched stays behind, no scratch database or topic either
    assert fetched_backups(fetch_dir) == []
    with pg_connect(src.pg, "postgres") as c:
        assert c.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'dbops\\_drill\\_%'").fetchone()[0] == 0
    with mongo_client(src.mongo) as client:
        assert not [n for n in client.list_database_names() if n.startswith("dbops_drill_")]
    assert not [t for t in kafka_topics(src.kafka) if t.startswith("dbops_drill_")]
    # the local repository was not touched: its backups are as the nightly left them
    assert (src.root / "postgres" / src.pg_db).is_dir()


def test_a_corrupted_offsite_copy_fails_the_dr_drill_naming_it(shipped, dagbag, capfd):
    src = shipped
    remote = Path(src.offsite["rsync_remote_dir"])
    (folder,) = [p for p in (remote / "redis").iterdir() if not p.name.startswith(".")]
    victim = next(p for p in folder.rglob("*") if p.is_file() and p.name not in ("manifest.json", "offsite.json"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    stat = victim.stat()
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    capfd.readouterr()
    with local_repository_gone(src.root):
        run = run_dag(without_retries(dagbag.get_dag("dbops_dr_drill")), {"targets": ["rsync"], "stores": ["redis"]})
    st = states(run)
    out = "".join(capfd.readouterr())
    assert run.state == "failed" and st["drill_redis[0]"] == "failed" and st["summary"] == "failed", st
    assert "DR drill: 1 failure(s)" in out and f"rsync: redis/{folder.name}: fetch failed" in out, out[-3000:]
    recorded = json.loads((Path(src.offsite["fetch_dir"]) / "dr_drill.json").read_text())["runs"][0]
    assert recorded["ok"] is False and any(victim.name in f for f in recorded["failures"]), recorded["failures"]


# --------------------------------------------------------------------------- point-in-time recovery from offsite

DB = "dr_pitr_app"
ADMIN_CONN, REPLICATION_CONN = "dbops_test_dr_admin", "dbops_test_dr_replication"


@pytest.fixture(scope="module")
def pitr_platform(airflow_db, devstack, pitr_cluster):
    cluster = pitr_cluster  # shared with the other PITR modules; this module streams on a slot of its own
    tmp = Path(tempfile.mkdtemp(prefix="dbops-dr-pitr-"))
    tmp.chmod(0o711)  # the scratch server's user passes through to its folder
    stack = cluster.stack(tmp / "backups", slot="dbops_dr_pitr")
    offsite = {**offsite_config(devstack, tmp), "targets": ["rsync"], "encryption": True}
    config = {
        "backup": {"root": str(tmp / "backups")},
        "connections": {"postgres": ADMIN_CONN, "postgres_replication": REPLICATION_CONN},
        "postgres": {"databases": [DB]},
        "pitr": {
            "enabled": True,
            "slot": stack.slot,
            "scratch_dir": str(tmp / "scratch"),
            "scratch_os_user": "dbops-pg",
            "wait_for_wal_s": 60,
        },
        "offsite": offsite,
    }
    env = {
        **cluster.connection_env(ADMIN_CONN, REPLICATION_CONN),
        "AIRFLOW_VAR_DBOPS_OFFSITE_KEY": os.urandom(32).hex(),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cluster.fresh_database(DB, "CREATE TABLE orders (id integer PRIMARY KEY)")
    stack.start_receiver()
    stack.wait_streaming()
    set_config(config)
    try:
        yield cluster, stack, config, tmp
    finally:
        from airflow.models.variable import Variable

        Variable.delete("dbops_config")
        stack.close()
        drop_pg(
            {
                "host": cluster.host,
                "port": cluster.port,
                "login": cluster.superuser,
                "password": cluster.superuser_password,
            },
            DB,
        )
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        remove_offsite(devstack, offsite)
        shutil.rmtree(tmp, ignore_errors=True)


def _insert(cluster: PitrCluster, first: int, last: int) -> None:
    with cluster.connect(DB) as conn:
        for n in range(first, last + 1):
            conn.execute("INSERT INTO orders (id) VALUES (%s)", [n])  # one commit each


def test_point_in_time_recovery_from_offsite_base_backup_and_wal(pitr_platform, dagbag, devstack, capfd):
    from dbops.backup.repository import BackupRepository
    from dbops.offsite.crypto import Encryption, parse_key
    from dbops.offsite.restore import fetch_backup
    from dbops.offsite.rsync import RsyncTarget
    from dbops.offsite.wal_fetch import fetch_wal_archive
    from dbops.pitr.recovery import RecoveryTarget, read_markers, restore_pitr
    from dbops.pitr.wal import BASE_STORE
    from dbops.stores.postgres.backup import pg_connect as endpoint_connect
    from dbops.tasks.restore import PITR_WAL_FOLDER
    from tests.support import Log

    cluster, stack, config, tmp = pitr_platform
    _insert(cluster, 1, 10)
    base = run_dag(without_retries(dagbag.get_dag("dbops_base_backup")), {"retention_dry_run": False})
    assert base.state == "success", states(base)
    wal_check = without_retries(dagbag.get_dag("dbops_wal_check"))
    assert run_dag(wal_check).state == "success"  # a marker, and the sealed WAL shipped
    _insert(cluster, 11, 20)
    time.sleep(1.1)
    target_time = datetime.now(UTC)
    time.sleep(1.1)
    _insert(cluster, 21, 30)  # committed after the target: must not be recovered
    assert run_dag(wal_check).state == "success"  # a second marker
    with cluster.connect() as conn:
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
    stack.wait_sealed(segment, timeout=60)
    assert run_dag(wal_check).state == "success"  # ships the WAL holding both markers and rows 21..30
    nightly = run_dag(
        without_retries(dagbag.get_dag("dbops_nightly_backup")),
        {"stores": ["postgres"], "retention_days": 30, "min_keep": 3, "retention_dry_run": False, "force": False},
    )
    assert nightly.state == "success", states(nightly)
    sync = run_dag(
        without_retries(dagbag.get_dag("dbops_offsite_sync")),
        {
            "targets": ["rsync"],
            "stores": ["postgres", BASE_STORE],
            "retention_days": 30,
            "min_keep": 3,
            "dry_run": False,
            "retention_dry_run": False,
            "deep_verify": False,
        },
    )
    assert sync.state == "success", states(sync)
    stack.stop_receiver()  # the backup host is lost: its receiver with it
    offsite_wal = Path(config["offsite"]["rsync_remote_dir"]) / "postgres_wal" / "segments"
    assert {p.suffix for p in offsite_wal.iterdir() if not p.name.startswith(".")} == {".enc"}  # WAL left encrypted

    root = tmp / "backups"
    key = Encryption(parse_key(os.environ["AIRFLOW_VAR_DBOPS_OFFSITE_KEY"]))
    log = Log()
    with local_repository_gone(root):
        # a restore to a time between two commits, from the offsite copies alone
        repo = BackupRepository(tmp / "restore-fetch")
        point = RecoveryTarget.parse("time", target_time.isoformat(), now=datetime.now(UTC))
        with RsyncTarget(
            ssh_params(devstack.conn("dbops_offsite_ssh")), config["offsite"]["rsync_remote_dir"]
        ) as target:
            (item,) = [b for b in target.catalog(log).all() if b.key.store == BASE_STORE]
            fetched = fetch_backup(target, repo, BASE_STORE, None, item.backup_id, encryption=key, log=log)
            system_id = fetched.manifest["details"]["system_identifier"]
            archive = fetch_wal_archive(
                target,
                tmp / "restore-wal",
                system_identifier=system_id,
                encryption=key,
                base=fetched,
                up_to=target_time,
                log=log,
            )
            plan, scratch = restore_pitr(
                repo,
                archive,
                point,
                now=datetime.now(UTC),
                backup_id=fetched.backup_id,
                scratch_dir=tmp / "scratch",
                server_bin=None,
                os_user="dbops-pg",
                log=log,
            )
            try:
                with endpoint_connect(scratch.endpoint(DB), DB) as conn:
                    rows = [r[0] for r in conn.execute("SELECT id FROM orders ORDER BY id")]
                markers = read_markers(scratch.endpoint())
            finally:
                scratch.stop(log=log)
            # a rerun of the WAL fetch keeps what is there and intact: nothing downloaded again
            fetch_wal_archive(
                target,
                tmp / "restore-wal",
                system_identifier=system_id,
                encryption=key,
                base=fetched,
                up_to=target_time,
                log=log,
            )
        assert rows == list(range(1, 21))
        assert markers is not None and all(m.at <= target_time for m in markers)
        assert plan.backup.backup_id == fetched.backup_id and plan.wal_segments >= 1
        # (the files counted include the timeline history files the cluster may have)
        rerun = re.search(r"(\d+) already fetched and intact, 0 to fetch", log.text)
        assert rerun and int(rerun.group(1)) >= plan.wal_segments, log.lines[-5:]

        # without the key nothing encrypted comes back: refused before any download
        saved_key = os.environ.pop("AIRFLOW_VAR_DBOPS_OFFSITE_KEY")
        try:
            capfd.readouterr()
            refused = run_dag(
                without_retries(dagbag.get_dag("dbops_dr_drill")), {"targets": ["rsync"], "stores": ["postgres"]}
            )
        finally:
            os.environ["AIRFLOW_VAR_DBOPS_OFFSITE_KEY"] = saved_key
        assert refused.state == "failed" and states(refused)["plan"] == "failed", states(refused)
        assert "dbops_offsite_key is missing or empty" in "".join(capfd.readouterr())
        assert fetched_backups(Path(config["offsite"]["fetch_dir"])) == []

        # the DR drill: the pg_dump backups and point-in-time recovery, a writer busy on the live cluster
        with cluster.writer() as writer:
            run = run_dag(
                without_retries(dagbag.get_dag("dbops_dr_drill")), {"targets": ["rsync"], "stores": ["postgres"]}
            )
        assert writer.rows > 0
    st = states(run)
    assert run.state == "success", st
    assert st["drill_postgres_pitr[0]"] == "success" and st["summary"] == "success", st
    result = task_result(run, "summary", key="result")
    pitr = next(r for r in result["rto"] if r["series"] == "postgres point-in-time")
    assert pitr["ok"] is True and pitr["target"] == "rsync" and pitr["rto_s"] > 0
    assert {r["series"] for r in result["rto"]} == {f"postgres/{DB}", "postgres/_globals", "postgres point-in-time"}
    assert set(result["rto_by_store"]["rsync"]) == {"postgres", "postgres_pitr"}
    assert fetched_backups(Path(config["offsite"]["fetch_dir"])) == []
    assert not (Path(config["offsite"]["fetch_dir"]) / "rsync" / PITR_WAL_FOLDER).exists()
