"""The backup repository on disk: staging, manifest, atomic publication, listing, deletion.

Layout::

    <root>/<store>/[<subject>/]<backup_id>/          a sealed backup (a "series" is one
                                                     store, optionally narrowed by a subject)
    <root>/<store>/[<subject>/]<backup_id>/manifest.json
    <root>/<store>/[<subject>/]<backup_id>/<kind>.json   sidecar results (verify, drill, ...)
    <root>/<store>/[<subject>/].staging/<backup_id>.<random>/   being written
    <root>/<store>/[<subject>/].deleting/<backup_id>.<random>/  being removed
    <root>/<store>/[<subject>/].lock                 held (flock) by the one writer of the series

The one rule everything else follows: *a folder is a backup only if it holds a valid
manifest*. The manifest lists every file with its size and sha256 and carries a sha256
of itself, and it is written (and fsynced) into the staging folder before a single
``os.rename`` publishes the folder under its final name. A crash at any moment therefore
leaves either nothing visible or a complete backup; listing ignores everything else, so
retention never counts a half-written or half-deleted folder, and a sweep removes the
leftovers. Deletion goes the other way round: rename out of sight first, then remove.

A backup id is the UTC time the backup was *taken* (``YYYYMMDDTHHMMSSZ``), not the
Airflow logical date: a backfilled run cannot back up the past, and the name must say
when the data was read. Ids sort chronologically; a second backup in the same second
gets ``-2``, ``-3``...

Writers on one series are serialised by Airflow (pools) and, whatever runs them, by
:meth:`BackupRepository.writer_lock` (an flock on ``<series>/.lock``): a second writer is
refused, naming the holder. Staging names carry a random part too, so two writers can
never clobber each other's files.

No Airflow import here: the operators build on this.
"""

from __future__ import annotations

import builtins
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from dbops.config import checked_backup_root

UTC = UTC

MANIFEST_NAME = "manifest.json"
# dbops' own description of the source, sealed in the manifest beside the dump: metadata, not
# the backup's data (sizes shown to people count the data; these files are shown apart)
DESCRIPTION_FILES = frozenset({"source_description.json"})
MANIFEST_FORMAT = "dbops-backup"
MANIFEST_FORMAT_VERSION = 1
STAGING_DIR = ".staging"
DELETING_DIR = ".deleting"
LOCK_FILE = ".lock"
# Sidecars whose ``ok`` decides whether a backup still counts as verified.
VERIFICATION_KINDS = ("verify", "drill")
CHUNK_BYTES = 1024 * 1024
FILE_MODE = 0o600
# files hashed at once when a backup is verified (hashlib releases the GIL)
HASH_THREADS = min(4, os.cpu_count() or 1)
DIR_MODE = 0o700
# A manifest is small; anything bigger is not ours and is not read into memory.
_MAX_MANIFEST_BYTES = 256 * 1024 * 1024
_MAX_SIDECAR_BYTES = 16 * 1024 * 1024

_STORE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_SUBJECT_RE = re.compile(r"^[a-z0-9_][a-z0-9_.-]{0,62}$")
_BACKUP_ID_RE = re.compile(r"^(\d{8}T\d{6}Z)(?:-([2-9]|[1-9][0-9]+))?$")
_BACKUP_ID_TIME = "%Y%m%dT%H%M%SZ"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SIDECAR_TMP_RE = re.compile(r"^\.[a-z0-9][a-z0-9_.-]{0,62}\.json\.tmp-[0-9a-f]+$")

CheckResult = dict[str, Any]  # {"name": str, "ok": bool, "detail": str}
# The caller's tool-level check: (staging folder, manifest draft) -> checks. Each check
# is a mapping with name/ok/detail or an object with those attributes (adapter.Check).
CheckFn = Callable[[Path, dict[str, Any]], Iterable[Any]]


class RepositoryError(RuntimeError):
    """Something on disk is not as the repository requires; nothing was changed."""


class UnsafePathError(RepositoryError, ValueError):
    """A path lies outside where the repository may read, write or delete."""


class NotABackupError(RepositoryError):
    """A folder is not a complete, sealed backup (the message says why)."""


class SeriesBusyError(RepositoryError):
    """Another writer holds the series' lock; nothing was changed."""


class BackupVerificationError(RepositoryError):
    """A check failed before sealing; the staging folder was removed, nothing is visible."""

    def __init__(self, message: str, checks: Sequence[CheckResult]) -> None:
        super().__init__(message)
        self.checks = list(checks)


# --------------------------------------------------------------------------- names, ids, times


def check_store_name(store: str) -> str:
    """``store`` if it is a safe folder name, else ValueError naming it."""
    if not isinstance(store, str) or not _STORE_RE.match(store) or ".." in store:
        raise ValueError(f"invalid store name {store!r}: use 1-63 of a-z 0-9 _ . - starting with a letter or digit")
    return store


def check_subject_name(subject: str | None) -> str | None:
    """``subject`` (or None) if it is a safe folder name, else ValueError naming it."""
    if subject is None:
        return None
    if not isinstance(subject, str) or not _SUBJECT_RE.match(subject) or ".." in subject:
        raise ValueError(
            f"invalid subject name {subject!r}: use 1-63 of a-z 0-9 _ . - starting with a letter, digit or _"
        )
    return subject


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime, what: str = "time") -> datetime:
    """An aware datetime converted to UTC; a naive one is refused (its zone is a guess)."""
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got naive {value.isoformat()}")
    return value.astimezone(UTC)


def format_time(value: datetime) -> str:
    """UTC ISO 8601 with a ``Z``: ``2024-03-05T02:00:07.123456Z``."""
    return as_utc(value).isoformat().replace("+00:00", "Z")


