"""The S3 target against real SeaweedFS: the devstack ``s3`` service, and a private
SeaweedFS of this test that is killed mid-upload."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dbops.backup.repository import BackupRepository, checks_ok
from dbops.backup.retention import RetentionPolicy
from dbops.offsite.common import OffsiteError, OffsiteVerificationError, SeriesKey, StagingEntry
from dbops.offsite.crypto import Encryption
from dbops.offsite.restore import fetch_backup
from dbops.offsite.retention import apply_offsite_retention
from dbops.offsite.s3 import S3Settings, S3Target
from dbops.offsite.sync import ship_all, verify_all
from devstack.core import VENV_BIN
from tests.offsite_support import Log, daily_backups, empty_prefix, make_backup

pytestmark = pytest.mark.integration
UTC = UTC
MIB = 1024 * 1024
POLICY = RetentionPolicy(30, 3)
STORES = ["postgres", "redis", "kafka"]


@pytest.fixture
def s3(devstack):
    """(client, bucket, prefix) on the devstack SeaweedFS, the prefix emptied afterwards."""
    service = devstack.service("s3")
    client = service.client()
    bucket = service.environment()["DBOPS_OFFSITE__S3_BUCKET"]
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield client, bucket, prefix
    empty_prefix(client, bucket, prefix)


def s3_target(client, bucket, prefix, **settings) -> S3Target:
    progress = settings.pop("progress", None)
    settings.setdefault("multipart_threshold", 5 * MIB)
    settings.setdefault("multipart_chunksize", 5 * MIB)
    settings.setdefault("max_concurrency", 2)
    return S3Target(client, S3Settings(bucket=bucket, prefix=prefix, **settings), progress=progress)


def ship(target, repo, policy=POLICY, **kwargs):
    kwargs.setdefault("encryption", None)
    return ship_all(target, repo, STORES, policy, now=datetime.now(UTC), dry_run=False, log=Log(), **kwargs)


def verify(target, repo, report=None, **kwargs):
    report = report or {"expected": [], "shipped": []}
    kwargs.setdefault("deep", False)
    kwargs.setdefault("encryption", None)
    return verify_all(target, repo, STORES, expected=report["expected"], shipped=report["shipped"], log=Log(), **kwargs)


def _composite(data: bytes, part: int) -> str:
    """S3's SHA256 checksum of ``data`` uploaded in parts of ``part`` bytes."""
    digests = b"".join(hashlib.sha256(data[i : i + part]).digest() for i in range(0, len(data), part))
    return f"{base64.b64encode(hashlib.sha256(digests).digest()).decode()}-{-(-len(data) // part)}"


