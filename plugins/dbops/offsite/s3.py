"""The S3 target (AWS S3, MinIO, SeaweedFS, ...), through a boto3 client.

Keys: ``<prefix>/<store>/[<subject>/]<backup_id>/<path>``, the local layout.

* Order of a backup's objects: data files, then ``s3-checksums.json``, ``offsite.json``,
  and ``manifest.json`` last; a backup is complete offsite only when its manifest object
  exists, so an interrupted upload never looks complete and the next run finishes it.
* Integrity is judged by S3's own checksums, never by metadata dbops wrote. Every upload
  asks S3 for a SHA256 checksum (``ChecksumAlgorithm=SHA256``): a single PUT gets the
  sha256 of the whole object; a multipart upload gets S3's composite checksum,
  ``base64(sha256(sha256(part 1) | ... | sha256(part N)))-N``. The arrival check reads
  it back (``head_object(ChecksumMode=ENABLED)``) and compares it per object with the
  value computed locally from the bytes that were meant to arrive: the manifest's sha256
  (plain copies), the sha256 of the encrypted stream (encrypted copies; known only once
  the stream was read to its end), or, for a multipart object, the composite of those
  bytes split at the part size S3 reports (``head_object(PartNumber=1)``). Small control
  objects go up with their sha256 (``ChecksumSHA256``), which S3 refuses to store
  otherwise. The ``x-amz-meta-sha256`` metadata stays, for people, and is not trusted.
  SeaweedFS 4.48 (measured) stores and returns these checksums, the composite included,
  and refuses a PUT whose ``ChecksumSHA256`` does not match (BadDigest); it returns no
  per-part checksums and ``get_object_attributes`` gives no ``Checksum``, so only
  ``head_object`` is relied on.
* ``s3-checksums.json`` records the checksum each data object had when its arrival check
  passed; a later verify compares S3's current checksum with the envelope's sha256
  (single-part objects) or with that record (multipart objects: their composite cannot
  be derived from a whole-file sha256). An object rewritten by anyone gets a new
  checksum from S3 (or none), so the check sees it.
* **No checksum from the server is never a pass**: when S3 returns no SHA256 checksum for
  an object (a server without checksum support, an object written without one, a
  multipart object without a record), the check falls back to re-reading the object and
  hashing it, and says so in the log. ``deep_verify`` re-reads every object (and, with
  the key, decrypts it under its own file's context). Bit rot below S3's checksum (the
  server's disks) is seen only by that re-read.
* A data object already present with the expected size and S3 checksum is not uploaded
  again: a rerun after an interruption uploads only what is missing or different.
* **Object Lock** (``offsite.s3_object_lock``): ``auto`` locks every object of a copy in
  GOVERNANCE mode until the copy's expiry (its backup's ``finished_at`` + the offsite
  ``retention_days``) when the bucket has Object Lock enabled, and sends no lock
  otherwise; ``governance`` / ``compliance`` demand it (a bucket without Object Lock is
  refused before any upload); ``off`` never sends one. GOVERNANCE is auto's mode because
  an operator holding ``s3:BypassGovernanceRetention`` can still remove a copy in an
  emergency, while dbops (and anyone without that permission) cannot; COMPLIANCE
  (nobody, not even the account root, can shorten it) must be chosen explicitly. The
  arrival check reads the lock back. SeaweedFS (4.48, measured) enforces it: deleting a
  locked version, or shortening a COMPLIANCE retention, is refused with AccessDenied,
  while a delete without a version id only adds a delete marker, as on AWS. So
  ``delete`` on a bucket with Object Lock first checks every version of the copy and
  refuses loudly while any is still locked (a delete marker would hide the copy and
  report success while nothing was freed), then deletes the versions themselves (the
  lock, not versioning, guards them until expiry). On other buckets it deletes the
  current objects as before (a versioned bucket keeps the old versions for its lifecycle
  rules). WAL files are not locked: their expiry is not known when they are shipped.
* Uploads use a tuned :class:`boto3.s3.transfer.TransferConfig` (multipart threshold,
  part size, concurrency). Server-side encryption and storage class are settings.
* Deletion removes ``manifest.json`` first, so a half-deleted backup stops looking
  complete at once. ``download`` resumes: a file already in ``dest`` with the stored
  size and the envelope's sha256 is not fetched again.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dbops.backup.repository import MANIFEST_NAME, Backup, utc_now
from dbops.config import S3_OBJECT_LOCK_SETTINGS as OBJECT_LOCK_SETTINGS
from dbops.config import S3_SSE_MODES as SSE_MODES
from dbops.config import S3_STORAGE_CLASSES as STORAGE_CLASSES
from dbops.offsite.common import (
    CONTROL_FILES,
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
META_SHA256 = "sha256"  # x-amz-meta-sha256: sha256 of the plaintext (information only)
META_KEY_ID = "dbops-key-id"  # x-amz-meta-dbops-key-id: the encryption key id (information only)
CHECKSUMS_NAME = "s3-checksums.json"  # the S3 checksums the arrival check accepted
CHECKSUMS_FORMAT = "dbops-s3-checksums"
_MAX_CONTROL_BYTES = 256 * MIB
_SINGLE_PUT_MAX = 5 * 1024 * MIB  # S3's limit for one PUT
_LOCK_MODES = {"governance": "GOVERNANCE", "compliance": "COMPLIANCE"}


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
    object_lock: str = "auto"  # offsite.s3_object_lock
    retention_days: int = 30  # offsite.retention_days: how long Object Lock keeps a copy

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
        if self.object_lock not in OBJECT_LOCK_SETTINGS:
            raise ValueError(f"S3 object lock {self.object_lock!r} must be one of {OBJECT_LOCK_SETTINGS}")
        if not isinstance(self.retention_days, int) or self.retention_days < 1:
            raise ValueError(f"S3 retention_days {self.retention_days!r} must be a whole number of days >= 1")


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return _error_code(exc) in ("404", "NoSuchKey", "NotFound") or status == 404


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _b64_of_hex(hex_digest: str) -> str:
    return _b64(bytes.fromhex(hex_digest))


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


class _Digests:
    """sha256 of a byte stream, whole and per part of ``part_bytes`` (None: one PUT), as
    S3 computes its checksum of an object uploaded that way."""

    def __init__(self, part_bytes: int | None) -> None:
        self.part_bytes = part_bytes
        self.whole = hashlib.sha256()
        self.bytes = 0
        self._parts: list[bytes] = []
        self._part = hashlib.sha256()
        self._in_part = 0

    def update(self, data: bytes) -> None:
        self.whole.update(data)
        self.bytes += len(data)
        if self.part_bytes is None:
            return
        view = memoryview(data)
        while view:
            piece = view[: self.part_bytes - self._in_part]
            self._part.update(piece)
            self._in_part += len(piece)
            view = view[len(piece) :]
            if self._in_part == self.part_bytes:
                self._parts.append(self._part.digest())
                self._part, self._in_part = hashlib.sha256(), 0

    def s3_checksum(self) -> str:
        """S3's ``ChecksumSHA256`` of these bytes uploaded in one PUT or in parts."""
        if self.part_bytes is None:
            return _b64(self.whole.digest())
        parts = self._parts + ([self._part.digest()] if self._in_part else [])
        return f"{_b64(hashlib.sha256(b''.join(parts)).digest())}-{len(parts)}"


