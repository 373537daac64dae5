"""dbops_restore and dbops_restore_drill from the offsite copies (``source`` s3 / rsync), as
Airflow runs them (``dag.test``), against the real local SeaweedFS and sshd, with the local
repository gone: a Postgres backup taken by dbops_nightly_backup, shipped by
dbops_offsite_sync to rsync (encrypted) and S3 (not), then restored and drilled from there.
The tests run in file order (the drill reuses nothing the restores left)."""

from __future__ import annotations

import copy
import os
import uuid
from types import SimpleNamespace

import pytest

from dbops.backup.repository import BackupRepository
from dbops.config import deep_merge
from tests.conftest import run_dag, task_result, without_retries
from tests.integration.restore_sources import _postgres as create_pg_source
from tests.integration.restore_sources import drop_pg, pg_rows, set_config, states
from tests.offsite_support import Log, empty_prefix, local_repository_gone, remote_dir, remove_remote

pytestmark = pytest.mark.integration

RESTORE = {
    "store": "postgres",
    "source": "local",
    "backup_id": "latest",
    "database": "",
    "target": "",
    "confirm_overwrite": "",
    "topics": [],
    "target_time": "",
    "target_lsn": "",
    "target_name": "",
}


def sync_conf(target: str) -> dict:
    return {
        "targets": [target],
        "stores": ["postgres"],
        "retention_days": 30,
        "min_keep": 3,
        "dry_run": False,
        "retention_dry_run": False,
        "deep_verify": False,
    }


