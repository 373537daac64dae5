"""Offsite WAL back into a local scratch WAL archive: point-in-time recovery from offsite.

:func:`fetch_wal_archive` reads the offsite WAL catalog that :mod:`dbops.offsite.wal` ships
and builds, in a folder of its own, a :class:`~dbops.pitr.wal.WalArchive` with the same
layout and the same ``catalog.jsonl`` lines as the receiver's archive, so that
:mod:`dbops.pitr.recovery` recovers from it exactly as from the local one. The local
repository is never read: this is what a recovery after the loss of the backup host uses.

What is fetched: the history files, and the WAL segments of the chain from the base
backup's start (``base``) to the end of the offsite WAL, or to the first segment sealed
more than :data:`UP_TO_SLACK` after ``up_to`` (a recovery to a time needs nothing later).
A gap in that chain is refused before anything is downloaded.

Each file is downloaded into ``.download/`` beside the archive, checked against the
offsite catalog (stored size and sha256; when encrypted, decrypted with the context its
encryption used, ``file_context(WAL_DIR, None, system_identifier, file, sha256)``, and the
plaintext's sha256 checked), then renamed into ``segments/`` and catalogued in batches.
A rerun keeps every file already there that still matches its catalog line: an interrupted
fetch resumes where it stopped.

A point-in-time recovery from offsite is then: the base backup fetched by
:func:`dbops.offsite.restore.fetch_backup` (store ``postgres_pitr``), this archive from its
start, and :func:`dbops.pitr.recovery.restore_pitr` on both. :func:`last_commit_time` reads
(``pg_waldump``) when the newest transaction of an archive ended: a drill from a fixed archive
must choose its target time before that moment.

Pure Python (no Airflow).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dbops.backup.adapter import NotRetryable
from dbops.backup.repository import Backup, format_time
from dbops.offsite.common import FileTarget, LogFn, OffsiteError, OffsiteVerificationError
from dbops.offsite.crypto import Encryption, file_context
from dbops.offsite.wal import CATALOG_REL, SEGMENTS_REL, OffsiteArchiveMismatch, OffsiteWal, read_offsite_catalog
from dbops.pitr.wal import WAL_DIR, ChainBroken, WalArchive, WalEntry, chain_entries, parse_lsn
from dbops.tools import find_tool, human_bytes

# files downloaded, checked and catalogued per batch (the progress a rerun keeps)
BATCH_FILES = 64
# a segment sealed this long after the target time is past it, unless the receiver was
# further behind than that when it was written (then fetch without up_to)
UP_TO_SLACK = timedelta(hours=1)
DOWNLOAD_DIR = ".download"
_COMMIT_RE = re.compile(r"desc: (?:COMMIT|ABORT) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC")


class OffsiteWalChainBroken(OffsiteError, NotRetryable):
    """The offsite WAL after the base backup has a gap: no download can fill it."""


def _plan(
    entries: Sequence[WalEntry], base: Backup | None, up_to: datetime | None, segment_size: int, where: str
) -> list[WalEntry]:
    """The catalogued files a recovery from ``base`` to ``up_to`` needs, in replay order."""
    if base is None:
        wanted = list(entries)
    else:
        details = base.manifest.get("details") or {}
        try:
            timeline, start_lsn = int(details["timeline"]), parse_lsn(details["start_lsn"])
        except (KeyError, ValueError, TypeError) as exc:
            raise OffsiteError(
                f"base backup {base.backup_id}: its manifest does not say where its WAL starts ({exc})"
            ) from None
        try:
            wanted = chain_entries(entries, timeline, start_lsn, segment_size=segment_size)
        except ChainBroken as exc:
            raise OffsiteWalChainBroken(
                f"{where}: the WAL after base backup {base.backup_id} is not all offsite: {exc}"
            ) from None
    if up_to is None:
        return wanted
    cut = []
    for entry in wanted:
        cut.append(entry)
        if entry.kind == "segment" and entry.sealed_at > up_to + UP_TO_SLACK:
            break
    return cut


def _download(target: FileTarget, names: Sequence[str], dest: Path, log: LogFn) -> None:
    """Copy ``postgres_wal/segments/<name>`` of the target into ``dest``.

    The FileTarget interface has no download (shipping never needed one), so this speaks to
    the two targets directly: rsync pulls the listed files (``--partial-dir``: an interrupted
    file resumes), S3 gets each object."""
    from dbops.offsite.rsync import PARTIAL_DIR, RsyncTarget
    from dbops.offsite.s3 import S3Target

    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    if isinstance(target, RsyncTarget):
        listing = target.session.temp_file("wal-files", "\0".join(names).encode() + b"\0")
        try:
            target._rsync(
                [
                    "-rtp",
                    "--chmod=D700,F600",
                    f"--partial-dir={PARTIAL_DIR}",
                    f"--files-from={listing}",
                    "--from0",
                    target._remote(target._path(SEGMENTS_REL) + "/"),
                    f"{dest}/",
                ],
                log,
            )
        finally:
            listing.unlink(missing_ok=True)
    elif isinstance(target, S3Target):
        config = target.transfer_config()
        for name in names:
            path = dest / name
            target.client.download_file(
                target.bucket, target.file_key(f"{SEGMENTS_REL}/{name}"), str(path), Config=config
            )
            path.chmod(0o600)
    else:  # pragma: no cover - the two targets are all there is
        raise OffsiteError(f"cannot download WAL from a {type(target).__name__}")


def _sha256(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while block := fh.read(1024 * 1024):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def _install(
    item: OffsiteWal, downloaded: Path, archive: WalArchive, encryption: Encryption | None, system_identifier: str
) -> str | None:
    """Check one downloaded file and put its sealed form into ``segments/``; the problem, or None."""
    entry, stored = item.entry, item.stored
    if not downloaded.is_file():
        return f"{stored.stored_path}: not downloaded"
    size, digest = _sha256(downloaded)
    if (size, digest) != (stored.bytes, stored.sha256):
        return (
            f"{stored.stored_path}: downloaded {size} bytes sha256 {digest}, the offsite catalog says "
            f"{stored.bytes} bytes {stored.sha256}"
        )
    tmp = archive.segments / f".{entry.file}.fetch-{os.getpid()}"
    if item.encryption:
        if encryption is None:
            return f"{stored.stored_path}: encrypted (key id {item.key_id}); no decryption key was given"
        context = file_context(WAL_DIR, None, system_identifier, entry.file, entry.sha256)
        try:
            size, digest = encryption.decrypt_file(downloaded, tmp, context)
        except ValueError as exc:  # DecryptionError names the file and why
            tmp.unlink(missing_ok=True)
            return f"{stored.stored_path}: {exc}"
    else:
        os.replace(downloaded, tmp)
    if (size, digest) != (entry.size, entry.sha256):
        tmp.unlink(missing_ok=True)
        return (
            f"{entry.file}: {size} bytes sha256 {digest} after the fetch, sealed as {entry.size} bytes {entry.sha256}"
        )
    os.chmod(tmp, 0o600)
    os.replace(tmp, archive.path_of(entry))
    downloaded.unlink(missing_ok=True)
    return None


def _catalogue(archive: WalArchive, entries: Sequence[WalEntry]) -> None:
    """Add ``entries`` (their files in place and checked) to the scratch catalog."""
    with archive.lock():
        header, current, _ = archive._read_catalog()
        assert header is not None
        by_name = {e.name: e for e in current}
        by_name.update({e.name: e for e in entries})
        archive._write_catalog(header, sorted(by_name.values(), key=lambda e: e.sort_key))


def fetch_wal_archive(
    target: FileTarget,
    dest_root: Path,
    *,
    system_identifier: str,
    encryption: Encryption | None,
    up_to: datetime | None = None,
    base: Backup | None = None,
    log: LogFn,
) -> WalArchive:
    """The offsite WAL of cluster ``system_identifier`` as a local WalArchive at ``dest_root``
    (see the module docstring): from ``base``'s start (None: everything offsite), up to
    ``up_to`` (None: the end). Refused before any download: no WAL offsite, the WAL of another
    cluster, a gap after ``base``. OffsiteVerificationError, after trying every file, naming
    each that did not arrive intact; what did arrive is kept for the rerun."""
    where = f"{target.name} ({target.location()})"
    catalog = read_offsite_catalog(target, log)
    if catalog.header is None:
        raise OffsiteError(f"{where}: no WAL offsite ({CATALOG_REL} missing): nothing to recover with")
    theirs = str(catalog.header.get("system_identifier"))
    if theirs != str(system_identifier):
        raise OffsiteArchiveMismatch(
            f"{where} holds the WAL of system {theirs}, the base backup is of system "
            f"{system_identifier}: not this cluster's WAL"
        )
    segment_size = int(catalog.header["wal_segment_size"])
    wanted = _plan(catalog.entries(), base, up_to, segment_size, where)
    if not any(e.kind == "segment" for e in wanted):
        raise OffsiteError(f"{where}: the offsite WAL catalog lists no segment to recover with")
    archive = WalArchive(dest_root)
    archive.init(str(system_identifier), segment_size)  # WalConflict: dest_root holds another cluster's WAL
    have = {e.name: e for e in archive.entries()}
    kept, todo = [], []
    for entry in wanted:
        mine = have.get(entry.name)
        if mine is not None and mine.sha256 == entry.sha256 and archive.verify(mine) is None:
            kept.append(entry)
        elif (
            mine is None
            and archive.path_of(entry).is_file()
            and _sha256(archive.path_of(entry)) == (entry.size, entry.sha256)
        ):
            kept.append(entry)  # in place from a fetch stopped before its catalog write
            _catalogue(archive, [entry])
        else:
            todo.append(entry)
    pending = sum(catalog.files[e.name].stored.bytes for e in todo)
    log(
        f"{where}: {len(wanted)} WAL files needed ({wanted[0].name} .. {wanted[-1].name}"
        f"{f', up to {format_time(up_to)}' if up_to else ''}), {len(kept)} already fetched and intact, "
        f"{len(todo)} to fetch ({human_bytes(pending)})"
    )
    download = archive.root / DOWNLOAD_DIR
    problems: list[str] = []
    for start in range(0, len(todo), BATCH_FILES):
        batch = [catalog.files[e.name] for e in todo[start : start + BATCH_FILES]]
        _download(target, [item.stored.stored_path for item in batch], download, log)
        arrived = []
        for item in batch:
            problem = _install(item, download / item.stored.stored_path, archive, encryption, str(system_identifier))
            if problem is None:
                arrived.append(item.entry)
            else:
                problems.append(problem)
                (download / item.stored.stored_path).unlink(missing_ok=True)  # fetched again by the rerun
        if arrived:
            _catalogue(archive, arrived)
    shutil.rmtree(download, ignore_errors=True)
    if problems:
        raise OffsiteVerificationError(f"{where}: {len(problems)} WAL files did not arrive intact", problems)
    log(
        f"{where}: WAL archive ready in {archive.root}: {len(wanted)} files, "
        f"{sum(1 for e in wanted if e.kind == 'segment')} segments"
    )
    return archive


def last_commit_time(archive: WalArchive, *, bin_dir: Path | None, log: LogFn, scan: int = 8) -> datetime | None:
    """When the newest transaction in ``archive`` ended (commit or abort record, read by
    ``pg_waldump`` from the last ``scan`` segments of the newest timeline), None when they
    hold none. A recovery to a time needs a transaction after that time to stop at."""
    tool = bin_dir / "pg_waldump" if bin_dir is not None else None
    if tool is None or not os.access(tool, os.X_OK):
        tool = Path(find_tool("pg_waldump"))
    segments = [e for e in archive.entries() if e.kind == "segment"]
    if not segments:
        return None
    newest = max(e.timeline for e in segments)
    tail = [e for e in segments if e.timeline == newest][-scan:]
    with tempfile.TemporaryDirectory(prefix="dbops-waldump-") as folder:
        for entry in tail:
            archive.extract(entry, Path(folder) / entry.name)
        # pg_waldump stops with an error where the WAL ends (zeros after the last record):
        # that is expected; the records before it are printed all the same
        done = subprocess.run(
            [str(tool), f"--path={folder}", f"--timeline={newest}", "--rmgr=Transaction", tail[0].name, tail[-1].name],
            capture_output=True,
            text=True,
            env={**os.environ, "TZ": "UTC"},
            timeout=600,
            cwd="/",
        )
    times = [datetime.fromisoformat(m.group(1)).replace(tzinfo=UTC) for m in _COMMIT_RE.finditer(done.stdout)]
    if not times and done.returncode != 0 and "invalid record length" not in done.stderr:
        log(f"pg_waldump: {done.stderr.strip()[-500:]}")
    last = max(times, default=None)
    log(
        f"the WAL in {archive.root} ends with a transaction at {format_time(last) if last else '-'} "
        f"({len(times)} in {tail[0].name}..{tail[-1].name})"
    )
    return last
