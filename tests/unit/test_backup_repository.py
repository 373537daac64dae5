"""The backup repository: staging, sealing, listing, verifying, deleting, sweeping."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from pathlib import Path

import pytest

from dbops.backup.adapter import Check, DumpResult
from dbops.backup.repository import (
    Backup,
    BackupRepository,
    BackupVerificationError,
    NotABackupError,
    RepositoryError,
    UnsafePathError,
    backup_id_key,
    checks_ok,
    format_backup_id,
    manifest_digest,
    parse_backup_id,
)
from tests import support

UTC = UTC
T0 = datetime(2024, 3, 5, 2, 0, 7, tzinfo=UTC)
META = {
    "tool": "pg_dump",
    "tool_version": "16.2",
    "server_version": "16.1",
    "compression": "zstd:3",
    "details": {"databases": ["ai_platform"]},
}


# a backup begun at T0 by the nightly run of the day before, sealed 3 minutes later
make_backup = partial(
    support.make_backup,
    now=T0,
    took=timedelta(minutes=3),
    run_id="scheduled__2024-03-04T02:00:00+00:00",
    meta=META,
    checks=[{"name": "dump-exit-code", "ok": True, "detail": "0"}],
    files={"dump.rdb": b"REDIS0011" + b"x" * 5000, "sub/part.dat": b"abc"},
)


def visible(repo: BackupRepository, store: str = "redis", subject: str | None = None) -> list[str]:
    """What a reader sees: the ids of listed backups."""
    return [b.backup_id for b in repo.list(store, subject)]


# ----------------------------------------------------------------------------- ids


def test_backup_id_format_parse_and_order():
    assert format_backup_id(T0) == "20240305T020007Z"
    assert format_backup_id(T0, 2) == "20240305T020007Z-2"
    assert parse_backup_id("20240305T020007Z-12") == (T0, 12)
    berlin = T0.astimezone(timezone(timedelta(hours=1)))
    assert format_backup_id(berlin) == "20240305T020007Z"  # always UTC
    ids = ["20240305T020007Z-10", "20240305T020007Z-2", "20240305T020007Z", "20240304T235959Z"]
    assert sorted(ids, key=backup_id_key) == [
        "20240304T235959Z",
        "20240305T020007Z",
        "20240305T020007Z-2",
        "20240305T020007Z-10",
    ]


@pytest.mark.parametrize(
    "bad",
    [
        "20240305T020007",
        "20240305T020007Z-1",
        "20240305T020007Z-02",
        "20241305T020007Z",
        "x20240305T020007Z",
        "20240305t020007z",
        "../x",
        "",
    ],
)
def test_bad_backup_ids_are_refused(bad: str):
    with pytest.raises(ValueError, match="backup id"):
        parse_backup_id(bad)


def test_naive_times_are_refused(repo: BackupRepository):
    with pytest.raises(ValueError, match="timezone-aware"):
        format_backup_id(datetime(2024, 3, 5, 2, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        repo.begin("redis", run_id="r", dag_id="d", logical_date=None, now=datetime(2024, 3, 5))


# ----------------------------------------------------------------------------- sealing and listing


def test_seal_and_list_round_trip(repo: BackupRepository):
    backup = make_backup(repo)
    assert backup.path == repo.root / "redis" / "20240305T020007Z"
    assert (backup.path / "dump.rdb").read_bytes().startswith(b"REDIS0011")
    assert (backup.path / "sub" / "part.dat").read_bytes() == b"abc"
    [listed] = repo.list("redis")
    assert listed == backup
    assert listed.backup_id == "20240305T020007Z"
    assert listed.finished_at == T0 + timedelta(minutes=3)
    assert listed.logical_date == T0 - timedelta(days=1)
    assert listed.run_id == "scheduled__2024-03-04T02:00:00+00:00"
    assert listed.total_bytes == 9 + 5000 + 3
    assert listed.verified and listed.last_verification() is None
    assert not (repo.root / "redis" / ".staging").exists() or not any((repo.root / "redis" / ".staging").iterdir())
    assert repo.problems("redis") == []


def test_manifest_fields(repo: BackupRepository):
    backup = make_backup(repo, "postgres", "ai_platform")
    text = (backup.path / "manifest.json").read_text()
    manifest = json.loads(text)
    assert manifest == backup.manifest
    assert manifest["format"] == "dbops-backup" and manifest["format_version"] == 1
    assert (manifest["store"], manifest["subject"], manifest["backup_id"]) == (
        "postgres",
        "ai_platform",
        backup.backup_id,
    )
    data = b"REDIS0011" + b"x" * 5000
    assert manifest["files"] == [
        {"path": "dump.rdb", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        {"path": "sub/part.dat", "bytes": 3, "sha256": hashlib.sha256(b"abc").hexdigest()},
    ]
    assert manifest["total_bytes"] == len(data) + 3
    assert manifest["started_at"] == "2024-03-05T02:00:07Z"
    assert manifest["finished_at"] == "2024-03-05T02:03:07Z"
    assert manifest["logical_date"] == "2024-03-04T02:00:07Z"
    assert manifest["run_id"] == "scheduled__2024-03-04T02:00:00+00:00"
    assert manifest["dag_id"] == "dbops_nightly_backup"
    for key in ("tool", "tool_version", "server_version", "compression", "details"):
        assert manifest[key] == META[key]
    names = [c["name"] for c in manifest["checks"]]
    assert "files" in names and "dump-exit-code" in names and checks_ok(manifest["checks"])
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert manifest["manifest_sha256"] == hashlib.sha256(canonical).hexdigest() == manifest_digest(manifest)


def test_seal_accepts_an_adapter_dump_result_and_checks(repo: BackupRepository):
    result = DumpResult(
        tool="redis-cli", tool_version="7.0.15", server_version="7.0.15", compression="none", details={"keys": 12}
    )
    seen = {}

    def tool_check(folder: Path, manifest):
        seen["folder"], seen["files"] = folder, [f["path"] for f in manifest["files"]]
        return [Check("redis-check-rdb", True, "RDB ok")]

    with repo.begin("redis", run_id="r1", dag_id="d", logical_date=None, now=T0) as staging:
        (staging.path / "dump.rdb").write_bytes(b"rdb")
        backup = staging.seal(result, check=tool_check, now=T0)
    assert seen["folder"].parent.name == ".staging" and seen["files"] == ["dump.rdb"]
    assert backup.manifest["tool"] == "redis-cli" and backup.manifest["details"] == {"keys": 12}
    assert backup.manifest["logical_date"] is None and backup.logical_date is None
    assert {"name": "redis-check-rdb", "ok": True, "detail": "RDB ok"} in backup.manifest["checks"]


def test_bad_metadata_is_refused_and_leaves_nothing(repo: BackupRepository):
    staging = repo.begin("redis", run_id="r", dag_id="d", logical_date=None, now=T0)
    (staging.path / "dump.rdb").write_bytes(b"rdb")
    with pytest.raises(ValueError, match="toolz"):
        staging.seal({**META, "toolz": "x"})
    assert not staging.path.exists() and visible(repo) == []


def test_permissions_files_0600_folders_0700(tmp_path: Path):
    old = os.umask(0o000)  # a permissive umask must not leak into the repository
    try:
        repo = BackupRepository(tmp_path / "backups")
        backup = make_backup(repo, "postgres", "ai_platform")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(repo.root).st_mode) == 0o700
    for folder in (repo.root / "postgres", repo.root / "postgres" / "ai_platform", backup.path, backup.path / "sub"):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
    for name in ("dump.rdb", "sub/part.dat", "manifest.json"):
        assert stat.S_IMODE(os.stat(backup.path / name).st_mode) == 0o600, name
    recorded = repo.record(backup, "verify", {"ok": True}, now=T0)
    assert stat.S_IMODE(os.stat(recorded.path / "verify.json").st_mode) == 0o600


def test_folders_are_0700_whatever_the_umask(repo: BackupRepository):
    old = os.umask(0o277)  # mkdir's mode passes through the umask: 0700 must be set explicitly
    try:
        staging = repo.begin("postgres", "ai_platform", run_id="r", dag_id="d", logical_date=None, now=T0)
    finally:
        os.umask(old)
    for folder in (repo.root / "postgres", repo.root / "postgres" / "ai_platform", staging.path.parent, staging.path):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
    staging.abort()


def test_staging_is_private_and_invisible_until_sealed(repo: BackupRepository):
    make_backup(repo, now=T0 - timedelta(days=1))
    staging = repo.begin("redis", run_id="r2", dag_id="d", logical_date=None, now=T0)
    assert staging.path.parent == repo.root / "redis" / ".staging"
    assert staging.path.name.startswith("20240305T020007Z.")
    assert stat.S_IMODE(os.stat(staging.path).st_mode) == 0o700
    (staging.path / "dump.rdb").write_bytes(b"data")
    assert visible(repo) == ["20240304T020007Z"]
    assert repo.find_by_run("redis", None, "r2") is None
    assert repo.problems("redis") == []  # staging is the sweep's business, not a problem
    staging.seal(META, now=T0)
    assert visible(repo) == ["20240304T020007Z", "20240305T020007Z"]


def test_abort_removes_staging_and_is_idempotent(repo: BackupRepository):
    staging = repo.begin("redis", run_id="r", dag_id="d", logical_date=None, now=T0)
    (staging.path / "dump.rdb").write_bytes(b"data")
    staging.abort()
    staging.abort()
    assert not staging.path.exists() and visible(repo) == []
    with pytest.raises(RepositoryError, match="aborted"):
        staging.seal(META)


def test_an_exception_inside_the_block_aborts(repo: BackupRepository):
    with pytest.raises(RuntimeError, match="dump crashed"):
        with repo.begin("redis", run_id="r", dag_id="d", logical_date=None, now=T0) as staging:
            (staging.path / "dump.rdb").write_bytes(b"half a dump")
            raise RuntimeError("dump crashed")
    assert not staging.path.exists()
    assert visible(repo) == [] and repo.problems("redis") == []
    assert list((repo.root / "redis" / ".staging").iterdir()) == []


def test_leaving_the_block_without_sealing_aborts(repo: BackupRepository):
    with repo.begin("redis", run_id="r", dag_id="d", logical_date=None, now=T0) as staging:
        (staging.path / "dump.rdb").write_bytes(b"data")
    assert not staging.path.exists() and visible(repo) == []


def test_two_writers_get_separate_staging_folders(repo: BackupRepository):
    a = repo.begin("redis", run_id="a", dag_id="d", logical_date=None, now=T0)
    b = repo.begin("redis", run_id="b", dag_id="d", logical_date=None, now=T0)
    assert a.path != b.path and a.path.is_dir() and b.path.is_dir()
    (a.path / "dump.rdb").write_bytes(b"A")
    (b.path / "dump.rdb").write_bytes(b"B")
    first = a.seal(META, now=T0)
    second = b.seal(META, now=T0)  # same second: the later one moves to -2
    assert (first.backup_id, second.backup_id) == ("20240305T020007Z", "20240305T020007Z-2")
    assert second.manifest["backup_id"] == "20240305T020007Z-2"
    assert (first.path / "dump.rdb").read_bytes() == b"A"
    assert (second.path / "dump.rdb").read_bytes() == b"B"


def test_duplicate_backup_id_in_the_same_second_gets_a_suffix(repo: BackupRepository):
    ids = [make_backup(repo, now=T0, run_id=f"r{i}").backup_id for i in range(3)]
    assert ids == ["20240305T020007Z", "20240305T020007Z-2", "20240305T020007Z-3"]
    assert visible(repo) == ids
    staging = repo.begin("redis", run_id="r3", dag_id="d", logical_date=None, now=T0 + timedelta(microseconds=5))
    assert staging.backup_id == "20240305T020007Z-4" and staging.path.name.startswith("20240305T020007Z-4.")
    staging.abort()


@pytest.mark.parametrize("content", ["empty", "symlink", "fifo", "manifest"])
def test_refuses_to_seal_empty_or_strange_staging(repo: BackupRepository, tmp_path: Path, content: str):
    staging = repo.begin("redis", run_id="r", dag_id="d", logical_date=None, now=T0)
    if content != "empty":
        (staging.path / "dump.rdb").write_bytes(b"data")
    if content == "symlink":
        outside = tmp_path / "secret"
        outside.write_text("not yours")
        (staging.path / "link").symlink_to(outside)
    elif content == "fifo":
        os.mkfifo(staging.path / "pipe")
    elif content == "manifest":
        (staging.path / "manifest.json").write_text("{}")
    with pytest.raises(
        RepositoryError,
        match={"empty": "empty", "symlink": "symlink", "fifo": "special", "manifest": "manifest"}[content],
    ):
        staging.seal(META, now=T0)
    assert not staging.path.exists() and visible(repo) == []


# ----------------------------------------------------------------------------- failed verification


def test_a_failed_tool_check_leaves_nothing_and_earlier_backups_untouched(repo: BackupRepository):
    earlier = make_backup(repo, now=T0 - timedelta(days=1))
    before = {p: p.read_bytes() for p in earlier.path.rglob("*") if p.is_file()}

    def bad_check(folder: Path, manifest):
        return [Check("tool-list", True, "ok"), Check("redis-check-rdb", False, "CRC error at offset 12")]

    with pytest.raises(BackupVerificationError, match="redis-check-rdb") as err:
        make_backup(repo, now=T0, run_id="r2", check=bad_check)
    assert "CRC error" in str(err.value)
    assert [c["name"] for c in err.value.checks if not c["ok"]] == ["redis-check-rdb"]
    assert [b.backup_id for b in repo.list("redis")] == [earlier.backup_id]
    assert {p: p.read_bytes() for p in earlier.path.rglob("*") if p.is_file()} == before
    assert repo.list("redis")[0] == earlier
    assert list((repo.root / "redis" / ".staging").iterdir()) == []
    assert repo.problems("redis") == [] and repo.find_by_run("redis", None, "r2") is None


def test_a_crashing_tool_check_is_a_failed_check(repo: BackupRepository):
    def crash(folder, manifest):
        raise OSError("pg_restore not found")

    with pytest.raises(BackupVerificationError, match="pg_restore not found"):
        make_backup(repo, check=crash)
    assert visible(repo) == []


def test_a_failed_given_check_stops_before_the_tool_check(repo: BackupRepository):
    called = []
    with repo.begin("redis", run_id="r", dag_id="d", logical_date=None, now=T0) as staging:
        (staging.path / "dump.rdb").write_bytes(b"data")
        with pytest.raises(BackupVerificationError, match="dump-exit-code"):
            staging.seal(
                META,
                [{"name": "dump-exit-code", "ok": False, "detail": "exit 1"}],
                check=lambda f, m: called.append(1) or [],
            )
    assert called == [] and visible(repo) == []


def test_a_file_changing_during_sealing_is_caught(repo: BackupRepository):
    """A dump process still writing after it 'finished' must not be sealed."""

    def sneaky_writer(folder: Path, manifest):
        with open(folder / "dump.rdb", "ab") as fh:
            fh.write(b"late bytes")
        return [Check("tool", True)]

    with pytest.raises(BackupVerificationError, match="changed"):
        make_backup(repo, check=sneaky_writer)
    assert visible(repo) == []


def test_verify_files_catches_a_change_after_hashing(repo: BackupRepository):
    staging = repo.begin("redis", run_id="r", dag_id="d", logical_date=None, now=T0)
    (staging.path / "dump.rdb").write_bytes(b"original")
    entry = {"path": "dump.rdb", "bytes": 8, "sha256": hashlib.sha256(b"original").hexdigest()}
    assert checks_ok(staging.verify_files([entry]))
    (staging.path / "dump.rdb").write_bytes(b"0riginal")
    checks = staging.verify_files([entry])
    assert not checks_ok(checks) and any(c["name"] == "changed:dump.rdb" for c in checks)
    staging.abort()


# ----------------------------------------------------------------------------- verify


def test_verify_passes_on_an_intact_backup(repo: BackupRepository):
    backup = make_backup(repo)
    backup = repo.record(backup, "verify", {"ok": True}, now=T0)  # sidecars are not "extra"
    checks = repo.verify(backup)
    assert checks_ok(checks), checks
    assert {c["name"] for c in checks} == {"manifest", "files"}


def test_verify_catches_a_flipped_byte(repo: BackupRepository):
    backup = make_backup(repo)
    path = backup.path / "dump.rdb"
    data = bytearray(path.read_bytes())
    data[4000] ^= 0x01
    path.write_bytes(bytes(data))  # same size, one bit different
    checks = repo.verify(backup)
    assert not checks_ok(checks)
    assert [c["name"] for c in checks if not c["ok"]] == ["changed:dump.rdb", "files"]


def test_verify_reports_missing_extra_and_resized_files(repo: BackupRepository):
    backup = make_backup(repo)
    (backup.path / "sub" / "part.dat").unlink()
    (backup.path / "dump.rdb").write_bytes(b"short")
    (backup.path / "stray.txt").write_text("who put this here")
    failed = {c["name"] for c in repo.verify(backup) if not c["ok"]}
    assert failed == {"missing:sub/part.dat", "changed:dump.rdb", "extra:stray.txt", "files"}


def test_verify_refuses_a_file_swapped_for_a_symlink_to_an_identical_copy(repo: BackupRepository, tmp_path: Path):
    backup = make_backup(repo)
    copy = tmp_path / "copy.dat"
    copy.write_bytes(b"abc")
    (backup.path / "sub" / "part.dat").unlink()
    (backup.path / "sub" / "part.dat").symlink_to(copy)
    failed = [c for c in repo.verify(backup) if not c["ok"]]
    assert [c["name"] for c in failed] == ["changed:sub/part.dat", "files"] and "symlink" in failed[0]["detail"]


def test_verify_reports_a_replaced_manifest(repo: BackupRepository):
    backup = make_backup(repo)
    (backup.path / "manifest.json").write_text("{}")
    checks = repo.verify(backup)
    assert checks[0]["name"] == "manifest" and not checks_ok(checks)


# ----------------------------------------------------------------------------- what is a backup


def test_a_tampered_manifest_makes_the_folder_not_a_backup(repo: BackupRepository):
    backup = make_backup(repo)
    good = make_backup(repo, now=T0 + timedelta(hours=1), run_id="r2")
    path = backup.path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"][0]["sha256"] = "0" * 64  # someone "fixes" a checksum by hand
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    assert visible(repo) == [good.backup_id]
    [problem] = repo.problems("redis")
    assert problem.path == backup.path and "manifest_sha256" in problem.reason
    with pytest.raises(NotABackupError):
        repo.delete(backup)  # no longer the backup that was listed
    assert backup.path.exists()


@pytest.mark.parametrize("kind", ["no-manifest", "garbage", "wrong-id", "bad-name", "file", "symlink", "wrong-format"])
def test_anything_without_a_valid_manifest_is_ignored_and_reported(repo: BackupRepository, kind: str):
    good = make_backup(repo)
    series = repo.root / "redis"
    if kind == "no-manifest":
        entry = series / "20240101T000000Z"
        entry.mkdir()
        (entry / "dump.rdb").write_bytes(b"x")
    elif kind == "garbage":
        entry = series / "20240101T000000Z"
        entry.mkdir()
        (entry / "manifest.json").write_text("{not json")
    elif kind == "wrong-id":  # a copy of a real backup under another name
        entry = series / "20240101T000000Z"
        shutil.copytree(good.path, entry)
    elif kind == "bad-name":
        entry = series / "backup-2024-01-01"
        shutil.copytree(good.path, entry)
    elif kind == "file":
        entry = series / "20240101T000000Z"
        entry.write_text("x")
    elif kind == "symlink":
        entry = series / "20240101T000000Z"
        entry.symlink_to(good.path)
    else:
        entry = series / "20240101T000000Z"
        entry.mkdir()
        manifest = {**good.manifest, "backup_id": entry.name, "format_version": 99}
        manifest["manifest_sha256"] = manifest_digest(manifest)
        (entry / "manifest.json").write_text(json.dumps(manifest))
    assert visible(repo) == [good.backup_id]
    assert [p.path for p in repo.problems("redis")] == [entry]


def test_a_half_deleted_backup_is_not_listed(repo: BackupRepository):
    backup = make_backup(repo)
    (backup.path / "manifest.json").unlink()  # what a crashed "rm -rf" could leave
    assert visible(repo) == []


# ----------------------------------------------------------------------------- sidecars, lookups


def test_record_sidecars_and_last_verification(repo: BackupRepository):
    backup = make_backup(repo)
    manifest_before = (backup.path / "manifest.json").read_bytes()
    b1 = repo.record(backup, "verify", {"ok": True, "checks": []}, now=T0 + timedelta(hours=1))
    assert b1.verified and b1.last_verification()["at"] == "2024-03-05T03:00:07Z"
    b2 = repo.record(b1, "drill", {"ok": False, "detail": "row counts differ"}, now=T0 + timedelta(hours=2))
    assert b2.last_verification()["kind"] == "drill" and not b2.verified
    [listed] = repo.list("redis")
    assert not listed.verified and listed.sidecars["verify"]["ok"] is True
    assert repo.latest("redis") is None  # the only backup is no longer trusted
    assert repo.latest("redis", verified_only=False) == listed
    b3 = repo.record(b2, "verify", {"ok": True}, now=T0 + timedelta(hours=3))
    assert b3.verified and b3.last_verification()["kind"] == "verify"
    assert repo.latest("redis") == b3
    b4 = repo.record(b3, "offsite-s3", {"ok": False}, now=T0 + timedelta(hours=4))
    assert b4.verified  # only verify/drill results decide
    assert (backup.path / "manifest.json").read_bytes() == manifest_before
    assert checks_ok(repo.verify(b4))


def test_record_refuses_bad_input(repo: BackupRepository):
    backup = make_backup(repo)
    with pytest.raises(ValueError, match="ok"):
        repo.record(backup, "verify", {"status": "fine"})
    with pytest.raises(ValueError, match="kind"):
        repo.record(backup, "../evil", {"ok": True})
    with pytest.raises(ValueError, match="kind"):
        repo.record(backup, "manifest", {"ok": True})
    with pytest.raises(UnsafePathError):
        repo.record(replace(backup, path=backup.path.parent / "20990101T000000Z"), "verify", {"ok": True})


def test_an_unreadable_verification_sidecar_counts_as_failed(repo: BackupRepository):
    backup = make_backup(repo)
    repo.record(backup, "drill", {"ok": True}, now=T0 + timedelta(days=7))
    (backup.path / "verify.json").write_text("{broken")  # no readable time: it counts as newest
    [listed] = repo.list("redis")
    assert not listed.verified and listed.last_verification()["kind"] == "verify"


def test_a_backed_up_file_named_like_a_sidecar_is_data_not_a_result(repo: BackupRepository):
    backup = make_backup(repo, files={"drill.json": b'{"ok": false}', "dump.rdb": b"rdb"})
    assert backup.verified and backup.sidecars == {}
    with pytest.raises(ValueError, match="overwrite"):
        repo.record(backup, "drill", {"ok": True})
    assert (backup.path / "drill.json").read_bytes() == b'{"ok": false}'
    assert checks_ok(repo.verify(backup))


def test_find_by_run_makes_reruns_idempotent(repo: BackupRepository):
    run = "scheduled__2024-03-04T02:00:00+00:00"
    assert repo.find_by_run("redis", None, run) is None
    first = make_backup(repo, run_id=run)
    make_backup(repo, now=T0 + timedelta(days=1), run_id="scheduled__2024-03-05T02:00:00+00:00")
    # the rerun asks first, finds the complete backup, and writes nothing
    found = repo.find_by_run("redis", None, run)
    assert found == first
    assert repo.find_by_run("redis", None, run, dag_id="another_dag") is None
    assert len(repo.list("redis")) == 2
    assert repo.find_by_run("mongo", None, run) is None


def test_latest_and_subjects(repo: BackupRepository):
    make_backup(repo, "postgres", "ai_platform", now=T0)
    newest = make_backup(repo, "postgres", "ai_platform", now=T0 + timedelta(days=1), run_id="r2")
    make_backup(repo, "postgres", "_globals", now=T0)
    assert repo.latest("postgres", "ai_platform") == newest
    assert repo.subjects("postgres") == ["_globals", "ai_platform"]
    assert repo.list("postgres", "other") == [] and repo.latest("mongo") is None


# ----------------------------------------------------------------------------- deleting


def test_delete_removes_a_listed_backup(repo: BackupRepository):
    old = make_backup(repo, now=T0)
    new = make_backup(repo, now=T0 + timedelta(days=1), run_id="r2")
    assert repo.delete(old) == old.path
    assert not old.path.exists()
    assert visible(repo) == [new.backup_id]
    assert list((repo.root / "redis" / ".deleting").iterdir()) == []


def test_delete_refuses_a_path_outside_the_series(repo: BackupRepository, tmp_path: Path):
    backup = make_backup(repo)
    other = make_backup(repo, "mongo")
    outside = tmp_path / "precious" / backup.backup_id
    outside.mkdir(parents=True)
    (outside / "data").write_text("keep me")
    for fake in (
        replace(backup, path=outside),
        replace(backup, path=other.path),  # mongo's folder, presented as redis'
        replace(backup, path=Path(str(backup.path) + "/../../mongo") / backup.backup_id),
        replace(backup, path=Path("relative") / backup.backup_id),
    ):
        with pytest.raises(UnsafePathError):
            repo.delete(fake)
    assert (outside / "data").read_text() == "keep me"
    assert backup.path.exists() and other.path.exists()


def test_delete_refuses_a_symlink(repo: BackupRepository, tmp_path: Path):
    elsewhere = BackupRepository(tmp_path / "elsewhere")
    real = make_backup(elsewhere)
    link = repo.root / "redis" / real.backup_id
    link.parent.mkdir(parents=True)
    link.symlink_to(real.path)
    assert repo.list("redis") == []  # a symlink is never a backup
    fake = replace(real, path=link)
    with pytest.raises(UnsafePathError, match="symlink"):
        repo.delete(fake)
    assert real.path.is_dir() and (real.path / "manifest.json").exists()


def test_a_symlinked_series_folder_is_refused(repo: BackupRepository, tmp_path: Path):
    elsewhere = BackupRepository(tmp_path / "elsewhere")
    real = make_backup(elsewhere)
    (repo.root / "redis").symlink_to(real.path.parent)
    with pytest.raises(UnsafePathError):
        repo.list("redis")
    with pytest.raises(UnsafePathError):
        repo.delete(replace(real, path=repo.root / "redis" / real.backup_id))
    assert real.path.is_dir()


def test_delete_refuses_an_in_memory_backup_that_was_never_sealed(repo: BackupRepository):
    make_backup(repo)
    folder = repo.root / "redis" / "20240101T000000Z"
    folder.mkdir()
    (folder / "dump.rdb").write_text("hand made")
    fake = Backup(path=folder, store="redis", backup_id=folder.name, finished_at=T0)
    with pytest.raises(NotABackupError):
        repo.delete(fake)
    assert (folder / "dump.rdb").exists()


# ----------------------------------------------------------------------------- sweep


def _age(path: Path, when: datetime) -> None:
    for p in [path, *path.rglob("*")]:
        os.utime(p, (when.timestamp(), when.timestamp()), follow_symlinks=False)


def test_sweep_removes_only_stale_staging_and_deleting_leftovers(repo: BackupRepository):
    backup = make_backup(repo, now=T0)
    stale = repo.begin("redis", run_id="crashed", dag_id="d", logical_date=None, now=T0)
    (stale.path / "dump.rdb").write_bytes(b"half")
    _age(stale.path, T0)
    busy = repo.begin("redis", run_id="running", dag_id="d", logical_date=None, now=T0)
    (busy.path / "sub").mkdir()
    (busy.path / "sub" / "table.dat").write_bytes(b"...")
    _age(busy.path, T0)
    recent = (T0 + timedelta(hours=13)).timestamp()
    os.utime(busy.path / "sub" / "table.dat", (recent, recent))  # a dump still writing, deep inside
    fresh = repo.begin("redis", run_id="new", dag_id="d", logical_date=None, now=T0 + timedelta(hours=13))
    _age(fresh.path, T0 + timedelta(hours=13))
    leftover = repo.root / "redis" / ".deleting" / f"{backup.backup_id}.abc123"
    leftover.mkdir(parents=True)
    (leftover / "dump.rdb").write_bytes(b"old")
    stray = repo.root / "redis" / "20240101T000000Z"  # not staging: reported, never swept
    stray.mkdir()

    removed = repo.sweep("redis", older_than=timedelta(hours=12), now=T0 + timedelta(hours=14))
    assert sorted(removed) == sorted([stale.path, leftover])
    assert not stale.path.exists() and not leftover.exists()
    assert busy.path.exists() and fresh.path.exists()  # a file written 1 h ago keeps it alive
    assert backup.path.exists() and stray.exists() and visible(repo) == [backup.backup_id]
    assert repo.sweep("redis", older_than=timedelta(hours=12), now=T0 + timedelta(hours=14)) == []
    with pytest.raises(ValueError, match="positive"):
        repo.sweep("redis", older_than=timedelta(0), now=T0)


# ----------------------------------------------------------------------------- names and root


@pytest.mark.parametrize(
    "store", ["", "..", "../etc", "a/b", "Redis", ".staging", "-x", "_x", "a..b", "x" * 64, "red is", "/abs"]
)
def test_bad_store_names_are_refused(repo: BackupRepository, store: str):
    with pytest.raises(ValueError, match="invalid store name") as err:
        repo.begin(store, run_id="r", dag_id="d", logical_date=None, now=T0)
    assert repr(store) in str(err.value)
    with pytest.raises(ValueError, match="invalid store name"):
        repo.list(store)
    assert list(repo.root.iterdir()) == []


@pytest.mark.parametrize("subject", ["", "..", "../x", "a/b", ".staging", "AI", "x" * 64, "a..b", "_.."])
def test_bad_subject_names_are_refused(repo: BackupRepository, subject: str):
    with pytest.raises(ValueError, match="invalid subject name") as err:
        repo.begin("postgres", subject, run_id="r", dag_id="d", logical_date=None, now=T0)
    assert repr(subject) in str(err.value)


def test_good_names_are_accepted(repo: BackupRepository):
    for store, subject in [
        ("postgres", "_globals"),
        ("postgres", "ai_platform"),
        ("kafka", None),
        ("s3.mirror-1", "db.v2"),
    ]:
        repo.begin(store, subject, run_id="r", dag_id="d", logical_date=None, now=T0).abort()


@pytest.mark.parametrize("root", ["/", "/etc", "/tmp", "/var/lib/", "relative/backups", "/tmp/../etc"])
def test_unsafe_roots_are_refused(root: str):
    with pytest.raises(ValueError):
        BackupRepository(root)


def test_root_outside_allowed_base_is_refused(tmp_path: Path):
    with pytest.raises(UnsafePathError, match="outside"):
        BackupRepository(tmp_path / "elsewhere", allowed_base=tmp_path / "data")
    assert not (tmp_path / "elsewhere").exists()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "backups").symlink_to(tmp_path / "elsewhere2")
    (tmp_path / "elsewhere2").mkdir()
    with pytest.raises(UnsafePathError, match="outside"):
        BackupRepository(tmp_path / "data" / "backups", allowed_base=tmp_path / "data")
    assert BackupRepository(tmp_path / "data" / "ok", allowed_base=tmp_path / "data").root == tmp_path / "data" / "ok"


def test_root_is_created_0700(tmp_path: Path):
    repo = BackupRepository(tmp_path / "a" / "b" / "backups")
    assert repo.root.is_dir() and stat.S_IMODE(os.stat(repo.root).st_mode) == 0o700


def test_in_memory_backup_needs_aware_times_and_valid_names():
    b = Backup(path=Path("/x/20240305T020007Z"), store="redis", backup_id="20240305T020007Z", finished_at=T0)
    assert b.verified and b.taken_at == T0
    assert not replace(b, manifest={"checks": [{"name": "x", "ok": False, "detail": ""}]}).verified
    assert not replace(b, sidecars={"drill": {"ok": False, "at": "2024-03-06T00:00:00Z"}}).verified
    with pytest.raises(ValueError, match="timezone-aware"):
        Backup(path=Path("/x"), store="redis", backup_id="20240305T020007Z", finished_at=datetime(2024, 3, 5))
    with pytest.raises(ValueError, match="backup id"):
        Backup(path=Path("/x"), store="redis", backup_id="latest", finished_at=T0)


def test_sizes_count_the_data_and_keep_the_sidecar_files_apart(repo: BackupRepository):
    description = json.dumps({"databases": {"0": {"keys": 3}}}).encode()
    backup = make_backup(repo, files={"dump.rdb": b"R" * 4000, "source_description.json": description})
    repo.record(backup, "verify", {"ok": True, "checks": []}, now=T0 + timedelta(hours=1))
    repo.record(backup, "drill", {"ok": True, "differences": []}, now=T0 + timedelta(hours=2))
    [listed] = repo.list("redis")
    folder = backup.path
    on_disk = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert set(on_disk) == {"dump.rdb", "source_description.json", "manifest.json", "verify.json", "drill.json"}
    # the data: the dump alone; everything the manifest lists is still total_bytes (verified, shipped)
    assert listed.data_bytes == 4000
    assert listed.total_bytes == 4000 + len(description)
    assert listed.sidecar_bytes == sum(on_disk.values()) - 4000
    assert listed.data_bytes + listed.sidecar_bytes == sum(on_disk.values())
    # a result recorded later is counted once listed again
    repo.record(listed, "pin", {"ok": True, "pinned": True, "reason": "audit"}, now=T0 + timedelta(hours=3))
    [again] = repo.list("redis")
    assert again.sidecar_bytes == listed.sidecar_bytes + (folder / "pin.json").stat().st_size
    assert again.data_bytes == 4000
