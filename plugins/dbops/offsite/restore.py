"""Bringing an offsite backup back into a local repository (the first step of a restore or
drill from the offsite copy; the store's own restore then runs on the fetched backup exactly
as on a local one).

Where copies go: the *fetch repository* (:func:`fetch_repository`), a scratch repository of
its own, one per target, outside ``backup.root``: a restore from offsite must work when the
local repository is gone (disaster recovery) and must never mix fetched copies into it.

How a copy comes back (:func:`fetch_backup`), through the repository's rule: downloaded into
``<series>/.staging/<backup_id>.download`` (a fixed name: a failed or killed download is kept
there and the rerun resumes it, the targets skipping files already complete), then checked
before anything is assembled: the manifest is valid, ``offsite.json`` matches it, the
manifest's MAC when the copy is encrypted; then every file decrypted (bound to its backup
and path) and checked against the manifest (size and sha256); only then renamed into place.
A copy that fails a check is refused and its download discarded (nothing of it is reused);
nothing half-fetched is ever visible.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from dbops.backup.repository import (
    DIR_MODE,
    MANIFEST_NAME,
    STAGING_DIR,
    Backup,
    BackupRepository,
    NotABackupError,
    SeriesBusyError,
    _validate_manifest,  # the repository's own notion of a complete manifest
    check_store_name,
    checks_ok,
    format_time,
    fsync_dir,
    parse_backup_id,
    utc_now,
)
from dbops.config import DbopsConfig
from dbops.offsite.common import (
    ENVELOPE_NAME,
    Catalog,
    Envelope,
    LogFn,
    OffsiteBackup,
    OffsiteError,
    OffsiteVerificationError,
    SeriesKey,
    Target,
    TransferStats,
    mirror_path,
)
from dbops.offsite.crypto import Encryption, file_context
from dbops.tools import human_bytes

LATEST = "latest"
FETCH_DIR_NAME = "dbops-offsite-fetch"
# Sidecar of a fetched copy: the target it came from and what its download moved.
FETCHED_KIND = "fetched"
DOWNLOAD_SUFFIX = ".download"


# --------------------------------------------------------------------------- where copies go


def fetch_root(config: DbopsConfig) -> Path:
    """``offsite.fetch_dir``, or ``<restore.scratch_dir or the system temp dir>/dbops-offsite-fetch``."""
    if config.offsite.fetch_dir is not None:
        return config.offsite.fetch_dir
    return (config.restore.scratch_dir or Path(tempfile.gettempdir())) / FETCH_DIR_NAME


def fetch_repository(config: DbopsConfig, target: str | None = None) -> BackupRepository:
    """The scratch repository offsite copies are fetched into. With ``target`` ("s3",
    "rsync"), that target's own folder ``<fetch root>/<target>``: a copy fetched from one
    target is never taken for the other's, and drills of both never share a result. Never
    touches ``backup.root`` (it may be unreadable or gone)."""
    root = fetch_root(config)
    if target is not None:
        root = root / check_store_name(target)  # a plain folder name
    return BackupRepository(root)


def download_folder(repo: BackupRepository, store: str, subject: str | None, backup_id: str) -> Path:
    """Where :func:`fetch_backup` downloads ``backup_id`` (the same on every attempt)."""
    parse_backup_id(backup_id)
    return repo.series_path(store, subject) / STAGING_DIR / f"{backup_id}{DOWNLOAD_SUFFIX}"


def space_needed(item: OffsiteBackup) -> int:
    """Bytes a fetch of ``item`` occupies at its peak: the plain files, plus the stored
    (encrypted) ones while both exist; an unencrypted download becomes the backup itself."""
    envelope = item.envelope
    if envelope is None:
        return item.backup.total_bytes
    plain = sum(f.plain_bytes for f in envelope.files)
    return plain + (sum(f.bytes for f in envelope.files) if envelope.encryption else 0)


def free_bytes(path: Path) -> int:
    """Free bytes of the file system ``path`` is (or will be) on."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return shutil.disk_usage(probe).free


# --------------------------------------------------------------------------- which copy


