"""What both targets share: series keys, the envelope (``offsite.json``), the catalog,
transfer statistics, and the target interface."""

from __future__ import annotations

import hmac
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from dbops.backup.repository import (
    MANIFEST_NAME,
    Backup,
    BackupRepository,
    check_store_name,
    check_subject_name,
    format_time,
    is_backup_id,
    parse_time,
)

LogFn = Callable[[str], None]

ENVELOPE_NAME = "offsite.json"
ENVELOPE_FORMAT = "dbops-offsite"
ENVELOPE_FORMAT_VERSION = 1
ENCRYPTED_SUFFIX = ".enc"
STAGING_DIR = ".staging"
DELETING_DIR = ".deleting"
# The names a backup folder may hold besides its stored files.
CONTROL_FILES = (MANIFEST_NAME, ENVELOPE_NAME)
_PLAIN_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# copies encrypted before manifests were authenticated carry this scheme and no mac
_LEGACY_SCHEME = "aes-256-gcm-chunked-v1"


class OffsiteError(RuntimeError):
    """An offsite operation could not be done; the message says what and where."""


class OffsiteVerificationError(OffsiteError):
    """What is offsite does not match the manifest (every problem is listed)."""

    def __init__(self, message: str, problems: Sequence[str]) -> None:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{message}:\n  {shown}{more}")
        self.problems = list(problems)


# --------------------------------------------------------------------------- series


@dataclass(frozen=True, order=True)
class SeriesKey:
    """One series of backups: a store, optionally narrowed by a subject (a database)."""

    store: str
    subject: str | None = None

    def __post_init__(self) -> None:
        check_store_name(self.store)
        check_subject_name(self.subject)

    @classmethod
    def of(cls, backup: Backup) -> SeriesKey:
        return cls(backup.store, backup.subject)

    @property
    def parts(self) -> list[str]:
        return [self.store] if self.subject is None else [self.store, self.subject]

    @property
    def rel(self) -> str:
        """``store`` or ``store/subject`` (a relative posix path, also the log label)."""
        return "/".join(self.parts)

    def __str__(self) -> str:
        return self.rel

    def sort_key(self) -> tuple[str, str]:
        return (self.store, self.subject or "")


def split_backup_path(rel: str) -> tuple[SeriesKey, str, str] | None:
    """``(series, backup_id, path inside the backup)`` of a path relative to the offsite
    root, or None when it is not inside a backup folder (staging, strangers, ...)."""
    parts = rel.split("/")
    for n in (1, 2):  # store/<id>/... or store/subject/<id>/...
        if len(parts) > n + 1 and is_backup_id(parts[n]):
            try:
                key = SeriesKey(parts[0], parts[1] if n == 2 else None)
            except ValueError:
                return None
            inner = "/".join(parts[n + 1 :])
            return (key, parts[n], inner) if _safe_inner(inner) else None
    return None


def split_staging_path(rel: str) -> tuple[SeriesKey, str] | None:
    """``(series, entry name)`` of ``store/[subject/].staging/<name>``, else None."""
    parts = rel.split("/")
    for n in (1, 2):
        if len(parts) == n + 2 and parts[n] == STAGING_DIR:
            try:
                return SeriesKey(parts[0], parts[1] if n == 2 else None), parts[n + 1]
            except ValueError:
                return None
    return None


def _safe_inner(inner: str) -> bool:
    if not inner or inner.startswith("/") or "\\" in inner or "\x00" in inner:
        return False
    return all(p not in ("", ".", "..") for p in inner.split("/"))


# --------------------------------------------------------------------------- the envelope


@dataclass(frozen=True)
class StoredFile:
    """One file of a backup as stored offsite (``bytes``/``sha256`` of the stored bytes)."""

    path: str  # as in the manifest
    stored_path: str  # path inside the offsite backup folder
    bytes: int
    sha256: str | None  # None: not known (an S3 stream encrypted during upload before it finished)
    plain_bytes: int
    plain_sha256: str


