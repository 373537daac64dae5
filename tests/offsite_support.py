"""Helpers of the offsite tests: small real backups in a repository, and the devstack targets."""

from __future__ import annotations

import base64
import hashlib
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dbops.backup.repository import Backup, BackupRepository
from tests.support import Log, make_backup  # noqa: F401 (used by tests importing them from here)

UTC = UTC


def daily_backups(
    repo: BackupRepository, store: str, days: int, *, now: datetime, subject: str | None = None, size: int = 1024
) -> list[Backup]:
    """One backup a day for ``days`` days, the newest finishing 1 h before ``now``."""
    return [
        make_backup(repo, store, subject, finished=now - timedelta(days=i, hours=1), files={"dump.bin": size})
        for i in reversed(range(days))
    ]


def ssh_params(conn: dict, **overrides):
    from dbops.offsite.rsync import SSHParams

    values = dict(
        host=conn["host"],
        port=conn["port"],
        user=conn["login"],
        private_key=conn["extra"]["private_key"],
        host_key=conn["extra"]["host_key"],
    )
    values.update(overrides)
    return SSHParams(**values)


def remote_dir(devstack) -> Path:
    """A fresh folder under the devstack offsite user's backups (removed by the caller)."""
    base = Path(devstack.service("offsite").environment()["DBOPS_OFFSITE__RSYNC_REMOTE_DIR"])
    return base / f"test-{uuid.uuid4().hex[:12]}"


def remove_remote(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)  # the tests run as root, on the same machine


def empty_prefix(client, bucket: str, prefix: str) -> None:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix + "/"):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", []) or []]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for upload in page.get("Uploads", []) or []:
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


class StubS3:
    """An in-memory stand-in for a boto3 S3 client: the calls S3Target makes, recorded.
    Objects stored with ``ChecksumAlgorithm=SHA256`` get S3's ``ChecksumSHA256`` (one part);
    a given ``ChecksumSHA256`` must match the body. The bucket has no Object Lock.

    ``fail_upload`` (a callable taking the key) can raise to simulate a dropped connection.
    """

    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []
        self.uploads: list[dict] = []
        self.fail_upload = None

    # -- helpers
    def _store(self, key: str, data: bytes, args: dict | None) -> None:
        args = dict(args or {})
        metadata = args.pop("Metadata", {}) or {}
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
        if args.get("ChecksumSHA256") not in (None, checksum):
            raise self._error("BadDigest", 400, "PutObject")
        if args.pop("ChecksumAlgorithm", None) == "SHA256" or "ChecksumSHA256" in args:
            args["ChecksumSHA256"] = checksum
        self.objects[key] = {"data": data, "metadata": dict(metadata), "args": args, "modified": datetime.now(UTC)}

    @staticmethod
    def _error(code: str, status: int, op: str):
        from botocore.exceptions import ClientError

        return ClientError(
            {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, op
        )

    @classmethod
    def _missing(cls, op: str):
        return cls._error("404", 404, op)

    # -- the client API
    def head_object(self, Bucket, Key, ChecksumMode=None):
        self.calls.append(("head", Key))
        if Key not in self.objects:
            raise self._missing("HeadObject")
        obj = self.objects[Key]
        return {"ContentLength": len(obj["data"]), "Metadata": dict(obj["metadata"]), **obj["args"]}

    def upload_file(self, Filename, Bucket, Key, ExtraArgs=None, Config=None, Callback=None):
        with open(Filename, "rb") as fh:
            self.upload_fileobj(fh, Bucket, Key, ExtraArgs=ExtraArgs, Config=Config, Callback=Callback)

    def upload_fileobj(self, Fileobj, Bucket, Key, ExtraArgs=None, Config=None, Callback=None):
        self.calls.append(("upload", Key))
        if self.fail_upload is not None:
            self.fail_upload(Key)
        parts = []
        while block := Fileobj.read(1024 * 1024):
            parts.append(block)
            if Callback:
                Callback(len(block))
        self._store(Key, b"".join(parts), ExtraArgs)

    def put_object(self, Bucket, Key, Body, **kwargs):
        self.calls.append(("put", Key))
        self._store(Key, Body if isinstance(Body, bytes) else Body.read(), kwargs)

    def get_object_lock_configuration(self, Bucket):
        raise self._error("ObjectLockConfigurationNotFoundError", 404, "GetObjectLockConfiguration")

    def get_object(self, Bucket, Key):
        import io

        if Key not in self.objects:
            raise self._missing("GetObject")
        return {"Body": io.BytesIO(self.objects[Key]["data"])}

    def download_file(self, Bucket, Key, Filename, Config=None):
        Path(Filename).write_bytes(self.objects[Key]["data"])

    def delete_object(self, Bucket, Key):
        self.calls.append(("delete", Key))
        self.objects.pop(Key, None)

    def delete_objects(self, Bucket, Delete):
        for item in Delete["Objects"]:
            self.delete_object(Bucket, item["Key"])
        return {}

    def abort_multipart_upload(self, Bucket, Key, UploadId):
        self.uploads = [u for u in self.uploads if u["UploadId"] != UploadId]

    def get_paginator(self, name):
        stub = self

        class Paginator:
            def paginate(self, Bucket, Prefix=""):
                if name == "list_objects_v2":
                    contents = [
                        {"Key": k, "Size": len(o["data"]), "LastModified": o["modified"]}
                        for k, o in sorted(stub.objects.items())
                        if k.startswith(Prefix)
                    ]
                    yield {"Contents": contents}
                else:
                    yield {"Uploads": [u for u in stub.uploads if u["Key"].startswith(Prefix)]}

        return Paginator()


@contextmanager
def local_repository_gone(root: Path) -> Iterator[None]:
    """The local repository unavailable, as after the loss of its disk. The tests run as
    root, for whom ``chmod 000`` does not stop a read: the folder is moved away and a plain
    file put in its place, so that anything opening the repository fails loudly (and
    nothing can quietly create an empty one)."""
    away = root.with_name(root.name + ".away")
    root.rename(away)
    root.write_text("the local repository is gone\n")
    try:
        yield
    finally:
        root.unlink()
        away.rename(root)