def usable_problems(item: OffsiteBackup) -> list[str]:
    """Why a complete offsite copy cannot be restored (none: it can be fetched)."""
    if item.envelope is None:
        return [item.envelope_problem or "offsite.json is missing"]
    problems = item.envelope.check_against(item.backup.manifest)
    checks = item.backup.manifest.get("checks") or []
    if not checks:
        problems.append("its manifest records no checks: it was never verified")
    elif not checks_ok(checks):
        problems.append("its manifest records a failed check")
    return problems


def resolve_offsite(target: Target, store: str, subject: str | None, backup_id: str, log: LogFn) -> OffsiteBackup:
    """The copy on ``target`` to restore: exactly ``backup_id``, or for ``"latest"`` the
    newest complete copy whose envelope is usable and matches its manifest and whose
    manifest says the backup was verified when it was shipped. OffsiteError naming what
    was found otherwise."""
    if backup_id != LATEST:
        try:
            parse_backup_id(backup_id)
        except ValueError as exc:
            raise OffsiteError(str(exc)) from None
    try:
        key = SeriesKey(store, subject)
    except ValueError as exc:
        raise OffsiteError(str(exc)) from None
    item, skipped = choose(target.catalog(log), key, backup_id, target.location())
    for line in skipped:
        log(f"not the latest usable copy: {line}")
    return item


def choose(catalog: Catalog, key: SeriesKey, backup_id: str, location: str) -> tuple[OffsiteBackup, list[str]]:
    """:func:`resolve_offsite` on a catalog already read: the copy, and the newer copies
    passed over for ``"latest"`` (each with why)."""
    copies = sorted(catalog.backups.get(key, {}).values(), key=lambda b: b.backup.sort_key)
    incomplete = [e.name for e in catalog.staging if e.key == key]
    where = f"{key} on {location}"
    if backup_id != LATEST:
        item = catalog.get(key, backup_id)
        if item is None:
            newest = ", ".join(c.backup_id for c in copies[-5:]) or "none"
            also = f"; incomplete there: {', '.join(incomplete[:5])}" if incomplete else ""
            raise OffsiteError(f"no complete backup {backup_id} of {where} (newest: {newest}{also})")
        problems = usable_problems(item)
        if problems:
            raise OffsiteError(f"{key}/{backup_id} on {location} cannot be restored: " + "; ".join(problems))
        return item, []
    skipped: list[str] = []
    for item in reversed(copies):
        problems = usable_problems(item)
        if not problems:
            return item, skipped
        skipped.append(f"{key}/{item.backup_id}: {'; '.join(problems)}")
    found = f"{len(copies)} complete cop{'y' if len(copies) == 1 else 'ies'}"
    detail = f", none usable ({'; '.join(skipped[:3])})" if skipped else ""
    also = f"; {len(incomplete)} incomplete" if incomplete else ""
    raise OffsiteError(f"no usable backup of {where}: {found}{detail}{also}")


def other_copies(repo: BackupRepository, store: str, subject: str | None, backup_id: str) -> list[Backup]:
    """The copies of the series in a fetch repository other than ``backup_id``: a fetch
    removes them first, so the scratch area holds at most one copy per series and target."""
    return [b for b in repo.list(store, subject) if b.backup_id != backup_id]


# --------------------------------------------------------------------------- the fetch


