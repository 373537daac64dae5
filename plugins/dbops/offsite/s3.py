"""The S3 target (AWS S3, MinIO, SeaweedFS, ...), through a boto3 client.

Keys: ``<prefix>/<store>/[<subject>/]<backup_id>/<path>``, the local layout.

* Order of a backup's objects: data files, then ``offsite.json``, then ``manifest.json``
  last; a backup is complete offsite only when its manifest object exists, so an
  interrupted upload never looks complete and the next run finishes it.
* A data object already present with the expected size and the same ``sha256`` user
  metadata (and, encrypted, the same key id) is not uploaded again: a rerun after an
  interruption uploads only what is missing.
* Uploads use a tuned :class:`boto3.s3.transfer.TransferConfig` (multipart threshold,
  part size, concurrency); every request is integrity-checked by boto3 (Content-MD5 /
  CRC checksums), and each object's size and metadata are read back before the
  manifest goes up. Server-side encryption and storage class are settings.
* Deletion removes ``manifest.json`` first, so a half-deleted backup stops looking
  complete at once.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from dbops.backup.repository import MANIFEST_NAME, Backup, utc_now
from dbops.config import S3_SSE_MODES as SSE_MODES
from dbops.config import S3_STORAGE_CLASSES as STORAGE_CLASSES
from dbops.offsite.common import (
    ENCRYPTED_SUFFIX,
    ENVELOPE_NAME,
    Catalog,
    Envelope,
    LogFn,
    OffsiteBackup,
    OffsiteError,
    OffsiteVerificationError,
    SeriesKey,
    StagingEntry,
    StoredFile,
    TransferStats,
    catalog_from_mirror,
    check_rel,
    mirror_path,
    split_backup_path,
)
from dbops.offsite.crypto import DecryptionError, Encryption, file_context
from dbops.tools import human_bytes

MIB = 1024 * 1024
META_SHA256 = "sha256"  # x-amz-meta-sha256: sha256 of the plaintext (the manifest's)
META_KEY_ID = "dbops-key-id"  # x-amz-meta-dbops-key-id: the encryption key id, when encrypted
_MAX_CONTROL_BYTES = 256 * MIB


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str = "dbops"
    storage_class: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None
    multipart_threshold: int = 64 * MIB
    multipart_chunksize: int = 64 * MIB
    max_concurrency: int = 4

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ValueError("the S3 bucket is not set")
        if self.prefix.startswith("/") or self.prefix.endswith("/") or "//" in self.prefix:
            raise ValueError(f"S3 prefix {self.prefix!r} must not start or end with '/'")
        if self.storage_class is not None and self.storage_class not in STORAGE_CLASSES:
            raise ValueError(f"S3 storage class {self.storage_class!r} unknown")
        if self.sse is not None and self.sse not in SSE_MODES:
            raise ValueError(f"S3 server-side encryption {self.sse!r} must be one of {SSE_MODES}")
        if self.sse_kms_key_id and not (self.sse or "").startswith("aws:kms"):
            raise ValueError("an S3 KMS key id needs sse aws:kms or aws:kms:dsse")
        if self.multipart_chunksize < 5 * MIB:
            raise ValueError("S3 multipart parts must be at least 5 MiB")


def _not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("404", "NoSuchKey", "NotFound") or status == 404


class _Progress:
    """Thread-safe byte counter for boto3 callbacks; calls ``hook`` with the running total."""

    def __init__(self, hook: Callable[[int], None] | None) -> None:
        self.total = 0
        self._lock = threading.Lock()
        self._hook = hook

    def __call__(self, n: int) -> None:
        with self._lock:
            self.total += n
            total = self.total
        if self._hook is not None:
            self._hook(total)


class _HashingReader:
    """Wraps a stream, hashing what is read (for deep verification of encrypted objects)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()
        self.bytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.digest.update(data)
        self.bytes += len(data)
        return data


class _HashingSink:
    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return len(data)