class _Source:
    """The bytes an object should hold, hashed only when a check needs it (a multipart
    composite, the sha256 of an encrypted stream). ``sha256``: the whole-file digest when
    known without reading (a plain file's manifest entry); a local pass that disagrees
    means the local file changed since its manifest, and is refused."""

    def __init__(self, label: str, blocks: Callable[[], Iterator[bytes]], sha256: str | None = None) -> None:
        self.label = label
        self._blocks = blocks
        self._sha256 = sha256
        self._known: dict[int | None, _Digests] = {}

    def add(self, digests: _Digests) -> None:
        self._known[digests.part_bytes] = digests
        self._check(digests)

    def digests(self, part_bytes: int | None) -> _Digests:
        if part_bytes not in self._known:
            digests = _Digests(part_bytes)
            for block in self._blocks():
                digests.update(block)
            self.add(digests)
        return self._known[part_bytes]

    def sha256(self) -> str:
        if self._sha256 is None:
            any_pass = next(iter(self._known.values()), None) or self.digests(None)
            self._sha256 = any_pass.whole.hexdigest()
        return self._sha256

    def composite(self, part_bytes: int) -> str | None:
        return self.digests(part_bytes).s3_checksum()

    def _check(self, digests: _Digests) -> None:
        found = digests.whole.hexdigest()
        if self._sha256 is not None and found != self._sha256:
            raise OffsiteError(
                f"{self.label}: the local bytes hash to {found}, the manifest says {self._sha256}: "
                "changed since the backup was sealed"
            )


class _Recorded:
    """What a verify expects of a stored object, from the envelope and the checksum record."""

    def __init__(self, sha256: str, composite: str | None) -> None:
        self._sha256, self._composite = sha256, composite

    def sha256(self) -> str:
        return self._sha256

    def composite(self, part_bytes: int) -> str | None:
        return self._composite


class _DigestingReader:
    """Passes ``read`` through to a non-seekable stream, feeding what goes by to digests."""

    def __init__(self, raw: Any, digests: _Digests) -> None:
        self._raw, self.digests = raw, digests

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.digests.update(data)
        return data