def _sha_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_full_sync_in_multipart_with_a_storage_class_then_a_second_sync_uploads_nothing(s3, repo, tmp_path):
    client, bucket, prefix = s3
    big = make_backup(repo, "postgres", "ai_platform", files={"toc.dat": 4000, "3001.dat.gz": 12 * MIB + 123})
    small = make_backup(repo, "redis", files={"dump.rdb": 100_000})
    target = s3_target(client, bucket, prefix, storage_class="STANDARD_IA")
    first = ship(target, repo)
    assert len(first["shipped"]) == 2
    assert first["bytes"]["literal_bytes"] == big.total_bytes + small.total_bytes
    verify(target, repo, first, deep=True)

    folder = f"{prefix}/postgres/ai_platform/{big.backup_id}/"
    head = client.head_object(Bucket=bucket, Key=folder + "3001.dat.gz", ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3")  # uploaded in three 5 MiB parts
    assert head["StorageClass"] == "STANDARD_IA"
    # S3's own checksums: the composite of the parts, and the plain sha256 of a single PUT
    data = (big.path / "3001.dat.gz").read_bytes()
    assert head["ChecksumSHA256"] == _composite(data, 5 * MIB)
    small_head = client.head_object(Bucket=bucket, Key=folder + "toc.dat", ChecksumMode="ENABLED")
    assert small_head["ChecksumSHA256"] == _sha_b64((big.path / "toc.dat").read_bytes())
    record = json.loads(client.get_object(Bucket=bucket, Key=folder + "s3-checksums.json")["Body"].read())
    assert record["checksums"]["3001.dat.gz"] == _composite(data, 5 * MIB)
    manifest = client.get_object(Bucket=bucket, Key=f"{prefix}/redis/{small.backup_id}/manifest.json")["Body"].read()
    assert manifest == (small.path / "manifest.json").read_bytes()

    second = ship(target, repo)
    assert second["shipped"] == [] and second["present"] == 2
    assert second["bytes"]["bytes_sent"] == 0
    assert second["wire_bytes"] == second["catalog_bytes"] < 20_000

    # a download resumed into the same folder fetches only what is missing or differs
    dest = tmp_path / "download"
    key = SeriesKey("postgres", "ai_platform")
    assert target.download(key, big.backup_id, dest, Log()).files_transferred == 4  # 2 files, manifest, envelope
    (dest / "toc.dat").write_bytes(os.urandom(4000))  # same size, other bytes
    again = target.download(key, big.backup_id, dest, Log())
    assert again.files_skipped == 1 and again.matched_bytes == len(data)  # the 12 MiB file stayed
    assert again.bytes_received < 20_000
    assert (dest / "toc.dat").read_bytes() == (big.path / "toc.dat").read_bytes()


def test_a_changed_object_is_caught_by_s3_checksums_and_by_deep_verify(s3, repo):
    client, bucket, prefix = s3
    backup = make_backup(repo, "redis", files={"dump.rdb": 200_000, "aof.bin": 11 * MIB})
    target = s3_target(client, bucket, prefix)
    report = ship(target, repo)
    verify(target, repo, report)
    key = f"{prefix}/redis/{backup.backup_id}/dump.rdb"
    original = client.get_object(Bucket=bucket, Key=key)
    body, metadata = original["Body"].read(), original["Metadata"]

    # other bytes of the same size, our metadata copied: S3's checksum tells
    client.put_object(Bucket=bucket, Key=key, Body=os.urandom(200_000), Metadata=metadata, ChecksumAlgorithm="SHA256")
    with pytest.raises(OffsiteVerificationError, match="dump.rdb: S3's SHA256 checksum .*, expected"):
        verify(target, repo, report)
    with pytest.raises(OffsiteVerificationError, match="dump.rdb: stored sha256"):
        verify(target, repo, report, deep=True)
    # written without a SHA256 checksum (boto3's default CRC32): re-read, never passed
    client.put_object(Bucket=bucket, Key=key, Body=os.urandom(200_000), Metadata=metadata)
    log = Log()
    with pytest.raises(OffsiteVerificationError, match=r"dump.rdb: re-read \(no SHA256 checksum from S3\)"):
        verify_all(
            target,
            repo,
            STORES,
            expected=report["expected"],
            shipped=report["shipped"],
            deep=False,
            encryption=None,
            log=log,
        )
    assert "dump.rdb: no SHA256 checksum from S3: re-reading" in log.text
    client.put_object(Bucket=bucket, Key=key, Body=body, Metadata=metadata, ChecksumAlgorithm="SHA256")
    verify(target, repo, report)  # the right bytes again

    # a multipart object rewritten in parts of the same size: its composite differs from the record
    big_key = f"{prefix}/redis/{backup.backup_id}/aof.bin"
    other = repo.root.parent / "other.bin"
    other.write_bytes(os.urandom(11 * MIB))
    client.upload_file(
        str(other), bucket, big_key, ExtraArgs={"ChecksumAlgorithm": "SHA256"}, Config=target.transfer_config()
    )
    with pytest.raises(OffsiteVerificationError, match="aof.bin: S3's SHA256 checksum .*-3, expected .*-3"):
        verify(target, repo, report)


def test_the_arrival_check_refuses_bytes_that_are_not_the_manifests(s3, repo):
    client, bucket, prefix = s3
    backup = make_backup(repo, "redis", files={"dump.rdb": 50_000})
    (backup.path / "dump.rdb").write_bytes(os.urandom(50_000))  # changed after sealing, same size
    target = s3_target(client, bucket, prefix)
    with pytest.raises(OffsiteVerificationError, match="dump.rdb: S3's SHA256 checksum .*, expected"):
        ship(target, repo)
    assert target.catalog(Log()).count() == 0  # manifest not uploaded


def test_offsite_retention_on_a_forty_day_catalog(s3, repo):
    client, bucket, prefix = s3
    now = datetime.now(UTC)
    backups = daily_backups(repo, "redis", 40, now=now, size=256)
    target = s3_target(client, bucket, prefix)
    ship(target, repo, RetentionPolicy(60, 3))
    for gone in backups[:8] + [backups[-2]]:
        repo.delete(gone)
    log = Log()
    plan = apply_offsite_retention(
        target,
        target.catalog(log),
        repo,
        STORES,
        POLICY,
        now=now,
        dry_run=True,
        stale_after=timedelta(hours=48),
        log=log,
    )
    assert plan["series"][0]["obsolete"] == [b.backup_id for b in backups[:10]]
    assert target.catalog(Log()).count() == 40
    apply_offsite_retention(
        target,
        target.catalog(log),
        repo,
        STORES,
        POLICY,
        now=now,
        dry_run=False,
        stale_after=timedelta(hours=48),
        log=log,
    )
    left = sorted(b.backup_id for b in target.catalog(Log()).all())
    assert left == sorted(b.backup_id for b in backups[10:]) and backups[-2].backup_id in left
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]]
    assert not any(b.backup_id in k for b in backups[:10] for k in keys)