def parse_time(text: object) -> datetime:
    """The inverse of :func:`format_time`; refuses times without a zone."""
    if not isinstance(text, str):
        raise ValueError(f"not a time: {text!r}")
    return as_utc(datetime.fromisoformat(text), "time")


def format_backup_id(taken_at: datetime, seq: int = 1) -> str:
    """``YYYYMMDDTHHMMSSZ`` of ``taken_at`` in UTC, ``-<seq>`` appended from 2 on."""
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ValueError(f"backup id sequence must be an integer >= 1, got {seq!r}")
    base = as_utc(taken_at, "taken_at").strftime(_BACKUP_ID_TIME)
    return base if seq == 1 else f"{base}-{seq}"


def parse_backup_id(backup_id: str) -> tuple[datetime, int]:
    """``(taken_at, seq)`` of a backup id; ValueError for anything not in canonical form."""
    match = _BACKUP_ID_RE.match(backup_id) if isinstance(backup_id, str) else None
    if not match:
        raise ValueError(f"invalid backup id {backup_id!r}: expected YYYYMMDDTHHMMSSZ[-N]")
    try:
        taken = datetime.strptime(match.group(1), _BACKUP_ID_TIME).replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"invalid backup id {backup_id!r}: not a real date and time") from None
    seq = int(match.group(2) or 1)
    if format_backup_id(taken, seq) != backup_id:  # e.g. a year strptime reads differently
        raise ValueError(f"invalid backup id {backup_id!r}: not in canonical form")
    return taken, seq


def backup_id_key(backup_id: str) -> tuple[datetime, int]:
    """Sort key for ids (plain string order puts ``-10`` before ``-2``)."""
    return parse_backup_id(backup_id)


def is_backup_id(name: str) -> bool:
    try:
        parse_backup_id(name)
    except ValueError:
        return False
    return True


def canonical_json(value: Any) -> bytes:
    """The bytes the manifest checksum is computed over: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``manifest`` without its ``manifest_sha256`` field."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def checks_ok(checks: Iterable[Mapping[str, Any]]) -> bool:
    """True when every check passed (an empty list passes)."""
    return all(c.get("ok") is True for c in checks)


def _check(name: str, ok: bool, detail: str = "") -> CheckResult:
    return {"name": name, "ok": bool(ok), "detail": detail}


def _as_check(value: Any) -> CheckResult:
    """A check given as a mapping or an object with name/ok/detail (adapter.Check)."""
    if isinstance(value, Mapping):
        name, ok, detail = value.get("name"), value.get("ok"), value.get("detail", "")
    else:
        name = getattr(value, "name", None)
        ok = getattr(value, "ok", None)
        detail = getattr(value, "detail", "")
    if not isinstance(name, str) or not name:
        raise ValueError(f"a check needs a non-empty name, got {value!r}")
    if not isinstance(ok, bool):
        raise ValueError(f"check {name!r} needs ok to be true or false, got {ok!r}")
    return _check(name, ok, "" if detail is None else str(detail))


# --------------------------------------------------------------------------- file system helpers


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdir_private(path: Path) -> None:
    """Create ``path`` 0700 unless it is already a real folder; refuse a symlink or file."""
    try:
        os.mkdir(path, DIR_MODE)
        os.chmod(path, DIR_MODE)  # mkdir's mode passes through the umask
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a folder"
        raise UnsafePathError(f"{path} is {kind}; the backup repository needs a real folder there")


def _is_inside(path: Path, parent: Path) -> bool:
    return path == parent or path.is_relative_to(parent)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _hash_file(path: Path, *, fsync: bool = False, chmod: int | None = None) -> tuple[int, str, os.stat_result]:
    """(bytes, sha256, stat) of a regular file read in 1 MiB chunks, never following a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RepositoryError(f"{path} is not a regular file")
        digest = hashlib.sha256()
        size = 0
        buf = bytearray(CHUNK_BYTES)
        view = memoryview(buf)
        while True:
            n = os.readv(fd, [buf])
            if not n:
                break
            digest.update(view[:n])
            size += n
        if chmod is not None:
            os.fchmod(fd, chmod)
        if fsync:
            os.fsync(fd)
        return size, digest.hexdigest(), os.fstat(fd)
    finally:
        os.close(fd)


