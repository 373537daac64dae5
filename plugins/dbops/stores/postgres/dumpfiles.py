"""Reading the data files of a pg_dump directory archive once: sha256, readability, rows.

``pg_dump --format=directory`` writes each table's data to ``<dumpId>.dat`` (plus ``.gz``,
``.lz4`` or ``.zst`` for its compression) in COPY text format: one line per row, a newline
inside a value being escaped as ``\\n``. One pass over a file therefore gives its sha256
(compared with the manifest's, so the bytes that were checked are the bytes sealed), proves
that it decompresses to the end and ends with COPY's end-of-data line, and counts the rows
the dump holds. That replaces a second
full read by ``pg_restore --file=/dev/null`` and an exact ``count(*)`` of every table.

The codecs are the libraries' own (zlib, python-zstandard, python-lz4); they release the GIL,
so files are read on a few threads at once. No Airflow import.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import lz4.frame
import zstandard

CHUNK = 1 << 20
# table data (``3345.dat.zst``) and large objects (``blob_16400.dat``); toc.dat is not data
DATA_FILE = re.compile(r"^(?:\d+|blob_\d+)\.dat(?:\.gz|\.lz4|\.zst)?$")
# how pg_dump ends a table's COPY data in its archive: the end-of-data line and two empty ones
END_OF_DATA = b"\\.\n\n\n"
# ``3345; 0 16401 TABLE DATA public items postgres``: dump id, catalog table oid, object oid
_TABLE_DATA = re.compile(r"^(\d+);\s+\d+\s+(\d+)\s+TABLE DATA ")


class _HashingReader:
    """A binary file whose every byte read also goes into a sha256."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def drain(self) -> int:
        """Read to the end; the number of bytes left after the compressed stream."""
        left = 0
        while data := self.read(CHUNK):
            left += len(data)
        return left


def _decompressing(name: str, raw: _HashingReader) -> Any:
    """A reader of ``raw``'s decompressed bytes, by the file's suffix."""
    source = cast(IO[bytes], raw)  # file-like: read() and readinto()
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=source, mode="rb")
    if name.endswith(".zst"):
        return zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True)
    if name.endswith(".lz4"):
        return lz4.frame.LZ4FrameFile(source, mode="rb")
    return raw


@dataclass(frozen=True)
class DataFileRead:
    """One data file, read once."""

    name: str
    bytes: int
    sha256: str
    lines: int
    error: str | None = None  # why it could not be read to the end

    def rows(self) -> int:
        """A table's data file: the rows it holds (its lines but the end-of-data ones)."""
        return self.lines - END_OF_DATA.count(b"\n")


def _ends_copy_data(tail: bytes) -> bool:
    """Whether decompressed table data ends with the end-of-data line, on a line of its own."""
    return tail.endswith(END_OF_DATA) and (len(tail) == len(END_OF_DATA) or tail.endswith(b"\n" + END_OF_DATA))


def read_data_file(path: Path) -> DataFileRead:
    """sha256 of the file's bytes, and the lines of its decompressed content (read to the end)."""
    lines = 0
    tail = b""
    error = None
    with open(path, "rb", buffering=0) as fh:
        raw = _HashingReader(fh)
        try:
            content = _decompressing(path.name, raw)
            while block := content.read(CHUNK):
                lines += block.count(b"\n")
                tail = (tail + block)[-len(END_OF_DATA) - 1 :]
            if raw.drain():
                error = "bytes after the end of the compressed stream"
            elif path.name[0].isdigit() and not _ends_copy_data(tail):
                error = "the table data does not end with COPY's end-of-data line (cut short)"
        except (OSError, EOFError, ValueError, RuntimeError, zstandard.ZstdError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            raw.drain()  # still hashed whole: the digest names the file as it is
    return DataFileRead(path.name, raw.size, raw.digest.hexdigest(), lines, error)


def data_files(dump: Path) -> list[Path]:
    """The data files of a pg_dump directory (every table's and large object's)."""
    return sorted(p for p in dump.iterdir() if DATA_FILE.match(p.name) and p.is_file())


def read_data_files(
    dump: Path, *, threads: int, on_file: Callable[[DataFileRead], None] | None = None
) -> list[DataFileRead]:
    """Every data file of ``dump``, largest first on ``threads`` threads (the codecs and sha256
    release the GIL), in file-name order."""
    files = sorted(data_files(dump), key=lambda p: p.stat().st_size, reverse=True)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        reads = list(pool.map(read_data_file, files))
    for read in reads:
        if on_file is not None:
            on_file(read)
    return sorted(reads, key=lambda r: r.name)


def table_data_files(listing_entries: Iterable[str], dump: Path) -> dict[int, str]:
    """Table oid -> its data file's name, from the TOC (``pg_restore --list``) of ``dump``."""
    names = {p.name for p in data_files(dump)}
    files: dict[int, str] = {}
    for line in listing_entries:
        match = _TABLE_DATA.match(line)
        if not match:
            continue
        dump_id, oid = match.groups()
        for suffix in ("", ".gz", ".lz4", ".zst"):
            if f"{dump_id}.dat{suffix}" in names:
                files[int(oid)] = f"{dump_id}.dat{suffix}"
    return files