def test_restore_from_the_encrypted_s3_copy(s3, repo, tmp_path):
    client, bucket, prefix = s3
    secret = b'{"collection": "audit_trails", "user": "alice"}\n' * 4000
    backup = make_backup(repo, "mongo", files={"ai_platform.archive": secret, "oplog.bson": 6 * MIB})
    enc = Encryption(os.urandom(32), 256 * 1024)
    target = s3_target(client, bucket, prefix)
    report = ship_all(target, repo, ["mongo"], POLICY, encryption=enc, now=datetime.now(UTC), dry_run=False, log=Log())
    verify_all(
        target,
        repo,
        ["mongo"],
        expected=report["expected"],
        shipped=report["shipped"],
        deep=True,
        encryption=enc,
        log=Log(),
    )
    stored = client.get_object(Bucket=bucket, Key=f"{prefix}/mongo/{backup.backup_id}/ai_platform.archive.enc")
    assert secret[:40] not in stored["Body"].read()
    envelope = json.loads(
        client.get_object(Bucket=bucket, Key=f"{prefix}/mongo/{backup.backup_id}/offsite.json")["Body"].read()
    )
    assert envelope["encryption"]["key_id"] == enc.key_id and all(f["sha256"] for f in envelope["files"])
    assert envelope["manifest_mac"] == enc.manifest_mac((backup.path / "manifest.json").read_bytes())
    # the encrypted stream's sha256, known only after its upload, is what S3's checksum holds (in two parts)
    oplog = client.get_object(
        Bucket=bucket, Key=f"{prefix}/mongo/{backup.backup_id}/oplog.bson.enc", ChecksumMode="ENABLED"
    )
    stored_oplog = oplog["Body"].read()
    assert oplog["ChecksumSHA256"] == _composite(stored_oplog, 5 * MIB)
    assert (
        next(f["sha256"] for f in envelope["files"] if f["path"] == "oplog.bson")
        == hashlib.sha256(stored_oplog).hexdigest()
    )
    verify_all(
        target,
        repo,
        ["mongo"],
        expected=report["expected"],
        shipped=report["shipped"],
        deep=False,
        encryption=enc,
        log=Log(),
    )

    restored = BackupRepository(tmp_path / "restored")
    got = fetch_backup(target, restored, "mongo", None, backup.backup_id, encryption=enc, log=Log())
    assert (got.path / "ai_platform.archive").read_bytes() == secret
    assert got.manifest == backup.manifest and checks_ok(restored.verify(got))