class _HashingReader:
    """Wraps a stream, hashing what is read (the re-read of a stored object)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()
        self.bytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.digest.update(data)
        self.bytes += len(data)
        return data


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


def _file_blocks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while block := fh.read(MIB):
            yield block


def _encrypted_blocks(encryption: Encryption, path: Path, context: str) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        yield from encryption.encrypt_chunks(fh, context)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for block in _file_blocks(path):
        digest.update(block)
    return digest.hexdigest()


class S3Target:
    """Backups in ``s3://bucket/prefix/``; ``client`` is a boto3 S3 client (from the
    amazon provider's S3Hook in Airflow). ``progress`` is called with the bytes uploaded
    so far by the running transfer (logging, tests)."""

    name = "s3"

    def __init__(self, client: Any, settings: S3Settings, *, progress: Callable[[int], None] | None = None) -> None:
        self.client = client
        self.settings = settings
        self.bucket = settings.bucket
        self.progress = progress
        self._bucket_lock: bool | None = None  # Object Lock enabled on the bucket (read once)

    def __enter__(self) -> S3Target:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def location(self) -> str:
        return f"s3://{self.bucket}/{self.settings.prefix}"

    def describe(self) -> str:
        extras = [
            f"storage class {self.settings.storage_class or 'default'}",
            f"SSE {self.settings.sse or 'off'}",
            f"parts {human_bytes(self.settings.multipart_chunksize)} x{self.settings.max_concurrency}",
            f"object lock {self.settings.object_lock}",
        ]
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

    def _extra_args(
        self, metadata: Mapping[str, str], content_type: str, lock: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        args: dict[str, Any] = {"Metadata": dict(metadata), "ContentType": content_type}
        if self.settings.storage_class:
            args["StorageClass"] = self.settings.storage_class
        if self.settings.sse:
            args["ServerSideEncryption"] = self.settings.sse
            if self.settings.sse_kms_key_id:
                args["SSEKMSKeyId"] = self.settings.sse_kms_key_id
        args.update(lock or {})
        return args

    def _head(self, key: str, **extra: Any) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED", **extra)
        except Exception as exc:
            if _not_found(exc):
                return None
            raise

    def _objects(self, prefix: str) -> Iterator[dict]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", []) or []

    def _put_control(
        self,
        obj_key: str,
        body: bytes,
        lock: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """One PUT of a small object with its sha256: S3 refuses to store other bytes."""
        self.client.put_object(
            Bucket=self.bucket,
            Key=obj_key,
            Body=body,
            ChecksumSHA256=_b64(hashlib.sha256(body).digest()),
            **self._extra_args(metadata or {}, "application/json", lock),
        )

    # ---------------------------------------------------------------- checksums

    def _part_bytes(self, obj_key: str) -> int:
        """The part size a multipart object was uploaded with (its first part's size)."""
        head = self._head(obj_key, PartNumber=1)
        if head is None:
            raise OffsiteError(f"{obj_key}: vanished while it was checked")
        return int(head["ContentLength"])

    def _reread_sha256(self, obj_key: str) -> str:
        reader = _HashingReader(self.client.get_object(Bucket=self.bucket, Key=obj_key)["Body"])
        while reader.read(MIB):
            pass
        return reader.digest.hexdigest()

    def _checksum_problem(
        self,
        obj_key: str,
        head: Mapping[str, Any],
        size: int,
        label: str,
        expected: _Source | _Recorded,
        log: LogFn,
        *,
        reread: bool = True,
    ) -> str | None:
        """None when S3's SHA256 checksum of the object matches ``expected``; else the
        problem. Without a comparable checksum (none, or a composite with no expectation)
        the object is re-read and hashed (``reread``), or it is a problem."""
        found = int(head.get("ContentLength", -1))
        if found != size:
            return f"{label}: {found} bytes, expected {size}"
        checksum = head.get("ChecksumSHA256")
        want: str | None = None
        if checksum:
            _digest, dash, count = str(checksum).partition("-")
            if not dash:
                want = _b64_of_hex(expected.sha256())
            elif count.isdigit():
                part_bytes = self._part_bytes(obj_key)
                if part_bytes <= 0 or -(-size // part_bytes) != int(count):
                    return (
                        f"{label}: S3's checksum {checksum} has {count} parts, "
                        f"{part_bytes}-byte parts give another count"
                    )
                want = expected.composite(part_bytes)
            if want is not None:
                return None if checksum == want else f"{label}: S3's SHA256 checksum {checksum}, expected {want}"
        if not reread:
            return f"{label}: S3 holds no SHA256 checksum to compare"
        why = "no SHA256 checksum from S3" if not checksum else f"no record of the multipart checksum {checksum}"
        log(f"{label}: {why}: re-reading the object to hash it")
        got = self._reread_sha256(obj_key)
        if got != expected.sha256():
            return f"{label}: re-read ({why}), its sha256 is {got}, expected {expected.sha256()}"
        return None

    @staticmethod
    def _lock_problem(head: Mapping[str, Any], lock: Mapping[str, Any], label: str) -> str | None:
        """None when the object carries (at least) the Object Lock ``lock`` asks for."""
        if not lock:
            return None
        mode, until = head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")
        wanted_mode, wanted_until = lock["ObjectLockMode"], lock["ObjectLockRetainUntilDate"]
        mode_ok = mode == wanted_mode or mode == "COMPLIANCE"
        if not mode_ok or not isinstance(until, datetime) or until < wanted_until - timedelta(seconds=1):
            return (
                f"{label}: Object Lock {mode} until {until}, "
                f"expected {wanted_mode} until {wanted_until:%Y-%m-%dT%H:%M:%SZ}"
            )
        return None

    # ---------------------------------------------------------------- object lock

    def bucket_lock_enabled(self) -> bool:
        """Whether the bucket has Object Lock enabled (read once per target)."""
        if self._bucket_lock is None:
            try:
                config = self.client.get_object_lock_configuration(Bucket=self.bucket)
            except Exception as exc:
                code = _error_code(exc)
                if code not in ("ObjectLockConfigurationNotFoundError", "ObjectLockConfigurationNotFound"):
                    raise OffsiteError(
                        f"cannot read the Object Lock configuration of bucket {self.bucket} ({code or exc}): "
                        "dbops needs s3:GetBucketObjectLockConfiguration to lock copies and to delete them safely"
                    ) from exc
                self._bucket_lock = False
            else:
                enabled = (config.get("ObjectLockConfiguration") or {}).get("ObjectLockEnabled")
                self._bucket_lock = enabled == "Enabled"
        return self._bucket_lock

    def lock_mode(self) -> str | None:
        """The Object Lock mode uploads use (GOVERNANCE / COMPLIANCE), or None; refuses
        a demanded mode on a bucket without Object Lock."""
        setting = self.settings.object_lock
        if setting == "off":
            return None
        enabled = self.bucket_lock_enabled()
        if setting == "auto":
            return "GOVERNANCE" if enabled else None
        if not enabled:
            raise OffsiteError(
                f"offsite.s3_object_lock is {setting!r} but bucket {self.bucket} has no Object Lock "
                "(it can only be enabled on the bucket, with versioning); use auto or off for this bucket"
            )
        return _LOCK_MODES[setting]

    def _lock_for(self, backup: Backup, where: str, log: LogFn) -> dict[str, Any]:
        """The ExtraArgs locking every object of ``backup`` until the copy's expiry."""
        mode = self.lock_mode()
        if mode is None:
            return {}
        until = (backup.finished_at + timedelta(days=self.settings.retention_days)).astimezone(UTC)
        until = until.replace(microsecond=0) + timedelta(seconds=1)  # S3 keeps whole seconds: never shorter
        if until <= utc_now() + timedelta(seconds=5):  # S3 refuses a retain-until in the past
            log(
                f"{where}: not locked: its offsite expiry {until:%Y-%m-%dT%H:%M:%SZ} has passed "
                "(kept by min_keep, a tier or a pin)"
            )
            return {}
        return {"ObjectLockMode": mode, "ObjectLockRetainUntilDate": until}

    def _locked_versions(self, folder: str) -> tuple[list[dict], dict[str, str]]:
        """Every version and delete marker under ``folder``, and the versions still locked
        now (version id -> what holds it)."""
        versions: list[dict] = []
        locked: dict[str, str] = {}
        now = utc_now()
        paginator = self.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=folder):
            for v in page.get("Versions", []) or []:
                versions.append(v)
                head = self.client.head_object(Bucket=self.bucket, Key=v["Key"], VersionId=v["VersionId"])
                until = head.get("ObjectLockRetainUntilDate")
                name = v["Key"][len(folder) :]
                if head.get("ObjectLockLegalHoldStatus") == "ON":
                    locked[v["VersionId"]] = f"{name} (legal hold)"
                elif head.get("ObjectLockMode") and isinstance(until, datetime) and until > now:
                    locked[v["VersionId"]] = (
                        f"{name} ({head['ObjectLockMode']} until {until.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ})"
                    )
            versions += page.get("DeleteMarkers", []) or []
        return versions, locked

    def _delete_versions(self, versions: list[dict]) -> None:
        def order(v: dict) -> int:  # manifest first, then the envelope, then the rest
            return 0 if v["Key"].endswith("/" + MANIFEST_NAME) else 1 if v["Key"].endswith("/" + ENVELOPE_NAME) else 2

        ordered = sorted(versions, key=order)
        for start in range(0, len(ordered), 1000):
            batch = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in ordered[start : start + 1000]]
            response = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            errors = response.get("Errors") or []
            if errors:
                raise OffsiteError(f"S3 refused to delete {len(errors)} object versions, e.g. {errors[0]}")

    # ---------------------------------------------------------------- catalog

    def catalog(self, log: LogFn) -> Catalog:
        catalog = Catalog()
        wanted: list[tuple[str, str, int]] = []
        newest: dict[tuple[SeriesKey, str], datetime] = {}
        for obj in self._objects(self.root):
            rel = obj["Key"][len(self.root) :]
            found = split_backup_path(rel)
            if found is None:
                continue
            key, backup_id, inner = found
            if inner != CHECKSUMS_NAME:  # the target's own record, not a file of the backup
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
        for key, backup_id in sorted({*catalog.sizes, *newest}, key=lambda k: (k[0].sort_key(), k[1])):
            if catalog.get(key, backup_id) is None:
                catalog.staging.append(StagingEntry(key, backup_id, newest.get((key, backup_id))))
        log(
            f"S3 catalog of {self.location()}: {catalog.count()} complete backups, "
            f"{len(catalog.staging)} incomplete folders"
        )
        return catalog

    # ---------------------------------------------------------------- shipping

    def ship(self, backup: Backup, encryption: Encryption | None, log: LogFn) -> tuple[Envelope, TransferStats]:
        key = SeriesKey.of(backup)
        where = f"{key}/{backup.backup_id}"
        started = time.monotonic()
        stats = TransferStats()
        progress = _Progress(self.progress)
        config = self.transfer_config()
        lock = self._lock_for(backup, where, log)
        files: list[StoredFile] = []
        checksums: dict[str, str] = {}
        problems: list[str] = []
        for entry in sorted(backup.manifest["files"], key=lambda e: e["path"]):
            path, plain_sha = entry["path"], entry["sha256"]
            stored_path = path + ENCRYPTED_SUFFIX if encryption else path
            stored_bytes = encryption.stored_size(entry["bytes"]) if encryption else entry["bytes"]
            metadata = {META_SHA256: plain_sha}
            local = backup.path / path
            context = None
            if encryption is None:
                source = _Source(stored_path, functools.partial(_file_blocks, local), plain_sha)
            else:
                metadata[META_KEY_ID] = encryption.key_id
                context = file_context(key.store, key.subject, backup.backup_id, path, plain_sha)
                source = _Source(stored_path, functools.partial(_encrypted_blocks, encryption, local, context))
            obj_key = self.object_key(key, backup.backup_id, stored_path)
            head = self._head(obj_key)
            if (
                head is not None
                and int(head.get("ContentLength", -1)) == stored_bytes
                and head.get("ChecksumSHA256")  # only S3's own checksum tells what is there
                and self._checksum_problem(obj_key, head, stored_bytes, stored_path, source, log, reread=False) is None
                and self._lock_problem(head, lock, stored_path) is None
            ):
                stats.files_skipped += 1
                checksums[stored_path] = head["ChecksumSHA256"]
                files.append(StoredFile(path, stored_path, stored_bytes, source.sha256(), entry["bytes"], plain_sha))
                continue
            extra = self._extra_args(metadata, "application/octet-stream", lock)
            extra["ChecksumAlgorithm"] = "SHA256"
            if encryption is None:
                self.client.upload_file(
                    str(local), self.bucket, obj_key, ExtraArgs=extra, Config=config, Callback=progress
                )
            else:
                assert context is not None
                # hashed as it goes, in the parts the transfer manager cuts (its part size)
                digests = _Digests(self.settings.multipart_chunksize)
                with open(local, "rb") as fh:
                    reader = encryption.reader(fh, context)
                    self.client.upload_fileobj(
                        _DigestingReader(reader, digests),
                        self.bucket,
                        obj_key,
                        ExtraArgs=extra,
                        Config=config,
                        Callback=progress,
                    )
                if not reader.finished or reader.bytes != stored_bytes:
                    raise OffsiteError(f"{local} changed while it was uploaded ({reader.bytes} bytes encrypted)")
                source.add(digests)
            stats.files_transferred += 1
            head = self._head(obj_key)
            if head is None:
                problems.append(f"{stored_path}: missing after upload")
                continue
            problem = self._checksum_problem(
                obj_key, head, stored_bytes, stored_path, source, log
            ) or self._lock_problem(head, lock, stored_path)
            if problem:
                problems.append(problem)
                continue
            if head.get("ChecksumSHA256"):
                checksums[stored_path] = head["ChecksumSHA256"]
            files.append(StoredFile(path, stored_path, stored_bytes, source.sha256(), entry["bytes"], plain_sha))
        stats.literal_bytes = stats.bytes_sent = progress.total
        if problems:
            raise OffsiteVerificationError(f"S3 arrival check of {where} failed, manifest not uploaded", problems)
        manifest_bytes = (backup.path / MANIFEST_NAME).read_bytes()
        envelope = Envelope(
            manifest_sha256=str(backup.manifest["manifest_sha256"]),
            files=tuple(files),
            encryption=encryption.describe() if encryption else None,
            target=self.name,
            shipped_at=utc_now(),
            manifest_mac=encryption.manifest_mac(manifest_bytes) if encryption else None,
        )
        record = (
            json.dumps(
                {"format": CHECKSUMS_FORMAT, "format_version": 1, "algorithm": "SHA256", "checksums": checksums},
                sort_keys=True,
                indent=2,
            )
            + "\n"
        ).encode()
        body = envelope.to_bytes()
        self._put_control(self.object_key(key, backup.backup_id, CHECKSUMS_NAME), record, lock)
        self._put_control(self.object_key(key, backup.backup_id, ENVELOPE_NAME), body, lock)
        # last: from now on the backup is complete offsite
        self._put_control(
            self.object_key(key, backup.backup_id, MANIFEST_NAME),
            manifest_bytes,
            lock,
            {META_SHA256: hashlib.sha256(manifest_bytes).hexdigest()},
        )
        stats.bytes_sent += len(record) + len(body) + len(manifest_bytes)
        stats.seconds = round(time.monotonic() - started, 3)
        locked = (
            f"; locked ({lock['ObjectLockMode']}) until {lock['ObjectLockRetainUntilDate']:%Y-%m-%dT%H:%M:%SZ}"
            if lock
            else ""
        )
        log(
            f"S3 {where}: {stats.files_transferred} files uploaded ({human_bytes(stats.literal_bytes)}), "
            f"{stats.files_skipped} already there; S3's SHA256 checksums match; manifest uploaded last{locked}"
        )
        return envelope, stats

    # ---------------------------------------------------------------- checks

    def _recorded_checksums(self, key: SeriesKey, backup_id: str) -> dict[str, str]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key, backup_id, CHECKSUMS_NAME))
        except Exception as exc:
            if _not_found(exc):
                return {}
            raise
        try:
            data = json.loads(body["Body"].read())
            checksums = data["checksums"] if data.get("format") == CHECKSUMS_FORMAT else {}
        except (ValueError, KeyError, TypeError, AttributeError):
            return {}  # unusable: the objects it would vouch for are re-read
        return {str(k): str(v) for k, v in checksums.items()} if isinstance(checksums, dict) else {}

    def verify_content(
        self, item: OffsiteBackup, *, deep: bool, encryption: Encryption | None, log: LogFn
    ) -> list[str]:
        """Each object's size and S3 SHA256 checksum against the envelope (see the module
        docstring); with ``deep``, every object read back and hashed (and, encrypted with
        the copy's key at hand, decrypted under its own file's context)."""
        envelope = item.envelope
        assert envelope is not None
        problems = []
        scheme = (envelope.encryption or {}).get("scheme")
        key_id = (envelope.encryption or {}).get("key_id")
        decrypt = bool(deep and envelope.encryption and encryption is not None and encryption.key_id == key_id)
        if deep and envelope.encryption and not decrypt:
            log(
                f"{item.key}/{item.backup_id}: not decrypted by the deep check: encrypted with key id {key_id}, "
                f"{'no key' if encryption is None else 'key id ' + encryption.key_id} given"
            )
        recorded = {} if deep else self._recorded_checksums(item.key, item.backup_id)
        for f in envelope.files:
            obj_key = self.object_key(item.key, item.backup_id, f.stored_path)
            head = self._head(obj_key)
            if head is None:
                problems.append(f"{f.stored_path}: missing")
                continue
            if int(head.get("ContentLength", -1)) != f.bytes:
                problems.append(f"{f.stored_path}: {head.get('ContentLength')} bytes, expected {f.bytes}")
                continue
            if f.sha256 is None:
                problems.append(f"{f.stored_path}: offsite.json records no sha256 of the stored bytes")
                continue
            if not deep:
                expected = _Recorded(f.sha256, recorded.get(f.stored_path))
                problem = self._checksum_problem(obj_key, head, f.bytes, f.stored_path, expected, log)
                if problem:
                    problems.append(problem)
                continue
            reader = _HashingReader(self.client.get_object(Bucket=self.bucket, Key=obj_key)["Body"])
            if decrypt:
                assert encryption is not None
                context = file_context(item.key.store, item.key.subject, item.backup_id, f.path, f.plain_sha256)
                try:
                    plain_bytes, plain_sha = encryption.decrypt_stream(reader, _Discard(), context, scheme=scheme)
                except DecryptionError as exc:
                    problems.append(f"{f.stored_path}: does not decrypt: {exc}")
                    continue
                if plain_bytes != f.plain_bytes or plain_sha != f.plain_sha256:
                    problems.append(f"{f.stored_path}: decrypts to sha256 {plain_sha}, expected {f.plain_sha256}")
            while reader.read(MIB):
                pass
            if reader.digest.hexdigest() != f.sha256:
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
        """``manifest.json`` first (it stops being complete), then everything else. On a
        bucket with Object Lock: refused (OffsiteError) while any version is locked, else
        every version is deleted (see the module docstring)."""
        folder = self.folder_key(key, backup_id)
        if self.bucket_lock_enabled():
            versions, locked = self._locked_versions(folder)
            if locked:
                raise OffsiteError(
                    f"{key}/{backup_id} on {self.location()} is under S3 Object Lock, nothing deleted: "
                    f"{len(locked)} object versions locked, e.g. {next(iter(locked.values()))}"
                )
            self._delete_versions(versions)
            log(f"deleted {key}/{backup_id}: {len(versions)} object versions (bucket with Object Lock)")
            return
        self.client.delete_object(Bucket=self.bucket, Key=folder + MANIFEST_NAME)
        rest = [o["Key"] for o in self._objects(folder)]
        rest.sort(key=lambda k: k.endswith("/" + ENVELOPE_NAME), reverse=True)
        self._delete_keys(rest)

    def remove_incomplete(self, entry: StagingEntry, log: LogFn) -> None:
        """An incomplete folder's objects; on a bucket with Object Lock the versions still
        locked stay (logged) and go on a later run, after their lock expired."""
        folder = self.folder_key(entry.key, entry.name)
        if self._head(folder + MANIFEST_NAME) is not None:
            raise OffsiteError(f"{folder} has a manifest now; not removing it as incomplete")
        if self.bucket_lock_enabled():
            versions, locked = self._locked_versions(folder)
            self._delete_versions([v for v in versions if v["VersionId"] not in locked])
            if locked:
                log(
                    f"{folder}: {len(locked)} object versions under Object Lock stay until it expires, "
                    f"e.g. {next(iter(locked.values()))}"
                )
            return
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
                if isinstance(initiated, datetime) and initiated.astimezone(UTC) < cutoff:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted.append(upload["Key"])
                    log(f"aborted a stale multipart upload of {upload['Key']} (started {initiated})")
        return aborted

    # ---------------------------------------------------------------- plain files (FileTarget)
    # for the WAL archive: objects under <prefix>/<rel>, each sent in one PUT with the
    # sha256 of its stored bytes (S3 refuses other bytes), checked by S3's checksum on arrival

    def file_key(self, rel: str) -> str:
        return self.root + check_rel(rel)

    def list_files(self, folder: str, log: LogFn) -> dict[str, int]:
        prefix = self.file_key(folder) + "/"
        sizes = {}
        for obj in self._objects(prefix):
            name = obj["Key"][len(prefix) :]
            if name and "/" not in name:
                sizes[name] = int(obj["Size"])
        return sizes

    def _file_metadata(self, f: StoredFile, key_id: str | None) -> dict[str, str]:
        return {META_SHA256: f.plain_sha256, **({META_KEY_ID: key_id} if key_id else {})}

    def put_files(
        self, folder: str, source_dir: Path, files: Sequence[StoredFile], key_id: str | None, log: LogFn
    ) -> TransferStats:
        """Upload each file unless an object with its size and S3 checksum is there already."""
        started = time.monotonic()
        stats = TransferStats()
        progress = _Progress(self.progress)
        config = self.transfer_config()
        for f in files:
            obj_key = self.file_key(f"{folder}/{f.stored_path}")
            head = self._head(obj_key)
            if (
                head is not None
                and f.sha256
                and int(head.get("ContentLength", -1)) == f.bytes
                and head.get("ChecksumSHA256") == _b64_of_hex(f.sha256)
            ):
                stats.files_skipped += 1
                continue
            source = source_dir / f.stored_path
            extra = self._extra_args(self._file_metadata(f, key_id), "application/octet-stream")
            if f.sha256 and f.bytes <= _SINGLE_PUT_MAX:
                with open(source, "rb") as fh:
                    self.client.put_object(
                        Bucket=self.bucket, Key=obj_key, Body=fh, ChecksumSHA256=_b64_of_hex(f.sha256), **extra
                    )
                progress(f.bytes)
            else:  # too big for one PUT: parts, checked on arrival against their composite
                self.client.upload_file(
                    str(source),
                    self.bucket,
                    obj_key,
                    Config=config,
                    ExtraArgs={**extra, "ChecksumAlgorithm": "SHA256"},
                    Callback=progress,
                )
            stats.files_transferred += 1
        stats.literal_bytes = stats.bytes_sent = progress.total
        stats.seconds = round(time.monotonic() - started, 3)
        return stats

    def check_files(
        self, folder: str, files: Sequence[StoredFile], key_id: str | None, *, deep: bool, log: LogFn
    ) -> list[str]:
        """Size and S3's SHA256 checksum of every object against the stored sha256 (an
        object without one is re-read); with ``deep`` each read back and hashed."""
        problems = []
        for f in files:
            obj_key = self.file_key(f"{folder}/{f.stored_path}")
            head = self._head(obj_key)
            if head is None:
                problems.append(f"{f.stored_path}: missing")
                continue
            if int(head.get("ContentLength", -1)) != f.bytes:
                problems.append(f"{f.stored_path}: {head.get('ContentLength')} bytes, expected {f.bytes}")
                continue
            if f.sha256 is None:
                problems.append(f"{f.stored_path}: no sha256 of the stored bytes to compare")
                continue
            if deep:
                got = self._reread_sha256(obj_key)
                if got != f.sha256:
                    problems.append(f"{f.stored_path}: stored sha256 {got}, expected {f.sha256}")
                continue
            problem = self._checksum_problem(obj_key, head, f.bytes, f.stored_path, _Recorded(f.sha256, None), log)
            if problem:
                problems.append(problem)
        return problems

    def read_file(self, rel: str, log: LogFn) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.file_key(rel))["Body"].read()
        except Exception as exc:
            if _not_found(exc):
                return None
            raise

    def write_file(self, rel: str, data: bytes, log: LogFn) -> None:
        """One PUT with the data's sha256: S3 replaces an object atomically, and only with these bytes."""
        self._put_control(self.file_key(rel), data, None, {META_SHA256: hashlib.sha256(data).hexdigest()})

    def delete_files(self, folder: str, names, log: LogFn) -> None:
        names = list(names)
        for name in names:
            if "/" in name:
                raise OffsiteError(f"refusing the offsite file name {name!r}: not a plain name")
        self._delete_keys([self.file_key(f"{folder}/{name}") for name in names])

    # ---------------------------------------------------------------- restore

    def download(self, key: SeriesKey, backup_id: str, dest: Path, log: LogFn) -> TransferStats:
        """The backup folder's objects into ``dest``; resumable: called again with the same
        ``dest``, a file already there with the stored size and the envelope's sha256 is
        not fetched again (``manifest.json`` and ``offsite.json`` always are: they are small
        and say what the rest must be)."""
        folder = self.folder_key(key, backup_id)
        stats = TransferStats()
        started = time.monotonic()
        config = self.transfer_config()
        objects = []
        for obj in self._objects(folder):
            inner = obj["Key"][len(folder) :]
            if inner == CHECKSUMS_NAME:
                continue
            if split_backup_path(f"{key.rel}/{backup_id}/{inner}") is None:
                raise OffsiteError(f"refusing to download {obj['Key']!r}: not a plain path")
            objects.append((inner, obj))
        objects.sort(key=lambda item: item[0] not in CONTROL_FILES)  # the envelope first: it holds the sha256s
        known: dict[str, str] = {}
        for inner, obj in objects:
            target = mirror_path(dest, inner)
            size = int(obj["Size"])
            sha = known.get(inner)
            if (
                inner not in CONTROL_FILES
                and sha
                and target.is_file()
                and target.stat().st_size == size
                and _file_sha256(target) == sha
            ):
                stats.files_skipped += 1
                stats.matched_bytes += size
                continue
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.client.download_file(self.bucket, obj["Key"], str(target), Config=config)
            target.chmod(0o600)
            stats.files_transferred += 1
            stats.bytes_received += size
            stats.literal_bytes += size
            if inner == ENVELOPE_NAME:
                try:
                    envelope = Envelope.from_dict(json.loads(target.read_bytes()))
                except (ValueError, TypeError):
                    continue  # unusable: everything is fetched again, the caller refuses the envelope
                known = {f.stored_path: f.sha256 for f in envelope.files if f.sha256}
        if stats.files_skipped:
            log(
                f"download of {key}/{backup_id} resumed: {stats.files_skipped} files already in {dest.name} "
                f"({human_bytes(stats.matched_bytes)}) not fetched again"
            )
        stats.seconds = round(time.monotonic() - started, 3)
        return stats