def _walk(base: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Every entry under ``base`` as (relative posix path, path, lstat), folders first.

    Never follows symlinks; the caller decides what a symlink or special file means.
    """
    stack = [(base, "")]
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as entries:
            items = sorted(entries, key=lambda e: e.name)
        for entry in items:
            rel = f"{prefix}{entry.name}"
            st = entry.stat(follow_symlinks=False)
            yield rel, Path(entry.path), st
            if stat.S_ISDIR(st.st_mode):
                stack.append((Path(entry.path), rel + "/"))


def _file_kind(st: os.stat_result) -> str:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "special file"


def _remove_tree(path: Path) -> None:
    """Remove ``path`` without following symlinks; a vanished entry is not an error."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):

        def onerror(func: Any, p: str, exc_info: Any) -> None:
            if not isinstance(exc_info[1], FileNotFoundError):
                raise exc_info[1]

        shutil.rmtree(path, onerror=onerror)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _tree_mtime(path: Path) -> float:
    """Newest mtime in a tree: a staging folder is stale only when nothing in it moved."""
    st = os.lstat(path)
    newest = st.st_mtime
    if stat.S_ISDIR(st.st_mode):
        try:
            for _rel, _p, st in _walk(path):
                newest = max(newest, st.st_mtime)
        except FileNotFoundError:
            pass
    return newest


def _safe_relative(text: Any) -> str:
    """A manifest file path: relative, posix, no ``..``, no empty parts."""
    if not isinstance(text, str) or not text or "\\" in text or "\x00" in text:
        raise ValueError(f"bad file path {text!r}")
    pure = PurePosixPath(text)
    if pure.is_absolute() or any(part in ("", ".", "..") for part in text.split("/")):
        raise ValueError(f"bad file path {text!r}")
    return text


# --------------------------------------------------------------------------- Backup


@dataclass(frozen=True, kw_only=True)
class Backup:
    """A sealed backup as listed (a snapshot: re-list to see later sidecars).

    Constructible in memory (tests, retention what-ifs): only ``path``, ``store``,
    ``backup_id`` and ``finished_at`` are required. ``sidecars`` maps a kind ("verify",
    "drill", ...) to the result recorded for it.

    Sizes: ``total_bytes`` is every file the manifest lists (what is verified and shipped);
    ``data_bytes`` the backup's data in it (without :data:`DESCRIPTION_FILES`);
    ``sidecar_bytes`` the rest of the folder: the manifest, the description, verify / drill /
    pin / offsite results (measured when listed).
    """

    path: Path
    store: str
    subject: str | None = None
    backup_id: str
    finished_at: datetime
    manifest: Mapping[str, Any] = field(default_factory=dict, hash=False)
    run_id: str = ""
    dag_id: str = ""
    logical_date: datetime | None = None
    total_bytes: int = 0
    sidecars: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, hash=False)
    sidecar_bytes: int = field(default=0, compare=False)  # measured when listed: not part of identity

    def __post_init__(self) -> None:
        check_store_name(self.store)
        check_subject_name(self.subject)
        parse_backup_id(self.backup_id)
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "finished_at", as_utc(self.finished_at, "finished_at"))
        if self.logical_date is not None:
            object.__setattr__(self, "logical_date", as_utc(self.logical_date, "logical_date"))

    @property
    def taken_at(self) -> datetime:
        """When the backup started (from its id, whole seconds)."""
        return parse_backup_id(self.backup_id)[0]

    @property
    def description_bytes(self) -> int:
        """Bytes of the manifest's description files (metadata sealed beside the data)."""
        files = self.manifest.get("files", [])
        return sum(int(f.get("bytes") or 0) for f in files if f.get("path") in DESCRIPTION_FILES)

    @property
    def data_bytes(self) -> int:
        """The backup's data: what the manifest lists, without dbops' description files."""
        return self.total_bytes - self.description_bytes

    @property
    def sort_key(self) -> tuple[datetime, datetime, int]:
        """Oldest first: by finish time, then by id (stable for equal finish times)."""
        taken, seq = parse_backup_id(self.backup_id)
        return (self.finished_at, taken, seq)

    def last_verification(self) -> Mapping[str, Any] | None:
        """The newest "verify" or "drill" result, or None if neither was recorded.

        A sidecar without a readable time sorts as newest, so an unreadable result can
        only make a backup look unverified, never verified.
        """

        def newness(result: Mapping[str, Any]) -> tuple[bool, datetime, bool]:
            try:
                at, unreadable = parse_time(result["at"]), False
            except (KeyError, ValueError, TypeError):
                at, unreadable = datetime.max.replace(tzinfo=UTC), True
            return (unreadable, at, result.get("ok") is not True)  # on a tie, a failure wins

        found = [self.sidecars[k] for k in VERIFICATION_KINDS if k in self.sidecars]
        return max(found, key=newness) if found else None

    @property
    def verified(self) -> bool:
        """Complete and not known to be bad: every sealing check passed, and the latest
        verify/drill result (if any) is ok."""
        if not checks_ok(self.manifest.get("checks", [])):
            return False
        last = self.last_verification()
        return last is None or last.get("ok") is True


@dataclass(frozen=True)
class Problem:
    """An entry of a series folder that is not a backup, and why."""

    path: Path
    reason: str


# --------------------------------------------------------------------------- manifest validation


def _validate_manifest(manifest: Any, *, folder_name: str, store: str, subject: str | None) -> dict[str, Any]:
    """``manifest`` if it is a complete manifest of this folder, else NotABackupError."""

    def bad(reason: str) -> NotABackupError:
        return NotABackupError(reason)

    if not isinstance(manifest, dict):
        raise bad("manifest.json is not a JSON object")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise bad(f"manifest format is {manifest.get('format')!r}, not {MANIFEST_FORMAT!r}")
    if manifest.get("format_version") != MANIFEST_FORMAT_VERSION:
        raise bad(f"unsupported manifest format_version {manifest.get('format_version')!r}")
    recorded = manifest.get("manifest_sha256")
    if not isinstance(recorded, str) or manifest_digest(manifest) != recorded:
        raise bad("manifest_sha256 does not match the manifest (edited or corrupt)")
    if manifest.get("backup_id") != folder_name:
        raise bad(f"manifest backup_id {manifest.get('backup_id')!r} differs from the folder name")
    if manifest.get("store") != store or manifest.get("subject") != subject:
        raise bad(
            f"manifest is for store {manifest.get('store')!r} subject {manifest.get('subject')!r}, "
            f"not {store!r} {subject!r}"
        )
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        raise bad("manifest lists no files")
    seen: set[str] = set()
    total = 0
    for entry in files:
        if not isinstance(entry, dict):
            raise bad("manifest file entry is not an object")
        try:
            path = _safe_relative(entry.get("path"))
        except ValueError as exc:
            raise bad(f"manifest has a {exc}") from None
        size, digest = entry.get("bytes"), entry.get("sha256")
        if path in seen or path == MANIFEST_NAME:
            raise bad(f"manifest lists {path!r} twice or as a data file")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad(f"manifest size of {path!r} is {size!r}")
        if not isinstance(digest, str) or not _SHA256_RE.match(digest):
            raise bad(f"manifest sha256 of {path!r} is {digest!r}")
        seen.add(path)
        total += size
    if manifest.get("total_bytes") != total:
        raise bad("manifest total_bytes differs from the sum of its files")
    for key in ("started_at", "finished_at"):
        try:
            parse_time(manifest.get(key))
        except (ValueError, TypeError):
            raise bad(f"manifest {key} is not a UTC time: {manifest.get(key)!r}") from None
    if manifest.get("logical_date") is not None:
        try:
            parse_time(manifest["logical_date"])
        except (ValueError, TypeError):
            raise bad(f"manifest logical_date is not a time: {manifest['logical_date']!r}") from None
    for key in ("run_id", "dag_id"):
        if not isinstance(manifest.get(key), str):
            raise bad(f"manifest {key} is missing")
    checks = manifest.get("checks")
    if not isinstance(checks, list) or not all(isinstance(c, dict) for c in checks):
        raise bad("manifest checks are missing")
    if not checks_ok(checks):
        raise bad("manifest records a failed check")
    return manifest


