"""The S3 target against real SeaweedFS: the devstack ``s3`` service, and a private
SeaweedFS of this test that is killed mid-upload."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dbops.backup.repository import BackupRepository, checks_ok
from dbops.backup.retention import RetentionPolicy
from dbops.offsite.common import OffsiteVerificationError
from dbops.offsite.crypto import Encryption
from dbops.offsite.restore import fetch_backup
from dbops.offsite.retention import apply_offsite_retention
from dbops.offsite.s3 import S3Settings, S3Target
from dbops.offsite.sync import ship_all, verify_all
from devstack.core import VENV_BIN
from tests.offsite_support import Log, daily_backups, empty_prefix, make_backup

pytestmark = pytest.mark.integration
UTC = timezone.utc
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


@pytest.fixture
def repo(tmp_path):
    return BackupRepository(tmp_path / "backups")


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
    return verify_all(target, repo, STORES, expected=report["expected"], shipped=report["shipped"], log=Log(),
                      **kwargs)  # fmt: skip


def test_full_sync_in_multipart_with_a_storage_class_then_a_second_sync_uploads_nothing(s3, repo):
    client, bucket, prefix = s3
    big = make_backup(repo, "postgres", "ai_platform", files={"toc.dat": 4000, "3001.dat.gz": 12 * MIB + 123})
    small = make_backup(repo, "redis", files={"dump.rdb": 100_000})
    target = s3_target(client, bucket, prefix, storage_class="STANDARD_IA")
    first = ship(target, repo)
    assert len(first["shipped"]) == 2
    assert first["bytes"]["literal_bytes"] == big.total_bytes + small.total_bytes
    verify(target, repo, first, deep=True)

    head = client.head_object(Bucket=bucket, Key=f"{prefix}/postgres/ai_platform/{big.backup_id}/3001.dat.gz")
    assert head["ETag"].strip('"').endswith("-3")  # uploaded in three 5 MiB parts
    assert head["StorageClass"] == "STANDARD_IA"
    assert head["Metadata"]["sha256"] == next(f["sha256"] for f in big.manifest["files"] if f["path"] == "3001.dat.gz")
    manifest = client.get_object(Bucket=bucket, Key=f"{prefix}/redis/{small.backup_id}/manifest.json")["Body"].read()
    assert manifest == (small.path / "manifest.json").read_bytes()

    second = ship(target, repo)
    assert second["shipped"] == [] and second["present"] == 2
    assert second["bytes"]["bytes_sent"] == 0
    assert second["wire_bytes"] == second["catalog_bytes"] < 20_000


def test_verify_sees_an_overwritten_object_and_deep_verify_sees_rot(s3, repo):
    client, bucket, prefix = s3
    backup = make_backup(repo, "redis", files={"dump.rdb": 200_000})
    target = s3_target(client, bucket, prefix)
    report = ship(target, repo)
    key = f"{prefix}/redis/{backup.backup_id}/dump.rdb"
    original = client.head_object(Bucket=bucket, Key=key)["Metadata"]

    client.put_object(Bucket=bucket, Key=key, Body=os.urandom(200_000), Metadata=original)  # rot, metadata kept
    verify(target, repo, report)
    with pytest.raises(OffsiteVerificationError, match="dump.rdb: stored sha256"):
        verify(target, repo, report, deep=True)

    client.put_object(Bucket=bucket, Key=key, Body=os.urandom(200_000))  # replaced by something else
    with pytest.raises(OffsiteVerificationError, match="sha256 metadata None"):
        verify(target, repo, report)


def test_offsite_retention_on_a_forty_day_catalog(s3, repo):
    client, bucket, prefix = s3
    now = datetime.now(UTC)
    backups = daily_backups(repo, "redis", 40, now=now, size=256)
    target = s3_target(client, bucket, prefix)
    ship(target, repo, RetentionPolicy(60, 3))
    for gone in backups[:8] + [backups[-2]]:
        repo.delete(gone)
    log = Log()
    plan = apply_offsite_retention(target, target.catalog(log), repo, STORES, POLICY, now=now, dry_run=True,
                                   stale_after=timedelta(hours=48), log=log)  # fmt: skip
    assert plan["series"][0]["obsolete"] == [b.backup_id for b in backups[:10]]
    assert target.catalog(Log()).count() == 40
    apply_offsite_retention(target, target.catalog(log), repo, STORES, POLICY, now=now, dry_run=False,
                            stale_after=timedelta(hours=48), log=log)  # fmt: skip
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
    report = ship_all(target, repo, ["mongo"], POLICY, encryption=enc, now=datetime.now(UTC), dry_run=False,
                      log=Log())  # fmt: skip
    verify_all(target, repo, ["mongo"], expected=report["expected"], shipped=report["shipped"], deep=True,
               encryption=enc, log=Log())  # fmt: skip
    stored = client.get_object(Bucket=bucket, Key=f"{prefix}/mongo/{backup.backup_id}/ai_platform.archive.enc")
    assert secret[:40] not in stored["Body"].read()
    envelope = json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/mongo/{backup.backup_id}/offsite.json")
                          ["Body"].read())  # fmt: skip
    assert envelope["encryption"]["key_id"] == enc.key_id and all(f["sha256"] for f in envelope["files"])

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
        identity = {"name": "t", "credentials": [{"accessKey": "offsite-test", "secretKey": self.secret}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"]}  # fmt: skip
        self.config = folder / "s3.json"
        self.config.write_text(json.dumps({"identities": [identity]}))
        self.config.chmod(0o600)
        (folder / "data").mkdir()
        self.proc: subprocess.Popen | None = None

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.ports['s3']}", region_name="us-east-1",
                            aws_access_key_id="offsite-test", aws_secret_access_key=self.secret,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                          connect_timeout=2, read_timeout=10))  # fmt: skip

    def start(self) -> None:
        p = self.ports
        argv = [str(VENV_BIN / "weed"), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.folder / 'data'}",
                f"-master.port={p['master']}", "-master.volumeSizeLimitMB=64", "-master.telemetry=false",
                "-master.electionTimeout=2s", f"-volume.port={p['volume']}", "-volume.max=5",
                "-volume.preStopSeconds=1", "-filer", f"-filer.port={p['filer']}", "-s3", f"-s3.port={p['s3']}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.config}"]  # fmt: skip
        with open(self.folder / "weed.log", "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.folder,
                                         start_new_session=True)  # fmt: skip
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
    with pytest.raises(Exception):  # the connection dies under boto3
        ship(target, repo)
    assert killed

    private_s3.start()  # the same data folder: what was stored before the crash is still there
    client = private_s3.client()
    target = s3_target(client, "offsite", "dbops")
    catalog = target.catalog(Log())
    assert catalog.count() == 0  # no manifest: nothing looks complete
    assert [e.name for e in catalog.staging] == [backup.backup_id]
    folder = f"dbops/redis/{backup.backup_id}/"
    names = {o["Key"][len(folder):] for o in client.list_objects_v2(Bucket="offsite", Prefix=folder).get("Contents", [])}
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