def _hash(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def _listed(repo: BackupRepository, store: str, subject: str | None, backup_id: str) -> Backup | None:
    return next((b for b in repo.list(store, subject) if b.backup_id == backup_id), None)


def _reuse(repo: BackupRepository, backup: Backup, where: str, log: LogFn) -> Backup | None:
    """``backup`` if it is intact (verified again); a broken fetched copy is removed (None)."""
    checks = repo.verify(backup)
    origin = backup.sidecars.get(FETCHED_KIND)
    if checks_ok(checks):
        came = f"fetched from {origin.get('location')} at {origin.get('at')}" if origin else "not fetched by dbops"
        log(f"{where} is already in {repo.root} ({came}) and intact (every file checked again): not downloaded again")
        return backup
    failed = "; ".join(f"{c['name']}: {c['detail']}" for c in checks if not c["ok"])
    if origin is None:
        raise OffsiteError(
            f"{where} exists in {repo.root} but fails verification ({failed}); "
            "remove it before fetching the offsite copy"
        )
    log(
        f"{where}: the copy fetched earlier into {repo.root} fails verification ({failed}); removing it, fetching again"
    )
    repo.delete(backup)
    return None


def fetch_backup(
    target: Target,
    repo: BackupRepository,
    store: str,
    subject: str | None,
    backup_id: str,
    *,
    encryption: Encryption | None,
    log: LogFn,
) -> Backup:
    """The offsite backup ``store/[subject/]backup_id`` as a complete backup of ``repo``.

    A copy already in ``repo`` and intact is reused (checked again, not downloaded again).
    Otherwise it is downloaded into :func:`download_folder` (kept after a failure of the
    transfer or of this process, so the rerun resumes it), checked, decrypted and checked
    file by file, and published with a ``fetched`` sidecar naming the target. One fetch per
    series at a time (the series' writer lock).
    """
    parse_backup_id(backup_id)  # never a path from a malformed id
    key = SeriesKey(store, subject)
    where = f"{key}/{backup_id}"
    try:
        with repo.writer_lock(store, subject, holder=f"fetch of {where} from {target.name}"):
            found = _listed(repo, store, subject, backup_id)
            if found is not None and (reused := _reuse(repo, found, where, log)) is not None:
                return reused
            _fetch(target, repo, key, backup_id, encryption=encryption, log=log)
    except SeriesBusyError as exc:
        raise OffsiteError(
            f"{where}: another fetch or write of this series in {repo.root} is running ({exc})"
        ) from None
    backup = _listed(repo, store, subject, backup_id)
    if backup is None:  # pragma: no cover - the manifest was validated above
        raise OffsiteError(f"{where} was fetched but the repository does not list it")
    checks = repo.verify(backup)
    if not checks_ok(checks):
        raise OffsiteVerificationError(
            f"{where}: fetched copy fails verification", [f"{c['name']}: {c['detail']}" for c in checks if not c["ok"]]
        )
    log(
        f"{where} fetched from {target.location()} into {backup.path}: {len(backup.manifest['files'])} files, "
        f"{human_bytes(backup.total_bytes)}, verified against its manifest"
    )
    return backup


def _fetch(
    target: Target, repo: BackupRepository, key: SeriesKey, backup_id: str, *, encryption: Encryption | None, log: LogFn
) -> None:
    """Download, check and publish (under the series' writer lock)."""
    store, subject, where = key.store, key.subject, f"{key}/{backup_id}"
    series = repo.series_path(store, subject)
    staging_root = series / STAGING_DIR
    staging_root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    raw = download_folder(repo, store, subject, backup_id)
    resumed = raw.is_dir() and any(raw.iterdir())
    if resumed:
        log(
            f"resuming the download of {where} kept by an earlier "
            f"attempt in {raw}: complete files are not fetched again"
        )
    try:
        stats: TransferStats = target.download(key, backup_id, raw, log)
    except BaseException:
        log(f"the download of {where} did not finish; {raw} is kept, a rerun resumes it")
        raise
    skipped = f", {stats.files_skipped} already complete" if stats.files_skipped else ""
    log(
        f"downloaded {where} from {target.location()}: {stats.files_transferred} file(s) transferred "
        f"({human_bytes(stats.literal_bytes)} of file data){skipped}"
    )
    assembled = staging_root / f"{backup_id}.restore-{secrets.token_hex(6)}"
    try:
        _assemble(raw, assembled, target, key, backup_id, encryption=encryption, stats=stats, resumed=resumed, log=log)
        final = series / backup_id
        if os.path.lexists(final):
            raise OffsiteError(f"{final} appeared while fetching; not replacing it")
        os.rename(assembled, final)
        fsync_dir(series)
    except OffsiteVerificationError:
        # the copy itself is bad: nothing of this download may be reused
        shutil.rmtree(raw, ignore_errors=True)
        raise
    except BaseException:
        log(f"fetching {where} failed; its download {raw} is kept, a rerun resumes it")
        raise
    finally:
        shutil.rmtree(assembled, ignore_errors=True)
    shutil.rmtree(raw, ignore_errors=True)
    fsync_dir(staging_root)


def _assemble(
    raw: Path,
    assembled: Path,
    target: Target,
    key: SeriesKey,
    backup_id: str,
    *,
    encryption: Encryption | None,
    stats: TransferStats,
    resumed: bool,
    log: LogFn,
) -> None:
    """Check the download in ``raw`` and build the backup folder ``assembled`` from it."""
    store, subject, where = key.store, key.subject, f"{key}/{backup_id}"
    try:
        manifest_bytes = (raw / MANIFEST_NAME).read_bytes()
        manifest = json.loads(manifest_bytes)
        _validate_manifest(manifest, folder_name=backup_id, store=store, subject=subject)
    except FileNotFoundError:
        raise OffsiteVerificationError(f"{where} has no manifest offsite", ["it is not a complete backup"]) from None
    except (ValueError, NotABackupError) as exc:
        raise OffsiteVerificationError(f"{where}: the offsite manifest is not valid", [str(exc)]) from None
    try:
        envelope = Envelope.from_dict(json.loads((raw / ENVELOPE_NAME).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise OffsiteVerificationError(f"{where}: offsite.json unusable", [str(exc)]) from None
    problems = envelope.check_against(manifest)
    if problems:
        raise OffsiteVerificationError(f"{where}: offsite.json does not match the manifest", problems)
    if envelope.encryption:
        # a missing or wrong key is no verdict on the copy: the download is kept for the rerun
        wanted = envelope.encryption.get("key_id")
        if encryption is None:
            raise OffsiteError(f"{where} is encrypted (key id {wanted}); no decryption key was given")
        if encryption.key_id != wanted:
            raise OffsiteError(f"{where} was encrypted with key id {wanted}, the key given has id {encryption.key_id}")
    problems = envelope.check_manifest_mac(manifest_bytes, encryption)
    if problems:
        raise OffsiteVerificationError(f"{where}: the manifest is not the one that was shipped", problems)
    assembled.mkdir(mode=DIR_MODE)
    for f in envelope.files:
        src = mirror_path(raw, f.stored_path)
        dst = mirror_path(assembled, f.path)
        dst.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        if not src.is_file():
            problems.append(f"{f.stored_path}: missing in the download")
            continue
        if envelope.encryption:
            assert encryption is not None
            try:
                # the envelope's scheme: a v2 copy relabelled v1 (to drop its manifest mac) is refused
                encryption.decrypt_file(
                    src,
                    dst,
                    file_context(store, subject, backup_id, f.path, f.plain_sha256),
                    scheme=envelope.encryption.get("scheme"),
                )
            except ValueError as exc:
                problems.append(f"{f.stored_path}: {exc}")
                continue
        else:
            # linked, not moved: the download stays whole until the backup is published
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
        size, digest = _hash(dst)
        if size != f.plain_bytes or digest != f.plain_sha256:
            problems.append(
                f"{f.path}: {size} bytes sha256 {digest}, the manifest says {f.plain_bytes} {f.plain_sha256}"
            )
        os.chmod(dst, 0o600)
    if problems:
        raise OffsiteVerificationError(f"{where}: the offsite copy does not restore intact", problems)
    shutil.copyfile(raw / MANIFEST_NAME, assembled / MANIFEST_NAME)
    os.chmod(assembled / MANIFEST_NAME, 0o600)
    if f"{FETCHED_KIND}.json" not in {f.path for f in envelope.files}:
        origin = {
            "ok": True,
            "kind": FETCHED_KIND,
            "at": format_time(utc_now()),
            "target": target.name,
            "location": target.location(),
            "manifest_sha256": manifest["manifest_sha256"],
            "encrypted": bool(envelope.encryption),
            "resumed": resumed,
            "download": stats.to_dict(),
        }
        path = assembled / f"{FETCHED_KIND}.json"
        path.write_text(json.dumps(origin, sort_keys=True, indent=2) + "\n")
        os.chmod(path, 0o600)
    for folder, _dirs, files in os.walk(assembled):
        os.chmod(folder, DIR_MODE)
        for name in files:
            with open(Path(folder) / name, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(folder))
