"""Sealed WAL and base backups offsite, against the real devstack targets: the sshd + rsync
``offsite`` service and the SeaweedFS ``s3`` service.

The WAL archive is a real one (:class:`WalArchive`, 1 MiB segments of random bytes sealed
with gzip), so the files shipped are exactly what the receiver's sealer produces.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dbops.backup.repository import BackupRepository, checks_ok
from dbops.backup.retention import RetentionPolicy, pin_record
from dbops.offsite.common import OffsiteError, OffsiteVerificationError, SeriesKey
from dbops.offsite.crypto import DecryptionError, Encryption, file_context
from dbops.offsite.pins import read_pins, series_pins, set_pin
from dbops.offsite.restore import fetch_backup
from dbops.offsite.retention import apply_offsite_retention
from dbops.offsite.rsync import RsyncTarget
from dbops.offsite.s3 import S3Settings, S3Target
from dbops.offsite.sync import ship_all, verify_all
from dbops.offsite.wal import (
    CATALOG_REL,
    SEGMENTS_REL,
    expire_wal,
    plan_offsite_wal,
    read_offsite_catalog,
    ship_wal,
    verify_wal,
)
from dbops.pitr.wal import BASE_STORE, WAL_DIR, WalArchive, format_lsn, history_name, segment_name
from tests.offsite_support import Log, empty_prefix, remote_dir, remove_remote, ssh_params

pytestmark = pytest.mark.integration
UTC = UTC
MIB = 1024 * 1024
SEGMENT = MIB  # the smallest segment size Postgres allows: small, real archives
SYSTEM_ID = "7412345678901234567"


@pytest.fixture(params=["rsync", "s3"])
def target(request, devstack):
    """An open target on a fresh remote folder / S3 prefix, emptied afterwards, and a way to
    reach its stored bytes directly (``raw(rel) -> bytes``, ``put_raw(rel, bytes)``)."""
    if request.param == "rsync":
        remote = remote_dir(devstack)
        with RsyncTarget(ssh_params(devstack.conn("dbops_offsite_ssh")), str(remote)) as t:
            t.raw = lambda rel: (remote / rel).read_bytes()  # the offsite host is this machine
            t.put_raw = lambda rel, data: _rewrite_keeping_mtime(remote / rel, data)
            yield t
        remove_remote(remote)
    else:
        service = devstack.service("s3")
        client = service.client()
        bucket = service.environment()["DBOPS_OFFSITE__S3_BUCKET"]
        prefix = f"test-wal-{uuid.uuid4().hex[:12]}"
        t = S3Target(client, S3Settings(bucket=bucket, prefix=prefix, max_concurrency=1))
        t.raw = lambda rel: client.get_object(Bucket=bucket, Key=f"{prefix}/{rel}")["Body"].read()

        def put_raw(rel: str, data: bytes) -> None:  # bit rot: other bytes, same size and metadata
            head = client.head_object(Bucket=bucket, Key=f"{prefix}/{rel}")
            client.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=data, Metadata=head["Metadata"])

        t.put_raw = put_raw
        yield t
        empty_prefix(client, bucket, prefix)


def _rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def make_archive(root: Path) -> WalArchive:
    archive = WalArchive(root / WAL_DIR)
    archive.init(SYSTEM_ID, SEGMENT)
    return archive


def seal_segments(archive: WalArchive, timeline: int, segnos, compression: str = "gzip:1") -> list:
    """Seal one random segment per segno (what the receiver's sealer does with pg_receivewal's files)."""
    sealed = []
    for segno in segnos:
        raw = archive.segments / segment_name(timeline, segno, SEGMENT)
        raw.write_bytes(os.urandom(SEGMENT))
        sealed.append(archive.seal(raw, compression))
    return sealed


def seal_history(archive: WalArchive, timeline: int, switch_lsn: int):
    path = archive.segments / history_name(timeline)
    path.write_text(f"{timeline - 1}\t{format_lsn(switch_lsn)}\tno recovery target specified\n")
    return archive.seal(path)


def test_sealed_wal_ships_checked_once_and_a_second_ship_sends_nothing(target, tmp_path):
    archive = make_archive(tmp_path)
    entries = seal_segments(archive, 1, range(1, 5))
    entries += seal_segments(archive, 1, [5], compression="none")  # stored uncompressed: shipped as is
    entries.append(seal_history(archive, 2, 6 * SEGMENT))
    first = ship_wal(target, archive, None, Log())
    assert sorted(first["shipped"]) == sorted(e.name for e in entries)
    assert first["bytes"]["literal_bytes"] >= sum(e.size for e in entries)
    for e in entries:  # the sealed file as is, byte for byte
        assert target.raw(f"{SEGMENTS_REL}/{e.file}") == archive.path_of(e).read_bytes()
    catalog = read_offsite_catalog(target, Log())
    assert catalog.header["system_identifier"] == SYSTEM_ID
    assert {n: f.entry.sha256 for n, f in catalog.files.items()} == {e.name: e.sha256 for e in entries}

    second = ship_wal(target, archive, None, Log())
    assert second["shipped"] == [] and second["present"] == len(entries)
    assert second["bytes"]["literal_bytes"] == 0 and second["bytes"]["files_transferred"] == 0

    newer = seal_segments(archive, 2, [6])  # "ship it soon": the next 15-minute run sends only it
    third = ship_wal(target, archive, None, Log())
    assert third["shipped"] == [newer[0].name]
    assert verify_wal(target, archive, deep=True, log=Log(), expected=[e.name for e in entries + newer]) == []


def test_a_flipped_byte_offsite_is_found_by_deep_verify(target, tmp_path):
    archive = make_archive(tmp_path)
    entries = seal_segments(archive, 1, range(1, 4))
    ship_wal(target, archive, None, Log())
    rel = f"{SEGMENTS_REL}/{entries[1].file}"
    data = bytearray(target.raw(rel))
    data[len(data) // 2] ^= 0x01
    target.put_raw(rel, bytes(data))
    assert verify_wal(target, archive, deep=False, log=Log()) == []  # same size: only content shows it
    problems = verify_wal(target, archive, deep=True, log=Log())
    assert len(problems) == 1 and problems[0].startswith(f"{entries[1].file}: ") and "sha256" in problems[0]


def test_expire_removes_exactly_what_it_is_told_and_is_not_shipped_again(target, tmp_path):
    archive = make_archive(tmp_path)
    entries = seal_segments(archive, 1, range(10, 15))
    ship_wal(target, archive, None, Log())
    doomed = [entries[0].name, entries[1].name]
    with pytest.raises(OffsiteError, match="not in the offsite WAL catalog"):
        expire_wal(target, [entries[2].name, segment_name(1, 99, SEGMENT)], Log())
    assert len(read_offsite_catalog(target, Log()).files) == 5  # refused before any change

    assert expire_wal(target, doomed, Log()) == doomed
    left = {e.file for e in entries[2:]}
    assert set(target.list_files(SEGMENTS_REL, Log())) == left
    catalog = read_offsite_catalog(target, Log())
    assert set(catalog.files) == {e.name for e in entries[2:]} and catalog.floor == (1, 12)
    again = ship_wal(target, archive, None, Log())  # still local, but below the offsite floor
    assert again["shipped"] == [] and again["below_floor"] == 2
    assert verify_wal(target, archive, deep=True, log=Log()) == []


def test_encrypted_wal_is_stored_encrypted_and_decrypts_to_the_sealed_file(target, tmp_path):
    archive = make_archive(tmp_path)
    entries = seal_segments(archive, 1, range(1, 3))
    encryption = Encryption(os.urandom(32), 64 * 1024)
    report = ship_wal(target, archive, encryption, Log(), work_dir=tmp_path / "outbox")
    assert len(report["shipped"]) == 2
    assert set(target.list_files(SEGMENTS_REL, Log())) == {e.file + ".enc" for e in entries}
    for e in entries:
        stored = target.raw(f"{SEGMENTS_REL}/{e.file}.enc")
        assert archive.path_of(e).read_bytes()[:4096] not in stored
        assert stored[:8] == b"DBOPSAE2"
        plain = io.BytesIO()
        contexts = {
            x.file: file_context(WAL_DIR, None, archive.header()["system_identifier"], x.file, x.sha256)
            for x in entries
        }
        encryption.decrypt_stream(io.BytesIO(stored), plain, contexts[e.file])
        assert hashlib.sha256(plain.getvalue()).hexdigest() == e.sha256
        other = next(x for x in entries if x.file != e.file)  # a segment stored under another's name
        with pytest.raises(DecryptionError, match=f"{other.file}: .*another file or backup"):
            encryption.decrypt_stream(io.BytesIO(stored), io.BytesIO(), contexts[other.file])
    assert ship_wal(target, archive, encryption, Log(), work_dir=tmp_path / "outbox")["shipped"] == []
    assert verify_wal(target, archive, deep=True, log=Log()) == []
    assert not any((tmp_path / "outbox").iterdir())  # the outbox does not keep copies


def test_an_archive_of_another_cluster_is_refused(target, tmp_path):
    archive = make_archive(tmp_path / "a")
    seal_segments(archive, 1, [1])
    ship_wal(target, archive, None, Log())
    other = WalArchive(tmp_path / "b" / WAL_DIR)
    other.init("7000000000000000001", SEGMENT)
    seal_segments(other, 1, [2])
    with pytest.raises(OffsiteError, match="a new cluster needs a new offsite folder"):
        ship_wal(target, other, None, Log())
    with pytest.raises(OffsiteError, match="no catalog yet"):
        ship_wal(target, WalArchive(tmp_path / "c" / WAL_DIR), None, Log())


# ------------------------------------------------------------------------- base backups + chain rule


def make_base(repo: BackupRepository, finished: datetime, start_segno: int, *, size: int = 20_000):
    """A base backup of store postgres_pitr (no subject) whose WAL starts in ``start_segno``."""
    details = {
        "timeline": 1,
        "start_lsn": format_lsn(start_segno * SEGMENT + 40),
        "stop_lsn": format_lsn(start_segno * SEGMENT + 400),
        "system_identifier": SYSTEM_ID,
        "wal_segment_size": SEGMENT,
        "start_segment": segment_name(1, start_segno, SEGMENT),
        "stop_segment": segment_name(1, start_segno, SEGMENT),
        "compression": "gzip",
    }
    meta = {
        "tool": "pg_basebackup",
        "tool_version": "16.14",
        "server_version": "16.14",
        "compression": "gzip",
        "details": details,
    }
    with repo.begin(
        BASE_STORE, None, run_id="manual__t", dag_id="test", logical_date=None, now=finished - timedelta(minutes=5)
    ) as staging:
        (staging.path / "base.tar.gz").write_bytes(os.urandom(size))
        (staging.path / "backup_manifest").write_bytes(b'{"PostgreSQL-Backup-Manifest-Version": 1}\n')
        return staging.seal(meta, now=finished)


def test_base_backups_ship_verify_restore_and_expire_with_their_wal(target, tmp_path):
    now = datetime.now(UTC)
    repo = BackupRepository(tmp_path / "backups")
    archive = make_archive(repo.root)
    # five nightly base backups, base i starting in segment 10*i, and WAL from the first on
    bases = [make_base(repo, now - timedelta(days=4 - i, hours=1), 10 * (i + 1)) for i in range(5)]
    seal_segments(archive, 1, range(10, 54), compression="none")
    stores = [BASE_STORE]
    policy = RetentionPolicy(2, 1)  # the offsite window: 2 days, at least 1
    shipped = ship_all(target, repo, stores, RetentionPolicy(30, 1), encryption=None, now=now, dry_run=False, log=Log())
    assert sorted(shipped["shipped"]) == sorted(f"{BASE_STORE}/{b.backup_id}" for b in bases)
    verify_all(
        target,
        repo,
        stores,
        expected=shipped["expected"],
        shipped=shipped["shipped"],
        deep=True,
        encryption=None,
        log=Log(),
    )
    ship_wal(target, archive, None, Log())
    catalog = target.catalog(Log())
    offsite_bases = [item.backup for item in catalog.all() if item.key == SeriesKey(BASE_STORE)]
    assert verify_wal(target, archive, deep=False, log=Log(), bases=offsite_bases) == []

    # base backups expire offsite by the window + min_keep, like every series; then the WAL
    # from the start of the oldest base backup still offsite stays, nothing before it
    result = apply_offsite_retention(
        target, catalog, repo, stores, policy, now=now, dry_run=False, stale_after=timedelta(hours=48), log=Log()
    )
    kept_ids = result["series"][0]["kept"]
    assert kept_ids == [b.backup_id for b in bases[3:]]  # younger than 2 days: the last 2
    after = target.catalog(Log())
    remaining = [item for item in after.all() if item.key == SeriesKey(BASE_STORE)]
    wal = read_offsite_catalog(target, Log())
    names, reasons = plan_offsite_wal(remaining, wal, now=now, retention_days=2, min_keep=1)
    assert names == [segment_name(1, s, SEGMENT) for s in range(10, 40)], reasons
    expire_wal(target, names, Log())
    left = read_offsite_catalog(target, Log())
    assert min(e.segno for e in left.entries()) == 40 and len(left.files) == 14
    oldest_kept = [item.backup for item in remaining]
    assert verify_wal(target, archive, deep=False, log=Log(), bases=oldest_kept) == []

    # a broken offsite chain is named: remove a segment in the middle behind the catalog's back
    gap = segment_name(1, 45, SEGMENT)
    target.delete_files(SEGMENTS_REL, [left.files[gap].stored.stored_path], Log())
    problems = verify_wal(target, archive, deep=False, log=Log(), bases=oldest_kept)
    assert problems == [f"{gap}: catalogued offsite but missing"]
    expire_wal(target, [gap], Log())  # catalogued out too: the gap in the chain itself shows
    problems = verify_wal(target, archive, deep=False, log=Log(), bases=oldest_kept)
    assert len(problems) == 1 and f"missing {gap}" in problems[0], problems

    # a base backup comes back from offsite into an empty repository, verified
    fresh = BackupRepository(tmp_path / "restored")
    back = fetch_backup(target, fresh, BASE_STORE, None, bases[-1].backup_id, encryption=None, log=Log())
    assert checks_ok(fresh.verify(back))
    assert (back.path / "base.tar.gz").read_bytes() == (bases[-1].path / "base.tar.gz").read_bytes()
    assert back.manifest["details"]["start_lsn"] == bases[-1].manifest["details"]["start_lsn"]


@pytest.mark.parametrize("target", ["rsync"], indirect=True)  # pins.json is read the same on S3
def test_a_base_backup_pinned_in_pins_json_keeps_its_wal_offsite_and_newer_wal_still_expires(target, tmp_path):
    now = datetime.now(UTC)
    repo = BackupRepository(tmp_path / "backups")
    archive = make_archive(repo.root)
    # base i starts (and stops) in segment 2*(i+1); the oldest is pinned, only in pins.json
    pinned, _middle, newest = [
        make_base(repo, now - timedelta(days=d, hours=1), 2 * (i + 1), size=2000) for i, d in enumerate((4, 3, 0))
    ]
    seal_segments(archive, 1, range(2, 8), compression="none")
    stores = [BASE_STORE]
    ship_all(target, repo, stores, RetentionPolicy(30, 1), encryption=None, now=now, dry_run=False, log=Log())
    ship_wal(target, archive, None, Log())
    set_pin(target, SeriesKey(BASE_STORE), pinned.backup_id, {"reason": "audit", "by": "manual__t"}, now=now, log=Log())
    result = apply_offsite_retention(
        target,
        target.catalog(Log()),
        repo,
        stores,
        RetentionPolicy(2, 1),
        now=now,
        dry_run=False,
        stale_after=timedelta(hours=48),
        log=Log(),
    )
    assert result["series"][0]["kept"] == [pinned.backup_id, newest.backup_id]
    remaining = [item for item in target.catalog(Log()).all() if item.key == SeriesKey(BASE_STORE)]
    wal = read_offsite_catalog(target, Log())
    pins = series_pins(read_pins(target, Log()), SeriesKey(BASE_STORE))

    unpinned = plan_offsite_wal(remaining, wal, now=now, retention_days=2, min_keep=1, local=repo.list(BASE_STORE))
    assert unpinned[0] == [] and "nothing expired" in unpinned[1][0]  # the pin unseen: expiry would stop
    names, reasons = plan_offsite_wal(
        remaining, wal, now=now, retention_days=2, min_keep=1, pins=pins, local=repo.list(BASE_STORE)
    )
    assert names == [segment_name(1, s, SEGMENT) for s in (3, 4, 5)], reasons  # 2: the pinned one's; 6, 7: newest's
    expire_wal(target, names, Log())
    assert sorted(e.segno for e in read_offsite_catalog(target, Log()).entries()) == [2, 6, 7]

    # a local pin sidecar counts the same (the local repository's copy of the pin)
    repo.record(
        next(b for b in repo.list(BASE_STORE) if b.backup_id == pinned.backup_id),
        "pin",
        pin_record("audit", "manual__t"),
    )
    assert (
        plan_offsite_wal(remaining, wal, now=now, retention_days=2, min_keep=1, local=repo.list(BASE_STORE))[0] == names
    )


def test_offsite_catalog_is_written_last(target, tmp_path):
    """A ship whose arrival check fails publishes nothing of the bad file and says so."""
    archive = make_archive(tmp_path)
    entries = seal_segments(archive, 1, range(1, 3))
    bad = entries[0]
    data = bytearray(archive.path_of(bad).read_bytes())  # local bit rot after sealing
    data[100] ^= 0xFF
    archive.path_of(bad).write_bytes(bytes(data))
    with pytest.raises(OffsiteVerificationError, match="not shipped"):
        ship_wal(target, archive, None, Log())
    catalog = read_offsite_catalog(target, Log())
    assert set(catalog.files) == {entries[1].name}
    assert target.read_file(CATALOG_REL, Log()) is not None