class S3Target:
    """Backups in ``s3://bucket/prefix/``; ``client`` is a boto3 S3 client (from the
    amazon provider's S3Hook in Airflow). ``progress`` is called with the bytes uploaded
    so far by the running transfer (logging, tests)."""

    name = "s3"

    def __init__(
        self, client: Any, settings: S3Settings, *, progress: Callable[[int], None] | None = None
    ) -> None:
        self.client = client
        self.settings = settings
        self.bucket = settings.bucket
        self.progress = progress

    def __enter__(self) -> S3Target:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def location(self) -> str:
        return f"s3://{self.bucket}/{self.settings.prefix}"

    def describe(self) -> str:
        extras = [f"storage class {self.settings.storage_class or 'default'}",
                  f"SSE {self.settings.sse or 'off'}",
                  f"parts {human_bytes(self.settings.multipart_chunksize)} x{self.settings.max_concurrency}"]  # fmt: skip
        return f"S3 {self.location()} ({', '.join(extras)})"

    # ---------------------------------------------------------------- keys

    @property
    def root(self) -> str:
        return f"{self.settings.prefix}/" if self.settings.prefix else ""

    def folder_key(self, key: SeriesKey, backup_id: str) -> str:
        """The key prefix of one backup folder, ending in ``/`` (never a prefix of another id)."""
        return f"{self.root}{key.rel}/{backup_id}/"

    def object_key(self, key: SeriesKey, backup_id: str, inner: str) -> str:
        return self.folder_key(key, backup_id) + inner

    def transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        s = self.settings
        return TransferConfig(
            multipart_threshold=s.multipart_threshold,
            multipart_chunksize=s.multipart_chunksize,
            max_concurrency=s.max_concurrency,
            use_threads=s.max_concurrency > 1,
        )

    def _extra_args(self, metadata: Mapping[str, str], content_type: str) -> dict[str, Any]:
        args: dict[str, Any] = {"Metadata": dict(metadata), "ContentType": content_type}
        if self.settings.storage_class:
            args["StorageClass"] = self.settings.storage_class
        if self.settings.sse:
            args["ServerSideEncryption"] = self.settings.sse
            if self.settings.sse_kms_key_id:
                args["SSEKMSKeyId"] = self.settings.sse_kms_key_id
        return args

    def _head(self, key: str) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _not_found(exc):
                return None
            raise

    def _objects(self, prefix: str) -> Iterator[dict]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", []) or []

    # ---------------------------------------------------------------- catalog

    def catalog(self, log: LogFn) -> Catalog:
        catalog = Catalog()
        wanted: list[tuple[str, str, int]] = []
        newest: dict[tuple[SeriesKey, str], datetime] = {}
        for obj in self._objects(self.root):
            rel = obj["Key"][len(self.root):]
            found = split_backup_path(rel)
            if found is None:
                continue
            key, backup_id, inner = found
            catalog.sizes.setdefault((key, backup_id), {})[inner] = int(obj["Size"])
            modified = obj.get("LastModified")
            if isinstance(modified, datetime):
                prior = newest.get((key, backup_id))
                newest[(key, backup_id)] = modified if prior is None else max(prior, modified)
            if inner in (MANIFEST_NAME, ENVELOPE_NAME):
                wanted.append((rel, obj["Key"], int(obj["Size"])))
        with tempfile.TemporaryDirectory(prefix="dbops-offsite-catalog-") as tmp:
            mirror = Path(tmp) / "mirror"
            mirror.mkdir(mode=0o700)
            for rel, key_name, size in wanted:
                if size > _MAX_CONTROL_BYTES:
                    continue  # not ours: listing will call the backup incomplete
                body = self.client.get_object(Bucket=self.bucket, Key=key_name)["Body"].read()
                catalog.wire_bytes += len(body)
                target = mirror_path(mirror, rel)
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                target.write_bytes(body)
            catalog.backups = catalog_from_mirror(mirror)
        for (key, backup_id), _sizes in catalog.sizes.items():
            if catalog.get(key, backup_id) is None:
                catalog.staging.append(StagingEntry(key, backup_id, newest.get((key, backup_id))))
        log(f"S3 catalog of {self.location()}: {catalog.count()} complete backups, "
            f"{len(catalog.staging)} incomplete folders")  # fmt: skip
        return catalog

    # ---------------------------------------------------------------- shipping

    def ship(self, backup: Backup, encryption: Encryption | None, log: LogFn) -> tuple[Envelope, TransferStats]:
        key = SeriesKey.of(backup)
        where = f"{key}/{backup.backup_id}"
        started = time.monotonic()
        stats = TransferStats()
        progress = _Progress(self.progress)
        config = self.transfer_config()
        files: list[StoredFile] = []
        problems: list[str] = []
        for entry in sorted(backup.manifest["files"], key=lambda e: e["path"]):
            path, plain_sha = entry["path"], entry["sha256"]
            stored_path = path + ENCRYPTED_SUFFIX if encryption else path
            expected = encryption.stored_size(entry["bytes"]) if encryption else entry["bytes"]
            metadata = {META_SHA256: plain_sha}
            if encryption:
                metadata[META_KEY_ID] = encryption.key_id
            obj_key = self.object_key(key, backup.backup_id, stored_path)
            head = self._head(obj_key)
            if head is not None and _matches(head, expected, metadata):
                stats.files_skipped += 1
                stored_sha = plain_sha
                if encryption is not None:  # deterministic: the bytes there are these bytes
                    stored_sha = _encrypted_sha256(encryption, backup.path / path,
                                                   file_context(key.store, key.subject, backup.backup_id, path, plain_sha))
                files.append(StoredFile(path, stored_path, expected, stored_sha, entry["bytes"], plain_sha))
                continue
            source = backup.path / path
            extra = self._extra_args(metadata, "application/octet-stream")
            if encryption is None:
                self.client.upload_file(str(source), self.bucket, obj_key, ExtraArgs=extra, Config=config,
                                        Callback=progress)  # fmt: skip
                stored_sha = plain_sha
            else:
                context = file_context(key.store, key.subject, backup.backup_id, path, plain_sha)
                with open(source, "rb") as fh:
                    reader = encryption.reader(fh, context)
                    self.client.upload_fileobj(reader, self.bucket, obj_key, ExtraArgs=extra, Config=config,
                                               Callback=progress)  # fmt: skip
                if not reader.finished or reader.bytes != expected:
                    raise OffsiteError(f"{source} changed while it was uploaded ({reader.bytes} bytes encrypted)")
                stored_sha = reader.sha256
            stats.files_transferred += 1
            head = self._head(obj_key)
            if head is None:
                problems.append(f"{stored_path}: missing after upload")
            elif not _matches(head, expected, metadata):
                problems.append(f"{stored_path}: {head.get('ContentLength')} bytes / metadata "
                                f"{head.get('Metadata')} after upload, expected {expected} bytes")  # fmt: skip
            files.append(StoredFile(path, stored_path, expected, stored_sha, entry["bytes"], plain_sha))
        stats.literal_bytes = stats.bytes_sent = progress.total
        if problems:
            raise OffsiteVerificationError(f"S3 arrival check of {where} failed, manifest not uploaded", problems)
        envelope = Envelope(
            manifest_sha256=str(backup.manifest["manifest_sha256"]),
            files=tuple(files),
            encryption=encryption.describe() if encryption else None,
            target=self.name,
            shipped_at=utc_now(),
        )
        body = envelope.to_bytes()
        self.client.put_object(Bucket=self.bucket, Key=self.object_key(key, backup.backup_id, ENVELOPE_NAME),
                               Body=body, **self._extra_args({}, "application/json"))  # fmt: skip
        manifest_bytes = (backup.path / MANIFEST_NAME).read_bytes()
        # last: from now on the backup is complete offsite
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.object_key(key, backup.backup_id, MANIFEST_NAME),
            Body=manifest_bytes,
            **self._extra_args({META_SHA256: hashlib.sha256(manifest_bytes).hexdigest()}, "application/json"),
        )
        stats.bytes_sent += len(body) + len(manifest_bytes)
        stats.seconds = round(time.monotonic() - started, 3)
        log(f"S3 {where}: {stats.files_transferred} files uploaded ({human_bytes(stats.literal_bytes)}), "
            f"{stats.files_skipped} already there; manifest uploaded last")  # fmt: skip
        return envelope, stats

    # ---------------------------------------------------------------- checks

    def verify_content(
        self, item: OffsiteBackup, *, deep: bool, encryption: Encryption | None, log: LogFn
    ) -> list[str]:
        """Each object's size and sha256 metadata; with ``deep``, every object read back
        and hashed (and, encrypted with a key at hand, decrypted and authenticated)."""
        assert item.envelope is not None
        problems = []
        encrypted = item.envelope.encryption is not None
        key_id = (item.envelope.encryption or {}).get("key_id")
        for f in item.envelope.files:
            obj_key = self.object_key(item.key, item.backup_id, f.stored_path)
            head = self._head(obj_key)
            if head is None:
                problems.append(f"{f.stored_path}: missing")
                continue
            metadata = head.get("Metadata", {}) or {}
            if int(head.get("ContentLength", -1)) != f.bytes:
                problems.append(f"{f.stored_path}: {head.get('ContentLength')} bytes, expected {f.bytes}")
                continue
            if metadata.get(META_SHA256) != f.plain_sha256:
                problems.append(f"{f.stored_path}: sha256 metadata {metadata.get(META_SHA256)}, "
                                f"expected {f.plain_sha256}")  # fmt: skip
                continue
            if encrypted and metadata.get(META_KEY_ID) != key_id:
                problems.append(f"{f.stored_path}: key id metadata {metadata.get(META_KEY_ID)}, expected {key_id}")
                continue
            if not deep:
                continue
            body = self.client.get_object(Bucket=self.bucket, Key=obj_key)["Body"]
            reader = _HashingReader(body)
            if encrypted and encryption is not None:
                sink = _HashingSink()
                try:
                    plain_bytes, plain_sha = encryption.decrypt_stream(reader, sink)
                except DecryptionError as exc:
                    problems.append(f"{f.stored_path}: does not decrypt: {exc}")
                    continue
                if plain_bytes != f.plain_bytes or plain_sha != f.plain_sha256:
                    problems.append(f"{f.stored_path}: decrypts to sha256 {plain_sha}, expected {f.plain_sha256}")
            else:
                while reader.read(MIB):
                    pass
            if f.sha256 is not None and reader.digest.hexdigest() != f.sha256:
                problems.append(f"{f.stored_path}: stored sha256 {reader.digest.hexdigest()}, expected {f.sha256}")
        return problems

    # ---------------------------------------------------------------- removal

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            response = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            errors = response.get("Errors") or []
            if errors:
                raise OffsiteError(f"S3 refused to delete {len(errors)} objects, e.g. {errors[0]}")

    def delete(self, key: SeriesKey, backup_id: str, log: LogFn) -> None:
        """``manifest.json`` first (it stops being complete), then everything else."""
        folder = self.folder_key(key, backup_id)
        self.client.delete_object(Bucket=self.bucket, Key=folder + MANIFEST_NAME)
        rest = [o["Key"] for o in self._objects(folder)]
        rest.sort(key=lambda k: k.endswith("/" + ENVELOPE_NAME), reverse=True)
        self._delete_keys(rest)

    def remove_incomplete(self, entry: StagingEntry, log: LogFn) -> None:
        folder = self.folder_key(entry.key, entry.name)
        if self._head(folder + MANIFEST_NAME) is not None:
            raise OffsiteError(f"{folder} has a manifest now; not removing it as incomplete")
        self._delete_keys([o["Key"] for o in self._objects(folder)])

    def housekeeping(self, older_than: timedelta, now: datetime, log: LogFn) -> list[str]:
        """Abort multipart uploads under the prefix started more than ``older_than`` ago
        (an upload killed mid-way leaves its parts billed until aborted)."""
        cutoff = now - older_than
        aborted = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.root):
            for upload in page.get("Uploads", []) or []:
                initiated = upload.get("Initiated")
                if isinstance(initiated, datetime) and initiated.astimezone(timezone.utc) < cutoff:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])  # fmt: skip
                    aborted.append(upload["Key"])
                    log(f"aborted a stale multipart upload of {upload['Key']} (started {initiated})")
        return aborted

    # ---------------------------------------------------------------- plain files (FileTarget)
    # for the WAL archive: objects under <prefix>/<rel>, each with the sha256 metadata of
    # its plaintext (and the key id when encrypted), checked by size and metadata on arrival

    def file_key(self, rel: str) -> str:
        return self.root + check_rel(rel)

    def list_files(self, folder: str, log: LogFn) -> dict[str, int]:
        prefix = self.file_key(folder) + "/"
        sizes = {}
        for obj in self._objects(prefix):
            name = obj["Key"][len(prefix):]
            if name and "/" not in name:
                sizes[name] = int(obj["Size"])
        return sizes

    def _file_metadata(self, f: StoredFile, key_id: str | None) -> dict[str, str]:
        return {META_SHA256: f.plain_sha256, **({META_KEY_ID: key_id} if key_id else {})}

    def put_files(self, folder: str, source_dir: Path, files, key_id: str | None, log: LogFn) -> TransferStats:
        """Upload each file unless an object with its size and metadata is there already."""
        started = time.monotonic()
        stats = TransferStats()
        progress = _Progress(self.progress)
        config = self.transfer_config()
        for f in files:
            obj_key = self.file_key(f"{folder}/{f.stored_path}")
            metadata = self._file_metadata(f, key_id)
            head = self._head(obj_key)
            if head is not None and _matches(head, f.bytes, metadata):
                stats.files_skipped += 1
                continue
            self.client.upload_file(str(source_dir / f.stored_path), self.bucket, obj_key, Config=config,
                                    ExtraArgs=self._extra_args(metadata, "application/octet-stream"),
                                    Callback=progress)  # fmt: skip
            stats.files_transferred += 1
        stats.literal_bytes = stats.bytes_sent = progress.total
        stats.seconds = round(time.monotonic() - started, 3)
        return stats

    def check_files(self, folder: str, files, key_id: str | None, *, deep: bool, log: LogFn) -> list[str]:
        """Size and sha256 metadata of every object; with ``deep`` each read back and hashed."""
        problems = []
        for f in files:
            obj_key = self.file_key(f"{folder}/{f.stored_path}")
            head = self._head(obj_key)
            if head is None:
                problems.append(f"{f.stored_path}: missing")
                continue
            if not _matches(head, f.bytes, self._file_metadata(f, key_id)):
                problems.append(f"{f.stored_path}: {head.get('ContentLength')} bytes / metadata {head.get('Metadata')}, "
                                f"expected {f.bytes} bytes and sha256 {f.plain_sha256}")  # fmt: skip
                continue
            if deep:
                reader = _HashingReader(self.client.get_object(Bucket=self.bucket, Key=obj_key)["Body"])
                while reader.read(MIB):
                    pass
                if reader.digest.hexdigest() != f.sha256:
                    problems.append(f"{f.stored_path}: stored sha256 {reader.digest.hexdigest()}, expected {f.sha256}")
        return problems

    def read_file(self, rel: str, log: LogFn) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.file_key(rel))["Body"].read()
        except Exception as exc:
            if _not_found(exc):
                return None
            raise

    def write_file(self, rel: str, data: bytes, log: LogFn) -> None:
        """One PUT: S3 replaces an object atomically."""
        self.client.put_object(Bucket=self.bucket, Key=self.file_key(rel), Body=data,
                               **self._extra_args({META_SHA256: hashlib.sha256(data).hexdigest()}, "application/json"))  # fmt: skip

    def delete_files(self, folder: str, names, log: LogFn) -> None:
        names = list(names)
        for name in names:
            if "/" in name:
                raise OffsiteError(f"refusing the offsite file name {name!r}: not a plain name")
        self._delete_keys([self.file_key(f"{folder}/{name}") for name in names])

    # ---------------------------------------------------------------- restore

    def download(self, key: SeriesKey, backup_id: str, dest: Path, log: LogFn) -> TransferStats:
        folder = self.folder_key(key, backup_id)
        stats = TransferStats()
        started = time.monotonic()
        config = self.transfer_config()
        for obj in self._objects(folder):
            inner = obj["Key"][len(folder):]
            found = split_backup_path(f"{key.rel}/{backup_id}/{inner}")
            if found is None:
                raise OffsiteError(f"refusing to download {obj['Key']!r}: not a plain path")
            target = mirror_path(dest, inner)
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.client.download_file(self.bucket, obj["Key"], str(target), Config=config)
            target.chmod(0o600)
            stats.files_transferred += 1
            stats.bytes_received += int(obj["Size"])
            stats.literal_bytes += int(obj["Size"])
        stats.seconds = round(time.monotonic() - started, 3)
        return stats


def _encrypted_sha256(encryption: Encryption, source: Path, context: str) -> str:
    digest = hashlib.sha256()
    with open(source, "rb") as fh:
        for block in encryption.encrypt_chunks(fh, context):
            digest.update(block)
    return digest.hexdigest()


def _matches(head: Mapping[str, Any], size: int, metadata: Mapping[str, str]) -> bool:
    found = head.get("Metadata", {}) or {}
    return int(head.get("ContentLength", -1)) == size and all(found.get(k) == v for k, v in metadata.items())
