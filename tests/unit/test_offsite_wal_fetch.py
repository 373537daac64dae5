"""The offsite WAL fetched back into a scratch archive (dbops.offsite.wal_fetch): shipped by
the real ship_wal to an S3 target over the in-memory S3 stand-in, segments of 1 MiB (the
smallest size Postgres allows). Against sshd and a real recovery: test_dr_drill_dag."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from dbops.offsite.common import OffsiteError, OffsiteVerificationError
from dbops.offsite.crypto import Encryption
from dbops.offsite.s3 import S3Settings, S3Target
from dbops.offsite.wal import CATALOG_REL, OffsiteArchiveMismatch, read_offsite_catalog, ship_wal
from dbops.offsite.wal_fetch import UP_TO_SLACK, OffsiteWalChainBroken, _plan, fetch_wal_archive
from dbops.pitr.wal import WalArchive, WalEntry, format_lsn, segment_name, segment_start_lsn
from tests.offsite_support import Log, StubS3

SIZE = 1024 * 1024
SYSTEM = "7400000000000000001"


def local_archive(root, segments=range(1, 7)) -> WalArchive:
    archive = WalArchive(root)
    archive.init(SYSTEM, SIZE)
    for segno in segments:
        raw = archive.segments / segment_name(1, segno, SIZE)
        raw.write_bytes(os.urandom(SIZE // 2) + bytes(SIZE // 2))  # half noise, half zeros (as a quiet segment)
        archive.seal(raw, compression="gzip:1")
    return archive


def base_at(segno: int) -> SimpleNamespace:
    """What fetch_wal_archive reads of a base backup: its id and where its WAL starts."""
    start = format_lsn(segment_start_lsn(segno, SIZE) + 40)
    return SimpleNamespace(backup_id="20261201T013000Z", manifest={"details": {"timeline": 1, "start_lsn": start}})


@pytest.fixture
def s3():
    return StubS3()


def target(s3) -> S3Target:
    return S3Target(s3, S3Settings(bucket="b", prefix="offsite", max_concurrency=1))


def segment_key(name: str) -> str:
    return f"offsite/postgres_wal/segments/{name}"


def test_the_fetched_archive_has_the_same_files_and_catalog_lines_from_the_base_backups_start(tmp_path, s3):
    local = local_archive(tmp_path / "local")
    ship_wal(target(s3), local, None, Log())
    log = Log()
    fetched = fetch_wal_archive(
        target(s3), tmp_path / "scratch", system_identifier=SYSTEM, encryption=None, base=base_at(3), log=log
    )
    wanted = [e for e in local.entries() if e.segno >= 3]
    assert [e.to_json() for e in fetched.entries()] == [e.to_json() for e in wanted]
    assert fetched.header()["system_identifier"] == SYSTEM and fetched.segment_size == SIZE
    for entry in wanted:
        assert fetched.path_of(entry).read_bytes() == local.path_of(entry).read_bytes()
        fetched.extract(entry, tmp_path / entry.name)  # the WAL itself checks out against the catalog
    assert not (fetched.root / ".download").exists()
    assert "4 WAL files needed" in log.text and "4 to fetch" in log.text


def test_encrypted_wal_is_decrypted_with_its_context_and_refused_without_the_key(tmp_path, s3):
    local = local_archive(tmp_path / "local", range(1, 4))
    key = Encryption(os.urandom(32))
    ship_wal(target(s3), local, key, Log(), work_dir=tmp_path / "outbox")
    assert all(k.endswith(".gz.enc") for k in s3.objects if "/segments/" in k)

    fetched = fetch_wal_archive(target(s3), tmp_path / "ok", system_identifier=SYSTEM, encryption=key, log=Log())
    assert [fetched.verify(e, deep=True) for e in fetched.entries()] == [None, None, None]

    with pytest.raises(OffsiteVerificationError, match="no decryption key was given"):
        fetch_wal_archive(target(s3), tmp_path / "nokey", system_identifier=SYSTEM, encryption=None, log=Log())
    with pytest.raises(OffsiteVerificationError, match="key id"):
        fetch_wal_archive(
            target(s3),
            tmp_path / "otherkey",
            system_identifier=SYSTEM,
            encryption=Encryption(os.urandom(32)),
            log=Log(),
        )


def test_a_changed_offsite_file_is_named_the_others_are_kept_and_the_rerun_fetches_only_it(tmp_path, s3):
    local = local_archive(tmp_path / "local", range(1, 5))
    ship_wal(target(s3), local, None, Log())
    victim = local.entries()[1]
    good = s3.objects[segment_key(victim.file)]["data"]
    s3.objects[segment_key(victim.file)]["data"] = good[:-1] + bytes([good[-1] ^ 1])  # bit rot, same size

    with pytest.raises(OffsiteVerificationError, match=f"{victim.file}: downloaded .* the offsite catalog says"):
        fetch_wal_archive(target(s3), tmp_path / "scratch", system_identifier=SYSTEM, encryption=None, log=Log())
    partial = WalArchive(tmp_path / "scratch")
    assert [e.name for e in partial.entries()] == [e.name for e in local.entries() if e.name != victim.name]

    s3.objects[segment_key(victim.file)]["data"] = good
    got: list[str] = []
    real = StubS3.download_file.__get__(s3)
    s3.download_file = lambda Bucket, Key, Filename, Config=None: (got.append(Key), real(Bucket, Key, Filename, Config))
    log = Log()
    fetched = fetch_wal_archive(target(s3), tmp_path / "scratch", system_identifier=SYSTEM, encryption=None, log=log)
    assert got == [segment_key(victim.file)] and "3 already fetched and intact, 1 to fetch" in log.text
    assert [e.to_json() for e in fetched.entries()] == [e.to_json() for e in local.entries()]

    # a fetched file damaged locally is fetched again, not trusted
    damaged = fetched.path_of(fetched.entries()[0])
    damaged.write_bytes(b"x" + damaged.read_bytes()[1:])
    got.clear()
    fetch_wal_archive(target(s3), tmp_path / "scratch", system_identifier=SYSTEM, encryption=None, log=Log())
    assert got == [segment_key(fetched.entries()[0].file)] and fetched.verify(fetched.entries()[0]) is None


def test_refused_before_any_download(tmp_path, s3):
    with pytest.raises(OffsiteError, match="no WAL offsite"):
        fetch_wal_archive(target(s3), tmp_path / "a", system_identifier=SYSTEM, encryption=None, log=Log())
    local = local_archive(tmp_path / "local", range(1, 6))
    ship_wal(target(s3), local, None, Log())
    s3.download_file = lambda *a, **k: pytest.fail("nothing may be downloaded")
    with pytest.raises(OffsiteArchiveMismatch, match="holds the WAL of system 7400000000000000001"):
        fetch_wal_archive(
            target(s3), tmp_path / "b", system_identifier="7499999999999999999", encryption=None, log=Log()
        )
    assert not (tmp_path / "b").exists()

    # a gap after the base backup: the offsite catalog without segment 4
    catalog = read_offsite_catalog(target(s3), Log())
    del catalog.files[segment_name(1, 4, SIZE)]
    target(s3).write_file(CATALOG_REL, catalog.to_bytes(), Log())
    with pytest.raises(OffsiteWalChainBroken, match=f"missing {segment_name(1, 4, SIZE)}"):
        fetch_wal_archive(
            target(s3), tmp_path / "c", system_identifier=SYSTEM, encryption=None, base=base_at(2), log=Log()
        )
    # from after the gap it is whole
    s3.download_file = StubS3.download_file.__get__(s3)
    fetched = fetch_wal_archive(
        target(s3), tmp_path / "d", system_identifier=SYSTEM, encryption=None, base=base_at(5), log=Log()
    )
    assert [e.segno for e in fetched.entries()] == [5]


def test_up_to_stops_after_the_first_segment_sealed_well_after_the_target():
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    entries = [
        WalEntry(
            segment_name(1, n, SIZE),
            "segment",
            1,
            n,
            segment_name(1, n, SIZE) + ".gz",
            10,
            "a" * 64,
            "b" * 64,
            now + timedelta(hours=n),
        )
        for n in range(1, 9)
    ]
    everything = _plan(entries, None, None, SIZE, "here")
    assert everything == entries
    up_to = now + timedelta(hours=3, minutes=30)  # in segment 4 at the latest (sealed at +4 h)
    cut = _plan(entries, None, up_to, SIZE, "here")
    assert [e.segno for e in cut] == [1, 2, 3, 4, 5]  # 5 is the first sealed more than UP_TO_SLACK after it
    assert all(e.sealed_at <= up_to + UP_TO_SLACK for e in cut[:-1]) and cut[-1].sealed_at > up_to + UP_TO_SLACK
    assert [e.segno for e in _plan(entries, base_at(3), up_to, SIZE, "here")] == [3, 4, 5]


def test_a_drill_from_a_fetched_archive_takes_markers_its_wal_holds():
    from dbops.pitr.recovery import Marker, _choose_markers

    t0 = datetime(2026, 12, 1, 12, tzinfo=UTC)
    markers = [Marker(n, t0 + timedelta(minutes=15 * n)) for n in range(1, 6)]  # every 15 min, as the WAL check
    assert _choose_markers(markers, t0) == (markers[3], markers[4])  # the receiver's archive: the newest pair
    # the fetched WAL ends with a transaction 40 min in: markers 1 and 2 are the newest pair it holds
    assert _choose_markers(markers, t0, t0 + timedelta(minutes=40)) == (markers[0], markers[1])
    assert _choose_markers(markers, t0, t0 + timedelta(minutes=20)) is None  # one marker: nothing to recover between