# --------------------------------------------------------------------------- killed mid-upload


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class PrivateSeaweed:
    """A SeaweedFS of this test only (own folder and ports), like devstack's."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        for _ in range(50):
            # gRPC listens on port + 10000: keep those below the ephemeral range (32768+)
            base = random.randrange(20000, 22700, 10)
            ports = {"master": base, "volume": base + 1, "filer": base + 2, "s3": base + 3}
            if all(_free(p) and _free(p + 10000) for p in ports.values()):
                break
        self.ports = ports
        self.secret = uuid.uuid4().hex
        identity = {
            "name": "t",
            "credentials": [{"accessKey": "offsite-test", "secretKey": self.secret}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        self.config = folder / "s3.json"
        self.config.write_text(json.dumps({"identities": [identity]}))
        self.config.chmod(0o600)
        (folder / "data").mkdir()
        self.proc: subprocess.Popen | None = None

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.ports['s3']}",
            region_name="us-east-1",
            aws_access_key_id="offsite-test",
            aws_secret_access_key=self.secret,
            config=Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10
            ),
        )

    def start(self) -> None:
        p = self.ports
        argv = [
            str(VENV_BIN / "weed"),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.folder / 'data'}",
            f"-master.port={p['master']}",
            "-master.volumeSizeLimitMB=64",
            "-master.telemetry=false",
            "-master.electionTimeout=2s",
            f"-volume.port={p['volume']}",
            "-volume.max=5",
            "-volume.preStopSeconds=1",
            "-filer",
            f"-filer.port={p['filer']}",
            "-s3",
            f"-s3.port={p['s3']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.config}",
        ]
        with open(self.folder / "weed.log", "ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.folder, start_new_session=True
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                client = self.client()
                if "offsite" not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
                    client.create_bucket(Bucket="offsite")
                client.list_objects_v2(Bucket="offsite")
                return
            except Exception:
                time.sleep(0.5)
        raise RuntimeError("private SeaweedFS did not start: " + (self.folder / "weed.log").read_text()[-2000:])

    def kill(self) -> None:
        """SIGKILL: the server dies mid-request, as in a crash."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None


@pytest.fixture
def private_s3(tmp_path):
    folder = tmp_path / "seaweed"
    folder.mkdir()
    server = PrivateSeaweed(folder)
    server.start()
    yield server
    server.kill()


def test_an_upload_interrupted_by_a_killed_server_resumes_and_never_looks_complete(private_s3, repo):
    backup = make_backup(repo, "redis", files={"a-small.rdb": 300_000, "b-big.rdb": 16 * MIB})
    killed = []

    def kill_when_half_done(total: int) -> None:
        if total >= 8 * MIB and not killed:
            killed.append(total)
            private_s3.kill()

    target = s3_target(private_s3.client(), "offsite", "dbops", max_concurrency=1, progress=kill_when_half_done)
    with pytest.raises(Exception):  # noqa: B017 - the connection dies under boto3: its error depends on where
        ship(target, repo)
    assert killed

    private_s3.start()  # the same data folder: what was stored before the crash is still there
    client = private_s3.client()
    target = s3_target(client, "offsite", "dbops")
    catalog = target.catalog(Log())
    assert catalog.count() == 0  # no manifest: nothing looks complete
    assert [e.name for e in catalog.staging] == [backup.backup_id]
    folder = f"dbops/redis/{backup.backup_id}/"
    names = {
        o["Key"][len(folder) :] for o in client.list_objects_v2(Bucket="offsite", Prefix=folder).get("Contents", [])
    }
    assert "manifest.json" not in names and "offsite.json" not in names

    report = ship(target, repo)
    assert report["shipped"] == [f"redis/{backup.backup_id}"]
    print(f"resumed after the kill at {killed[0]} bytes: {report['bytes']}")
    assert "a-small.rdb" in names  # finished before the crash (files go in path order, one at a time)
    # ... and is not uploaded again; the big one is
    assert report["bytes"]["files_skipped"] == 1 and report["bytes"]["literal_bytes"] == 16 * MIB
    verify(target, repo, report, deep=True)
    # the multipart upload the crash left behind is aborted by housekeeping once stale
    aborted = target.housekeeping(timedelta(seconds=1), datetime.now(UTC) + timedelta(minutes=5), Log())
    assert aborted == [f"{folder}b-big.rdb"]
    assert not client.list_multipart_uploads(Bucket="offsite", Prefix="dbops/").get("Uploads")


