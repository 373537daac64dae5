"""Pure parts of restores and drills: resolving backups, re-verifying files,
the drill record (sidecar) and what it does to "verified"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial

import pytest

from dbops.backup import restore as r
from dbops.backup.runner import DESCRIPTION_FILE
from tests import support

UTC = UTC
T0 = datetime(2026, 3, 1, 2, 0, 0, tzinfo=UTC)
META = {"tool": "redis-cli --rdb", "tool_version": "7", "server_version": "7", "compression": "lzf"}


def log(_line: str) -> None:
    pass


# a redis backup with its description (what a drill compares against), sealed a minute after T0
make_backup = partial(
    support.make_backup,
    now=T0,
    took=timedelta(minutes=1),
    meta=META,
    files={"dump.rdb": b"REDIS0011" + b"x" * 100, DESCRIPTION_FILE: b'{"keys": {}}'},
)


# --------------------------------------------------------------------------- resolving


def test_latest_is_the_newest_verified_backup(repo):
    old = make_backup(repo, now=T0)
    new = make_backup(repo, now=T0 + timedelta(days=1))
    assert r.resolve_backup(repo, "redis", None, "latest").backup_id == new.backup_id
    repo.record(new, "drill", {"ok": False, "differences": ["key 0:a missing"]})
    assert r.resolve_backup(repo, "redis", None, "latest").backup_id == old.backup_id
    # an exact id still resolves (its files are verified again before any restore)
    assert r.resolve_backup(repo, "redis", None, new.backup_id).backup_id == new.backup_id


def test_no_verified_backup_is_refused_saying_why(repo):
    with pytest.raises(r.RestoreRefused, match="no backups of redis"):
        r.resolve_backup(repo, "redis", None, "latest")
    only = make_backup(repo)
    repo.record(only, "drill", {"ok": False, "differences": ["key 0:a missing"]})
    with pytest.raises(r.RestoreRefused, match="none verified.*drill failed at .*key 0:a missing"):
        r.resolve_backup(repo, "redis", None, "latest")


def test_an_unknown_id_is_refused_listing_the_newest(repo):
    made = make_backup(repo)
    with pytest.raises(r.RestoreRefused, match=f"no backup 20200101T000000Z of redis .*newest: {made.backup_id}"):
        r.resolve_backup(repo, "redis", None, "20200101T000000Z")


def test_verify_files_refuses_a_flipped_byte(repo):
    backup = make_backup(repo)
    assert r.verify_files(repo, backup, log)
    path = backup.path / "dump.rdb"
    data = bytearray(path.read_bytes())
    data[50] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(r.CorruptBackup, match="corrupted, refusing to restore it: changed:dump.rdb"):
        r.verify_files(repo, backup, log)


# --------------------------------------------------------------------------- drill record


def test_a_passing_drill_records_ok_and_keeps_the_backup_verified(repo):
    backup = make_backup(repo)
    seen = []

    def drill(b, found):
        seen.append(b.backup_id)
        found.notes.append("3 keys loaded")

    result = r.run_drill(repo, backup, target="scratch", drill=drill, run_id="run-1", dag_id="d", log=log)
    assert seen == [backup.backup_id]
    assert result["ok"] is True and result["differences"] == [] and result["target"] == "scratch"
    assert result["seconds"] >= 0 and result["run_id"] == "run-1"
    stored = repo.list("redis")[0]
    assert stored.sidecars["drill"]["ok"] is True and stored.verified
    assert set(stored.sidecars["drill"]) >= {"ok", "differences", "target", "seconds"}


def test_a_corrupted_backup_fails_the_drill_without_restoring_and_is_no_longer_verified(repo):
    backup = make_backup(repo)
    path = backup.path / "dump.rdb"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))

    def drill(b, found):
        raise AssertionError("a corrupted backup must not be restored")

    result = r.run_drill(repo, backup, target="scratch", drill=drill, run_id="run-1", dag_id="d", log=log)
    assert result["ok"] is False
    assert any(d.startswith("corrupted: changed:dump.rdb") for d in result["differences"])
    assert not repo.list("redis")[0].verified
    assert repo.latest("redis") is None


def test_a_drill_of_files_checked_earlier_in_the_run_does_not_read_them_again(repo):
    """An offsite copy's fetch checked every sha256 against the manifest in the same task."""
    backup = make_backup(repo)
    lines: list[str] = []
    result = r.run_drill(
        repo,
        backup,
        target="scratch",
        drill=lambda b, found: None,
        run_id="run-1",
        dag_id="d",
        log=lines.append,
        files_checked_by="the offsite fetch of this task",
    )
    assert result["ok"] is True
    assert any("checked against the manifest by the offsite fetch of this task" in line for line in lines)
    assert not any("verified" in line and "again" in line for line in lines)  # verify_files' line
    r.run_drill(
        repo, backup, target="scratch", drill=lambda b, found: None, run_id="run-2", dag_id="d", log=lines.append
    )
    assert any("verified" in line and "again" in line for line in lines)


def test_a_failing_restore_or_a_mismatch_fails_the_drill(repo):
    backup = make_backup(repo)

    def broken(b, found):
        raise RuntimeError("pg_restore failed: boom")

    result = r.run_drill(repo, backup, target="t", drill=broken, run_id="run-1", dag_id="d", log=log)
    assert result["ok"] is False and result["differences"] == ["restore failed: RuntimeError: pg_restore failed: boom"]

    def differs(b, found):
        found.differences.append("table public.items: 499 rows, expected 500")

    result = r.run_drill(repo, backup, target="t", drill=differs, run_id="run-2", dag_id="d", log=log)
    assert result["ok"] is False and repo.latest("redis") is None

    # a later passing drill makes it count again
    result = r.run_drill(repo, backup, target="t", drill=lambda b, f: None, run_id="run-3", dag_id="d", log=log)
    assert result["ok"] is True and repo.latest("redis").backup_id == backup.backup_id


def test_leftovers_are_reported_but_do_not_blame_the_backup(repo):
    backup = make_backup(repo)

    def drill(b, found):
        r._cleanup(found, "database dbops_drill_x", lambda: (_ for _ in ()).throw(OSError("server gone")), log)

    result = r.run_drill(repo, backup, target="t", drill=drill, run_id="run-1", dag_id="d", log=log)
    assert result["ok"] is True and result["leftovers"] == ["database dbops_drill_x: OSError: server gone"]


def test_a_drill_stopped_by_its_environment_is_no_verdict_on_the_backup(repo):
    """A port in use or a full disk is an error of the drill: nothing is recorded, the backup
    stays verified (on today's main it was marked not verified, and `latest` went back a day)."""
    import errno

    backup = make_backup(repo)

    def port_taken(b, found):
        raise r.DrillEnvironmentError("port 56390 on 127.0.0.1 is in use")

    def disk_full(b, found):
        raise OSError(errno.ENOSPC, "No space left on device")

    for drill in (port_taken, disk_full):
        with pytest.raises(r.DrillEnvironmentError):
            r.run_drill(repo, backup, target="t", drill=drill, run_id="run-1", dag_id="d", log=log)
    stored = repo.list("redis")[0]
    assert "drill" not in stored.sidecars and stored.verified and repo.latest("redis").backup_id == backup.backup_id
