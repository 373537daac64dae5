"""The WAL archive on disk (names, sealing, crash repair, the catalog) and the chain check.

No server: segments are random bytes of the right size. Crashes are simulated by doing the
first steps of a seal by hand and then letting the next seal() repair the state.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dbops.pitr.wal import (
    ChainBroken,
    CorruptWal,
    WalArchive,
    WalConflict,
    WalEntry,
    WalError,
    chain_entries,
    check_chain,
    format_lsn,
    history_name,
    is_history_name,
    last_segno_before,
    newest_timeline,
    parse_compression,
    parse_lsn,
    parse_wal_name,
    read_history,
    segment_name,
    segno_of,
)

MIB = 1024 * 1024
SEG16 = 16 * MIB
SMALL = MIB  # most tests use 1 MiB segments: sealing stays fast
SYSID = "7301234567890123456"
UTC = UTC


def make_archive(tmp_path: Path, segment_size: int = SMALL) -> WalArchive:
    archive = WalArchive(tmp_path / "postgres_wal")
    archive.ensure()
    archive.init(SYSID, segment_size)
    return archive


def write_segment(archive: WalArchive, timeline: int, segno: int, segment_size: int = SMALL) -> tuple[Path, bytes]:
    data = os.urandom(segment_size)
    path = archive.segments / segment_name(timeline, segno, segment_size)
    path.write_bytes(data)
    return path, data


def catalog_lines(archive: WalArchive) -> list[dict]:
    return [json.loads(line) for line in archive.catalog_path.read_text().splitlines()]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ----------------------------------------------------------------------------- names and LSNs


@pytest.mark.parametrize(
    "text, value",
    [("0/0", 0), ("0/3000028", 0x3000028), ("16/B374D848", 0x16B374D848), ("FFFFFFFF/FFFFFFFF", 2**64 - 1)],
)
def test_lsn_round_trip(text, value):
    assert parse_lsn(text) == value
    assert format_lsn(value) == text
    assert parse_lsn(text.lower()) == value


@pytest.mark.parametrize("bad", ["", "3000028", "0/", "/1", "0/123456789", "g/1", "0/1/2", None, 5])
def test_bad_lsn_is_refused(bad):
    with pytest.raises(ValueError):
        parse_lsn(bad)
    with pytest.raises(ValueError):
        format_lsn(-1)


@pytest.mark.parametrize("segment_size", [MIB, 2 * MIB, SEG16, 64 * MIB, 1024 * MIB])
def test_segment_names_round_trip_for_every_segment_size(segment_size):
    per_id = 0x100000000 // segment_size
    for timeline, segno in [(1, 0), (1, 1), (1, per_id - 1), (1, per_id), (2, 5 * per_id + 3), (0xFFFFFFFF, 123456)]:
        name = segment_name(timeline, segno, segment_size)
        assert len(name) == 24
        assert parse_wal_name(name, segment_size) == (timeline, segno)
    # the low part counts segments within one 4 GiB "xlogid"
    assert segment_name(1, per_id, segment_size) == "000000010000000100000000"
    assert segment_name(3, per_id - 1, segment_size) == f"0000000300000000{per_id - 1:08X}"


def test_known_names_and_segment_numbers():
    assert segment_name(1, 3) == "000000010000000000000003"
    assert parse_wal_name("0000000100000002000000FF") == (1, 2 * 256 + 255)
    assert segno_of(parse_lsn("0/3000028"), SEG16) == 3
    assert segno_of(parse_lsn("1/0"), SEG16) == 256
    assert segno_of(parse_lsn("0/3000028"), MIB) == 48
    # WAL ending exactly at a segment boundary does not touch the next segment
    assert last_segno_before(parse_lsn("0/4000000"), SEG16) == 3
    assert last_segno_before(parse_lsn("0/4000001"), SEG16) == 4


@pytest.mark.parametrize(
    "name",
    [
        "00000001000000000000003",
        "0000000100000000000000034",
        "000000010000000000000g03",
        "000000000000000000000003",
        "000000010000000000000003.partial",
        "000000010000000000000100",
    ],
)
def test_not_segment_names(name):
    # the last one: low part 0x100 does not exist with 16 MiB segments (256 per xlogid)
    assert parse_wal_name(name) is None


def test_history_names():
    assert history_name(2) == "00000002.history"
    assert is_history_name("0000000A.history")
    assert not is_history_name("00000000.history")
    assert not is_history_name("00000002.history.tmp")
    assert not is_history_name("000000010000000000000003")


@pytest.mark.parametrize("bad", [0, 3 * MIB, 512 * 1024, 2048 * MIB, True, "16777216"])
def test_segment_size_must_be_a_power_of_two_from_1_mib_to_1_gib(bad):
    with pytest.raises(ValueError, match="power of two"):
        segment_name(1, 1, bad)


def test_compression_spec():
    assert parse_compression("none") is None
    assert parse_compression("gzip:1") == 1
    assert parse_compression("gzip:9") == 9
    assert parse_compression("gzip") == 6
    for bad in ["gzip:0", "lz4", "zstd:3", "gzip:10", ""]:
        with pytest.raises(ValueError):
            parse_compression(bad)


def test_read_history():
    text = "1\t0/3000060\tno recovery target specified\n\n# comment\n2\t0/9000000\tbefore 2026-01-01\n"
    assert read_history(text) == [(1, 0x3000060), (2, 0x9000000)]
    with pytest.raises(WalError, match="line 1"):
        read_history("x\t0/1\n")
    with pytest.raises(WalError, match="ascend"):
        read_history("2\t0/5\n1\t0/9\n")


# ----------------------------------------------------------------------------- catalog header


def test_init_creates_private_folders_and_refuses_another_server(tmp_path):
    archive = make_archive(tmp_path)
    assert mode(archive.root) == 0o700 and mode(archive.segments) == 0o700
    assert mode(archive.catalog_path) == 0o600
    assert archive.header() == {
        "format": "dbops-wal",
        "version": 1,
        "system_identifier": SYSID,
        "wal_segment_size": SMALL,
    }
    assert archive.init(SYSID, SMALL)["system_identifier"] == SYSID  # the same server: fine
    with pytest.raises(WalConflict, match="belongs to system 7301234567890123456"):
        archive.init("7300000000000000000", SMALL)
    with pytest.raises(WalConflict, match="segment size"):
        archive.init(SYSID, SEG16)
    assert archive.header()["wal_segment_size"] == SMALL
    with pytest.raises(ValueError):
        archive.init("not-a-number", SMALL)
    assert WalArchive(tmp_path / "elsewhere").header() is None
    assert WalArchive(tmp_path / "elsewhere").entries() == []


# ----------------------------------------------------------------------------- sealing


def test_seal_a_real_16_mib_segment(tmp_path):
    archive = make_archive(tmp_path, SEG16)
    raw, data = write_segment(archive, 1, 3, SEG16)
    entry = archive.seal(raw, "gzip:1")

    sealed = archive.segments / "000000010000000000000003.gz"
    assert not raw.exists()
    assert sealed.is_file() and mode(sealed) == 0o600
    assert gzip.decompress(sealed.read_bytes()) == data
    # pg_receivewal, restarting, takes a <seg>.gz as complete when the gzip trailer says so
    assert int.from_bytes(sealed.read_bytes()[-4:], "little") == SEG16
    assert entry.name == "000000010000000000000003" and entry.kind == "segment"
    assert (entry.timeline, entry.segno, entry.file) == (1, 3, sealed.name)
    assert entry.size == sealed.stat().st_size
    assert entry.sha256 == hashlib.sha256(sealed.read_bytes()).hexdigest()
    assert entry.raw_sha256 == hashlib.sha256(data).hexdigest()
    header, line = catalog_lines(archive)
    assert header["wal_segment_size"] == SEG16
    assert line == {
        "name": "000000010000000000000003",
        "kind": "segment",
        "timeline": 1,
        "segno": 3,
        "file": "000000010000000000000003.gz",
        "size": entry.size,
        "sha256": entry.sha256,
        "raw_sha256": entry.raw_sha256,
        "sealed_at": line["sealed_at"],
    }
    assert line["sealed_at"].endswith("Z")
    assert archive.entries() == [entry]
    assert archive.completed_unsealed() == []
    assert [p.name for p in archive.segments.iterdir()] == [sealed.name]  # no tmp left behind
    # and back: the WAL as it was
    archive.extract(entry, tmp_path / "RECOVERYXLOG")
    assert (tmp_path / "RECOVERYXLOG").read_bytes() == data
    assert archive.verify(entry, deep=True) is None


def test_seal_uncompressed_keeps_the_file_and_hashes_it(tmp_path):
    archive = make_archive(tmp_path)
    raw, data = write_segment(archive, 1, 7)
    os.chmod(raw, 0o644)
    entry = archive.seal(raw, "none")
    assert raw.read_bytes() == data and mode(raw) == 0o600
    assert entry.file == raw.name and entry.sha256 == entry.raw_sha256 == hashlib.sha256(data).hexdigest()
    assert archive.completed_unsealed() == []
    assert archive.seal(raw, "none") == entry  # idempotent
    assert len(catalog_lines(archive)) == 2
    archive.extract(entry, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data


def test_a_short_segment_is_not_complete(tmp_path):
    archive = make_archive(tmp_path)
    raw = archive.segments / segment_name(1, 4, SMALL)
    raw.write_bytes(os.urandom(SMALL - 1))
    with pytest.raises(WalError, match=r"000000010000000000000004 is 1048575 bytes.*not complete"):
        archive.seal(raw)
    assert raw.exists() and archive.entries() == []


def test_a_file_gone_before_sealing_is_file_not_found(tmp_path):
    """A sealer that listed a file another pass sealed meanwhile sees FileNotFoundError."""
    archive = make_archive(tmp_path)
    with pytest.raises(FileNotFoundError, match="000000010000000000000004 does not exist"):
        archive.seal(archive.segments / segment_name(1, 4, SMALL))
    raw, _ = write_segment(archive, 1, 4)
    entry = archive.seal(raw)
    assert archive.seal(raw) == entry  # raw gone, already catalogued: the entry, no error


def test_seal_refuses_strangers(tmp_path):
    archive = make_archive(tmp_path)
    for name in ["notes.txt", "000000010000000000000004.partial"]:
        (archive.segments / name).write_bytes(b"x")
        with pytest.raises(WalError, match="not a WAL segment or history"):
            archive.seal(archive.segments / name)
    outside = tmp_path / segment_name(1, 1, SMALL)
    outside.write_bytes(os.urandom(SMALL))
    with pytest.raises(WalError, match="is not in the WAL archive"):
        archive.seal(outside)
    bare = WalArchive(tmp_path / "bare")
    bare.ensure()
    raw = bare.segments / segment_name(1, 1)
    raw.write_bytes(b"")
    with pytest.raises(WalError, match="init"):
        bare.seal(raw)


def test_seal_a_history_file_records_its_switches(tmp_path):
    archive = make_archive(tmp_path)
    path = archive.segments / "00000003.history"
    path.write_text("1\t0/3000060\tno recovery target specified\n2\t0/5A00000\tat 2026-01-01\n")
    entry = archive.seal(path)
    assert path.exists() and mode(path) == 0o600
    assert (entry.kind, entry.timeline, entry.segno, entry.file) == ("history", 3, None, "00000003.history")
    assert entry.switches == ((1, 0x3000060), (2, 0x5A00000))
    assert catalog_lines(archive)[1]["switches"] == [[1, "0/3000060"], [2, "0/5A00000"]]
    assert archive.entries() == [entry]
    assert archive.seal(path) == entry
    path.write_text("1\t0/3000061\tedited\n2\t0/5A00000\tx\n")
    with pytest.raises(WalConflict, match="00000003.history changed"):
        archive.seal(path)
    bad = archive.segments / "00000004.history"
    bad.write_text("garbage\n")
    with pytest.raises(WalError, match="malformed"):
        archive.seal(bad)


# ----------------------------------------------------------------------------- crash repair


def test_crash_while_writing_the_sealed_file(tmp_path):
    """Killed mid-compression: a hidden tmp file and the raw segment remain."""
    archive = make_archive(tmp_path)
    raw, data = write_segment(archive, 1, 2)
    tmp = archive.segments / f".{raw.name}.gz.tmp-0badc0ffee00"
    tmp.write_bytes(gzip.compress(data)[:1000])
    assert archive.completed_unsealed() == [raw]  # the tmp name is nobody's WAL file
    entry = archive.seal(raw)
    assert not tmp.exists() and not raw.exists()
    assert archive.entries() == [entry] and archive.verify(entry, deep=True) is None


def test_crash_after_rename_before_catalog(tmp_path):
    """The sealed file is in place, the catalog does not name it, the raw file is still there."""
    archive = make_archive(tmp_path)
    raw, data = write_segment(archive, 1, 2)
    sealed = archive.segments / f"{raw.name}.gz"
    sealed.write_bytes(gzip.compress(data, compresslevel=1))
    assert archive.entries() == [] and archive.completed_unsealed() == [raw]
    entry = archive.seal(raw)
    assert entry.file == sealed.name and entry.sha256 == hashlib.sha256(sealed.read_bytes()).hexdigest()
    assert entry.raw_sha256 == hashlib.sha256(data).hexdigest()
    assert not raw.exists() and archive.entries() == [entry]


def test_crash_after_rename_with_a_bad_sealed_file_reseals_from_raw(tmp_path):
    archive = make_archive(tmp_path)
    raw, data = write_segment(archive, 1, 2)
    sealed = archive.segments / f"{raw.name}.gz"
    sealed.write_bytes(gzip.compress(os.urandom(SMALL)))  # not this segment
    entry = archive.seal(raw)
    assert gzip.decompress(sealed.read_bytes()) == data and entry.raw_sha256 == hashlib.sha256(data).hexdigest()


def test_crash_after_catalog_before_dropping_raw(tmp_path):
    """Sealed, catalogued, raw still present: the next seal drops the raw file only."""
    archive = make_archive(tmp_path)
    raw, data = write_segment(archive, 1, 2)
    entry = archive.seal(raw)
    raw.write_bytes(data)  # as if unlink had not happened
    assert archive.completed_unsealed() == [raw]
    assert archive.seal(raw) == entry
    assert not raw.exists() and len(catalog_lines(archive)) == 2


def test_raw_file_with_other_content_than_sealed_is_a_conflict(tmp_path):
    archive = make_archive(tmp_path)
    raw, _ = write_segment(archive, 1, 2)
    entry = archive.seal(raw)
    raw.write_bytes(os.urandom(SMALL))
    with pytest.raises(WalConflict, match="000000010000000000000002 is already sealed"):
        archive.seal(raw)
    assert raw.exists() and archive.entries() == [entry]


def test_crash_mid_append_leaves_a_torn_line_that_readers_ignore_and_writers_cut(tmp_path):
    archive = make_archive(tmp_path)
    first = archive.seal(write_segment(archive, 1, 1)[0])
    raw2, _ = write_segment(archive, 1, 2)
    with open(archive.catalog_path, "ab") as fh:
        fh.write(b'{"name":"000000010000000000000002","kind":"seg')  # torn: no newline
    assert archive.entries() == [first]
    assert archive.completed_unsealed() == [raw2]
    second = archive.seal(raw2)
    assert archive.entries() == [first, second]
    assert archive.catalog_path.read_bytes().endswith(b"\n")
    assert len(catalog_lines(archive)) == 3  # every line parses


def test_a_corrupt_line_inside_the_catalog_is_refused_with_its_number(tmp_path):
    archive = make_archive(tmp_path)
    archive.seal(write_segment(archive, 1, 1)[0])
    archive.seal(write_segment(archive, 1, 2)[0])
    lines = archive.catalog_path.read_text().splitlines()
    lines[1] = lines[1].replace('"segno":1', '"segno":9')
    archive.catalog_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(WalError, match="line 2 is corrupt.*do not match"):
        archive.entries()
    lines[1] = "{not json"
    archive.catalog_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(WalError, match="line 2 is corrupt"):
        archive.entries()


def test_orphan_sealed_file_is_catalogued_again(tmp_path):
    """A removal rewrote the catalog and died before deleting the file: the file is re-hashed
    and catalogued (retention expires it again) rather than deleted unchecked."""
    archive = make_archive(tmp_path)
    entry = archive.seal(write_segment(archive, 1, 5)[0])
    sealed = archive.path_of(entry)
    kept = sealed.read_bytes()
    archive.remove([entry])
    sealed.write_bytes(kept)
    assert archive.completed_unsealed() == [sealed]
    again = archive.seal(sealed)
    assert (again.sha256, again.raw_sha256) == (entry.sha256, entry.raw_sha256)
    (archive.segments / "000000010000000000000006.gz").write_bytes(gzip.compress(b"short"))
    with pytest.raises(CorruptWal, match="000000010000000000000006.gz"):
        archive.seal(archive.segments / "000000010000000000000006.gz")


def test_completed_unsealed_lists_only_completed_files_oldest_first(tmp_path):
    archive = make_archive(tmp_path)
    b, _ = write_segment(archive, 2, 9)
    a, _ = write_segment(archive, 1, 8)
    history = archive.segments / "00000002.history"
    history.write_text("1\t0/900000A\tx\n")
    (archive.segments / "000000020000000000000010.partial").write_bytes(b"\0" * SMALL)
    (archive.segments / "00000002.history.tmp").write_text("")
    (archive.segments / ".000000010000000000000007.gz.tmp-00ff").write_bytes(b"")
    assert archive.completed_unsealed() == [a, history, b]
    for path in archive.completed_unsealed():
        archive.seal(path)
    assert archive.completed_unsealed() == []
    assert [e.name for e in archive.entries()] == [
        "000000010000000000000008",
        "00000002.history",
        "000000020000000000000009",
    ]
    assert newest_timeline(archive.entries()) == 2
    assert archive.sweep() == [".000000010000000000000007.gz.tmp-00ff"]


def test_partials_and_extract_partial(tmp_path):
    archive = make_archive(tmp_path)
    assert archive.partial() is None
    old = archive.segments / "000000010000000000000004.partial"  # the unfinished end of timeline 1
    new = archive.segments / "000000020000000000000004.partial"
    old.write_bytes(b"\0" * SMALL)
    data = os.urandom(SMALL // 2) + b"\0" * (SMALL // 2)
    new.write_bytes(data)
    assert archive.partials() == [old, new] and archive.partial() == new
    archive.extract_partial(new, tmp_path / "000000020000000000000004")
    assert (tmp_path / "000000020000000000000004").read_bytes() == data
    new.write_bytes(b"\0" * 100)
    with pytest.raises(WalError, match="not a padded"):
        archive.extract_partial(new, tmp_path / "x")
    with pytest.raises(WalError, match="not a .partial"):
        archive.extract_partial(archive.catalog_path, tmp_path / "x")


# ----------------------------------------------------------------------------- reading back


def test_extract_detects_a_flipped_byte(tmp_path):
    archive = make_archive(tmp_path)
    entry = archive.seal(write_segment(archive, 1, 2)[0])
    sealed = archive.path_of(entry)
    body = bytearray(sealed.read_bytes())
    body[len(body) // 2] ^= 0x01
    sealed.write_bytes(bytes(body))
    dest = tmp_path / "RECOVERYXLOG"
    with pytest.raises(CorruptWal, match="000000010000000000000002.gz"):
        archive.extract(entry, dest)
    assert not dest.exists()
    assert list(tmp_path.glob(".RECOVERYXLOG*")) == []  # no tmp left either
    assert "sha256" in archive.verify(entry)


def test_extract_detects_a_rewritten_file_with_valid_gzip(tmp_path):
    """Recompressed other WAL (valid gzip, right size on the outside) is still caught."""
    archive = make_archive(tmp_path)
    entry = archive.seal(write_segment(archive, 1, 2)[0], "gzip:1")
    archive.path_of(entry).write_bytes(gzip.compress(os.urandom(SMALL), compresslevel=1))
    with pytest.raises(CorruptWal, match="000000010000000000000002.gz"):
        archive.extract(entry, tmp_path / "x")
    archive.path_of(entry).unlink()
    assert archive.verify(entry) == "missing"
    with pytest.raises(CorruptWal, match="missing"):
        archive.extract(entry, tmp_path / "x")


def test_verify_and_remove(tmp_path):
    archive = make_archive(tmp_path)
    entries = [archive.seal(write_segment(archive, 1, s)[0]) for s in (1, 2, 3)]
    assert [archive.verify(e) for e in entries] == [None, None, None]
    assert archive.remove(entries[:2]) == [entries[0].name, entries[1].name]
    assert archive.entries() == [entries[2]]
    assert sorted(p.name for p in archive.segments.iterdir()) == [entries[2].file]
    assert mode(archive.catalog_path) == 0o600
    with pytest.raises(WalError, match="not catalogued as given: 000000010000000000000001"):
        archive.remove(entries)
    assert archive.entries() == [entries[2]]  # refused before any change
    assert archive.find(entries[2].name) == entries[2] and archive.find(entries[0].name) is None


def test_lock_is_exclusive_and_reentrant(tmp_path):
    archive = make_archive(tmp_path)
    with archive.lock():
        with archive.lock():  # the same object may nest (seal inside a held lock)
            raw, _ = write_segment(archive, 1, 1)
            archive.seal(raw)
        other = os.open(archive.lock_path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with pytest.raises(WalError, match=r"held by pid \d+"):
                with WalArchive(archive.root).lock(timeout_s=0.2):
                    pass
        finally:
            os.close(other)
    with WalArchive(archive.root).lock(timeout_s=0.2):
        pass


# ----------------------------------------------------------------------------- the chain (in memory)

WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def seg(timeline: int, segno: int, segment_size: int = SEG16) -> WalEntry:
    name = segment_name(timeline, segno, segment_size)
    return WalEntry(name, "segment", timeline, segno, f"{name}.gz", 100, "0" * 64, "1" * 64, WHEN)


def hist(timeline: int, *switches: tuple[int, str]) -> WalEntry:
    name = history_name(timeline)
    return WalEntry(
        name,
        "history",
        timeline,
        None,
        name,
        40,
        "2" * 64,
        "2" * 64,
        WHEN,
        tuple((p, parse_lsn(lsn)) for p, lsn in switches),
    )


def test_chain_complete_and_a_removed_segment(tmp_path):
    archive = make_archive(tmp_path)
    entries = [archive.seal(write_segment(archive, 1, s)[0]) for s in range(3, 9)]
    start = 3 * SMALL + 0x28
    assert check_chain(archive.entries(), 1, start, segment_size=SMALL) == []
    assert [e.segno for e in chain_entries(archive.entries(), 1, start, segment_size=SMALL)] == [3, 4, 5, 6, 7, 8]
    archive.remove([entries[2]])  # segment 5
    problems = check_chain(archive.entries(), 1, start, segment_size=SMALL)
    assert problems == ["missing 000000010000000000000005 (timeline 1)"]
    with pytest.raises(ChainBroken, match="missing 000000010000000000000005"):
        chain_entries(archive.entries(), 1, start, segment_size=SMALL)
    # a base backup starting after the gap is fine
    assert check_chain(archive.entries(), 1, 6 * SMALL, segment_size=SMALL) == []


def test_chain_start_segment_absent_and_bounded_end():
    entries = [seg(1, s) for s in range(5, 10)]
    assert check_chain(entries, 1, parse_lsn("0/3000028"), segment_size=SEG16) == [
        "missing start segment 000000010000000000000003..000000010000000000000004 (timeline 1, 2 segments)"
    ]
    assert check_chain(entries, 1, parse_lsn("0/5000028"), segment_size=SEG16, end_lsn=parse_lsn("0/C000000")) == [
        "missing 00000001000000000000000A..00000001000000000000000B (timeline 1, 2 segments)"
    ]
    # end exactly at a segment boundary: segment 9 is the last needed
    assert check_chain(entries, 1, parse_lsn("0/5000028"), segment_size=SEG16, end_lsn=parse_lsn("0/A000000")) == []
    # a base backup whose start segment is still being received
    assert check_chain(entries, 1, parse_lsn("0/A000028"), segment_size=SEG16) == [
        "missing start segment 00000001000000000000000A (timeline 1)"
    ]


def test_no_segments_is_a_problem_not_a_pass():
    assert check_chain([], 1, 0, segment_size=SEG16) == ["no WAL segments in the catalog: nothing to check"]
    assert check_chain([hist(2, (1, "0/5000000"))], 1, 0, segment_size=SEG16) != []
    with pytest.raises(ChainBroken, match="nothing to check"):
        chain_entries([], 1, 0, segment_size=SEG16)


def test_chain_follows_a_timeline_switch_through_its_history_file():
    # promoted at 0/7000060: timeline 1 up to segment 6, timeline 2 from segment 7 (which holds
    # timeline 1's WAL up to the switch); timeline 1's segment 7 stays a .partial, not catalogued
    entries = [seg(1, s) for s in range(3, 7)] + [hist(2, (1, "0/7000060"))] + [seg(2, s) for s in range(7, 11)]
    start = parse_lsn("0/3000028")
    assert check_chain(entries, 1, start, segment_size=SEG16) == []
    chain = chain_entries(entries, 1, start, segment_size=SEG16)
    assert [(e.kind, e.timeline, e.segno) for e in chain] == [("history", 2, None)] + [
        ("segment", 1, s) for s in range(3, 7)
    ] + [("segment", 2, s) for s in range(7, 11)]
    # a base backup on timeline 2
    assert check_chain(entries, 2, parse_lsn("0/8000028"), segment_size=SEG16) == []
    # gaps on either side of the switch are named with their timeline
    broken = [e for e in entries if (e.timeline, e.segno) not in {(1, 6), (2, 7)}]
    assert check_chain(broken, 1, start, segment_size=SEG16) == [
        "missing 000000010000000000000006 (timeline 1)",
        "missing 000000020000000000000007 (timeline 2)",
    ]
    # a base backup on timeline 1, stopping before the switch, checked to its stop only
    assert check_chain(entries, 1, start, segment_size=SEG16, end_lsn=parse_lsn("0/5000100"), end_timeline=1) == []


def test_switch_at_a_segment_boundary():
    entries = [seg(1, s) for s in range(3, 7)] + [hist(2, (1, "0/7000000"))] + [seg(2, s) for s in range(7, 9)]
    assert check_chain(entries, 1, parse_lsn("0/3000028"), segment_size=SEG16) == []
    assert check_chain(entries[:3] + entries[4:], 1, parse_lsn("0/3000028"), segment_size=SEG16) == [
        "missing 000000010000000000000006 (timeline 1)"
    ]


def test_missing_history_files_are_reported():
    entries = [seg(1, s) for s in range(3, 7)] + [seg(2, s) for s in range(7, 9)]
    assert check_chain(entries, 1, parse_lsn("0/3000028"), segment_size=SEG16) == [
        "timeline 2 has no history file 00000002.history in the catalog: cannot follow the chain from timeline 1"
    ]
    # timeline 3's history names timeline 2, whose own history file is missing: recovery to
    # "latest" probes 00000002.history first and would stop on timeline 1
    entries = (
        [seg(1, s) for s in range(3, 7)]
        + [hist(3, (1, "0/7000060"), (2, "0/8000060"))]
        + [seg(2, 7), seg(3, 8), seg(3, 9)]
    )
    assert check_chain(entries, 1, parse_lsn("0/3000028"), segment_size=SEG16) == [
        "missing history file 00000002.history (timeline 2)"
    ]


def test_start_timeline_must_be_an_ancestor_of_the_newest():
    # timeline 3 branched from timeline 1; a base backup on timeline 2 cannot reach it
    entries = [seg(1, s) for s in range(3, 7)] + [hist(2, (1, "0/5000060")), seg(2, 5), seg(2, 6)]
    entries += [hist(3, (1, "0/6000060")), seg(3, 6), seg(3, 7)]
    assert check_chain(entries, 2, parse_lsn("0/5800000"), segment_size=SEG16) == [
        "timeline 2 is not an ancestor of timeline 3 (its history: 1 -> 3)"
    ]
    # a base on timeline 1 after timeline 1 ended is not on timeline 3's history either
    assert "after that timeline ended" in check_chain(entries, 1, parse_lsn("0/6800000"), segment_size=SEG16)[0]
    # checking to timeline 2 explicitly works
    assert check_chain(entries, 2, parse_lsn("0/5800000"), segment_size=SEG16, end_timeline=2) == []