def test_object_lock_keeps_a_copy_until_its_expiry_and_retention_cannot_delete_it_before(private_s3, repo):
    """On a private SeaweedFS: a bucket takes ~7 of the shared one's 20 volumes, and a
    locked object cannot be removed before its time."""
    from botocore.exceptions import ClientError

    client, bucket, prefix = private_s3.client(), "locked", "dbops"
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    # a copy whose offsite expiry (finished_at + 1 day) is 8 s away
    backup = make_backup(
        repo, "redis", files={"dump.rdb": 30_000}, finished=datetime.now(UTC) - timedelta(days=1) + timedelta(seconds=8)
    )
    until = backup.finished_at + timedelta(days=1)
    target = s3_target(client, bucket, prefix, retention_days=1)  # object_lock "auto"
    log = Log()
    target.ship(backup, None, log)
    assert "locked (GOVERNANCE) until" in log.text
    folder = f"{prefix}/redis/{backup.backup_id}/"
    for name in ("dump.rdb", "s3-checksums.json", "offsite.json", "manifest.json"):
        head = client.head_object(Bucket=bucket, Key=folder + name)
        assert head["ObjectLockMode"] == "GOVERNANCE", name
        assert until <= head["ObjectLockRetainUntilDate"] < until + timedelta(seconds=2), name
    # SeaweedFS enforces the lock: the version cannot be deleted, only hidden by a newer one
    version = client.head_object(Bucket=bucket, Key=folder + "dump.rdb")["VersionId"]
    with pytest.raises(ClientError, match="AccessDenied"):
        client.delete_object(Bucket=bucket, Key=folder + "dump.rdb", VersionId=version)
    # offsite retention cannot delete it before its expiry, and says so (no delete marker either)
    with pytest.raises(OffsiteError, match="under S3 Object Lock, nothing deleted: 4 object versions locked"):
        target.delete(SeriesKey("redis"), backup.backup_id, Log())
    assert target.catalog(Log()).count() == 1
    # a demanded mode on a bucket without Object Lock is refused before anything is uploaded
    plain = s3_target(client, "offsite", prefix, object_lock="compliance")
    with pytest.raises(OffsiteError, match="has no Object Lock"):
        plain.ship(backup, None, Log())
    assert not client.list_objects_v2(Bucket="offsite").get("Contents")

    # an incomplete folder: what is not locked goes now, the locked rest once its lock expired
    stray = f"{prefix}/redis/20200101T000000Z/"
    client.put_object(
        Bucket=bucket,
        Key=stray + "a.bin",
        Body=b"a",
        ChecksumAlgorithm="SHA256",
        ObjectLockMode="GOVERNANCE",
        ObjectLockRetainUntilDate=until,
    )
    client.put_object(Bucket=bucket, Key=stray + "b.bin", Body=b"b", ChecksumAlgorithm="SHA256")
    entry = StagingEntry(SeriesKey("redis"), "20200101T000000Z", None)
    log = Log()
    target.remove_incomplete(entry, log)
    assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=stray)["Contents"]] == [stray + "a.bin"]
    assert "1 object versions under Object Lock stay until it expires" in log.text

    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 1)
    target.delete(SeriesKey("redis"), backup.backup_id, Log())  # expired: every version goes
    target.remove_incomplete(entry, Log())
    listed = client.list_object_versions(Bucket=bucket, Prefix=prefix + "/")
    assert not listed.get("Versions") and not listed.get("DeleteMarkers")
