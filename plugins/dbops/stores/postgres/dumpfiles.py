"""Reading the data files of a pg_dump directory archive once: sha256, readability, rows.

``pg_dump --format=directory`` writes each table's data to ``<dumpId>.dat`` (plus ``.gz``,
``.lz4`` or ``.zst`` for its compression) in COPY text format: one line per row, a newline
inside a value being escaped as ``\\n``. One pass over a file therefore gives its sha256
(compared with the manifest's, so the bytes that were checked are the bytes sealed), proves
that it decompresses to the end and ends with COPY's end-of-data line, and counts the rows
the dump holds. That replaces a second full read by ``pg_restore --file=/dev/null`` and an
exact ``count(*)`` of every table.

The codecs are the libraries' own (zlib, python-zstandard, python-lz4); they release the GIL,
so files are read on a few threads at once, while pg_dump writes them. No Airflow import.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import lz4.frame
import zstandard

CHUNK = 1 << 20
FOLLOW_POLL_S = 0.05  # how often a file still being written is looked at again
# table data (``3345.dat.zst``) and large objects (``blob_16400.dat``); toc.dat is not data
DATA_FILE = re.compile(r"^(?:\d+|blob_\d+)\.dat(?:\.gz|\.lz4|\.zst)?$")
# how pg_dump ends a table's COPY data in its archive: the end-of-data line and two empty ones
END_OF_DATA = b"\\.\n\n\n"
# ``3345; 0 16401 TABLE DATA public items postgres``: dump id, catalog table oid, object oid
_TABLE_DATA = re.compile(r"^(\d+);\s+\d+\s+(\d+)\s+TABLE DATA ")


class _HashingReader:
    """A binary file whose every byte read also goes into a sha256. With ``writer_done``, a
    file still being written: its end is only its end once the writer has finished."""

    def __init__(self, raw: IO[bytes], writer_done: threading.Event | None = None) -> None:
        self._raw = raw
        self._writer_done = writer_done
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        while True:
            finished = self._writer_done is None or self._writer_done.is_set()  # before the read
            data = self._raw.read(size)
            if data or finished:
                break
            time.sleep(FOLLOW_POLL_S)
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


def read_data_file(path: Path, writer_done: threading.Event | None = None) -> DataFileRead:
    """sha256 of the file's bytes, and the lines of its decompressed content (read to the end;
    with ``writer_done``, read while it is written, its end the one it has when that is set)."""
    lines = 0
    tail = b""
    error = None
    with open(path, "rb", buffering=0) as fh:
        raw = _HashingReader(fh, writer_done)
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


class DataFileFollower:
    """Reads every data file of a pg_dump directory while pg_dump writes it, on ``threads``
    threads: the read costs the cores pg_dump leaves idle (its server sessions turning rows into
    text are the slower side) instead of a pass of its own after the dump.

    ``with DataFileFollower(folder, threads=2) as follower: <run pg_dump>; reads = follower.finish()``.
    :meth:`finish` is called once the writer has exited: every file is then read to the end it
    has, so each sha256 is of the file as it stays."""

    def __init__(self, dump: Path, *, threads: int) -> None:
        self._dump = dump
        self._writer_done = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="pg_dump-read")
        self._reads: dict[str, Future[DataFileRead]] = {}
        self._watcher = threading.Thread(target=self._watch, name="pg_dump-files", daemon=True)

    def __enter__(self) -> DataFileFollower:
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._writer_done.set()  # an aborted dump: the readers stop at the files' present ends
        self._watcher.join()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _discover(self) -> None:
        try:
            names = sorted(os.listdir(self._dump))  # pg_dump creates the folder itself
        except FileNotFoundError:
            return
        for name in names:
            if name not in self._reads and DATA_FILE.match(name):
                self._reads[name] = self._pool.submit(read_data_file, self._dump / name, self._writer_done)

    def _watch(self) -> None:
        while not self._writer_done.wait(FOLLOW_POLL_S):
            self._discover()

    def finish(self) -> list[DataFileRead]:
        """The writer has exited: every data file read to its end, in file-name order."""
        self._writer_done.set()
        self._watcher.join()
        self._discover()  # files made after the last look
        return sorted((future.result() for future in self._reads.values()), key=lambda r: r.name)


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