@dataclass(frozen=True)
class Envelope:
    """``offsite.json``: how each manifest file was stored, written before the backup is
    published offsite. ``ok`` is always true: a copy that failed its arrival check is
    never published. ``manifest_mac`` (encrypted copies): the key's HMAC of the exact bytes
    of ``manifest.json`` (:meth:`dbops.offsite.crypto.Encryption.manifest_mac`), so the
    manifest cannot be changed offsite without the key."""

    manifest_sha256: str
    files: tuple[StoredFile, ...]
    encryption: Mapping[str, Any] | None
    target: str
    shipped_at: datetime
    manifest_mac: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "format": ENVELOPE_FORMAT,
            "format_version": ENVELOPE_FORMAT_VERSION,
            "manifest_sha256": self.manifest_sha256,
            "encryption": dict(self.encryption) if self.encryption else None,
            "target": self.target,
            "shipped_at": format_time(self.shipped_at),
            "manifest_mac": self.manifest_mac,
            "files": [asdict(f) for f in self.files],
        }

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), sort_keys=True, indent=2) + "\n").encode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Envelope:
        """Parse and check an envelope; ValueError naming the problem."""
        if not isinstance(data, Mapping):
            raise ValueError("offsite.json is not a JSON object")
        if data.get("format") != ENVELOPE_FORMAT or data.get("format_version") != ENVELOPE_FORMAT_VERSION:
            raise ValueError(f"offsite.json format {data.get('format')!r} v{data.get('format_version')!r} unknown")
        if data.get("ok") is not True:
            raise ValueError("offsite.json does not record a successful arrival")
        files = []
        for entry in data.get("files") or []:
            try:
                stored = StoredFile(**entry)
            except TypeError as exc:
                raise ValueError(f"offsite.json file entry {entry!r}: {exc}") from None
            if not _safe_inner(stored.path) or not _safe_inner(stored.stored_path):
                raise ValueError(f"offsite.json has an unsafe path {stored.path!r} -> {stored.stored_path!r}")
            if stored.stored_path in CONTROL_FILES:
                raise ValueError(f"offsite.json stores a file as {stored.stored_path!r}")
            files.append(stored)
        if not files:
            raise ValueError("offsite.json lists no files")
        if len({f.stored_path for f in files}) != len(files):
            raise ValueError("offsite.json stores two files under one name")
        encryption = data.get("encryption")
        if encryption is not None and not isinstance(encryption, Mapping):
            raise ValueError("offsite.json encryption is not an object")
        mac = data.get("manifest_mac")
        if mac is not None and not (isinstance(mac, str) and _HEX64.match(mac)):
            raise ValueError("offsite.json manifest_mac is not 64 hex digits")
        return cls(
            manifest_sha256=str(data.get("manifest_sha256")),
            files=tuple(files),
            encryption=encryption,
            target=str(data.get("target")),
            shipped_at=parse_time(data.get("shipped_at")),
            manifest_mac=mac,
        )

    @property
    def legacy_unauthenticated(self) -> bool:
        """Encrypted before manifests were authenticated (v1, no mac): nothing to check."""
        return (
            self.encryption is not None
            and bool(self.encryption)
            and self.manifest_mac is None
            and self.encryption.get("scheme") == _LEGACY_SCHEME
        )

    def check_manifest_mac(self, manifest_bytes: bytes, encryption: Any) -> list[str]:
        """Problems authenticating ``manifest_bytes`` (the exact bytes of ``manifest.json``)
        with ``encryption`` (an :class:`~dbops.offsite.crypto.Encryption` or None).

        An encrypted copy needs a mac and the key that made it; a wrong mac means the
        manifest was changed offsite (or belongs to another copy). An unencrypted copy has
        no mac (nothing to check), and a v1 copy made before macs existed neither (see
        :attr:`legacy_unauthenticated`: its files still decrypt only under their context)."""
        if not self.encryption and self.manifest_mac is None:
            return []
        if self.legacy_unauthenticated:
            return []
        wanted = (self.encryption or {}).get("key_id")
        if encryption is None:
            return [
                f"the manifest cannot be authenticated: the copy is encrypted (key id {wanted}) "
                "and no encryption key was given"
            ]
        if wanted is not None and wanted != encryption.key_id:
            return [
                f"the manifest cannot be authenticated: the copy was encrypted with key id {wanted}, "
                f"the key given has id {encryption.key_id}"
            ]
        if self.manifest_mac is None:
            return ["offsite.json of an encrypted copy has no manifest_mac: the manifest is not authenticated"]
        if not hmac.compare_digest(self.manifest_mac, encryption.manifest_mac(bytes(manifest_bytes))):
            return [
                "manifest.json does not match its manifest_mac: the manifest was changed offsite "
                "or belongs to another copy"
            ]
        return []

    def check_against(self, manifest: Mapping[str, Any]) -> list[str]:
        """Problems of this envelope with respect to the manifest it says it wraps."""
        problems = []
        if self.manifest_sha256 != manifest.get("manifest_sha256"):
            problems.append("offsite.json belongs to another manifest")
        by_path = {f["path"]: f for f in manifest.get("files", [])}
        mine = {f.path: f for f in self.files}
        if set(mine) != set(by_path):
            missing = sorted(set(by_path) - set(mine))
            extra = sorted(set(mine) - set(by_path))
            problems.append(f"offsite.json files differ from the manifest (missing {missing}, extra {extra})")
        for path, stored in mine.items():
            entry = by_path.get(path)
            if entry is None:
                continue
            if stored.plain_bytes != entry["bytes"] or stored.plain_sha256 != entry["sha256"]:
                problems.append(f"{path}: offsite.json records another size/sha256 than the manifest")
            if self.encryption is None and (
                stored.bytes != entry["bytes"]
                or stored.sha256 not in (None, entry["sha256"])
                or stored.stored_path != path
            ):
                problems.append(f"{path}: stored unencrypted but not as the manifest says")
        return problems


