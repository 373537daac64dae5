"""Point-in-time recovery end to end against a real PostgreSQL 16 (tests/pitr_support.py):
base backups published only with their WAL sealed, restores to a time between two known
commits and to the end of the received WAL, one database copied into the live cluster, targets
outside the window refused before any work, the PITR drill (and its failure on a removed WAL
segment), damage found by sha256 and pg_verifybackup.

One receiver and one base backup for the module; segments are completed with pg_switch_wal()
instead of writing 16 MiB each. The scratch servers run as devstack's ``dbops-pg`` (the tests
run as root, PostgreSQL refuses root), in a folder it can reach.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from dbops.backup.adapter import Endpoint, RestoreRefused
from dbops.backup.repository import BackupRepository, parse_time
from dbops.backup.restore import CorruptBackup, verify_files
from dbops.pitr.basebackup import BaseBackupRefused, open_tar, resolve_compression, take_base_backup
from dbops.pitr.recovery import (
    RecoveryFailed,
    RecoveryRefused,
    RecoveryTarget,
    check_copy_target,
    copy_database,
    drill_pitr,
    read_markers,
    restore_pitr,
    target_from_params,
    verify_extracted,
    write_marker,
)
from dbops.pitr.wal import BASE_STORE, parse_lsn
from tests.pitr_support import PitrCluster, wait_for
from tests.support import Log

pytestmark = pytest.mark.integration

OS_USER = "dbops-pg"  # devstack's server user: the scratch servers run as it (the tests run as root)
TABLE = "pitr_rows"
# a cluster of its own (tests/pitr_support.py's server code, another name and port), so that
# the receiver tests running at the same time never stop it under these ones
CLUSTER_NAME, CLUSTER_PORT = "postgres-pitr-recovery", 55447


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Env:
    def __init__(self, cluster: PitrCluster, root: Path) -> None:
        self.cluster = cluster
        self.root = root
        self.stack = cluster.stack(root / "backups")
        self.repo = BackupRepository(root / "backups")
        self.archive = self.stack.archive
        self.admin = Endpoint(
            host=cluster.host,
            port=cluster.port,
            login=cluster.superuser,
            password=cluster.superuser_password,
            database="postgres",
        )
        self.replication = Endpoint(
            host=cluster.host,
            port=cluster.port,
            login=cluster.replication_user,
            password=cluster.replication_password,
            database="postgres",
        )
        self.scratch = root / "scratch"
        self.server_bin = Path(os.path.realpath(shutil.which("pg_basebackup"))).parent

    def base_backup(self, log: Log, run_id: str | None = None):
        return take_base_backup(
            self.repo,
            self.archive,
            endpoint=self.replication,
            admin=self.admin,
            compression="auto",
            wait_for_wal_s=60,
            run_id=run_id or f"test_{uuid.uuid4().hex[:8]}",
            dag_id="dbops_base_backup",
            logical_date=None,
            log=log,
        )

    def restore(self, target: RecoveryTarget, log: Log, **kw):
        return restore_pitr(
            self.repo,
            self.archive,
            target,
            now=datetime.now(UTC),
            scratch_dir=self.scratch,
            server_bin=self.server_bin,
            os_user=OS_USER,
            log=log,
            **kw,
        )

    def wait_received(self) -> None:
        """Until the receiver has written every WAL byte the server has written so far."""
        lsn = self.stack.current_lsn()

        def received() -> bool:
            with self.cluster.connect() as conn:
                row = conn.execute(
                    "SELECT write_lsn::text FROM pg_stat_replication r JOIN pg_replication_slots s "
                    "ON s.active_pid = r.pid WHERE s.slot_name = %s",
                    [self.stack.slot],
                ).fetchone()
            return bool(row and row[0] and parse_lsn(row[0]) >= lsn)

        wait_for(received, 30, "the receiver to get the latest WAL")


@pytest.fixture(scope="module")
def env():
    cluster = PitrCluster.up(CLUSTER_NAME, CLUSTER_PORT)
    # the scratch servers' user must pass through every parent folder (pytest's tmp is 0700)
    root = Path(tempfile.mkdtemp(prefix="dbops-pitr-test-"))
    root.chmod(0o711)
    e = Env(cluster, root)
    e.stack.start_receiver()
    e.stack.wait_streaming()
    with cluster.connect() as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(TABLE)))
        conn.execute(
            sql.SQL("CREATE TABLE {} (id integer PRIMARY KEY, note text NOT NULL)").format(sql.Identifier(TABLE))
        )
    try:
        yield e
    finally:
        e.stack.close()
        shutil.rmtree(root, ignore_errors=True)
        if cluster.started_here:
            cluster.down()


@pytest.fixture(scope="module")
def base(env):
    log = Log()
    backup = env.base_backup(log)
    return backup, log


def test_base_backup_published_with_its_wal_sealed(env, base):
    backup, log = base
    details = backup.manifest["details"]
    assert backup.store == BASE_STORE and backup.verified
    assert details["system_identifier"] == env.cluster.system_identifier() == env.archive.header()["system_identifier"]
    assert {
        "timeline",
        "start_lsn",
        "stop_lsn",
        "start_segment",
        "stop_segment",
        "wal_segment_size",
        "consistent_at",
        "server_version",
        "compression",
    } <= set(details)
    assert parse_lsn(details["start_lsn"]) < parse_lsn(details["stop_lsn"])
    # auto: the best this pg_basebackup has (the stack's 16.14 tools have zstd), detected, not assumed
    assert details["compression"] == resolve_compression("auto") == "zstd:1"
    assert sorted(f["path"] for f in backup.manifest["files"]) == ["backup_manifest", details["tar"]]
    # published only once its WAL was sealed: every segment from start to stop is in the catalog
    sealed = {e.name for e in env.archive.entries()}
    assert details["start_segment"] in sealed and details["stop_segment"] in sealed
    assert parse_time(details["consistent_at"]) <= backup.finished_at
    assert mode(backup.path) == 0o700
    for path in backup.path.iterdir():
        assert mode(path) == 0o600, path
    names = [c["name"] for c in backup.manifest["checks"]]
    assert {"wal sealed", "backup_manifest checksum", "tar matches backup_manifest", "system identifier"} <= set(names)
    assert env.cluster.replication_password not in log.text and env.cluster.superuser_password not in log.text
    # a rerun of the same run returns the published backup instead of taking another
    again = env.base_backup(Log(), run_id=backup.run_id)
    assert again.backup_id == backup.backup_id


def test_base_backup_refused_when_the_role_cannot_replicate(env):
    with env.cluster.connect() as conn:
        conn.execute("DROP ROLE IF EXISTS dbops_test_norepl")
        conn.execute("CREATE ROLE dbops_test_norepl LOGIN PASSWORD 'not-a-secret-x1'")
    try:
        endpoint = Endpoint(
            host=env.cluster.host, port=env.cluster.port, login="dbops_test_norepl", password="not-a-secret-x1"
        )
        before = sorted(p.name for p in env.repo.series_path(BASE_STORE).iterdir())
        with pytest.raises(BaseBackupRefused, match=r"dbops_test_norepl lacks the REPLICATION attribute"):
            take_base_backup(
                env.repo,
                env.archive,
                endpoint=endpoint,
                admin=env.admin,
                run_id="refused",
                dag_id="d",
                logical_date=None,
                log=Log(),
            )
        assert sorted(p.name for p in env.repo.series_path(BASE_STORE).iterdir()) == before
    finally:
        with env.cluster.connect() as conn:
            conn.execute("DROP ROLE IF EXISTS dbops_test_norepl")


def _rows(endpoint: Endpoint) -> list[int]:
    with psycopg.connect(host=endpoint.host, port=endpoint.port, user=endpoint.login, dbname="postgres") as conn:
        return [r[0] for r in conn.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(sql.Identifier(TABLE)))]


def test_restore_to_a_time_between_two_commits_gives_exactly_the_rows_before_it(env, base):
    # a writer commits rows with known ids while a base backup is taken; each row's commit lies
    # between the client's clock just before its INSERT and just after its commit returned
    spans: dict[int, tuple[datetime, datetime]] = {}
    stop = threading.Event()

    def writer() -> None:
        with env.cluster.connect() as conn:
            insert = sql.SQL("INSERT INTO {} (id, note) VALUES (%s, %s)").format(sql.Identifier(TABLE))
            row_id = 0
            while not stop.is_set():
                row_id += 1
                before = datetime.now(UTC)
                conn.execute(insert, [row_id, "row"])
                spans[row_id] = (before, datetime.now(UTC))
                time.sleep(0.03)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.3)
        backup = env.base_backup(Log())
        written = len(spans)
        wait_for(lambda: len(spans) >= written + 20, 30, "20 more rows after the base backup")
    finally:
        stop.set()
        thread.join(timeout=30)
    consistent = parse_time(backup.manifest["details"]["consistent_at"])
    during = [i for i in spans if spans[i][0] < consistent and spans[i][1] > parse_time(backup.manifest["started_at"])]
    assert during, "no row was committed while the base backup ran"
    k = next(i for i in sorted(spans) if spans[i][0] > consistent) + 10
    target_time = spans[k][1] + (spans[k + 1][0] - spans[k][1]) / 2
    assert spans[k][1] < target_time < spans[k + 1][0]
    env.stack.wait_sealed(env.stack.switch_wal())  # the commit after the target is in a sealed segment

    log = Log()
    target = target_from_params(target_time=target_time.isoformat(), now=datetime.now(UTC))
    plan, scratch = env.restore(target, log)
    try:
        assert plan.backup.backup_id == backup.backup_id  # the newest base backup consistent before the target
        assert _rows(scratch.endpoint()) == list(range(1, k + 1)), log.text[-3000:]
        assert any("recovery stopping before commit" in line for line in scratch.recovery_log), scratch.recovery_log
    finally:
        scratch.stop(remove=True)
    assert not scratch.root.exists()

    # latest: every row received, including those only in the segment still being received
    last = max(spans)
    with env.cluster.connect() as conn:
        conn.execute(
            sql.SQL("INSERT INTO {} (id, note) SELECT g, 'late' FROM generate_series(%s::int, %s::int) g").format(
                sql.Identifier(TABLE)
            ),
            [last + 1, last + 5],
        )
    env.wait_received()
    log = Log()
    _plan, scratch = env.restore(target_from_params(target_time="latest", now=datetime.now(UTC)), log)
    try:
        assert _rows(scratch.endpoint()) == list(range(1, last + 6)), log.text[-3000:]
        assert any("staged the segment being received" in line for line in log.lines)
    finally:
        scratch.stop(remove=True)


def test_copy_one_database_into_the_live_cluster_as_a_new_database(env, base):
    source = f"pitr_src_{uuid.uuid4().hex[:6]}"
    target = f"pitr_copy_{uuid.uuid4().hex[:6]}"
    with env.cluster.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(source)))
    with env.cluster.connect(source) as conn:
        conn.execute("CREATE TABLE items (id integer PRIMARY KEY, name text)")
        conn.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) g")
    env.wait_received()
    log = Log()
    _plan, scratch = env.restore(RecoveryTarget.parse("latest", "", now=datetime.now(UTC)), log)
    try:
        result = copy_database(scratch, source, env.admin, target, "", run_id="copy", dag_id="dbops_restore", log=log)
        assert result["differences"] == [] and result["target"] == target
        with env.cluster.connect(target) as conn:
            assert conn.execute("SELECT count(*), max(id) FROM items").fetchone() == (500, 500)
        # never over an existing database without confirm_overwrite naming it, refused before any work
        with pytest.raises(RestoreRefused, match="exists"):
            check_copy_target(env.admin, target, "")
        with pytest.raises(RestoreRefused, match="confirm_overwrite"):
            copy_database(scratch, source, env.admin, target, "", run_id="copy2", dag_id="dbops_restore", log=Log())
        with pytest.raises(RestoreRefused):
            check_copy_target(env.admin, "postgres", "postgres")
    finally:
        scratch.stop(remove=True)
        with env.cluster.connect() as conn:
            for name in (source, target):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_targets_outside_the_window_are_refused_before_any_work(env, base):
    now = datetime.now(UTC)
    consistent = parse_time(base[0].manifest["details"]["consistent_at"])
    env.scratch.mkdir(exist_ok=True)
    before = sorted(env.scratch.iterdir())
    with pytest.raises(RecoveryRefused, match=r"before the first base backup.*recovery window .* to "):
        env.restore(RecoveryTarget.parse("time", (consistent - timedelta(hours=1)).isoformat(), now=now), Log())
    future = (now + timedelta(hours=1)).isoformat()
    with pytest.raises(RecoveryRefused, match="in the future"):
        target_from_params(target_time=future, now=now)
    # a future target that got past the parse (its clock) is still refused by the plan, naming the window
    late = RecoveryTarget("time", future, time=now + timedelta(hours=1))
    with pytest.raises(RecoveryRefused, match=r"in the future.*recovery window"):
        env.restore(late, Log())
    with pytest.raises(RecoveryRefused, match="no time zone"):
        target_from_params(target_time="2026-12-01T10:00:00", now=now)
    with pytest.raises(RecoveryRefused, match="target_lsn 'x/y' is not an LSN"):
        target_from_params(target_lsn="x/y", now=now)
    with pytest.raises(RecoveryRefused, match="exactly one"):
        target_from_params(target_lsn="0/1", target_name="p", now=now)
    with pytest.raises(RecoveryRefused, match="longer than 63"):
        target_from_params(target_name="n" * 64, now=now)
    assert sorted(env.scratch.iterdir()) == before  # nothing was created


def test_a_flipped_byte_is_found_by_sha256_and_by_pg_verifybackup(env, base):
    backup = base[0]
    # in the repository: the sha256 of the manifest names the file before anything is extracted
    damaged = env.base_backup(Log())
    tar = damaged.path / damaged.manifest["details"]["tar"]
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    try:
        with pytest.raises(CorruptBackup, match=tar.name):
            verify_files(env.repo, damaged, Log())
    finally:
        env.repo.delete(damaged)
    # in an extracted copy: pg_verifybackup names the damaged file
    extracted = env.root / "extracted"
    extracted.mkdir(mode=0o700)
    with open_tar(backup.path / backup.manifest["details"]["tar"]) as stream:
        stream.extractall(extracted, filter="data")
    assert "backup successfully verified" in verify_extracted(
        extracted, backup.path / "backup_manifest", env.server_bin, Log()
    )
    victim = extracted / "global" / "pg_control"
    content = bytearray(victim.read_bytes())
    content[100] ^= 0xFF
    victim.write_bytes(bytes(content))
    with pytest.raises(RecoveryFailed, match="global/pg_control"):
        verify_extracted(extracted, backup.path / "backup_manifest", env.server_bin, Log())
    shutil.rmtree(extracted)


def test_restore_to_a_named_restore_point(env, base):
    table = sql.Identifier(f"pitr_named_{uuid.uuid4().hex[:8]}")  # the cluster outlives a session
    with env.cluster.connect() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id integer PRIMARY KEY)").format(table))
        conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(1, 10)").format(table))
        conn.execute("SELECT pg_create_restore_point('dbops_test_point')")
        conn.execute(sql.SQL("INSERT INTO {} SELECT generate_series(11, 20)").format(table))
    env.wait_received()
    log = Log()
    plan, scratch = env.restore(target_from_params(target_name="dbops_test_point", now=datetime.now(UTC)), log)
    try:
        assert any("cannot be placed in the WAL in advance" in note for note in plan.notes)
        with psycopg.connect(
            host=scratch.endpoint().host, port=scratch.port, user=scratch.superuser, dbname="postgres"
        ) as conn:
            assert conn.execute(sql.SQL("SELECT count(*), max(id) FROM {}").format(table)).fetchone() == (10, 10)
    finally:
        scratch.stop(remove=True)
    # a name no restore point has: the recovery fails with the server's own words, and is removed
    with pytest.raises(RecoveryFailed, match="recovery ended before configured recovery target was reached"):
        env.restore(target_from_params(target_name="dbops_no_such_point", now=datetime.now(UTC)), Log())
    assert sorted(os.listdir(env.scratch)) == []


def test_pitr_drill_passes_then_fails_on_a_removed_wal_segment(env, base):
    write_marker(env.admin, "postgres")  # the WAL check's markers
    log = Log()
    result = drill_pitr(
        env.repo,
        env.archive,
        env.admin,
        "postgres",
        scratch_dir=env.scratch,
        server_bin=env.server_bin,
        os_user=OS_USER,
        wait_for_wal_s=60,
        run_id="drill1",
        dag_id="dbops_restore_drill",
        log=log,
    )
    assert result["ok"] is True, (result, log.text[-4000:])
    assert any("pg_verifybackup: backup successfully verified" in n for n in result["notes"])
    backup = env.repo.list(BASE_STORE)[-1]
    assert result["backup_id"] == backup.backup_id  # the newest verified base backup
    recorded = backup.sidecars["drill"]
    assert recorded["ok"] is True and recorded["target"].startswith("recovery_target_time")
    assert sorted(os.listdir(env.scratch)) == []  # the scratch server is stopped and removed
    markers = read_markers(env.admin, "postgres")
    assert len([m for m in markers if m.at > parse_time(backup.manifest["details"]["consistent_at"])]) >= 2

    # a segment of the chain removed from the archive: the drill fails, naming it
    stop = backup.manifest["details"]["stop_segment"]
    sealed = [e for e in env.archive.entries() if e.kind == "segment" and e.name > stop]
    assert sealed, "no sealed segment after the base backup's stop"
    victim = sealed[0]
    env.archive.remove([victim])
    result = drill_pitr(
        env.repo,
        env.archive,
        env.admin,
        "postgres",
        scratch_dir=env.scratch,
        server_bin=env.server_bin,
        os_user=OS_USER,
        wait_for_wal_s=60,
        run_id="drill2",
        dag_id="dbops_restore_drill",
        log=Log(),
    )
    assert result["ok"] is False
    assert any(victim.name in d for d in result["differences"]), result["differences"]
    assert env.repo.list(BASE_STORE)[-1].verified is False  # the failed drill is recorded against it