def _read_json_file(path: Path, limit: int) -> Any:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > limit:
            raise ValueError(f"too large ({st.st_size} bytes)")
        data = fh.read(limit + 1)

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    return json.loads(data.decode("utf-8"), parse_constant=no_constants)


def _sidecar_kind(name: str, manifest_files: set[str]) -> str | None:
    """The kind a top-level file name is a sidecar of, or None."""
    if not name.endswith(".json") or name == MANIFEST_NAME or name in manifest_files:
        return None
    kind = name[: -len(".json")]
    return kind if _STORE_RE.match(kind) and ".." not in kind else None


def _load_sidecars(path: Path, manifest_files: set[str]) -> dict[str, dict[str, Any]]:
    sidecars: dict[str, dict[str, Any]] = {}
    with os.scandir(path) as entries:
        names = sorted(e.name for e in entries)
    for name in names:
        kind = _sidecar_kind(name, manifest_files)
        if kind is None:
            continue
        try:
            result = _read_json_file(path / name, _MAX_SIDECAR_BYTES)
            if not isinstance(result, dict) or not isinstance(result.get("ok"), bool):
                raise ValueError("no ok true/false in it")
        except (OSError, ValueError) as exc:
            # Unreadable: count it as a failed result, never as a passed one.
            result = {"kind": kind, "ok": False, "detail": f"unreadable {name}: {exc}"}
        sidecars[kind] = result
    return sidecars


