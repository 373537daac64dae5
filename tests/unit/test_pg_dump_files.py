"""Reading pg_dump's data files once: a damaged or cut-short file is named, rows are counted.

The files are written with the same codecs pg_dump uses (gzip, zstd, lz4 frames) in the
archive's COPY layout; tests/integration/test_backup_postgres.py reads real pg_dump output.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
import time
from pathlib import Path

import lz4.frame
import pytest
import zstandard

from dbops.stores.postgres.dumpfiles import DataFileFollower, read_data_file, table_data_files

ROWS = b"".join(b"%d\tline\\nwith an escaped newline\n" % i for i in range(5000))
COPY = ROWS + b"\\.\n\n\n"
CODECS = {
    ".gz": lambda data: gzip.compress(data, 1),
    ".zst": lambda data: zstandard.ZstdCompressor(level=1).compress(data),
    ".lz4": lambda data: lz4.frame.compress(data),
    "": lambda data: data,
}


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("suffix", list(CODECS))
def test_a_table_file_is_hashed_decompressed_and_its_rows_counted(tmp_path: Path, suffix: str):
    data = CODECS[suffix](COPY)
    read = read_data_file(write(tmp_path, f"3001.dat{suffix}", data))
    assert read.error is None
    assert read.rows() == 5000
    assert read.sha256 == hashlib.sha256(data).hexdigest() and read.bytes == len(data)


@pytest.mark.parametrize(("suffix", "where"), [(".gz", 0.5), (".gz", 0.0), (".zst", 0.0), (".lz4", 0.0)])
def test_a_damaged_compressed_stream_is_an_error(tmp_path: Path, suffix: str, where: float):
    """gzip's CRC catches a flip anywhere; zstd and lz4 frames as written here carry no content
    checksum, so a flip in their data may decode: the sha256 against the manifest is what
    catches that (tests/reliability/test_faults_byte_flip.py)."""
    data = bytearray(CODECS[suffix](COPY))
    data[int(len(data) * where)] ^= 0xFF
    read = read_data_file(write(tmp_path, f"3001.dat{suffix}", bytes(data)))
    assert read.error is not None, read
    assert read.sha256 == hashlib.sha256(bytes(data)).hexdigest()  # still the digest of the file as it is


@pytest.mark.parametrize("suffix", [".gz", ".zst", ".lz4"])
def test_a_cut_short_file_is_an_error(tmp_path: Path, suffix: str):
    data = CODECS[suffix](COPY)
    read = read_data_file(write(tmp_path, f"3001.dat{suffix}", data[: len(data) - 7]))
    assert read.error is not None


def test_table_data_without_the_end_of_data_line_is_an_error(tmp_path: Path):
    read = read_data_file(write(tmp_path, "3001.dat.gz", gzip.compress(ROWS)))
    assert read.error is not None and "end-of-data" in read.error
    # a value that merely ends with the marker's text is not the marker
    read = read_data_file(write(tmp_path, "3002.dat", b"1\tx\\.\n\n\n"))
    assert read.error is not None and "end-of-data" in read.error
    assert read_data_file(write(tmp_path, "3003.dat", b"\\.\n\n\n")).rows() == 0  # an empty table


def test_bytes_after_the_compressed_stream_are_an_error(tmp_path: Path):
    read = read_data_file(write(tmp_path, "3001.dat.zst", CODECS[".zst"](COPY) + b"junk"))
    assert read.error is not None


def test_large_object_files_need_no_end_of_data_line(tmp_path: Path):
    assert read_data_file(write(tmp_path, "blob_16400.dat.gz", gzip.compress(b"\x00\x01binary"))).error is None


def test_every_data_file_is_read_and_mapped_to_its_table(tmp_path: Path):
    write(tmp_path, "toc.dat", b"PGDMP not data")
    write(tmp_path, "3001.dat.zst", CODECS[".zst"](COPY))
    write(tmp_path, "3002.dat.zst", CODECS[".zst"](b"\\.\n\n\n"))
    with DataFileFollower(tmp_path, threads=2) as follower:  # a finished dump: read at once
        reads = follower.finish()
    assert [r.name for r in reads] == ["3001.dat.zst", "3002.dat.zst"]
    listing = [
        "3001; 0 16401 TABLE DATA public items postgres",
        '3002; 0 16405 TABLE DATA public "odd name" postgres',
        "3003; 1259 16410 TABLE public gone postgres",
    ]
    assert table_data_files(listing, tmp_path) == {16401: "3001.dat.zst", 16405: "3002.dat.zst"}


def test_files_are_read_while_they_are_written_and_to_their_final_end(tmp_path: Path):
    """As pg_dump does: the folder appears, files appear one after another and grow in pieces
    with pauses; the follower reads them meanwhile and, once the writer is done, to the end."""
    dump = tmp_path / "dump"
    compressed = {name: CODECS[".zst"](COPY) for name in ("3001.dat.zst", "3002.dat.zst")}
    compressed["3003.dat.gz"] = gzip.compress(COPY[:1000].rsplit(b"\n", 1)[0] + b"\n\\.\n\n\n")

    def writer() -> None:
        time.sleep(0.1)
        dump.mkdir()
        for name, data in compressed.items():
            with open(dump / name, "wb") as fh:
                for start in range(0, len(data), 256):  # ~0.2 s a file: longer than the follower's poll
                    fh.write(data[start : start + 256])
                    fh.flush()
                    time.sleep(0.005)

    with DataFileFollower(dump, threads=2) as follower:
        thread = threading.Thread(target=writer)
        thread.start()
        thread.join()
        reads = follower.finish()
    by_name = {r.name: r for r in reads}
    assert sorted(by_name) == sorted(compressed)
    for name, data in compressed.items():
        assert by_name[name].error is None, by_name[name]
        assert by_name[name].sha256 == hashlib.sha256(data).hexdigest()
    assert by_name["3001.dat.zst"].rows() == by_name["3002.dat.zst"].rows() == 5000


def test_a_writer_that_stops_midway_leaves_a_cut_short_file_named(tmp_path: Path):
    """pg_dump killed while writing: the follower stops at the file's end then and says so."""
    data = CODECS[".zst"](COPY)
    with DataFileFollower(tmp_path, threads=1) as follower:
        (tmp_path / "3001.dat.zst").write_bytes(data[: len(data) // 2])
        time.sleep(0.2)  # the follower has read what there is and waits for more
        reads = follower.finish()
    assert len(reads) == 1 and reads[0].error is not None
