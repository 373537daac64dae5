"""dbops_restore_drill as Airflow runs it (``dag.test``), on real backups taken by
dbops_nightly_backup of the local stores; the tests run in file order (the last one
corrupts a backup)."""

from __future__ import annotations

import pytest

from dbops.backup.repository import BackupRepository
from tests.conftest import run_dag, task_result, without_retries
from tests.integration.restore_sources import STORES, backed_up_sources, kafka_topics, set_config, states
from tests.support import mongo_client, pg_connect, store_drill

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def src(devstack, dagbag, tmp_path_factory):
    root = tmp_path_factory.mktemp("drill") / "backups"
    with backed_up_sources(devstack, dagbag, root) as sources:
        sources.repo = BackupRepository(root)
        yield sources


@pytest.fixture(scope="module")
def dag(dagbag):
    return without_retries(dagbag.get_dag("dbops_restore_drill"))


def _scratch_left(src) -> dict[str, list[str]]:
    with pg_connect(src.pg, "postgres") as c:
        pg = [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datname LIKE 'dbops\\_drill\\_%'")]
    with mongo_client(src.mongo) as client:
        mongo = [n for n in client.list_database_names() if n.startswith("dbops_drill_")]
    topics = sorted(t for t in kafka_topics(src.kafka) if t.startswith("dbops_drill_"))
    return {"postgres": pg, "mongo": mongo, "kafka": topics}


def test_the_drill_is_green_on_good_backups_records_it_and_leaves_no_scratch(src, dag):
    series = {("postgres", src.pg_db), ("postgres", "_globals"), ("mongo", None), ("redis", None), ("kafka", None)}
    chosen = {s: src.repo.latest(*s).backup_id for s in series}
    run = run_dag(dag, {"stores": STORES, "source": "local"})
    st = states(run)
    assert run.state == "success", st
    assert st["drill_postgres[0]"] == st["drill_postgres[1]"] == "success"
    for task in ("drill_mongo", "drill_redis", "drill_kafka", "summary"):
        assert st[task] == "success", (task, st)

    for (store, subject), backup_id in chosen.items():
        backup = src.repo.latest(store, subject)
        assert backup.backup_id == backup_id and backup.verified
        drill = backup.sidecars["drill"]
        assert drill["ok"] is True and drill["differences"] == [] and drill["run_id"] == run.run_id, (store, drill)
        assert drill["seconds"] >= 0 and "target" in drill
    pg = src.repo.latest("postgres", src.pg_db).sidecars["drill"]
    assert pg["target"].startswith(f"dbops_drill_{src.pg_db}_")
    assert any("2 tables, 350 rows restored" in n for n in pg["notes"])
    mongo = src.repo.latest("mongo").sidecars["drill"]
    assert mongo["target"] == [f"dbops_drill_{src.mongo_db}_{chosen[('mongo', None)].lower()}"]
    assert any("100 documents restored" in n for n in mongo["notes"])
    redis_notes = src.repo.latest("redis").sidecars["drill"]["notes"]
    assert any("loaded by a scratch redis-server and copied with MIGRATE into a second one" in n for n in redis_notes)
    assert _scratch_left(src) == {"postgres": [], "mongo": [], "kafka": []}
    summary = task_result(run, "summary", key="result")
    assert set(summary["drilled"]) == {"postgres/" + src.pg_db, "postgres/_globals", "mongo", "redis", "kafka"}
    # the run's summary (the return value shown in the UI): each series and what the drill found
    text = task_result(run, "summary")
    assert text.startswith("restore drill of the local backups: 5 drilled, all equal to their backups"), text
    assert f"redis/{chosen[('redis', None)]}: equal, restored into " in text, text


def test_a_drill_that_finds_no_backup_fails(src, dag, tmp_path, capfd):
    """A wrong backup root must not look green (on the old main: success, "nothing to drill")."""
    empty = tmp_path / "wrong-root"
    empty.mkdir(mode=0o700)
    set_config({**src.config, "backup": {"root": str(empty)}})
    try:
        capfd.readouterr()
        run = run_dag(dag, {"stores": STORES, "source": "local"})
    finally:
        set_config(src.config)
    st = states(run)
    assert run.state == "failed" and st["summary"] == "failed", st
    out = "".join(capfd.readouterr())
    for store in STORES:
        assert f"{store}: no backups in {empty}: nothing to drill" in out, store


def test_a_drill_failing_after_its_restore_removes_the_scratch_and_a_rerun_converges(src, dag, monkeypatch, capfd):
    from dbops.backup import restore as r
    from dbops.stores.mongo import recovery as mongo_recovery

    def broken(*args, **kwargs):
        raise RuntimeError("comparison crashed")

    backup_id = src.repo.latest("mongo").backup_id
    with monkeypatch.context() as patch:
        patch.setattr(mongo_recovery, "compare_mongo", broken)
        run = run_dag(dag, {"stores": ["mongo"], "source": "local"})
    st = states(run)
    assert run.state == "failed" and st["drill_mongo"] == "failed" and st["summary"] == "failed", st
    drill = src.repo.list("mongo")[-1].sidecars["drill"]
    assert drill["ok"] is False and drill["differences"] == ["restore failed: RuntimeError: comparison crashed"]
    # the run's summary names the difference itself, although the summary task failed
    text = task_result(run, "summary")
    assert f"mongo/{backup_id}: restore failed: RuntimeError: comparison crashed" in text, text
    assert src.repo.latest("mongo") is None
    assert _scratch_left(src)["mongo"] == []  # dropped although the drill failed after restoring

    assert task_result(run, "plan")["backups"]["mongo"] == backup_id

    # a new run has no verified mongo backup left to drill, and says why
    capfd.readouterr()
    again = run_dag(dag, {"stores": ["mongo"], "source": "local"})
    st = states(again)
    assert again.state == "failed" and st["drill_mongo"] == "skipped" and st["summary"] == "failed", st
    assert f"mongo: no verified backup to drill (newest {backup_id}: drill failed" in "".join(capfd.readouterr())

    # clearing the failed drill task reruns it on the backup the plan chose: what the task does
    from dbops.tasks.drill import log

    backup = r.resolve_backup(src.repo, "mongo", None, backup_id)
    result = r.run_drill(
        src.repo,
        backup,
        target="scratch",
        drill=store_drill("mongo", log.info),
        run_id=run.run_id,
        dag_id=run.dag_id,
        log=log.info,
    )
    assert result["ok"] is True, result
    assert src.repo.latest("mongo").backup_id == backup_id  # verified again
    assert _scratch_left(src)["mongo"] == []


def test_a_flipped_byte_fails_the_drill_and_the_backup_is_no_longer_verified(src, dag, capfd, dagbag):
    backup = src.repo.latest("postgres", src.pg_db)
    data_file = next(
        f["path"] for f in backup.manifest["files"] if f["path"].startswith("dump/") and ".dat" in f["path"]
    )
    path = backup.path / data_file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    capfd.readouterr()
    run = run_dag(dag, {"stores": ["postgres"], "source": "local"})
    st = states(run)
    out = "".join(capfd.readouterr())
    assert run.state == "failed", st
    assert st["drill_postgres[0]"] == "failed" or st["drill_postgres[1]"] == "failed", st
    assert st["summary"] == "failed", st
    assert f"corrupted: changed:{data_file}" in out and "the backup is now marked not verified" in out

    after = next(b for b in src.repo.list("postgres", src.pg_db) if b.backup_id == backup.backup_id)
    assert not after.verified
    drill = after.sidecars["drill"]
    assert drill["ok"] is False and drill["run_id"] == run.run_id
    assert any(d.startswith(f"corrupted: changed:{data_file}") for d in drill["differences"])
    assert src.repo.latest("postgres", src.pg_db) is None  # retention's min_keep no longer counts it
    assert src.repo.latest("postgres", "_globals").sidecars["drill"]["ok"] is True  # the others are fine
    assert _scratch_left(src)["postgres"] == []

    # a restore of "latest" now refuses: there is no verified backup left
    restore = without_retries(dagbag.get_dag("dbops_restore"))
    capfd.readouterr()
    run = run_dag(
        restore,
        {
            "store": "postgres",
            "source": "local",
            "backup_id": "latest",
            "database": src.pg_db,
            "target": "",
            "confirm_overwrite": "",
            "topics": [],
            "target_time": "",
            "target_lsn": "",
            "target_name": "",
        },
    )
    assert run.state == "failed" and states(run)["plan"] == "failed"
    assert f"no verified backup of postgres/{src.pg_db}" in "".join(capfd.readouterr())