def plain_files(manifest: Mapping[str, Any]) -> list[StoredFile]:
    """The envelope entries of an unencrypted copy: stored exactly as in the manifest."""
    return [
        StoredFile(f["path"], f["path"], f["bytes"], f["sha256"], f["bytes"], f["sha256"]) for f in manifest["files"]
    ]


# --------------------------------------------------------------------------- the catalog


@dataclass(frozen=True)
class OffsiteBackup:
    """A complete offsite backup: its manifest (as a listed Backup) and its envelope."""

    key: SeriesKey
    backup: Backup  # listed from the catalog mirror: path points into the mirror
    envelope: Envelope | None  # None: offsite.json missing or unreadable (see envelope_problem)
    envelope_problem: str = ""
    manifest_bytes: bytes = field(default=b"", repr=False)  # manifest.json as stored (its mac covers these)

    @property
    def backup_id(self) -> str:
        return self.backup.backup_id

    @property
    def manifest_sha256(self) -> str:
        return str(self.backup.manifest.get("manifest_sha256"))


@dataclass(frozen=True)
class StagingEntry:
    """Something in a target that is not (yet) a backup: a remote staging folder, or an
    S3 backup folder without its manifest."""

    key: SeriesKey
    name: str  # rsync: the entry under .staging; S3: the backup id
    modified: datetime | None


@dataclass
class Catalog:
    """What a target holds: complete backups by series, the size of every stored file
    of every backup folder (complete or not), and incomplete entries."""

    backups: dict[SeriesKey, dict[str, OffsiteBackup]] = field(default_factory=dict)
    sizes: dict[tuple[SeriesKey, str], dict[str, int]] = field(default_factory=dict)
    staging: list[StagingEntry] = field(default_factory=list)
    wire_bytes: int = 0  # what reading the catalog itself moved (manifests, envelopes)

    def get(self, key: SeriesKey, backup_id: str) -> OffsiteBackup | None:
        return self.backups.get(key, {}).get(backup_id)

    def series(self) -> list[SeriesKey]:
        return sorted(self.backups, key=SeriesKey.sort_key)

    def all(self) -> Iterator[OffsiteBackup]:
        for key in self.series():
            yield from sorted(self.backups[key].values(), key=lambda b: b.backup.sort_key)

    def count(self) -> int:
        return sum(len(v) for v in self.backups.values())


def catalog_from_mirror(mirror: Path) -> dict[SeriesKey, dict[str, OffsiteBackup]]:
    """The complete backups of a mirror folder holding the targets' manifests and
    envelopes in the repository layout, judged by the repository's own listing."""
    repo = BackupRepository(mirror)
    found: dict[SeriesKey, dict[str, OffsiteBackup]] = {}
    stores = (
        sorted(e.name for e in os.scandir(mirror) if e.is_dir(follow_symlinks=False) and _valid_store(e.name))
        if mirror.is_dir()
        else []
    )
    for store in stores:
        for subject in [None, *repo.subjects(store)]:
            key = SeriesKey(store, subject)
            for backup in repo.list(store, subject):
                envelope, problem = None, ""
                raw = backup.sidecars.get("offsite")
                if raw is None:
                    problem = "offsite.json is missing"
                else:
                    try:
                        envelope = Envelope.from_dict(raw)
                    except (ValueError, TypeError) as exc:
                        problem = f"offsite.json unusable: {exc}"
                raw_manifest = (backup.path / MANIFEST_NAME).read_bytes()
                found.setdefault(key, {})[backup.backup_id] = OffsiteBackup(
                    key, backup, envelope, problem, raw_manifest
                )
    return found


