"""One byte flipped in a stored backup (pg_dump directory, mongodump archive, RDB): the verify
step and the restore drill name the file and fail; retention does not count the damaged
backup, so it cannot make an older good one obsolete."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dbops.backup.restore import CorruptBackup, run_drill, verify_files
from dbops.backup.retention import RetentionPolicy, apply_retention
from dbops.stores.mongo.backup import MongoBackup
from dbops.stores.postgres.backup import PostgresDatabaseBackup
from dbops.stores.redis.backup import RedisBackup
from tests.reliability.faults import backup_now, endpoint_of, fill_redis, redis_endpoint
from tests.support import Log, mongo_client, pg_connect, store_drill

pytestmark = pytest.mark.integration


def flip_one_byte(path) -> int:
    """XOR one byte in the middle of ``path`` (size and mtime-free content change); its offset."""
    data = bytearray(path.read_bytes())
    offset = len(data) // 2
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    return offset


def largest_file(backup) -> str:
    """The backup's biggest data file (relative path), the one a flipped bit most likely hits."""
    files = [f for f in backup.manifest["files"] if f["path"] != "source_description.json"]
    return max(files, key=lambda f: f["bytes"])["path"]


@pytest.fixture
def postgres_case(repo, pg_conn, pg_database):
    with pg_connect(pg_conn, pg_database) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, label text)")
        conn.execute("INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
        conn.commit()
    endpoint = endpoint_of(pg_conn)
    adapter = PostgresDatabaseBackup(endpoint, pg_database, jobs=1)
    drill = store_drill("postgres")
    return adapter, pg_database, drill


@pytest.fixture
def mongo_case(repo, mongo_conn, mongo_database):
    with mongo_client(mongo_conn) as client:
        client[mongo_database].items.insert_many([{"i": i, "label": f"item {i}"} for i in range(2000)])
    endpoint = endpoint_of(mongo_conn)
    drill = store_drill("mongo")
    return MongoBackup(endpoint, mongo_database), None, drill


@pytest.fixture
def redis_case(repo, scratch_redis):
    fill_redis(scratch_redis, 2000, value_bytes=64)
    drill = store_drill("redis")
    return RedisBackup(redis_endpoint(scratch_redis)), None, drill


@pytest.mark.parametrize("store", ["postgres", "mongo", "redis"])
def test_a_flipped_byte_is_caught_and_not_counted(store, request, repo):
    adapter, subject, drill = request.getfixturevalue(f"{store}_case")
    good = backup_now(repo, adapter, subject=subject, run_id="scheduled__day1")
    damaged = backup_now(repo, adapter, subject=subject, run_id="scheduled__day2")
    backups = {b.backup_id: b for b in repo.list(store, subject)}
    victim = largest_file(backups[damaged.backup_id])
    flip_one_byte(backups[damaged.backup_id].path / victim)
    assert backups[damaged.backup_id].verified  # nothing on disk says so yet: the checks must find it

    # the verify step: the file is named, the rest is fine
    checks = repo.verify(backups[damaged.backup_id])
    failed = {c["name"]: c["detail"] for c in checks if not c["ok"]}
    assert set(failed) == {f"changed:{victim}", "files"}, failed
    assert "manifest says" in failed[f"changed:{victim}"]
    assert all(c["ok"] for c in repo.verify(backups[good.backup_id]))
    # a restore refuses it before touching any target
    with pytest.raises(CorruptBackup, match=f"corrupted, refusing to restore it: changed:{victim}"):
        verify_files(repo, backups[damaged.backup_id], Log())

    # the restore drill of the damaged backup fails, names the file, and records it
    log = Log()
    result = run_drill(
        repo,
        backups[damaged.backup_id],
        target="scratch",
        drill=drill,
        run_id="drill__1",
        dag_id="dbops_restore_drill",
        log=log,
    )
    assert result["ok"] is False
    assert any(d.startswith(f"corrupted: changed:{victim}:") for d in result["differences"]), result["differences"]
    assert f"MISMATCH {store}" in log.text and victim in log.text
    assert repo.latest(store, subject).backup_id == good.backup_id  # no longer the latest verified one

    # retention, after a third (good) backup, with everything "old": the damaged backup is
    # not counted, so the older good one stays (min_keep 2 needs two good newer ones)
    newest = backup_now(repo, adapter, subject=subject, run_id="scheduled__day3")
    later = repo.list(store, subject)[-1].finished_at + timedelta(days=40)
    decisions = apply_retention(
        repo, store, subject, RetentionPolicy(30, 2), now=later, new_backup_id=newest.backup_id, dry_run=False
    )
    assert all(d.keep for d in decisions), [(d.backup.backup_id, d.reason) for d in decisions]
    assert [b.backup_id for b in repo.list(store, subject)] == [good.backup_id, damaged.backup_id, newest.backup_id]


def test_retention_re_reads_its_witnesses_before_deleting(repo, scratch_redis):
    """The damage is not yet known to any verify or drill: retention itself re-reads the
    backups that would make an older one obsolete, records the failure and keeps the old one."""
    fill_redis(scratch_redis, 500, value_bytes=64)
    adapter = RedisBackup(redis_endpoint(scratch_redis))
    ids = [backup_now(repo, adapter, run_id=f"scheduled__day{i}").backup_id for i in range(1, 4)]
    oldest, middle, newest = repo.list("redis")
    flip_one_byte(middle.path / "dump.rdb")
    log = Log()
    later = newest.finished_at + timedelta(days=40)
    decisions = apply_retention(
        repo, "redis", None, RetentionPolicy(30, 2), now=later, new_backup_id=ids[-1], dry_run=False, log=log
    )
    assert all(d.keep for d in decisions)
    assert [b.backup_id for b in repo.list("redis")] == ids
    assert f"redis {middle.backup_id} no longer matches its manifest" in log.text and "changed:dump.rdb" in log.text
    recorded = repo.list("redis")[1].sidecars["verify"]
    assert recorded["ok"] is False and "changed:dump.rdb" in recorded["detail"]

    # with the damage known, a fourth good backup makes two good ones newer than the oldest:
    # it goes, and so does the damaged one (old, and two verified backups are newer)
    fourth = backup_now(repo, adapter, run_id="scheduled__day4")
    decisions = apply_retention(
        repo,
        "redis",
        None,
        RetentionPolicy(30, 2),
        now=later + timedelta(hours=1),
        new_backup_id=fourth.backup_id,
        dry_run=False,
    )
    assert [d.backup.backup_id for d in decisions if not d.keep] == [oldest.backup_id, middle.backup_id]
    assert [b.backup_id for b in repo.list("redis")] == [newest.backup_id, fourth.backup_id]
