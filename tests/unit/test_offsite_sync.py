"""Shipping, verifying, expiring and fetching back, through the real S3Target over an
in-memory S3 (no server): the orchestration's guarantees, one by one."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pytest

from dbops.backup.repository import BackupRepository
from dbops.backup.retention import RetentionPolicy
from dbops.offsite.common import OffsiteError, OffsiteVerificationError, SeriesKey
from dbops.offsite.crypto import Encryption
from dbops.offsite.restore import fetch_backup
from dbops.offsite.retention import apply_offsite_retention
from dbops.offsite.s3 import S3Settings, S3Target
from dbops.offsite.sync import plan_shipping, ship_all, verify_all
from tests.offsite_support import Log, StubS3, daily_backups, make_backup

UTC = UTC
NOW = datetime.now(UTC)
POLICY = RetentionPolicy(30, 3)
STORES = ["postgres", "redis", "kafka"]


@pytest.fixture
def s3():
    return StubS3()


def target(s3, **settings) -> S3Target:
    return S3Target(s3, S3Settings(bucket="b", prefix="offsite", **settings))


def ship(s3, repo, *, encryption=None, now=NOW, dry_run=False, **settings):
    return ship_all(
        target(s3, **settings), repo, STORES, POLICY, encryption=encryption, now=now, dry_run=dry_run, log=Log()
    )


def verify(s3, repo, report=None, *, deep=False, encryption=None):
    report = report or {"expected": [], "shipped": []}
    return verify_all(
        target(s3),
        repo,
        STORES,
        expected=report["expected"],
        shipped=report["shipped"],
        deep=deep,
        encryption=encryption,
        log=Log(),
    )


def test_ships_complete_backups_only_manifest_last_and_a_second_sync_sends_nothing(s3, repo):
    a = make_backup(repo, "postgres", "ai_platform", files={"toc.dat": 100, "1.dat.gz": 5000})
    b = make_backup(repo, "redis", files={"dump.rdb": 3000})
    staging = repo.begin("redis", run_id="r", dag_id="test", logical_date=None)  # never sealed
    (staging.path / "half.rdb").write_bytes(b"x")
    (repo.root / "kafka" / "20240101T000000Z").mkdir(parents=True)  # a folder without a manifest
    (repo.root / "kafka" / "20240101T000000Z" / "x").write_bytes(b"x")

    report = ship(s3, repo)
    assert sorted(report["shipped"]) == sorted([f"postgres/ai_platform/{a.backup_id}", f"redis/{b.backup_id}"])
    assert not any("half.rdb" in k or "kafka" in k for k in s3.objects)
    for backup in (a, b):
        folder = f"offsite/{SeriesKey.of(backup).rel}/{backup.backup_id}/"
        writes = [k for op, k in s3.calls if op in ("upload", "put") and k.startswith(folder)]
        assert writes[-2:] == [folder + "offsite.json", folder + "manifest.json"]  # manifest last
        assert s3.objects[folder + "manifest.json"]["data"] == (backup.path / "manifest.json").read_bytes()
    assert report["bytes"]["literal_bytes"] == 100 + 5000 + 3000

    verify(s3, repo, report)
    s3.calls.clear()
    again = ship(s3, repo)
    assert again["shipped"] == [] and again["present"] == 2
    assert again["bytes"]["bytes_sent"] == 0
    assert not [c for c in s3.calls if c[0] in ("upload", "put")]


def test_storage_class_and_server_side_encryption_go_with_every_object(s3, repo):
    make_backup(repo, "redis")
    ship(s3, repo, storage_class="STANDARD_IA", sse="aws:kms", sse_kms_key_id="alias/dbops")
    for key, obj in s3.objects.items():
        assert obj["args"]["StorageClass"] == "STANDARD_IA", key
        assert obj["args"]["ServerSideEncryption"] == "aws:kms"
        assert obj["args"]["SSEKMSKeyId"] == "alias/dbops"
    with pytest.raises(ValueError, match="KMS key id"):
        S3Settings(bucket="b", sse="AES256", sse_kms_key_id="k")
    with pytest.raises(ValueError, match="storage class"):
        S3Settings(bucket="b", storage_class="COLD")
    with pytest.raises(ValueError, match="5 MiB"):
        S3Settings(bucket="b", multipart_chunksize=1024)


def test_an_interrupted_upload_never_looks_complete_and_the_rerun_sends_only_what_is_missing(s3, repo):
    backup = make_backup(repo, "redis", files={"a.bin": 1000, "b.bin": 2000, "c.bin": 3000})
    uploads = []

    def drop_connection(key):
        uploads.append(key)
        if len(uploads) == 2:
            raise ConnectionError("connection reset by peer")

    s3.fail_upload = drop_connection
    with pytest.raises(ConnectionError):
        ship(s3, repo)
    assert not any(k.endswith("manifest.json") for k in s3.objects)
    catalog = target(s3).catalog(Log())
    assert catalog.count() == 0 and [e.name for e in catalog.staging] == [backup.backup_id]

    s3.fail_upload = None
    s3.calls.clear()
    report = ship(s3, repo)
    assert report["shipped"] == [f"redis/{backup.backup_id}"]
    assert [k.rsplit("/", 1)[1] for op, k in s3.calls if op == "upload"] == ["b.bin", "c.bin"]
    assert report["bytes"]["files_skipped"] == 1 and report["bytes"]["literal_bytes"] == 5000
    verify(s3, repo, report)


def test_an_object_with_the_right_size_but_another_sha256_is_uploaded_again(s3, repo):
    backup = make_backup(repo, "redis", files={"a.bin": 1000})
    key = f"offsite/redis/{backup.backup_id}/a.bin"
    s3.put_object(Bucket="b", Key=key, Body=b"y" * 1000, Metadata={"sha256": "0" * 64})
    ship(s3, repo)
    assert s3.objects[key]["data"] == (backup.path / "a.bin").read_bytes()


def test_backups_not_verified_locally_or_older_than_the_offsite_window_are_not_shipped(s3, repo):
    old = daily_backups(repo, "redis", 35, now=NOW)
    bad = make_backup(repo, "kafka")
    repo.record(bad, "drill", {"ok": False, "detail": "restore differed"})
    report = ship(s3, repo)
    assert len(report["shipped"]) == 30
    assert set(report["not_shipped"]) == {f"redis/{b.backup_id}" for b in old[:5]} | {f"kafka/{bad.backup_id}"}
    assert "verify/drill failed" in report["not_shipped"][f"kafka/{bad.backup_id}"]
    # with a long enough offsite window the old ones go too
    longer = ship_all(
        target(s3), repo, STORES, RetentionPolicy(60, 3), encryption=None, now=NOW, dry_run=False, log=Log()
    )
    assert len(longer["shipped"]) == 5


def test_dry_run_ships_nothing(s3, repo):
    make_backup(repo, "redis")
    report = ship(s3, repo, dry_run=True)
    assert report["shipped"] == [] and len(report["would_ship"]) == 1 and s3.objects == {}


def test_an_offsite_backup_with_the_same_id_and_another_manifest_is_never_overwritten(s3, repo, tmp_path):
    backup = make_backup(repo, "redis")
    ship(s3, repo)
    key = f"offsite/redis/{backup.backup_id}/manifest.json"
    manifest = json.loads(s3.objects[key]["data"])
    manifest["tool_version"] = "other"
    from dbops.backup.repository import manifest_digest

    manifest["manifest_sha256"] = manifest_digest(manifest)
    s3.objects[key]["data"] = json.dumps(manifest).encode()
    with pytest.raises(OffsiteError, match="refusing to overwrite"):
        ship(s3, repo)


def test_verify_fails_loudly_on_every_kind_of_mismatch(s3, repo):
    a = make_backup(repo, "redis", files={"a.bin": 1000, "b.bin": 1000})
    report = ship(s3, repo)
    verify(s3, repo, report)
    folder = f"offsite/redis/{a.backup_id}/"

    s3.objects[folder + "a.bin"]["data"] = os.urandom(1000)  # same size, same metadata: only deep sees it
    verify(s3, repo, report)
    with pytest.raises(OffsiteVerificationError, match="a.bin: stored sha256"):
        verify(s3, repo, report, deep=True)

    s3.objects[folder + "b.bin"]["data"] = b"short"
    s3.put_object(Bucket="b", Key=folder + "stray.bin", Body=b"?")
    with pytest.raises(OffsiteVerificationError) as err:
        verify(s3, repo, report)
    text = str(err.value)
    assert "b.bin is 5 bytes, expected 1000" in text and "stray.bin is not part of the backup" in text

    s3.objects.pop(folder + "offsite.json")
    with pytest.raises(OffsiteVerificationError, match="offsite.json is missing"):
        verify(s3, repo, report)
    s3.objects.pop(folder + "manifest.json")
    with pytest.raises(OffsiteVerificationError, match="not complete offsite after the sync"):
        verify(s3, repo, report)


def test_encrypted_copies_hold_no_plaintext_and_restore_decrypts_and_verifies(s3, repo, tmp_path):
    secret = b"CREATE TABLE users (password_hash text);\n" * 200
    backup = make_backup(repo, "postgres", "ai_platform", files={"toc.dat": secret, "blob.bin": 50_000})
    enc = Encryption(os.urandom(32), 4096)
    report = ship(s3, repo, encryption=enc)
    data_objects = [k for k in s3.objects if k.endswith(".enc")]
    assert len(data_objects) == 2
    assert not any(secret[:40] in o["data"] for o in s3.objects.values())
    assert secret[:40] in (backup.path / "toc.dat").read_bytes()
    verify(s3, repo, report, deep=True, encryption=enc)
    # a rerun after an interruption recognises the encrypted objects already there
    s3.objects.pop(f"offsite/postgres/ai_platform/{backup.backup_id}/manifest.json")
    s3.calls.clear()
    again = ship(s3, repo, encryption=enc)
    assert again["bytes"]["files_skipped"] == 2 and not [c for c in s3.calls if c[0] == "upload"]
    verify(s3, repo, again, encryption=enc)

    restored = BackupRepository(tmp_path / "restored")
    with pytest.raises(OffsiteError, match="no decryption key"):
        fetch_backup(target(s3), restored, "postgres", "ai_platform", backup.backup_id, encryption=None, log=Log())
    with pytest.raises(OffsiteError, match="key id"):
        fetch_backup(
            target(s3),
            restored,
            "postgres",
            "ai_platform",
            backup.backup_id,
            encryption=Encryption(os.urandom(32), 4096),
            log=Log(),
        )
    got = fetch_backup(target(s3), restored, "postgres", "ai_platform", backup.backup_id, encryption=enc, log=Log())
    assert (got.path / "toc.dat").read_bytes() == secret
    assert got.manifest == backup.manifest
    assert not list((restored.root / "postgres" / "ai_platform" / ".staging").iterdir())


def test_a_tampered_encrypted_copy_does_not_restore_and_leaves_nothing_visible(s3, repo, tmp_path):
    backup = make_backup(repo, "redis", files={"dump.rdb": 20_000})
    enc = Encryption(os.urandom(32), 4096)
    ship(s3, repo, encryption=enc)
    obj = s3.objects[f"offsite/redis/{backup.backup_id}/dump.rdb.enc"]
    obj["data"] = obj["data"][:100] + bytes([obj["data"][100] ^ 1]) + obj["data"][101:]
    restored = BackupRepository(tmp_path / "restored")
    with pytest.raises(OffsiteVerificationError, match="failed authentication"):
        fetch_backup(target(s3), restored, "redis", None, backup.backup_id, encryption=enc, log=Log())
    assert restored.list("redis") == []
    assert not list((restored.root / "redis" / ".staging").iterdir())


def test_offsite_retention_on_a_forty_day_catalog(s3, repo):
    backups = daily_backups(repo, "redis", 40, now=NOW)
    # ship all 40 (as with a longer window before), then expire with the 30-day policy
    ship_all(target(s3), repo, STORES, RetentionPolicy(60, 3), encryption=None, now=NOW, dry_run=False, log=Log())
    # local retention already removed the oldest five and one young backup went missing locally
    for b in backups[:5] + [backups[-3]]:
        repo.delete(b)
    log = Log()
    plan = apply_offsite_retention(
        target(s3),
        target(s3).catalog(log),
        repo,
        STORES,
        POLICY,
        now=NOW,
        dry_run=True,
        stale_after=timedelta(hours=48),
        log=log,
    )
    (series,) = plan["series"]
    assert series["obsolete"] == [b.backup_id for b in backups[:10]]
    assert target(s3).catalog(Log()).count() == 40  # dry run: nothing deleted
    assert "dry run: delete" in log.text

    apply_offsite_retention(
        target(s3),
        target(s3).catalog(log),
        repo,
        STORES,
        POLICY,
        now=NOW,
        dry_run=False,
        stale_after=timedelta(hours=48),
        log=log,
    )
    left = sorted(b.backup_id for b in target(s3).catalog(Log()).all())
    assert left == sorted(b.backup_id for b in backups[10:])
    assert backups[-3].backup_id in left  # missing locally, inside the window: kept
    assert not any(b.backup_id in k for b in backups[:10] for k in s3.objects)


def test_offsite_retention_waits_for_the_newest_local_backup_to_arrive(s3, repo):
    daily_backups(repo, "redis", 40, now=NOW - timedelta(days=1))
    ship_all(target(s3), repo, STORES, RetentionPolicy(60, 3), encryption=None, now=NOW, dry_run=False, log=Log())
    make_backup(repo, "redis")  # today's backup, not shipped yet
    log = Log()
    plan = apply_offsite_retention(
        target(s3),
        target(s3).catalog(log),
        repo,
        STORES,
        POLICY,
        now=NOW,
        dry_run=False,
        stale_after=timedelta(hours=48),
        log=log,
    )
    assert plan["series"][0]["obsolete"] == [] and "not complete offsite yet" in plan["series"][0]["refused"]
    assert target(s3).catalog(Log()).count() == 40


def test_incomplete_uploads_are_removed_only_when_nothing_will_resume_them(s3, repo):
    kept = make_backup(repo, "redis", files={"a.bin": 10})
    gone = make_backup(repo, "redis", files={"a.bin": 10}, finished=NOW - timedelta(days=1))
    for backup in (kept, gone):
        s3.put_object(Bucket="b", Key=f"offsite/redis/{backup.backup_id}/a.bin", Body=b"partial")
        s3.objects[f"offsite/redis/{backup.backup_id}/a.bin"]["modified"] = NOW - timedelta(days=3)
    repo.delete(gone)
    s3.uploads = [
        {"Key": "offsite/redis/x/a.bin", "UploadId": "1", "Initiated": NOW - timedelta(days=3)},
        {"Key": "offsite/redis/y/a.bin", "UploadId": "2", "Initiated": NOW},
    ]
    report = apply_offsite_retention(
        target(s3),
        target(s3).catalog(Log()),
        repo,
        STORES,
        POLICY,
        now=NOW,
        dry_run=False,
        stale_after=timedelta(hours=48),
        log=Log(),
    )
    assert report["incomplete_removed"] == [f"redis/{gone.backup_id}"]
    assert f"offsite/redis/{kept.backup_id}/a.bin" in s3.objects  # the next sync resumes it
    assert report["housekeeping"] == ["offsite/redis/x/a.bin"] and len(s3.uploads) == 1


def test_plan_shipping_ships_the_newest_first(s3, repo):
    daily_backups(repo, "redis", 3, now=NOW)
    plan = plan_shipping(repo, target(s3).catalog(Log()), STORES, POLICY, NOW)
    ids = [b.backup_id for b in plan.to_ship]
    assert ids == sorted(ids, reverse=True)


def test_shipping_judges_each_series_as_offsite_retention_does(s3, repo):
    """A backup kept offsite only by the monthly tier is shipped; a PITR base backup of the
    same age is not (offsite retention gives base backups no tiers), and both agree with
    what retention then keeps."""
    tiered = RetentionPolicy(2, 1, keep_monthly=3)
    old = NOW - timedelta(days=40)  # outside the window, inside the 3-month tier (its month's newest)
    redis_old = make_backup(repo, "redis", finished=old)
    redis_new = make_backup(repo, "redis", finished=NOW - timedelta(hours=1))
    base_old = make_backup(repo, "postgres_pitr", finished=old)
    base_new = make_backup(repo, "postgres_pitr", finished=NOW - timedelta(hours=1))
    plan = plan_shipping(repo, target(s3).catalog(Log()), ["redis", "postgres_pitr"], tiered, NOW)
    assert {b.backup_id for b in plan.to_ship if b.store == "redis"} == {redis_old.backup_id, redis_new.backup_id}
    assert [b.backup_id for b in plan.to_ship if b.store == "postgres_pitr"] == [base_new.backup_id]
    [(skipped, why)] = plan.not_shipped
    assert skipped.backup_id == base_old.backup_id and "expire it at once" in why and "tier" not in why

    report = ship_all(
        target(s3), repo, ["redis", "postgres_pitr"], tiered, encryption=None, now=NOW, dry_run=False, log=Log()
    )
    kept = apply_offsite_retention(
        target(s3),
        target(s3).catalog(Log()),
        repo,
        ["redis", "postgres_pitr"],
        tiered,
        now=NOW,
        dry_run=False,
        stale_after=timedelta(hours=48),
        log=Log(),
    )
    assert all(not s["obsolete"] for s in kept["series"])  # nothing shipped only to be deleted
    assert sorted(report["shipped"]) == sorted(
        [f"redis/{redis_old.backup_id}", f"redis/{redis_new.backup_id}", f"postgres_pitr/{base_new.backup_id}"]
    )