def _valid_store(name: str) -> bool:
    try:
        check_store_name(name)
    except ValueError:
        return False
    return True


def mirror_path(mirror: Path, rel: str) -> Path:
    """``mirror/rel`` for a relative posix path already checked by :func:`split_backup_path`."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts:
        raise OffsiteError(f"refusing to mirror {rel!r}")
    return mirror.joinpath(*pure.parts)


# --------------------------------------------------------------------------- statistics


@dataclass
class TransferStats:
    """Bytes moved by one operation (rsync ``--stats`` numbers, or S3 bytes uploaded)."""

    files_transferred: int = 0
    files_skipped: int = 0
    bytes_sent: int = 0  # on the wire, protocol included
    bytes_received: int = 0
    literal_bytes: int = 0  # file data actually sent (rsync: "Literal data")
    matched_bytes: int = 0  # file data the receiver already had (rsync resume / delta)
    seconds: float = 0.0

    def add(self, other: TransferStats) -> TransferStats:
        for name in (
            "files_transferred",
            "files_skipped",
            "bytes_sent",
            "bytes_received",
            "literal_bytes",
            "matched_bytes",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.seconds = round(self.seconds + other.seconds, 3)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- the target interface


class Target(Protocol):
    """What the sync, verify, retention and restore steps need from a target."""

    name: str

    def location(self) -> str:
        """Where backups go, for the log (no secret)."""

    def catalog(self, log: LogFn) -> Catalog: ...

    def ship(self, backup: Backup, encryption: Any, log: LogFn) -> tuple[Envelope, TransferStats]:
        """Copy one complete local backup; publish it only after its arrival check passed."""

    def verify_content(self, item: OffsiteBackup, *, deep: bool, encryption: Any, log: LogFn) -> list[str]:
        """Problems with the stored bytes of one complete backup (sha256 where the target can tell)."""

    def delete(self, key: SeriesKey, backup_id: str, log: LogFn) -> None:
        """Remove a complete backup so that it stops looking complete first."""

    def remove_incomplete(self, entry: StagingEntry, log: LogFn) -> None: ...

    def housekeeping(self, older_than: timedelta, now: datetime, log: LogFn) -> list[str]:
        """Target-specific leftovers (half-deleted folders, stale multipart uploads)."""

    def download(self, key: SeriesKey, backup_id: str, dest: Path, log: LogFn) -> TransferStats:
        """Fetch a backup folder's stored files, manifest and envelope into ``dest``."""


class FileTarget(Protocol):
    """Plain file operations under the target's root, for what is not a backup folder (the
    WAL archive: immutable files published by a catalog written last). ``folder`` and
    ``rel`` are relative posix paths the caller has checked; names are plain file names."""

    name: str

    def location(self) -> str: ...

    def list_files(self, folder: str, log: LogFn) -> dict[str, int]:
        """Size of every file directly in ``folder`` (none when it does not exist)."""

    def put_files(
        self, folder: str, source_dir: Path, files: Sequence[StoredFile], key_id: str | None, log: LogFn
    ) -> TransferStats:
        """Copy ``source_dir/<stored_path>`` to ``folder/<stored_path>`` (no arrival check)."""

    def check_files(
        self, folder: str, files: Sequence[StoredFile], key_id: str | None, *, deep: bool, log: LogFn
    ) -> list[str]:
        """Problems (``<stored_path>: ...``) of the stored files: rsync hashes them on the host;
        S3 checks size and sha256 metadata, and with ``deep`` reads every object back."""

    def read_file(self, rel: str, log: LogFn) -> bytes | None:
        """A small file's bytes, None when it does not exist."""

    def write_file(self, rel: str, data: bytes, log: LogFn) -> None:
        """Replace a small file at once (readers see the old or the new bytes, never a mix)."""

    def delete_files(self, folder: str, names: Sequence[str], log: LogFn) -> None:
        """Remove these files of ``folder`` (absent ones are no error)."""


def check_rel(rel: str) -> str:
    """A relative posix path of plain parts (for the file operations), else OffsiteError."""
    if not isinstance(rel, str) or not _safe_inner(rel) or not all(_PLAIN_PART.match(p) for p in rel.split("/")):
        raise OffsiteError(f"refusing the offsite path {rel!r}: not a relative path of plain names")
    return rel
