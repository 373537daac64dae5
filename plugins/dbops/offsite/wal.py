"""Sealed WAL offsite: shipped soon after sealing, checked on arrival, expired by the chain rule.

Offsite layout, under the target's root (the local archive's)::

    postgres_wal/segments/<file>     the sealed file as is (``<seg>.gz``, ``<seg>``, ``<TLI>.history``),
                                     or ``<file>.enc`` when ``offsite.encryption`` is on
    postgres_wal/catalog.jsonl       the offsite catalog: what arrived intact

A sealed WAL file never changes, so it is copied once, as soon as it is sealed (the WAL
check ships every 15 minutes), not only with the nightly sync. The offsite catalog follows
the repository's rule: a file is offsite only once the catalog names it, and the catalog is
written last, after the arrival check (rsync: ``sha256sum`` on the host against the sha256
of the stored bytes; S3: the object's size and sha256 metadata, as for backups). A file that
arrived but is not catalogued (a run killed in between) is simply checked again by the next
run: rsync's quick check does not resend it, S3 skips an object with the same size and
metadata. The catalog is replaced whole (one ``mv`` / one PUT), re-read just before each
write so that a ship and an expiry running side by side lose nothing but a few seconds.

Catalog lines are the local catalog's lines plus ``offsite`` (stored name, size, sha256 of
the stored bytes, encryption, time of arrival). The header carries the local header's system
identifier and segment size (an archive of another cluster is refused, never mixed in) and
the ``floor``: the oldest (timeline, segno) offsite retention kept. Segments below it are not
shipped again (a local archive that keeps WAL longer than the offsite window would otherwise
resend what offsite retention just removed).

Encryption reuses :mod:`dbops.offsite.crypto` unchanged (AES-256-GCM in chunks): each file
is bound to the context ``file_context(WAL_DIR, None, system identifier, file, sha256)``, so
the same sealed file encrypts to the same bytes on every run, and a stored file swapped with
another (or taken from another cluster's archive) does not decrypt under the name it is
fetched for: readers pass that same context. Files are encrypted into a private outbox in
batches, which both targets then copy like plain files.

Pure Python (no Airflow); the tasks are in :mod:`dbops.tasks.offsite_wal`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dbops.backup.adapter import NotRetryable
from dbops.backup.repository import Backup, format_time, parse_time, utc_now
from dbops.backup.retention import pin_reason
from dbops.offsite.common import (
    ENCRYPTED_SUFFIX,
    FileTarget,
    LogFn,
    OffsiteBackup,
    OffsiteError,
    OffsiteVerificationError,
    StoredFile,
    TransferStats,
)
from dbops.offsite.crypto import Encryption, file_context
from dbops.offsite.retention import judged
from dbops.pitr.retention import BaseInfo, plan_wal_retention
from dbops.pitr.wal import WAL_DIR, WalArchive, WalEntry, check_chain, parse_lsn
from dbops.tools import human_bytes

SEGMENTS_REL = f"{WAL_DIR}/segments"
CATALOG_REL = f"{WAL_DIR}/catalog.jsonl"
OFFSITE_FORMAT = "dbops-wal-offsite"
OFFSITE_VERSION = 1
# files encrypted and copied per batch; the catalog is written after each batch, so a long
# backlog makes progress that survives an interruption, and the outbox stays small
BATCH_FILES = 64


@dataclass(frozen=True)
class OffsiteWal:
    """One WAL file offsite: its local catalog entry and how it is stored."""

    entry: WalEntry
    stored: StoredFile  # path = the sealed file's name; plain_* = the sealed file's size/sha256
    encryption: Mapping[str, Any] | None
    shipped_at: datetime

    @property
    def key_id(self) -> str | None:
        return (self.encryption or {}).get("key_id")

    def to_json(self) -> dict[str, Any]:
        return {
            **self.entry.to_json(),
            "offsite": {
                "stored_path": self.stored.stored_path,
                "bytes": self.stored.bytes,
                "sha256": self.stored.sha256,
                "encryption": dict(self.encryption) if self.encryption else None,
                "shipped_at": format_time(self.shipped_at),
            },
        }


@dataclass
class OffsiteWalCatalog:
    """The offsite catalog: header (None: nothing shipped yet), files by WAL name, floor."""

    header: dict[str, Any] | None = None
    files: dict[str, OffsiteWal] = field(default_factory=dict)
    floor: tuple[int, int] | None = None

    def entries(self) -> list[WalEntry]:
        return sorted((f.entry for f in self.files.values()), key=lambda e: e.sort_key)

    def below_floor(self, entry: WalEntry) -> bool:
        return self.floor is not None and entry.kind == "segment" and (entry.timeline, entry.segno) < self.floor

    def to_bytes(self) -> bytes:
        header = {**(self.header or {}), "floor": list(self.floor) if self.floor else None}
        lines = [json.dumps(header, separators=(",", ":"))]
        lines += [json.dumps(self.files[e.name].to_json(), separators=(",", ":")) for e in self.entries()]
        return ("\n".join(lines) + "\n").encode()


def parse_offsite_catalog(data: bytes, where: str) -> OffsiteWalCatalog:
    """The offsite catalog from its bytes; OffsiteError naming the line that is wrong."""
    text = data.decode("utf-8", errors="replace")
    if not text.endswith("\n"):
        raise OffsiteError(f"{where} is truncated (no final newline)")
    lines = text.split("\n")[:-1]
    try:
        header = json.loads(lines[0])
        if header.get("format") != OFFSITE_FORMAT or header.get("version") != OFFSITE_VERSION:
            raise ValueError(f"format {header.get('format')!r} v{header.get('version')!r} unknown")
        segment_size = int(header["wal_segment_size"])
        if not isinstance(header.get("system_identifier"), str):
            raise ValueError("no system_identifier")
        floor = header.pop("floor", None)
        floor = (int(floor[0]), int(floor[1])) if floor else None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise OffsiteError(f"{where} line 1 is not an offsite WAL catalog header: {exc}") from None
    catalog = OffsiteWalCatalog(header, {}, floor)
    for number, line in enumerate(lines[1:], 2):
        try:
            data_line = json.loads(line)
            offsite = data_line.pop("offsite")
            entry = WalEntry.from_json(data_line, segment_size)
            stored = StoredFile(
                entry.file,
                str(offsite["stored_path"]),
                int(offsite["bytes"]),
                str(offsite["sha256"]),
                entry.size,
                entry.sha256,
            )
            if stored.stored_path not in (entry.file, entry.file + ENCRYPTED_SUFFIX) or (
                (stored.stored_path == entry.file) != (offsite.get("encryption") is None)
            ):
                raise ValueError(f"stored as {stored.stored_path!r}, which does not fit {entry.file!r}")
            item = OffsiteWal(entry, stored, offsite.get("encryption"), parse_time(offsite["shipped_at"]))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise OffsiteError(f"{where} line {number} is corrupt: {exc}") from None
        catalog.files[entry.name] = item
    return catalog


def read_offsite_catalog(target: FileTarget, log: LogFn) -> OffsiteWalCatalog:
    data = target.read_file(CATALOG_REL, log)
    if data is None:
        return OffsiteWalCatalog()
    return parse_offsite_catalog(data, f"{target.location()}/{CATALOG_REL}")


class OffsiteArchiveMismatch(OffsiteError, NotRetryable):
    """The target holds the WAL of another cluster: a retry cannot change that."""


def _check_same_archive(catalog: OffsiteWalCatalog, header: Mapping[str, Any], where: str) -> None:
    if catalog.header is None:
        return
    mine = (header["system_identifier"], header["wal_segment_size"])
    theirs = (catalog.header.get("system_identifier"), catalog.header.get("wal_segment_size"))
    if mine != theirs:
        raise OffsiteArchiveMismatch(
            f"{where} holds the WAL of system {theirs[0]} (segment size {theirs[1]}), the local archive is "
            f"system {mine[0]} (segment size {mine[1]}): a new cluster needs a new offsite folder or prefix; "
            "nothing shipped"
        )


def _conflicts(catalog: OffsiteWalCatalog, local: Iterable[WalEntry]) -> list[str]:
    found = []
    for entry in local:
        there = catalog.files.get(entry.name)
        if there is not None and (there.entry.sha256, there.entry.file) != (entry.sha256, entry.file):
            found.append(
                f"{entry.name}: offsite as {there.entry.file} sha256 {there.entry.sha256}, "
                f"local {entry.file} sha256 {entry.sha256}"
            )
    return found


def _publish(target: FileTarget, header: Mapping[str, Any], arrived: Sequence[OffsiteWal], log: LogFn) -> None:
    """Add what arrived to the offsite catalog, re-read just before (see the module docstring)."""
    catalog = read_offsite_catalog(target, log)
    catalog.header = {
        "format": OFFSITE_FORMAT,
        "version": OFFSITE_VERSION,
        "system_identifier": header["system_identifier"],
        "wal_segment_size": header["wal_segment_size"],
    }
    for item in arrived:
        catalog.files[item.entry.name] = item
    target.write_file(CATALOG_REL, catalog.to_bytes(), log)


def _prepare(
    batch: Sequence[WalEntry],
    archive: WalArchive,
    encryption: Encryption | None,
    outbox: Path | None,
    system_identifier: str,
) -> tuple[Path, list[StoredFile]]:
    """(source folder, stored files) of one batch: the sealed files themselves, or their
    encrypted copies in ``outbox`` (deterministic bytes, the sealed file's mtime)."""
    if encryption is None:
        return archive.segments, [StoredFile(e.file, e.file, e.size, e.sha256, e.size, e.sha256) for e in batch]
    assert outbox is not None
    files = []
    for e in batch:
        source = archive.path_of(e)
        stored_path = e.file + ENCRYPTED_SUFFIX
        dest = outbox / stored_path
        context = file_context(WAL_DIR, None, system_identifier, e.file, e.sha256)
        size, digest = encryption.encrypt_file(source, dest, context)
        if size != encryption.stored_size(e.size):
            raise OffsiteError(f"{source} changed while it was encrypted ({size} bytes out)")
        st = os.stat(source)
        os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
        files.append(StoredFile(e.file, stored_path, size, digest, e.size, e.sha256))
    return outbox, files


def ship_wal(
    target: FileTarget,
    archive: WalArchive,
    encryption: Encryption | None,
    log: LogFn,
    *,
    dry_run: bool = False,
    work_dir: Path | None = None,
    batch_files: int = BATCH_FILES,
) -> dict[str, Any]:
    """Copy every sealed file of the local catalog that is not offsite yet (oldest first),
    check each on arrival, then catalogue what arrived. Returns the report; raises
    OffsiteVerificationError, after trying every file, when any failed its check (a local
    sealed file that no longer matches its sha256 is never shipped)."""
    header = archive.header()
    if header is None:
        raise OffsiteError(f"the WAL archive {archive.root} has no catalog yet: nothing sealed to ship")
    where = f"{target.name} ({target.location()})"
    local = archive.entries()
    catalog = read_offsite_catalog(target, log)
    _check_same_archive(catalog, header, where)
    conflicts = _conflicts(catalog, local)
    if conflicts:
        raise OffsiteError(f"{where}: refusing to overwrite offsite WAL files:\n  " + "\n  ".join(conflicts))
    todo = [e for e in local if e.name not in catalog.files and not catalog.below_floor(e)]
    below = sum(1 for e in local if e.name not in catalog.files and catalog.below_floor(e))
    pending = sum(e.size for e in todo)
    log(
        f"{where}: {len(local) - len(todo) - below} WAL files already offsite, {len(todo)} to ship "
        f"({human_bytes(pending)}){f', {below} below the offsite floor not shipped' if below else ''}"
        f"{' [dry run]' if dry_run else ''}"
    )
    report: dict[str, Any] = {
        "target": target.name,
        "location": target.location(),
        "dry_run": dry_run,
        "shipped": [],
        "would_ship": [e.name for e in todo] if dry_run else [],
        "present": len(local) - len(todo) - below,
        "below_floor": below,
        "problems": [],
    }
    totals = TransferStats()
    problems: list[str] = []
    if dry_run or not todo:
        report["bytes"] = totals.to_dict()
        report["summary"] = (
            f"{target.name}: WAL offsite up to date" if not todo else f"{target.name}: would ship {len(todo)} WAL files"
        )
        log(report["summary"])
        return report
    outbox_root = None
    if encryption is not None:
        if work_dir is not None:
            work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        outbox_root = Path(tempfile.mkdtemp(prefix="dbops-wal-outbox-", dir=work_dir))  # 0700
    try:
        for start in range(0, len(todo), batch_files):
            batch = []
            for entry in todo[start : start + batch_files]:
                bad = archive.verify(entry)  # never ship bytes that are not the sealed ones
                if bad is None:
                    batch.append(entry)
                else:
                    problems.append(f"{entry.file}: local sealed file {bad}; not shipped")
            if not batch:
                continue
            source, files = _prepare(batch, archive, encryption, outbox_root, header["system_identifier"])
            key_id = encryption.key_id if encryption else None
            totals.add(target.put_files(SEGMENTS_REL, source, files, key_id, log))
            failed = target.check_files(SEGMENTS_REL, files, key_id, deep=False, log=log)
            bad_names = {f.stored_path for f in files if any(p.startswith(f.stored_path + ":") for p in failed)}
            if bad_names:  # so the rerun sends them again instead of trusting size and mtime
                target.delete_files(SEGMENTS_REL, sorted(bad_names), log)
                problems += failed
            now = utc_now()
            arrived = [
                OffsiteWal(e, f, encryption.describe() if encryption else None, now)
                for e, f in zip(batch, files, strict=True)
                if f.stored_path not in bad_names
            ]
            if arrived:
                _publish(target, header, arrived, log)
                report["shipped"] += [a.entry.name for a in arrived]
            if outbox_root is not None:
                for f in files:
                    (outbox_root / f.stored_path).unlink(missing_ok=True)
    finally:
        if outbox_root is not None:
            shutil.rmtree(outbox_root, ignore_errors=True)
    report["bytes"] = totals.to_dict()
    report["problems"] = problems
    report["summary"] = (
        f"{target.name}: shipped {len(report['shipped'])} WAL files ({human_bytes(totals.literal_bytes)} of data), "
        f"{report['present']} already offsite{f', {len(problems)} FAILED' if problems else ''}"
    )
    log(report["summary"])
    if problems:
        raise OffsiteVerificationError(f"{where}: {len(problems)} WAL files failed", problems)
    return report


def verify_wal(
    target: FileTarget,
    archive: WalArchive,
    *,
    deep: bool,
    log: LogFn,
    expected: Iterable[str] = (),
    bases: Sequence[Backup] = (),
) -> list[str]:
    """Problems of the offsite WAL: the catalog against the local archive (same system, same
    sha256 for every name both hold), every catalogued file stored with its size (``deep``:
    its content, rsync hashing on the host, S3 reading every object back), every name of
    ``expected`` catalogued, and, given the base backups offsite, the chain from the oldest
    one's start to the newest offsite segment without a gap. Nothing offsite is a problem."""
    where = f"{target.name} ({target.location()})"
    catalog = read_offsite_catalog(target, log)
    if catalog.header is None:
        return [f"{where}: no WAL offsite ({CATALOG_REL} missing): nothing to check"]
    problems = []
    header = archive.header()
    if header is not None:
        try:
            _check_same_archive(catalog, header, where)
        except OffsiteError as exc:
            return [str(exc)]
        problems += [f"conflict: {c}" for c in _conflicts(catalog, archive.entries())]
    if not catalog.files:
        problems.append(f"{where}: the offsite WAL catalog lists no file: nothing to check")
    sizes = target.list_files(SEGMENTS_REL, log)
    for item in catalog.files.values():
        size = sizes.get(item.stored.stored_path)
        if size is None:
            problems.append(f"{item.stored.stored_path}: catalogued offsite but missing")
        elif size != item.stored.bytes:
            problems.append(f"{item.stored.stored_path}: {size} bytes, catalogued {item.stored.bytes}")
    for name in sorted(set(expected) - set(catalog.files)):
        problems.append(f"{name}: not offsite after the ship")
    content_checked = 0
    if deep:
        by_key: dict[str | None, list[StoredFile]] = {}
        for item in catalog.files.values():
            if item.stored.stored_path in sizes:
                by_key.setdefault(item.key_id, []).append(item.stored)
        for key_id, files in by_key.items():
            problems += target.check_files(SEGMENTS_REL, files, key_id, deep=True, log=log)
            content_checked += len(files)
    if bases:
        oldest = min(bases, key=lambda b: b.sort_key)
        details = oldest.manifest.get("details", {})
        try:
            chain = check_chain(
                catalog.entries(),
                int(details["timeline"]),
                parse_lsn(details["start_lsn"]),
                segment_size=int(catalog.header["wal_segment_size"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            chain = [f"its manifest does not say where its WAL starts ({exc})"]
        problems += [f"offsite chain from base backup {oldest.backup_id}: {p}" for p in chain]
    extras = sorted(set(sizes) - {f.stored.stored_path for f in catalog.files.values()})
    if extras:  # a ship killed before its catalog write, or an expiry before its deletes
        log(
            f"{where}: {len(extras)} uncatalogued files in {SEGMENTS_REL} (not offsite until catalogued), "
            f"e.g. {', '.join(extras[:3])}"
        )
    log(
        f"{where}: {len(catalog.files)} offsite WAL files checked by size, {content_checked} by content"
        f"{f', chain from {len(bases)} base backups' if bases else ''}; {len(problems)} problems"
    )
    return problems


def expire_wal(target: FileTarget, names: Collection[str], log: LogFn, *, dry_run: bool = False) -> list[str]:
    """Remove exactly the offsite WAL files ``names`` (WAL names, e.g. from
    :func:`plan_offsite_wal`): the catalog is rewritten without them first (they stop being
    offsite), then their files are deleted. Raises, changing nothing, when a name is not
    in the offsite catalog. Returns the names removed (oldest first)."""
    names = set(names)
    if not names:
        return []
    catalog = read_offsite_catalog(target, log)
    unknown = sorted(names - set(catalog.files))
    if unknown:
        raise OffsiteError(
            f"{target.name}: not expiring anything: not in the offsite WAL catalog: "
            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}"
        )
    doomed = sorted((catalog.files[n] for n in names), key=lambda f: f.entry.sort_key)
    if dry_run:
        log(f"dry run: would expire {len(doomed)} offsite WAL files on {target.name}")
        return [f.entry.name for f in doomed]
    for item in doomed:
        del catalog.files[item.entry.name]
    # a segment always has its segno (None is for history files)
    segments = [(e.timeline, e.segno) for e in (f.entry for f in doomed) if e.segno is not None]
    remaining = [(e.timeline, e.segno) for e in catalog.entries() if e.segno is not None]
    floor: tuple[int, int] | None
    if remaining:
        floor = min(remaining)
    elif segments:
        top = max(segments)
        floor = (top[0], top[1] + 1)
    else:
        floor = catalog.floor
    if catalog.floor is not None and floor is not None:
        floor = max(floor, catalog.floor)
    catalog.floor = floor
    target.write_file(CATALOG_REL, catalog.to_bytes(), log)
    target.delete_files(SEGMENTS_REL, [f.stored.stored_path for f in doomed], log)
    log(f"{target.name}: expired {len(doomed)} offsite WAL files ({doomed[0].entry.name} .. {doomed[-1].entry.name})")
    return [f.entry.name for f in doomed]


def plan_offsite_wal(
    bases: Sequence[OffsiteBackup],
    catalog: OffsiteWalCatalog,
    *,
    now: datetime,
    retention_days: int,
    min_keep: int,
    pins: Mapping[str, str] | None = None,
    local: Iterable[Backup] = (),
) -> tuple[list[str], list[str]]:
    """(WAL names to expire offsite, reasons): the local chain rule
    (:func:`dbops.pitr.retention.plan_wal_retention`) on the offsite catalog, anchored on the
    base backups still offsite *after* this run's base backup retention (window + min_keep,
    like every series).

    Pins, as offsite retention sees them: a base backup is pinned when its local copy
    (``local``: the local base backups) has a ``pin`` sidecar, or ``pins`` (the base
    backups' entries in the target's ``pins.json``: ``series_pins(read_pins(target, log),
    SeriesKey(BASE_STORE))``) names it. A pinned base backup keeps its own WAL (start to
    stop) and does not anchor the chain, so newer WAL still expires around it.

    The WAL plan must keep every base backup still offsite; should it judge one expired
    (offsite retention refused or kept it for its own reason), nothing expires: WAL is never
    removed from under a base backup that stays."""
    if catalog.header is None or not catalog.files:
        return [], ["no WAL offsite: nothing to expire"]
    pins = dict(pins or {})
    local_by_id = {b.backup_id: b for b in local}
    infos = []
    for item in bases:
        backup = judged(item, local_by_id.get(item.backup_id))  # verified, and the local pin comes along
        pinned = pin_reason(backup) or pins.get(item.backup_id)
        try:
            infos.append(
                BaseInfo.of(
                    item.backup_id,
                    item.backup.taken_at,
                    item.backup.manifest.get("details", {}),
                    verified=backup.verified,
                    pinned=pinned is not None,
                )
            )
        except (KeyError, ValueError, TypeError) as exc:
            return [], [
                f"base backup {item.backup_id} offsite: its manifest does not say where its WAL is ({exc}); "
                "nothing expired"
            ]
    if not infos:
        return [], ["no base backup offsite: the WAL offsite is all there is to rebuild from; nothing expired"]
    plan = plan_wal_retention(
        infos,
        catalog.entries(),
        now=now,
        retention_days=retention_days,
        min_keep=min_keep,
        segment_size=int(catalog.header["wal_segment_size"]),
    )
    if plan.expire_backups:
        ids = ", ".join(b.backup_id for b in plan.expire_backups)
        return [], [
            f"base backups {ids} stay offsite but the chain rule would expire them: their WAL is kept, nothing expired"
        ]
    return [e.name for e in plan.expire_entries], plan.reasons