@pytest.fixture(scope="module")
def env(devstack, dagbag, tmp_path_factory):
    base = tmp_path_factory.mktemp("offsite-restore")
    tag = uuid.uuid4().hex[:8]
    s3 = devstack.service("s3")
    e = SimpleNamespace(
        pg=devstack.conn("dbops_postgres"),
        db=f"dbops_test_{tag}",
        root=base / "backups",
        fetch=base / "fetch",
        remote=remote_dir(devstack),
        prefix=f"restore-offsite-{tag}",
        client=s3.client(),
        bucket=s3.environment()["DBOPS_OFFSITE__S3_BUCKET"],
    )
    e.config = {
        "backup": {"root": str(e.root)},
        "postgres": {"databases": [e.db]},
        "pitr": {"enabled": False},
        "offsite": {
            "rsync_remote_dir": str(e.remote),
            "s3_prefix": e.prefix,
            "s3_bucket": e.bucket,
            "fetch_dir": str(e.fetch),
        },
    }
    from airflow.models.variable import Variable

    dags = {
        d: dagbag.get_dag(d)
        for d in ("dbops_restore", "dbops_restore_drill", "dbops_offsite_sync", "dbops_nightly_backup")
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_VAR_DBOPS_OFFSITE_KEY", os.urandom(32).hex())
        try:
            create_pg_source(e.pg, e.db)
            set_config(e.config)
            run = run_dag(dags["dbops_nightly_backup"], {"stores": ["postgres"]})
            assert run.state == "success", states(run)
            set_config(deep_merge(e.config, {"offsite": {"encryption": True}}))
            run = run_dag(dags["dbops_offsite_sync"], sync_conf("rsync"))
            assert run.state == "success", states(run)
            set_config(e.config)
            run = run_dag(dags["dbops_offsite_sync"], sync_conf("s3"))
            assert run.state == "success", states(run)
            e.backup = BackupRepository(e.root).latest("postgres", e.db)
            e.restore = without_retries(dags["dbops_restore"])
            e.drill = without_retries(dags["dbops_restore_drill"])
            yield e
        finally:
            Variable.delete("dbops_config")
            drop_pg(e.pg, e.db)
            remove_remote(e.remote)
            empty_prefix(e.client, e.bucket, e.prefix)


def restore(e, **conf):
    run = run_dag(e.restore, {**RESTORE, **conf})
    return run, states(run)


def fetched(e, target: str) -> list[str]:
    return [b.backup_id for b in BackupRepository(e.fetch / target).list("postgres", e.db)]


def test_restore_from_s3_with_the_local_repository_gone(env):
    target = f"{env.db}_from_s3"
    try:
        with local_repository_gone(env.root):
            run, st = restore(env, source="s3", database=env.db, target=target)
        assert run.state == "success", st
        planned = task_result(run, "plan")
        assert planned["backup_id"] == env.backup.backup_id and planned["offsite"]["target"] == "s3"
        assert planned["offsite"]["needed_bytes"] >= env.backup.total_bytes > 0
        result = task_result(run, "restore_postgres")
        assert result["differences"] == [] and result["target"] == target
        assert result["offsite"]["fetched"]["encrypted"] is False
        assert pg_rows(env.pg, target) == pg_rows(env.pg, env.db)  # vectors included
        assert fetched(env, "s3") == []  # restored and equal: the scratch copy is removed
    finally:
        drop_pg(env.pg, target)


def test_restore_from_rsync_resumes_an_interrupted_download_and_decrypts(env):
    from dbops.offsite.common import SeriesKey
    from dbops.offsite.restore import download_folder, fetch_repository
    from dbops.runtime import open_target, runtime_config

    # an earlier attempt got every file but the largest (as a killed download leaves it)
    config = runtime_config(env.config)  # outside a task the Variable is not read
    folder = download_folder(fetch_repository(config, "rsync"), "postgres", env.db, env.backup.backup_id)
    with open_target("rsync", config) as target:
        target.download(SeriesKey("postgres", env.db), env.backup.backup_id, folder, Log())
    stored = sorted((p for p in folder.rglob("*.enc")), key=lambda p: p.stat().st_size)
    assert len(stored) == len(env.backup.manifest["files"]) >= 3  # encrypted, one .enc per file
    stored[-1].unlink()

    target = f"{env.db}_from_rsync"
    try:
        with local_repository_gone(env.root):
            run, st = restore(env, source="rsync", database=env.db, target=target)
        assert run.state == "success", st
        result = task_result(run, "restore_postgres")
        assert result["differences"] == []
        origin = result["offsite"]["fetched"]
        assert origin["encrypted"] is True and origin["resumed"] is True
        assert origin["download"]["files_transferred"] == 1  # only the missing file came again
        assert pg_rows(env.pg, target) == pg_rows(env.pg, env.db)
        assert not folder.exists() and fetched(env, "rsync") == []
    finally:
        drop_pg(env.pg, target)


def test_bad_sources_are_refused_before_any_work(env, capfd):
    for dag in (env.restore, env.drill):
        params = copy.deepcopy(dag.params)
        with pytest.raises(Exception, match="source"):
            params["source"] = "ftp"
            params.validate()
    set_config(deep_merge(env.config, {"offsite": {"targets": ["s3"]}}))
    try:
        capfd.readouterr()
        run, st = restore(env, source="rsync", database=env.db)
        assert run.state == "failed" and st["plan"] == "failed" and st["restore_postgres"] == "upstream_failed", st
        assert "source 'rsync' is not a configured offsite target (offsite.targets: ['s3'])" in "".join(
            capfd.readouterr()
        )
    finally:
        set_config(env.config)
    run, st = restore(env, source="s3", target_time="latest", database=env.db)  # S3 holds no base backup
    assert run.state == "failed" and st["plan"] == "failed", st
    assert "refused before any work: no usable base backup on " in "".join(capfd.readouterr())
    assert fetched(env, "s3") == [] and fetched(env, "rsync") == []


def test_a_tampered_offsite_copy_is_refused_before_anything_is_restored(env, capfd):
    data = next(
        f["path"] for f in env.backup.manifest["files"] if f["path"].startswith("dump/") and ".dat" in f["path"]
    )
    key = f"{env.prefix}/postgres/{env.db}/{env.backup.backup_id}/{data}"
    original = env.client.get_object(Bucket=env.bucket, Key=key)["Body"].read()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0x01
    target = f"{env.db}_tampered"
    env.client.put_object(Bucket=env.bucket, Key=key, Body=bytes(changed))
    try:
        capfd.readouterr()
        with local_repository_gone(env.root):
            run, st = restore(env, source="s3", database=env.db, target=target)
        assert run.state == "failed" and st["plan"] == "success" and st["restore_postgres"] == "failed", st
        out = "".join(capfd.readouterr())
        assert "the offsite copy is not intact, nothing was restored" in out and data in out
        from tests.support import pg_connect

        with pg_connect(env.pg, "postgres") as c:
            assert c.execute("SELECT 1 FROM pg_database WHERE datname = %s", [target]).fetchall() == []
        assert fetched(env, "s3") == []
        staging = env.fetch / "s3" / "postgres" / env.db / ".staging"
        assert not staging.exists() or not any(staging.iterdir())  # a bad copy's download is not kept
    finally:
        env.client.put_object(Bucket=env.bucket, Key=key, Body=original)
        drop_pg(env.pg, target)


def test_the_drill_from_s3_passes_and_records_beside_the_fetched_copy(env):
    with local_repository_gone(env.root):
        run = run_dag(env.drill, {"stores": ["postgres"], "source": "s3"})
    st = states(run)
    assert run.state == "success", st
    assert st["drill_postgres[0]"] == st["drill_postgres[1]"] == st["summary"] == "success", st
    assert st["local_only"] == st["drill_postgres_pitr"] == "skipped", st
    summary = task_result(run, "summary", key="result")
    assert summary["source"] == "s3" and set(summary["drilled"]) == {f"postgres/{env.db}", "postgres/_globals"}
    assert summary["drilled"][f"postgres/{env.db}"]["download"]["seconds"] >= 0
    copy_ = BackupRepository(env.fetch / "s3").latest("postgres", env.db)
    assert copy_.backup_id == env.backup.backup_id
    drill = copy_.sidecars["drill"]
    assert drill["ok"] is True and drill["run_id"] == run.run_id and drill["differences"] == []
    assert copy_.sidecars["fetched"]["target"] == "s3"
    # the local backup was not touched: no drill recorded there
    assert "drill" not in BackupRepository(env.root).latest("postgres", env.db).sidecars