def _load_backup(path: Path, store: str, subject: str | None) -> Backup:
    """The Backup in folder ``path``, or NotABackupError saying why it is not one."""
    name = path.name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise NotABackupError("does not exist") from None
    if stat.S_ISLNK(st.st_mode):
        raise NotABackupError("a symlink, not a backup folder")
    if not stat.S_ISDIR(st.st_mode):
        raise NotABackupError(f"a {_file_kind(st)}, not a backup folder")
    if not is_backup_id(name):
        raise NotABackupError("folder name is not a backup id (YYYYMMDDTHHMMSSZ[-N])")
    try:
        raw = _read_json_file(path / MANIFEST_NAME, _MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise NotABackupError("no manifest.json (incomplete or not made by dbops)") from None
    except (OSError, ValueError) as exc:
        raise NotABackupError(f"manifest.json unreadable: {exc}") from None
    manifest = _validate_manifest(raw, folder_name=name, store=store, subject=subject)
    files = {entry["path"] for entry in manifest["files"]}
    logical = manifest.get("logical_date")
    return Backup(
        path=path,
        store=store,
        subject=subject,
        backup_id=name,
        manifest=manifest,
        finished_at=parse_time(manifest["finished_at"]),
        run_id=manifest["run_id"],
        dag_id=manifest["dag_id"],
        logical_date=None if logical is None else parse_time(logical),
        total_bytes=manifest["total_bytes"],
        sidecars=_load_sidecars(path, files),
        sidecar_bytes=_sidecar_bytes(path, manifest),
    )


def _sidecar_bytes(path: Path, manifest: Mapping[str, Any]) -> int:
    """The folder's files beside the data: manifest, description files, sidecar results."""
    files = {entry["path"] for entry in manifest["files"]}
    total = sum(int(e["bytes"]) for e in manifest["files"] if e["path"] in DESCRIPTION_FILES)
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name == MANIFEST_NAME or _sidecar_kind(entry.name, files) is not None:
                try:
                    total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:  # a sidecar replaced while listed
                    pass
    return total


# --------------------------------------------------------------------------- metadata


_METADATA_REQUIRED = ("tool", "tool_version", "server_version", "compression")
_METADATA_KEYS = frozenset(_METADATA_REQUIRED + ("details",))


def _metadata_fields(metadata: Any) -> dict[str, Any]:
    """The caller's tool facts (a mapping or an adapter.DumpResult), checked."""
    if dataclasses.is_dataclass(metadata) and not isinstance(metadata, type):
        # the description is its own file (source_description.json), not manifest metadata
        metadata = {k: v for k, v in dataclasses.asdict(metadata).items() if k not in ("description", "read_back")}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping or a DumpResult, got {type(metadata).__name__}")
    unknown = sorted(set(metadata) - _METADATA_KEYS)
    if unknown:
        raise ValueError(f"unknown metadata keys {unknown}; put store-specific facts under 'details'")
    missing = [k for k in _METADATA_REQUIRED if not isinstance(metadata.get(k), str)]
    if missing:
        raise ValueError(f"metadata needs string values for {missing}")
    details = metadata.get("details", {})
    if not isinstance(details, Mapping):
        raise ValueError("metadata 'details' must be a mapping")
    return {**{k: metadata[k] for k in _METADATA_REQUIRED}, "details": dict(details)}


# --------------------------------------------------------------------------- staging


class StagingBackup:
    """A backup being written; becomes a :class:`Backup` only through :meth:`seal`.

    Use as a context manager: leaving the block without sealing (by an exception or
    not) aborts, so nothing half-written is ever left for anyone but the sweep.
    """

    def __init__(
        self,
        repo: BackupRepository,
        *,
        path: Path,
        series: Path,
        store: str,
        subject: str | None,
        backup_id: str,
        started_at: datetime,
        run_id: str,
        dag_id: str,
        logical_date: datetime | None,
    ) -> None:
        self._repo = repo
        self.path = path
        self.series = series
        self.store = store
        self.subject = subject
        self.backup_id = backup_id  # may become -N at seal time if another writer took it
        self.started_at = started_at
        self.run_id = run_id
        self.dag_id = dag_id
        self.logical_date = logical_date
        self.state = "open"  # open | sealed | aborted
        self.backup: Backup | None = None

    def __repr__(self) -> str:
        return f"StagingBackup({self.path}, {self.state})"

    def __enter__(self) -> StagingBackup:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.state == "open":
            self.abort()

    def abort(self) -> None:
        """Remove the staging folder; harmless to call twice or after sealing."""
        if self.state == "sealed":
            return
        self.state = "aborted"
        _remove_tree(self.path)

    def _scan(self) -> list[tuple[str, Path]]:
        """The regular files to seal; refuses symlinks, special files, a manifest, nothing."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            raise RepositoryError(f"staging folder {self.path} has disappeared") from None
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePathError(f"staging {self.path} is not a real folder")
        files: list[tuple[str, Path]] = []
        for rel, path, st in _walk(self.path):
            kind = _file_kind(st)
            if kind == "folder":
                continue
            if kind != "file":
                raise RepositoryError(f"refusing to seal: {rel!r} is a {kind}, only regular files are backed up")
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise RepositoryError(f"refusing to seal: file name {rel!r} is not UTF-8") from None
            if rel == MANIFEST_NAME:
                raise RepositoryError("refusing to seal: the staging folder already holds a manifest.json")
            files.append((rel, path))
        if not files:
            raise RepositoryError(f"refusing to seal an empty staging folder {self.path}")
        return sorted(files)

    def _stat_snapshot(self) -> list[tuple[str, int, int]]:
        """Each file's size and mtime: a write after this snapshot changes one of them."""
        return [(rel, st.st_size, st.st_mtime_ns) for rel, _p, st in _walk(self.path) if not stat.S_ISDIR(st.st_mode)]

    def verify_files(
        self, files: Sequence[Mapping[str, Any]], read_back: Mapping[str, str] | None = None
    ) -> list[CheckResult]:
        """Re-read every file of ``files`` (manifest entries) and compare size and sha256; a
        file in ``read_back`` (path -> sha256 of an earlier whole read) is compared with that
        digest instead of being read a third time.

        Catches a writer still busy after it said it was done, or a read that went
        wrong; the result is one check per bad file plus a summary "files" check.
        """
        return _compare_files(self.path, files, allow_extra=lambda rel: False, read_back=read_back or {})

    def seal(
        self,
        metadata: Mapping[str, Any] | Any,
        verified_checks: Sequence[Any] = (),
        *,
        check: CheckFn | None = None,
        now: datetime | None = None,
    ) -> Backup:
        """Verify, write the manifest, and publish the backup atomically.

        Order: hash every file (fsync, 0600) -> re-read and compare every sha256 ->
        ``verified_checks`` (checks the caller already ran) and ``check(staging, draft)``
        (the tool-level check) -> only if all passed: manifest.json, fsync, rename to
        ``<series>/<backup_id>/``, fsync the series. Any failure aborts (the staging
        folder is removed, nothing is visible, earlier backups are untouched); a failed
        check raises :class:`BackupVerificationError` naming it.
        """
        if self.state != "open":
            raise RepositoryError(f"cannot seal a staging backup that is {self.state}")
        try:
            return self._seal(metadata, verified_checks, check, now)
        except BaseException:
            self.abort()
            raise

    def _seal(
        self,
        metadata: Any,
        verified_checks: Sequence[Any],
        check: CheckFn | None,
        now: datetime | None,
    ) -> Backup:
        meta = _metadata_fields(metadata)
        read_back = getattr(metadata, "read_back", None) or {}
        given = [_as_check(c) for c in verified_checks]

        before = self._stat_snapshot()  # any write from here on shows in a size or an mtime
        scanned = self._scan()

        def hashed(item: tuple[str, Path]) -> dict[str, Any]:
            size, digest, _st = _hash_file(item[1], fsync=True, chmod=FILE_MODE)
            return {"path": item[0], "bytes": size, "sha256": digest}

        with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:  # in scan order
            files = list(pool.map(hashed, scanned))
        draft: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_FORMAT_VERSION,
            "store": self.store,
            "subject": self.subject,
            "backup_id": self.backup_id,
            "files": files,
            "total_bytes": sum(f["bytes"] for f in files),
            "started_at": format_time(self.started_at),
            "finished_at": None,
            "logical_date": None if self.logical_date is None else format_time(self.logical_date),
            "run_id": self.run_id,
            "dag_id": self.dag_id,
            **meta,
            "checks": [],
        }
        # Round-trip once so the checksum is over exactly what a reader will parse
        # (int keys become strings, tuples lists); fails early on unserialisable details.
        try:
            draft = json.loads(canonical_json(draft))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"backup metadata is not JSON-serialisable: {exc}") from None

        checks = self.verify_files(files, read_back)
        checks.extend(given)
        if checks_ok(checks) and check is not None:
            try:
                checks.extend(_as_check(c) for c in check(self.path, draft))
            except Exception as exc:  # a crashed checker is a failed check
                checks.append(_check("tool-check", False, f"raised {type(exc).__name__}: {exc}"))
        if self._stat_snapshot() != before:
            checks.append(_check("unchanged-while-sealed", False, "the staging files changed while they were sealed"))
        failed = [c for c in checks if not c["ok"]]
        if failed:
            summary = "; ".join(f"{c['name']}: {c['detail'] or 'failed'}" for c in failed[:5])
            raise BackupVerificationError(
                f"backup {self.store}/{self.subject or ''} not sealed, verification failed: {summary}",
                checks,
            )

        finished = as_utc(now, "now") if now is not None else self._repo.clock()
        draft["finished_at"] = format_time(finished)
        draft["checks"] = checks
        for _rel, path, st in _walk(self.path):
            if stat.S_ISDIR(st.st_mode):
                os.chmod(path, DIR_MODE, follow_symlinks=False)
        return self._publish(draft)

    def _write_manifest(self, draft: dict[str, Any], backup_id: str) -> None:
        draft["backup_id"] = backup_id
        draft.pop("manifest_sha256", None)
        draft["manifest_sha256"] = manifest_digest(draft)
        text = json.dumps(draft, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        target = self.path / MANIFEST_NAME
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8"))
            fh.flush()
            os.fchmod(fh.fileno(), FILE_MODE)
            os.fsync(fh.fileno())

    def _publish(self, draft: dict[str, Any]) -> Backup:
        """Rename into place under a free id (bumping -N if a concurrent writer took it)."""
        backup_id = _free_backup_id(self.series, self.backup_id)
        for _attempt in range(1000):
            self._write_manifest(draft, backup_id)
            for _rel, path, st in sorted(_walk(self.path), key=lambda t: -t[0].count("/")):
                if stat.S_ISDIR(st.st_mode):
                    fsync_dir(path)
            os.chmod(self.path, DIR_MODE)
            fsync_dir(self.path)
            target = self.series / backup_id
            if not os.path.lexists(target):
                try:
                    os.rename(self.path, target)
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                        raise
                else:
                    break
            taken, seq = parse_backup_id(backup_id)
            backup_id = _free_backup_id(self.series, format_backup_id(taken, seq + 1))
        else:  # pragma: no cover - a thousand writers in one second
            raise RepositoryError(f"no free backup id near {self.backup_id} in {self.series}")
        fsync_dir(self.series)
        fsync_dir(self.path.parent)
        self.backup_id = backup_id
        self.path = self.series / backup_id
        self.state = "sealed"
        self.backup = _load_backup(self.path, self.store, self.subject)
        return self.backup


def _free_backup_id(series: Path, backup_id: str) -> str:
    taken, seq = parse_backup_id(backup_id)
    candidate = backup_id
    while os.path.lexists(series / candidate):
        seq += 1
        candidate = format_backup_id(taken, seq)
    return candidate


def _compare_files(
    base: Path,
    files: Sequence[Mapping[str, Any]],
    *,
    allow_extra: Callable[[str], bool],
    read_back: Mapping[str, str] | None = None,
) -> list[CheckResult]:
    """One failed check per missing/changed/extra file, then a summary "files" check."""
    problems: list[CheckResult] = []
    expected: set[str] = set()
    total = 0
    to_hash: list[tuple[str, Path, Mapping[str, Any]]] = []
    for entry in files:
        rel = _safe_relative(entry["path"])
        expected.add(rel)
        total += int(entry["bytes"])
        path = base / rel
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            problems.append(_check(f"missing:{rel}", False, "listed in the manifest but not on disk"))
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(_check(f"changed:{rel}", False, f"is now a {_file_kind(st)}"))
            continue
        if st.st_size != entry["bytes"]:
            problems.append(_check(f"changed:{rel}", False, f"{st.st_size} bytes, manifest says {entry['bytes']}"))
            continue
        if read_back and rel in read_back:
            if read_back[rel] != entry["sha256"]:
                detail = f"read back as sha256 {read_back[rel]}, manifest says {entry['sha256']}"
                problems.append(_check(f"changed:{rel}", False, detail))
            continue
        to_hash.append((rel, path, entry))

    def hashed(item: tuple[str, Path, Mapping[str, Any]]) -> CheckResult | None:
        rel, path, entry = item
        try:
            size, digest, _st = _hash_file(path)
        except OSError as exc:
            return _check(f"unreadable:{rel}", False, str(exc))
        if size != entry["bytes"] or digest != entry["sha256"]:
            return _check(f"changed:{rel}", False, f"sha256 {digest}, manifest says {entry['sha256']}")
        return None

    # sha256 releases the GIL: a few files at once use the cores a restore is about to need anyway
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        problems += [p for p in pool.map(hashed, to_hash) if p is not None]
    try:
        for rel, _path, st in _walk(base):
            if stat.S_ISDIR(st.st_mode) or rel in expected or allow_extra(rel):
                continue
            problems.append(_check(f"extra:{rel}", False, f"a {_file_kind(st)} not in the manifest"))
    except FileNotFoundError:
        problems.append(_check("folder", False, f"{base} has disappeared"))
    summary = (
        f"{len(files)} files, {total} bytes match the manifest"
        if not problems
        else f"{len(problems)} problem(s) among {len(files)} files"
    )
    return [*problems, _check("files", not problems, summary)]


# --------------------------------------------------------------------------- the repository


class BackupRepository:
    """One backup root on a local filesystem (see the module docstring for the layout)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        allowed_base: str | os.PathLike[str] | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        root_path = checked_backup_root(Path(root))
        if allowed_base is not None:
            base = Path(allowed_base)
            if not base.is_absolute():
                raise ValueError(f"allowed_base must be an absolute path, got {str(base)!r}")
            base = Path(os.path.normpath(base))
            if not _is_inside(root_path, base):
                raise UnsafePathError(f"backup root {root_path} is outside the allowed base {base}")
        if not os.path.lexists(root_path):
            root_path.parent.mkdir(parents=True, exist_ok=True)
            _mkdir_private(root_path)
        if not root_path.is_dir():
            raise UnsafePathError(f"backup root {root_path} is not a folder")
        real = _real(root_path)
        # The root may be a symlink (to a data disk), but not to a system folder.
        checked_backup_root(real)
        if allowed_base is not None and not _is_inside(real, _real(base)):
            raise UnsafePathError(f"backup root {root_path} resolves to {real}, outside {base}")
        self.root = root_path
        self._real_root = real
        self._clock = clock

    def __repr__(self) -> str:
        return f"BackupRepository({str(self.root)!r})"

    def clock(self) -> datetime:
        return as_utc(self._clock(), "clock()")

    def _now(self, now: datetime | None) -> datetime:
        return self.clock() if now is None else as_utc(now, "now")

    # ---------------------------------------------------------------- paths

    def series_path(self, store: str, subject: str | None = None) -> Path:
        """``<root>/<store>[/<subject>]`` (validated names; not created)."""
        check_store_name(store)
        check_subject_name(subject)
        return self.root / store if subject is None else self.root / store / subject

    def _checked_series(self, store: str, subject: str | None, *, create: bool = False) -> Path | None:
        """The series folder if it exists (or was created) and resolves inside the root."""
        series = self.series_path(store, subject)
        if create:
            _mkdir_private(self.root / store)
            if subject is not None:
                _mkdir_private(series)
        elif not os.path.lexists(series):
            return None
        st = os.lstat(series)
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePathError(f"{series} is a {_file_kind(st)}, not a series folder")
        expected = self._real_root / store if subject is None else self._real_root / store / subject
        if _real(series) != expected:
            raise UnsafePathError(f"series folder {series} resolves to {_real(series)}, outside the root")
        return series

    def subjects(self, store: str) -> list[str]:
        """Subject names that have a series folder under ``store`` (e.g. Postgres databases)."""
        folder = self._checked_series(store, None)
        if folder is None:
            return []
        names = []
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and _SUBJECT_RE.match(entry.name) and ".." not in entry.name:
                    names.append(entry.name)
        return sorted(names)

    # ---------------------------------------------------------------- writing

    @contextmanager
    def writer_lock(self, store: str, subject: str | None = None, *, holder: str) -> Iterator[None]:
        """Hold the series' writer lock for the block (sweep, begin, seal); refuse a second writer.

        An flock on ``<series>/.lock`` (0600, inside the repository): the kernel releases it
        when the holder dies, so a killed worker never leaves the series locked. A second
        writer gets :class:`SeriesBusyError` at once, naming the holder, before it touches
        anything (its task fails and Airflow's retry comes back later).
        """
        series = self._checked_series(store, subject, create=True)
        assert series is not None
        fd = os.open(series / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                current = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
                where = f"{store}/{subject}" if subject else store
                raise SeriesBusyError(
                    f"another backup of {where} is being written (by {current}); not starting a second one"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{holder}, pid {os.getpid()}".encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def begin(
        self,
        store: str,
        subject: str | None = None,
        *,
        run_id: str,
        dag_id: str,
        logical_date: datetime | None,
        now: datetime | None = None,
    ) -> StagingBackup:
        """A new private staging folder ``<series>/.staging/<backup_id>.<random>/`` (0700)."""
        for name, value in (("run_id", run_id), ("dag_id", dag_id)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        started = self._now(now)
        if logical_date is not None:
            logical_date = as_utc(logical_date, "logical_date")
        series = self._checked_series(store, subject, create=True)
        assert series is not None
        staging_root = series / STAGING_DIR
        _mkdir_private(staging_root)
        backup_id = _free_backup_id(series, format_backup_id(started))
        while True:
            path = staging_root / f"{backup_id}.{secrets.token_hex(6)}"
            try:
                os.mkdir(path, DIR_MODE)
            except FileExistsError:
                continue
            os.chmod(path, DIR_MODE)
            break
        return StagingBackup(
            self,
            path=path,
            series=series,
            store=store,
            subject=subject,
            backup_id=backup_id,
            started_at=started,
            run_id=run_id,
            dag_id=dag_id,
            logical_date=logical_date,
        )

    def record(self, backup: Backup, kind: str, result: Mapping[str, Any], *, now: datetime | None = None) -> Backup:
        """Write ``<backup>/<kind>.json`` atomically (the manifest itself never changes).

        ``result`` needs ``ok`` (bool); ``kind`` and ``at`` (now, UTC) are added. Returns
        the Backup re-read with the new sidecar. A "verify" or "drill" result with
        ``ok`` false makes the backup count as not verified.
        """
        if not isinstance(kind, str) or not _STORE_RE.match(kind) or ".." in kind or kind == "manifest":
            raise ValueError(f"invalid sidecar kind {kind!r}")
        if not isinstance(result, Mapping) or not isinstance(result.get("ok"), bool):
            raise ValueError("a recorded result needs 'ok': true or false")
        reserved = sorted({"kind", "at"} & set(result))
        if reserved:
            raise ValueError(f"result keys {reserved} are set by record(), leave them out")
        current = self._reload(backup)
        name = f"{kind}.json"
        if name in {f["path"] for f in current.manifest["files"]}:
            raise ValueError(f"sidecar {name} would overwrite a backed-up file")
        body = {**result, "kind": kind, "at": format_time(self._now(now))}
        data = (json.dumps(body, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()
        tmp = current.path / f".{name}.tmp-{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fchmod(fh.fileno(), FILE_MODE)
                os.fsync(fh.fileno())
            os.replace(tmp, current.path / name)
        except BaseException:
            _remove_tree(tmp)
            raise
        fsync_dir(current.path)
        return _load_backup(current.path, current.store, current.subject)

    # ---------------------------------------------------------------- reading

    def _entries(self, series: Path) -> list[str]:
        with os.scandir(series) as entries:
            return sorted(e.name for e in entries if e.name not in (STAGING_DIR, DELETING_DIR, LOCK_FILE))

    def list(self, store: str, subject: str | None = None) -> list[Backup]:
        """The complete backups of a series, oldest first (by finish time, then id).

        Only folders with a valid manifest count; everything else is left out (see
        :meth:`problems`).
        """
        series = self._checked_series(store, subject)
        if series is None:
            return []
        backups = []
        for name in self._entries(series):
            try:
                backups.append(_load_backup(series / name, store, subject))
            except NotABackupError:
                continue
        return sorted(backups, key=lambda b: b.sort_key)

    def problems(self, store: str, subject: str | None = None) -> builtins.list[Problem]:
        """Entries of a series folder that are not backups, with the reason (for the log).

        Staging and deleting folders are not listed: :meth:`sweep` deals with them. Under
        a store with subjects, the subject folders show up here when asked without one.
        """
        series = self._checked_series(store, subject)
        if series is None:
            return []
        found = []
        for name in self._entries(series):
            try:
                _load_backup(series / name, store, subject)
            except NotABackupError as exc:
                found.append(Problem(series / name, str(exc)))
        return found

    def find_by_run(self, store: str, subject: str | None, run_id: str, *, dag_id: str | None = None) -> Backup | None:
        """The newest complete backup a run made (so a rerun of that run does nothing).

        Run ids are unique per DAG only: pass ``dag_id`` when more than one DAG writes.
        """
        matches = [
            b for b in self.list(store, subject) if b.run_id == run_id and (dag_id is None or b.dag_id == dag_id)
        ]
        return matches[-1] if matches else None

    def latest(self, store: str, subject: str | None = None, verified_only: bool = True) -> Backup | None:
        """The newest backup of the series (the newest verified one by default)."""
        backups = [b for b in self.list(store, subject) if b.verified or not verified_only]
        return backups[-1] if backups else None

    def _reload(self, backup: Backup) -> Backup:
        """``backup`` as it is on disk now; refuses anything that is not that listed backup."""
        if not isinstance(backup, Backup):
            raise TypeError(f"expected a Backup, got {type(backup).__name__}")
        series = self._checked_series(backup.store, backup.subject)
        expected = self.series_path(backup.store, backup.subject) / backup.backup_id
        if series is None or Path(os.path.normpath(backup.path)) != expected:
            raise UnsafePathError(
                f"{backup.path} is not backup {backup.backup_id} of series {expected.parent} in this repository"
            )
        if os.path.islink(expected) or _real(expected).parent != _real(series):
            raise UnsafePathError(f"{expected} is a symlink or resolves outside its series folder")
        try:
            current = _load_backup(expected, backup.store, backup.subject)
        except NotABackupError as exc:
            raise NotABackupError(f"{expected} is not a complete backup: {exc}") from None
        if current.manifest.get("manifest_sha256") != backup.manifest.get("manifest_sha256"):
            raise NotABackupError(f"{expected} has a different manifest than the backup given")
        return current

    def verify(self, backup: Backup) -> builtins.list[CheckResult]:
        """Re-read every file and compare with the manifest: one check per problem
        (missing/changed/extra/unreadable file), plus "manifest" and "files" checks.

        Pass the result to :func:`checks_ok` and :meth:`record` (kind "verify").
        """
        try:
            current = self._reload(backup)
        except NotABackupError as exc:
            return [_check("manifest", False, str(exc)), _check("files", False, "not checked")]
        files = {f["path"] for f in current.manifest["files"]}

        def allow_extra(rel: str) -> bool:
            return rel == MANIFEST_NAME or _sidecar_kind(rel, files) is not None or bool(_SIDECAR_TMP_RE.match(rel))

        checks = _compare_files(current.path, current.manifest["files"], allow_extra=allow_extra)
        return [_check("manifest", True, f"manifest_sha256 {current.manifest['manifest_sha256']}"), *checks]

    # ---------------------------------------------------------------- deleting

    def delete(self, backup: Backup) -> Path:
        """Remove a listed backup: renamed into ``.deleting`` first, so a crash half-way
        never leaves something that looks complete; then removed. Returns the old path.

        Refuses (UnsafePathError/NotABackupError, nothing changed) anything that is not
        exactly that listed backup inside its series folder inside the root.
        """
        current = self._reload(backup)
        series = current.path.parent
        deleting = series / DELETING_DIR
        _mkdir_private(deleting)
        while True:
            target = deleting / f"{current.backup_id}.{secrets.token_hex(6)}"
            if not os.path.lexists(target):
                break
        os.rename(current.path, target)
        fsync_dir(series)
        _remove_tree(target)
        fsync_dir(deleting)
        return current.path

    def sweep(
        self, store: str, subject: str | None = None, *, older_than: timedelta, now: datetime | None = None
    ) -> builtins.list[Path]:
        """Remove staging folders untouched for ``older_than`` and all ``.deleting`` leftovers.

        A staging folder's age is that of the newest entry in its tree, so a long dump
        that is still writing is not stale. Run it inside the series' pool slot, before
        :meth:`begin`. Returns what was removed (for the log).
        """
        if not isinstance(older_than, timedelta) or older_than <= timedelta(0):
            raise ValueError(f"older_than must be a positive timedelta, got {older_than!r}")
        cutoff = (self._now(now) - older_than).timestamp()
        series = self._checked_series(store, subject)
        if series is None:
            return []
        removed: list[Path] = []
        for folder, stale_only in ((series / STAGING_DIR, True), (series / DELETING_DIR, False)):
            if not os.path.lexists(folder):
                continue
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                raise UnsafePathError(f"{folder} is not a real folder; not sweeping it")
            with os.scandir(folder) as entries:
                names = sorted(e.name for e in entries)
            for name in names:
                path = folder / name
                try:
                    if stale_only and _tree_mtime(path) >= cutoff:
                        continue
                except FileNotFoundError:
                    continue
                _remove_tree(path)
                removed.append(path)
            if removed:
                fsync_dir(folder)
        return removed
