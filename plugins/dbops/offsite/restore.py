"""Bringing an offsite backup back into a local repository (the first step of a restore
from the offsite copy; the store's own restore then runs on the local backup).

The backup comes back under its own id with its original manifest, through the
repository's rule: downloaded into ``<series>/.staging/``, decrypted there if it was
encrypted (authenticated, streaming), every file checked against the manifest (size and
sha256), and only then renamed into place. A failure leaves nothing visible (a stale
staging folder is removed by the repository's sweep).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

from dbops.backup.repository import (
    DIR_MODE,
    MANIFEST_NAME,
    STAGING_DIR,
    Backup,
    BackupRepository,
    NotABackupError,
    _validate_manifest,  # the repository's own notion of a complete manifest
    checks_ok,
    fsync_dir,
)
from dbops.offsite.common import (
    ENVELOPE_NAME,
    Envelope,
    LogFn,
    OffsiteError,
    OffsiteVerificationError,
    SeriesKey,
    Target,
    mirror_path,
)
from dbops.offsite.crypto import Encryption
from dbops.tools import human_bytes


def _hash(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


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
    """The offsite backup ``store/[subject/]backup_id`` as a complete local backup.

    If the local repository already has it intact, that one is returned untouched.
    """
    key = SeriesKey(store, subject)
    where = f"{key}/{backup_id}"
    for backup in repo.list(store, subject):
        if backup.backup_id == backup_id:
            checks = repo.verify(backup)
            if checks_ok(checks):
                log(f"{where} is already in the local repository and intact; nothing fetched")
                return backup
            raise OffsiteError(
                f"{where} exists locally but fails verification; remove it before fetching the offsite copy"
            )
    series = repo.series_path(store, subject)
    staging_root = series / STAGING_DIR
    staging_root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    token = secrets.token_hex(6)
    raw = staging_root / f"{backup_id}.download-{token}"
    assembled = staging_root / f"{backup_id}.restore-{token}"
    try:
        stats = target.download(key, backup_id, raw, log)
        log(f"downloaded {where} from {target.location()}: {stats.files_transferred} files, "
            f"{human_bytes(stats.literal_bytes)}")  # fmt: skip
        try:
            manifest = json.loads((raw / MANIFEST_NAME).read_text())
            _validate_manifest(manifest, folder_name=backup_id, store=store, subject=subject)
        except FileNotFoundError:
            raise OffsiteError(f"{where} has no manifest offsite: it is not a complete backup") from None
        except (ValueError, NotABackupError) as exc:
            raise OffsiteError(f"{where}: the offsite manifest is not valid: {exc}") from None
        try:
            envelope = Envelope.from_dict(json.loads((raw / ENVELOPE_NAME).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise OffsiteError(f"{where}: offsite.json unusable: {exc}") from None
        problems = envelope.check_against(manifest)
        if problems:
            raise OffsiteVerificationError(f"{where}: offsite.json does not match the manifest", problems)
        if envelope.encryption:
            wanted = envelope.encryption.get("key_id")
            if encryption is None:
                raise OffsiteError(f"{where} is encrypted (key id {wanted}); no decryption key was given")
            if encryption.key_id != wanted:
                raise OffsiteError(f"{where} was encrypted with key id {wanted}, the key given has id {encryption.key_id}")
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
                    encryption.decrypt_file(src, dst)
                except ValueError as exc:
                    problems.append(f"{f.stored_path}: {exc}")
                    continue
            else:
                os.replace(src, dst)
            size, digest = _hash(dst)
            if size != f.plain_bytes or digest != f.plain_sha256:
                problems.append(f"{f.path}: {size} bytes sha256 {digest}, the manifest says {f.plain_bytes} {f.plain_sha256}")
            os.chmod(dst, 0o600)
        if problems:
            raise OffsiteVerificationError(f"{where}: the offsite copy does not restore intact", problems)
        shutil.copyfile(raw / MANIFEST_NAME, assembled / MANIFEST_NAME)
        os.chmod(assembled / MANIFEST_NAME, 0o600)
        for folder, _dirs, _files in os.walk(assembled):
            os.chmod(folder, DIR_MODE)
            fsync_dir(Path(folder))
        final = series / backup_id
        if os.path.lexists(final):
            raise OffsiteError(f"{final} appeared while fetching; not replacing it")
        os.rename(assembled, final)
        fsync_dir(series)
    finally:
        shutil.rmtree(raw, ignore_errors=True)
        shutil.rmtree(assembled, ignore_errors=True)
    backup = next((b for b in repo.list(store, subject) if b.backup_id == backup_id), None)
    if backup is None:  # pragma: no cover - the manifest was validated above
        raise OffsiteError(f"{where} was fetched but the repository does not list it")
    checks = repo.verify(backup)
    if not checks_ok(checks):
        raise OffsiteVerificationError(f"{where}: fetched copy fails verification",
                                       [f"{c['name']}: {c['detail']}" for c in checks if not c["ok"]])  # fmt: skip
    log(f"{where} restored from {target.location()} into {backup.path}: {len(backup.manifest['files'])} files, "
        f"{human_bytes(backup.total_bytes)}, verified against its manifest")  # fmt: skip
    return backup
