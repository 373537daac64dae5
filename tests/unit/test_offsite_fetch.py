"""Fetching an offsite copy back for a restore or a drill, through the real S3Target over an
in-memory S3: which copy "latest" is, a resumed download, what a failed check leaves, the
reuse of a copy fetched before, and where the fetch repository lives."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dbops.backup.repository import BackupRepository, checks_ok
from dbops.config import DbopsConfig
from dbops.offsite.common import OffsiteError, OffsiteVerificationError
from dbops.offsite.crypto import Encryption
from dbops.offsite.restore import (
    download_folder,
    fetch_backup,
    fetch_repository,
    other_copies,
    resolve_offsite,
    space_needed,
)
from tests.offsite_support import Log, StubS3, make_backup
from tests.unit.test_offsite_sync import ship, target

FILES = {"toc.dat": 3000, "1.dat.gz": 20_000, "2.dat.gz": 9_000}


@pytest.fixture
def fetch(tmp_path):
    return BackupRepository(tmp_path / "fetch")


@pytest.fixture
def s3():
    return StubS3()


def folder(backup) -> str:
    return f"offsite/postgres/ai_platform/{backup.backup_id}/"


def counting(s3: StubS3, fail_after: int | None = None) -> list[str]:
    """Record every object download; raise (a dropped connection) after ``fail_after`` of them."""
    got: list[str] = []
    real = StubS3.download_file.__get__(s3)

    def download_file(Bucket, Key, Filename, Config=None):
        if fail_after is not None and len(got) >= fail_after:
            raise ConnectionError("connection reset by peer")
        got.append(Key)
        real(Bucket, Key, Filename, Config=Config)

    s3.download_file = download_file
    return got


def test_latest_is_the_newest_usable_copy_and_what_was_passed_over_is_named(s3, repo):
    old, good, broken = (make_backup(repo, "postgres", "ai_platform", files={"toc.dat": 100}) for _ in range(3))
    ship(s3, repo)
    envelope = json.loads(s3.objects[folder(broken) + "offsite.json"]["data"])
    envelope["files"][0]["plain_sha256"] = "0" * 64  # another file than the manifest's
    s3.objects[folder(broken) + "offsite.json"]["data"] = json.dumps(envelope).encode()

    log = Log()
    assert resolve_offsite(target(s3), "postgres", "ai_platform", "latest", log).backup_id == good.backup_id
    assert f"postgres/ai_platform/{broken.backup_id}: toc.dat: offsite.json records another size/sha256" in log.text
    assert resolve_offsite(target(s3), "postgres", "ai_platform", old.backup_id, Log()).backup_id == old.backup_id
    with pytest.raises(OffsiteError, match=f"{broken.backup_id} on .* cannot be restored: toc.dat: offsite.json"):
        resolve_offsite(target(s3), "postgres", "ai_platform", broken.backup_id, Log())
    with pytest.raises(
        OffsiteError,
        match=f"no complete backup 20200101T000000Z of postgres/ai_platform on .*newest: "
        f"{old.backup_id}, {good.backup_id}, {broken.backup_id}",
    ):
        resolve_offsite(target(s3), "postgres", "ai_platform", "20200101T000000Z", Log())
    with pytest.raises(OffsiteError, match="no usable backup of redis on .*: 0 complete copies"):
        resolve_offsite(target(s3), "redis", None, "latest", Log())
    with pytest.raises(OffsiteError, match="invalid backup id"):
        resolve_offsite(target(s3), "postgres", "ai_platform", "../../etc", Log())


def test_an_interrupted_download_is_kept_and_the_rerun_fetches_only_what_is_missing(s3, repo, fetch):
    backup = make_backup(repo, "postgres", "ai_platform", files=FILES)
    enc = Encryption(os.urandom(32), 4096)
    ship(s3, repo, encryption=enc)
    got = counting(s3, fail_after=3)  # offsite.json, manifest.json and one file arrive
    with pytest.raises(ConnectionError):
        fetch_backup(target(s3), fetch, "postgres", "ai_platform", backup.backup_id, encryption=enc, log=Log())
    kept = download_folder(fetch, "postgres", "ai_platform", backup.backup_id)
    assert len([p for p in kept.iterdir() if p.name.endswith(".enc")]) == 1
    assert fetch.list("postgres", "ai_platform") == []  # nothing half-fetched is visible

    got = counting(s3)
    log = Log()
    back = fetch_backup(target(s3), fetch, "postgres", "ai_platform", backup.backup_id, encryption=enc, log=log)
    assert "resuming the download" in log.text
    assert len([k for k in got if k.endswith(".enc")]) == 2  # the file that had arrived is not fetched again
    origin = back.sidecars["fetched"]
    assert origin["resumed"] is True and origin["download"]["files_skipped"] == 1 and origin["encrypted"] is True
    assert back.manifest == backup.manifest and checks_ok(fetch.verify(back))
    for name in FILES:
        assert (back.path / name).read_bytes() == (backup.path / name).read_bytes()
    assert not kept.exists()


def test_a_copy_that_fails_a_check_leaves_nothing_and_a_wrong_key_keeps_the_download(s3, repo, fetch):
    backup = make_backup(repo, "postgres", "ai_platform", files=FILES)
    ship(s3, repo)
    obj = s3.objects[folder(backup) + "1.dat.gz"]
    obj["data"] = obj["data"][:100] + bytes([obj["data"][100] ^ 1]) + obj["data"][101:]
    with pytest.raises(OffsiteVerificationError, match="1.dat.gz: 20000 bytes sha256 .* the manifest says"):
        fetch_backup(target(s3), fetch, "postgres", "ai_platform", backup.backup_id, encryption=None, log=Log())
    assert fetch.list("postgres", "ai_platform") == []
    assert not any((fetch.root / "postgres" / "ai_platform" / ".staging").iterdir())

    secret = make_backup(repo, "redis", files={"dump.rdb": 5000})
    enc = Encryption(os.urandom(32), 4096)
    ship(s3, repo, encryption=enc)
    with pytest.raises(OffsiteError, match="key id") as refused:
        fetch_backup(
            target(s3), fetch, "redis", None, secret.backup_id, encryption=Encryption(os.urandom(32)), log=Log()
        )
    assert not isinstance(refused.value, OffsiteVerificationError)  # no verdict on the copy
    assert (download_folder(fetch, "redis", None, secret.backup_id) / "dump.rdb.enc").is_file()
    back = fetch_backup(target(s3), fetch, "redis", None, secret.backup_id, encryption=enc, log=Log())
    assert back.sidecars["fetched"]["resumed"] is True


def test_a_manifest_changed_offsite_is_refused_by_its_mac(s3, repo, fetch):
    backup = make_backup(repo, "redis", files={"dump.rdb": 5000})
    enc = Encryption(os.urandom(32), 4096)
    ship(s3, repo, encryption=enc)
    manifest = s3.objects[f"offsite/redis/{backup.backup_id}/manifest.json"]
    manifest["data"] = manifest["data"].replace(b'"run_id"', b' "run_id"', 1)  # same content, other bytes
    with pytest.raises(OffsiteVerificationError, match="does not match its manifest_mac"):
        fetch_backup(target(s3), fetch, "redis", None, backup.backup_id, encryption=enc, log=Log())
    assert fetch.list("redis") == []


def test_a_copy_fetched_before_is_reused_and_a_broken_one_fetched_again(s3, repo, fetch):
    backup = make_backup(repo, "postgres", "ai_platform", files=FILES)
    ship(s3, repo)
    first = fetch_backup(target(s3), fetch, "postgres", "ai_platform", backup.backup_id, encryption=None, log=Log())
    got = counting(s3)
    log = Log()
    again = fetch_backup(target(s3), fetch, "postgres", "ai_platform", backup.backup_id, encryption=None, log=log)
    assert got == [] and again.path == first.path and "not downloaded again" in log.text

    (first.path / "toc.dat").write_bytes(b"rot")
    log = Log()
    mended = fetch_backup(target(s3), fetch, "postgres", "ai_platform", backup.backup_id, encryption=None, log=log)
    assert "fails verification" in log.text and len(got) == len(FILES) + 2
    assert (mended.path / "toc.dat").read_bytes() == (backup.path / "toc.dat").read_bytes()
    newer = make_backup(repo, "postgres", "ai_platform", files={"toc.dat": 10})
    assert [b.backup_id for b in other_copies(fetch, "postgres", "ai_platform", newer.backup_id)] == [backup.backup_id]

    # a backup in a repository that dbops did not fetch is never replaced
    (backup.path / "toc.dat").write_bytes(b"rot")
    with pytest.raises(OffsiteError, match="remove it before fetching"):
        fetch_backup(target(s3), repo, "postgres", "ai_platform", backup.backup_id, encryption=None, log=Log())


def test_space_needed_counts_both_copies_while_an_encrypted_one_is_decrypted(s3, repo):
    plain = make_backup(repo, "redis", files={"dump.rdb": 10_000})
    ship(s3, repo)
    secret = make_backup(repo, "kafka", files={"topics.json": 10_000})
    ship(s3, repo, encryption=Encryption(os.urandom(32), 4096))
    catalog = target(s3).catalog(Log())
    assert (
        space_needed(next(iter(catalog.backups[next(k for k in catalog.backups if k.store == "redis")].values())))
        == plain.total_bytes
    )
    item = next(iter(catalog.backups[next(k for k in catalog.backups if k.store == "kafka")].values()))
    assert space_needed(item) == secret.total_bytes + sum(f.bytes for f in item.envelope.files) > 2 * 10_000


def test_the_fetch_repository_is_one_folder_per_target_outside_the_backup_root(tmp_path):
    config = DbopsConfig.model_validate(
        {"backup": {"root": str(tmp_path / "gone")}, "restore": {"scratch_dir": str(tmp_path / "scratch")}}
    )
    assert fetch_repository(config, "s3").root == tmp_path / "scratch" / "dbops-offsite-fetch" / "s3"
    chosen = DbopsConfig.model_validate({"offsite": {"fetch_dir": str(tmp_path / "fetch")}})
    assert fetch_repository(chosen, "rsync").root == tmp_path / "fetch" / "rsync"
    assert not (tmp_path / "gone").exists()
    with pytest.raises(ValueError):
        DbopsConfig.model_validate({"offsite": {"fetch_dir": "/etc"}})
    with pytest.raises(ValueError):
        fetch_repository(chosen, "../x")
    assert isinstance(fetch_repository(chosen).root, Path)
