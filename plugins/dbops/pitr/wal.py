"""The WAL archive: WAL file names and LSNs, sealing completed segments, the catalog, the chain.

Layout (``<backup.root>/postgres_wal``)::

    segments/          pg_receivewal's -D: raw completed segments (until sealed), the growing
                       ``<seg>.partial``, sealed ``<seg>.gz`` (or ``<seg>`` uncompressed) and
                       ``<TLI>.history``
    catalog.jsonl      a header line, then one line per sealed file (size + sha256)
    catalog.lock       flock serialising every writer of the catalog and of sealed files

Sealing follows the repository's rule: a file is in the archive only once the catalog names
it with its sha256. Each step (write a hidden tmp, fsync, rename, append the catalog line,
drop the raw file) is ordered so that a crash between any two leaves a state the next
:meth:`WalArchive.seal` repairs: a sealed file that is not catalogued is re-hashed and
catalogued, a raw file whose segment is catalogued is dropped once it proves equal. The raw
segment stays until its sealed copy is catalogued, so no crash loses WAL; pg_receivewal's own
restart logic recognises ``<seg>.gz`` as a completed segment, so sealing in place keeps its
resume position.

The chain (:func:`check_chain`, :func:`chain_entries`) follows timeline switches through the
history files: from timeline T to T+1 at switch LSN S, T's segments up to segno(S)-1 are
needed, then T+1's from segno(S) on (at a switch, T+1's first segment holds T's WAL up to S;
T's copy of that segment stays a ``.partial`` forever).

Pure: no Airflow, no database driver; the receiver, the base backup, the restore command and
the checks all build on this.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dbops.backup.repository import as_utc, fsync_dir, parse_time, utc_now

WAL_DIR = "postgres_wal"
BASE_STORE = "postgres_pitr"
SEGMENTS_DIR = "segments"
CATALOG_NAME = "catalog.jsonl"
LOCK_NAME = "catalog.lock"
STATUS_NAME = "receiver.json"
CATALOG_FORMAT = "dbops-wal"
CATALOG_VERSION = 1

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
MIN_SEGMENT_SIZE = 1024 * 1024
MAX_SEGMENT_SIZE = 1024 * 1024 * 1024
MAX_TIMELINE = 0xFFFFFFFF
MAX_LSN = 0xFFFFFFFFFFFFFFFF

FILE_MODE = 0o600
DIR_MODE = 0o700
CHUNK_BYTES = 1024 * 1024
# "gzip" without a level: zlib's default, as pg_receivewal --compress=gzip
DEFAULT_GZIP_LEVEL = 6
# a history file is a few lines per timeline switch; anything bigger is not one
MAX_HISTORY_BYTES = 1024 * 1024

UTC = UTC

_SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
_HISTORY_RE = re.compile(r"^([0-9A-F]{8})\.history$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_TMP_MARK = ".tmp-"


class WalError(RuntimeError):
    """Something about the WAL archive is wrong; the message names what."""


class WalConflict(WalError):
    """Two different contents for one WAL file name, or an archive of another server."""


class CorruptWal(WalError):
    """A sealed file does not match its catalogued size or sha256."""


class ChainBroken(WalError):
    """The WAL needed between two points is not all in the archive."""


class WalFileMissing(WalError, FileNotFoundError):
    """The file to seal or read is gone (a sealer that lost a race catches FileNotFoundError)."""


# ----------------------------------------------------------------------------- names and LSNs


def parse_lsn(text: str) -> int:
    """``"0/3000028"`` -> 50331688 (Postgres prints an LSN as two 32-bit hex halves)."""
    if not isinstance(text, str):
        raise ValueError(f"not an LSN: {text!r}")
    match = _LSN_RE.match(text.strip())
    if not match:
        raise ValueError(f"not an LSN: {text!r} (expected like 0/3000028)")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(lsn: int) -> str:
    """50331688 -> ``"0/3000028"``, as Postgres prints it."""
    _check_lsn(lsn)
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def check_segment_size(segment_size: Any) -> int:
    """A WAL segment size Postgres allows (a power of two, 1 MiB .. 1 GiB), else ValueError."""
    if (
        not isinstance(segment_size, int)
        or isinstance(segment_size, bool)
        or not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE
        or segment_size & (segment_size - 1)
    ):
        raise ValueError(f"WAL segment size must be a power of two from 1 MiB to 1 GiB, got {segment_size!r}")
    return segment_size


def _segments_per_id(segment_size: int) -> int:
    return 0x100000000 // check_segment_size(segment_size)


def _check_timeline(timeline: Any) -> int:
    if not isinstance(timeline, int) or isinstance(timeline, bool) or not 1 <= timeline <= MAX_TIMELINE:
        raise ValueError(f"a timeline is an integer from 1 to {MAX_TIMELINE}, got {timeline!r}")
    return timeline


def _check_lsn(lsn: Any) -> int:
    if not isinstance(lsn, int) or isinstance(lsn, bool) or not 0 <= lsn <= MAX_LSN:
        raise ValueError(f"an LSN is an integer from 0 to 2^64-1, got {lsn!r}")
    return lsn


def segment_name(timeline: int, segno: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """``TTTTTTTTXXXXXXXXYYYYYYYY``: the file name of segment ``segno`` on ``timeline``."""
    _check_timeline(timeline)
    per_id = _segments_per_id(segment_size)
    if not isinstance(segno, int) or isinstance(segno, bool) or not 0 <= segno < (MAX_LSN + 1) // segment_size:
        raise ValueError(f"segment number out of range: {segno!r}")
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def parse_wal_name(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int] | None:
    """(timeline, segno) of a WAL segment name, None for anything else (including a name
    whose low part cannot exist with this segment size)."""
    match = _SEGMENT_RE.match(name) if isinstance(name, str) else None
    if not match:
        return None
    timeline, high, low = (int(g, 16) for g in match.groups())
    per_id = _segments_per_id(segment_size)
    if timeline == 0 or low >= per_id:
        return None
    return timeline, high * per_id + low


def is_history_name(name: str) -> bool:
    match = _HISTORY_RE.match(name) if isinstance(name, str) else None
    return match is not None and int(match.group(1), 16) != 0


def history_name(timeline: int) -> str:
    """``TTTTTTTT.history``: the history file that starts ``timeline``."""
    return f"{_check_timeline(timeline):08X}.history"


def history_timeline(name: str) -> int | None:
    match = _HISTORY_RE.match(name) if isinstance(name, str) else None
    if not match or int(match.group(1), 16) == 0:
        return None
    return int(match.group(1), 16)


def segno_of(lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The number of the segment holding byte ``lsn``."""
    return _check_lsn(lsn) // check_segment_size(segment_size)


def segment_start_lsn(segno: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The LSN of the first byte of segment ``segno``."""
    return segno * check_segment_size(segment_size)


def last_segno_before(end_lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The last segment WAL up to (not including) ``end_lsn`` touches: a base backup that
    stops at the very start of a segment needs only the one before (Postgres' XLByteToPrevSeg)."""
    _check_lsn(end_lsn)
    if end_lsn == 0:
        raise ValueError("no WAL ends at LSN 0/0")
    return (end_lsn - 1) // check_segment_size(segment_size)


def read_history(text: str) -> list[tuple[int, int]]:
    """The switches a timeline history file lists, oldest first: (parent timeline, LSN where
    the parent ended). Comment and blank lines are skipped; anything else malformed is refused."""
    switches: list[tuple[int, int]] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split(None, 2)
        try:
            if len(fields) < 2:
                raise ValueError("expected <parent timeline> <switch LSN> [reason]")
            parent = _check_timeline(int(fields[0]))
            switch = parse_lsn(fields[1])
        except ValueError as exc:
            raise WalError(f"history file line {number} is malformed ({exc}): {line!r}") from None
        if switches and (parent <= switches[-1][0] or switch < switches[-1][1]):
            raise WalError(f"history file line {number}: timelines and switch points must ascend: {line!r}")
        switches.append((parent, switch))
    return switches


def parse_compression(spec: str) -> int | None:
    """``"gzip:N"`` -> N, ``"gzip"`` -> zlib's default level, ``"none"`` -> None."""
    if spec == "none":
        return None
    match = re.fullmatch(r"gzip(?::([1-9]))?", spec) if isinstance(spec, str) else None
    if not match:
        raise ValueError(f"WAL compression must be 'none', 'gzip' or 'gzip:1'..'gzip:9', got {spec!r}")
    return int(match.group(1)) if match.group(1) else DEFAULT_GZIP_LEVEL


# ----------------------------------------------------------------------------- catalog entries


def _format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(text: Any) -> datetime:
    if not isinstance(text, str):
        raise ValueError(f"not a time: {text!r}")
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"time without a zone: {text!r}")
    return value.astimezone(UTC)


@dataclass(frozen=True)
class WalEntry:
    """One sealed file of the archive, as its catalog line says."""

    name: str  # the WAL file name: a segment name or TTTTTTTT.history
    kind: str  # "segment" | "history"
    timeline: int
    segno: int | None  # None for a history file
    file: str  # the sealed file in segments/: <name>.gz, or <name> when stored uncompressed
    size: int  # bytes of the sealed file
    sha256: str  # of the sealed file
    raw_sha256: str  # of the WAL file itself (after decompressing)
    sealed_at: datetime
    # history files: the switches they list, (parent timeline, switch LSN), oldest first
    switches: tuple[tuple[int, int], ...] = field(default=())

    @property
    def compressed(self) -> bool:
        return self.file.endswith(".gz")

    @property
    def sort_key(self) -> tuple[int, int, int]:
        # a timeline's history file sorts before its segments: it exists from the switch on
        return (self.timeline, 0 if self.kind == "history" else 1, self.segno or 0)

    def to_json(self) -> dict[str, Any]:
        line: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "timeline": self.timeline,
            "segno": self.segno,
            "file": self.file,
            "size": self.size,
            "sha256": self.sha256,
            "raw_sha256": self.raw_sha256,
            "sealed_at": _format_time(self.sealed_at),
        }
        if self.kind == "history":
            line["switches"] = [[parent, format_lsn(lsn)] for parent, lsn in self.switches]
        return line

    @classmethod
    def from_json(cls, data: Any, segment_size: int) -> WalEntry:
        """A catalog line, checked field by field (ValueError naming the field)."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        name, kind, file = data.get("name"), data.get("kind"), data.get("file")
        if not isinstance(name, str) or not isinstance(file, str):
            raise ValueError(f"name and file must be strings, got {name!r} and {file!r}")
        if kind == "segment":
            parsed = parse_wal_name(name, segment_size)
            if parsed is None:
                raise ValueError(f"name {name!r} is not a WAL segment name")
            timeline, segno = parsed
            if file not in (name, f"{name}.gz"):
                raise ValueError(f"file {file!r} does not belong to segment {name}")
            switches: tuple[tuple[int, int], ...] = ()
        elif kind == "history":
            history = history_timeline(name)
            if history is None:
                raise ValueError(f"name {name!r} is not a history file name")
            timeline, segno = history, None
            if file != name:
                raise ValueError(f"file {file!r} does not belong to history {name}")
            raw = data.get("switches", [])
            if not isinstance(raw, list) or not all(isinstance(s, list) and len(s) == 2 for s in raw):
                raise ValueError("switches must be a list of [parent timeline, LSN]")
            switches = tuple((_check_timeline(p), parse_lsn(lsn)) for p, lsn in raw)
        else:
            raise ValueError(f"kind must be 'segment' or 'history', got {kind!r}")
        if data.get("timeline") != timeline or data.get("segno") != segno:
            raise ValueError(f"timeline/segno {data.get('timeline')!r}/{data.get('segno')!r} do not match name {name}")
        size = data.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"size must be a byte count, got {size!r}")
        for key in ("sha256", "raw_sha256"):
            if not isinstance(data.get(key), str) or not _SHA256_RE.match(data[key]):
                raise ValueError(f"{key} must be 64 lower-case hex digits, got {data.get(key)!r}")
        return cls(
            name=name,
            kind=kind,
            timeline=timeline,
            segno=segno,
            file=file,
            size=size,
            sha256=data["sha256"],
            raw_sha256=data["raw_sha256"],
            sealed_at=_parse_time(data.get("sealed_at")),
            switches=switches,
        )


def newest_timeline(entries: Iterable[WalEntry]) -> int | None:
    """The highest timeline any catalogued file (segment or history) belongs to."""
    return max((e.timeline for e in entries), default=None)


# ----------------------------------------------------------------------------- file helpers


def _mkdir_private(path: Path) -> None:
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise WalError(f"{path} is not a real folder; the WAL archive needs one there")
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE)  # mkdir's mode passes through the umask


def _open_regular(path: Path) -> int:
    """A read fd on a regular file, never following a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise WalFileMissing(f"{path} does not exist") from None
    except OSError as exc:
        raise WalError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise WalError(f"{path} is not a regular file")
    return fd


def _read_chunks(fd: int) -> Iterator[bytes]:
    while chunk := os.read(fd, CHUNK_BYTES):
        yield chunk


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _HashedChunks:
    """The chunks of an open file, hashed (sha256) and counted as they are read."""

    def __init__(self, fd: int) -> None:
        self.fd, self.digest, self.size = fd, hashlib.sha256(), 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in _read_chunks(self.fd):
            self.digest.update(chunk)
            self.size += len(chunk)
            yield chunk


def _hash_file(path: Path) -> tuple[int, str]:
    fd = _open_regular(path)
    try:
        digest, size = hashlib.sha256(), 0
        for chunk in _read_chunks(fd):
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()
    finally:
        os.close(fd)


def _gunzip_chunks(chunks: Iterable[bytes], limit: int, what: str) -> Iterator[bytes]:
    """Decompress a gzip stream (one or more members), refusing more than ``limit`` bytes out,
    an empty input or a truncated stream."""
    decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
    produced = 0
    member_open = False  # bytes of a member fed, its end not seen yet
    saw_input = False
    for chunk in chunks:
        while chunk:
            saw_input = member_open = True
            try:
                out = decomp.decompress(chunk, CHUNK_BYTES)
            except zlib.error as exc:
                raise CorruptWal(f"{what} is not a valid gzip stream: {exc}") from None
            produced += len(out)
            if produced > limit:
                raise CorruptWal(f"{what} decompresses to more than {limit} bytes")
            if out:
                yield out
            if decomp.eof:
                member_open = False
                chunk = decomp.unused_data
                decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
            else:
                chunk = decomp.unconsumed_tail
    if not saw_input:
        raise CorruptWal(f"{what} is empty")
    if member_open:
        raise CorruptWal(f"{what} is truncated (the gzip stream does not end)")


class _Sink:
    """Write side of a sealed file: hashes and counts what goes to the fd (gzip writes here)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        data = bytes(data)
        _write_all(self.fd, data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def _gzip_stream(source_fd: int, sink: _Sink, level: int, raw_digest: Any) -> int:
    """Compress ``source_fd`` into ``sink`` as one gzip member (zlib writes the gzip header and
    the CRC32 + size trailer pg_receivewal reads back); returns the raw byte count."""
    comp = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    size = 0
    for chunk in _read_chunks(source_fd):
        raw_digest.update(chunk)
        size += len(chunk)
        out = comp.compress(chunk)
        if out:
            sink.write(out)
    sink.write(comp.flush())
    return size


# ----------------------------------------------------------------------------- the archive


def heartbeat_problem(status: dict[str, Any] | None, *, max_age_s: float, now: datetime | None = None) -> str | None:
    """Why the receiver's heartbeat does not show a streaming receiver (None: it does). A
    killed receiver cannot say so itself: a heartbeat older than ``max_age_s`` is not running."""
    if status is None:
        return "no receiver.json: the receiver has never run here"
    try:
        heard = parse_time(str(status["heartbeat_at"]))
    except (KeyError, ValueError):
        return "receiver.json has no readable heartbeat_at"
    age = ((now or utc_now()) - heard).total_seconds()
    if age > max_age_s:
        return f"the last heartbeat is {age:.0f} s old"
    if status.get("state") == "stopped":
        return "the receiver was stopped"
    if status.get("state") != "streaming":
        return f"state {status.get('state')!r}: {status.get('error') or 'not streaming yet'}"
    return None


class WalArchive:
    """``<backup.root>/postgres_wal``: sealed WAL files and their catalog.

    Every writer (sealing, removing, creating the catalog) holds :meth:`lock`; readers read
    the catalog without it (lines are appended whole and fsynced; a torn last line, the trace
    of a crash mid-append, is ignored and cut off by the next writer).
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.segments = self.root / SEGMENTS_DIR
        self.catalog_path = self.root / CATALOG_NAME
        self.lock_path = self.root / LOCK_NAME
        self.status_path = self.root / STATUS_NAME
        self._guard = threading.RLock()
        self._depth = 0
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"WalArchive({str(self.root)!r})"

    # -- set-up

    def ensure(self) -> None:
        """Create the archive's folders (0700); refuse a symlink or file in their place."""
        if not self.root.parent.is_dir():
            os.makedirs(self.root.parent, DIR_MODE, exist_ok=True)
        _mkdir_private(self.root)
        _mkdir_private(self.segments)

    @contextmanager
    def lock(self, timeout_s: float = 120.0) -> Iterator[None]:
        """Hold the exclusive flock on ``catalog.lock`` for the block (re-entrant within this
        object; the kernel drops it when the holder dies, so a killed sealer never leaves the
        archive locked). WalError when another holder keeps it longer than ``timeout_s``."""
        with self._guard:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self.ensure()
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
            try:
                deadline = time.monotonic() + timeout_s
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                            raise WalError(
                                f"the WAL catalog lock {self.lock_path} is held by {holder} for over {timeout_s:g} s"
                            ) from None
                        time.sleep(0.05)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
                self._depth, self._lock_fd = 1, fd
                try:
                    yield
                finally:
                    self._depth, self._lock_fd = 0, None
            finally:
                os.close(fd)  # closing releases the flock

    # -- catalog

    def header(self) -> dict[str, Any] | None:
        """The catalog's header line, None when there is no catalog yet."""
        try:
            with open(self.catalog_path, "rb") as fh:
                first = fh.readline()
        except FileNotFoundError:
            return None
        return self._parse_header(first)

    def _parse_header(self, first: bytes) -> dict[str, Any]:
        try:
            header = json.loads(first)
        except ValueError:
            header = None
        if (
            not first.endswith(b"\n")
            or not isinstance(header, dict)
            or header.get("format") != CATALOG_FORMAT
            or header.get("version") != CATALOG_VERSION
            or not isinstance(header.get("system_identifier"), str)
        ):
            raise WalError(f"{self.catalog_path} line 1 is not a dbops-wal version 1 header")
        try:
            check_segment_size(header.get("wal_segment_size"))
        except ValueError as exc:
            raise WalError(f"{self.catalog_path} line 1: {exc}") from None
        return header

    @property
    def segment_size(self) -> int:
        header = self.header()
        if header is None:
            raise WalError(f"the WAL archive {self.root} has no catalog yet (the receiver creates it on start)")
        return header["wal_segment_size"]

    def init(self, system_identifier: str, segment_size: int) -> dict[str, Any]:
        """Create the catalog for this server, or check that the existing one is its own:
        another system identifier or segment size is refused (WalConflict), nothing written."""
        if not isinstance(system_identifier, str) or not system_identifier.isdigit():
            raise ValueError(f"system identifier must be a string of digits, got {system_identifier!r}")
        check_segment_size(segment_size)
        with self.lock():
            header = self.header()
            if header is not None:
                if header["system_identifier"] != system_identifier or header["wal_segment_size"] != segment_size:
                    raise WalConflict(
                        f"the WAL archive {self.root} belongs to system {header['system_identifier']} "
                        f"(segment size {header['wal_segment_size']}), this server is {system_identifier} "
                        f"(segment size {segment_size}): a new cluster needs a new archive (move {self.root} aside)"
                    )
                return header
            header = {
                "format": CATALOG_FORMAT,
                "version": CATALOG_VERSION,
                "system_identifier": system_identifier,
                "wal_segment_size": segment_size,
            }
            self._write_catalog(header, [])
            return header

    def entries(self) -> list[WalEntry]:
        """Every catalogued file, sorted by (timeline, history first, segno); [] without a catalog."""
        header, entries, _ = self._read_catalog()
        return entries

    def _read_catalog(self) -> tuple[dict[str, Any] | None, list[WalEntry], int]:
        """(header, entries, length of the whole lines); a torn last line is left out."""
        try:
            data = self.catalog_path.read_bytes()
        except FileNotFoundError:
            return None, [], 0
        if not data:
            raise WalError(f"{self.catalog_path} is empty (no header line)")
        whole = data.rfind(b"\n") + 1  # bytes after the last newline: a torn append, never acknowledged
        lines = data[:whole].split(b"\n")[:-1]
        if not lines:
            raise WalError(f"{self.catalog_path} line 1 is torn: no complete header")
        header = self._parse_header(lines[0] + b"\n")
        segment_size = header["wal_segment_size"]
        by_name: dict[str, WalEntry] = {}
        for number, line in enumerate(lines[1:], 2):
            try:
                entry = WalEntry.from_json(json.loads(line), segment_size)
            except ValueError as exc:
                raise WalError(f"{self.catalog_path} line {number} is corrupt: {exc}") from None
            previous = by_name.get(entry.name)
            if previous is not None and (previous.sha256, previous.raw_sha256, previous.file) != (
                entry.sha256,
                entry.raw_sha256,
                entry.file,
            ):
                raise WalError(f"{self.catalog_path} line {number} catalogues {entry.name} a second time, differently")
            by_name.setdefault(entry.name, entry)
        return header, sorted(by_name.values(), key=lambda e: e.sort_key), whole

    def _write_catalog(self, header: dict[str, Any], entries: Sequence[WalEntry]) -> None:
        """Replace the catalog whole: hidden tmp, fsync, rename, fsync the folder."""
        tmp = self.root / f".{CATALOG_NAME}{_TMP_MARK}{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        try:
            body = [json.dumps(header, separators=(",", ":"))]
            body += [json.dumps(e.to_json(), separators=(",", ":")) for e in entries]
            _write_all(fd, ("\n".join(body) + "\n").encode())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, self.catalog_path)
        fsync_dir(self.root)

    def _append(self, entry: WalEntry, whole: int) -> None:
        """Append one line (under the lock); cut off a torn last line first, or the new line
        would be glued to it."""
        fd = os.open(self.catalog_path, os.O_RDWR | os.O_NOFOLLOW)
        try:
            if os.fstat(fd).st_size != whole:
                os.ftruncate(fd, whole)
            os.lseek(fd, 0, os.SEEK_END)
            _write_all(fd, (json.dumps(entry.to_json(), separators=(",", ":")) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- sealing

    def seal(self, path: Path | str, compression: str = "gzip:1") -> WalEntry:
        """Seal one completed file of ``segments/``: a raw segment, a ``.history`` or (repair) a
        ``<seg>.gz`` not yet catalogued. Idempotent: a file already catalogued with equal
        content only has its raw copy dropped; different content is a WalConflict."""
        path = Path(path)
        level = parse_compression(compression)
        if path.parent.resolve() != self.segments.resolve():
            raise WalError(f"{path} is not in the WAL archive's {self.segments}")
        with self.lock():
            header, entries, whole = self._read_catalog()
            if header is None:
                raise WalError(f"the WAL archive {self.root} has no catalog: init() it before sealing")
            segment_size = header["wal_segment_size"]
            catalogued = {e.name: e for e in entries}
            name = path.name
            if name.endswith(".gz") and parse_wal_name(name[:-3], segment_size):
                return self._seal_orphan(path, catalogued, segment_size, whole)
            if is_history_name(name):
                return self._seal_history(path, catalogued, whole)
            if parse_wal_name(name, segment_size) is None:
                raise WalError(f"{name} is not a WAL segment or history file name (segment size {segment_size})")
            return self._seal_segment(path, level, catalogued, segment_size, whole)

    def _seal_segment(
        self, raw: Path, level: int | None, catalogued: dict[str, WalEntry], segment_size: int, whole: int
    ) -> WalEntry:
        name = raw.name
        timeline, segno = parse_wal_name(name, segment_size)  # type: ignore[misc]
        self._sweep_tmp(name)
        known = catalogued.get(name)
        if known is not None:
            if known.file == name:  # stored uncompressed: the raw file is the sealed file
                return known
            if not raw.exists():
                return known
            size, raw_sha = _hash_file(raw)
            if raw_sha != known.raw_sha256:
                raise WalConflict(
                    f"{name} is already sealed as {known.file} with other content (raw sha256 {known.raw_sha256}, "
                    f"this file {raw_sha}): two servers or a reset cluster stream into one archive?"
                )
            self._drop(raw)
            return known
        fd = _open_regular(raw)
        try:
            size = os.fstat(fd).st_size
            if size != segment_size:
                raise WalError(
                    f"{name} is {size} bytes, a WAL segment of this archive is {segment_size}: "
                    "a short segment is not complete"
                )
            if level is None:
                digest = hashlib.sha256()
                for chunk in _read_chunks(fd):
                    digest.update(chunk)
                os.fchmod(fd, FILE_MODE)
                os.fsync(fd)
                raw_sha = digest.hexdigest()
                entry = WalEntry(name, "segment", timeline, segno, name, size, raw_sha, raw_sha, datetime.now(UTC))
                self._append(entry, whole)
                return entry
            sealed = self.segments / f"{name}.gz"
            if sealed.exists():
                # crashed after the rename, before the catalog line: keep it if it holds this segment
                digest = hashlib.sha256()
                for chunk in _read_chunks(fd):
                    digest.update(chunk)
                raw_sha = digest.hexdigest()
                reuse = self._gz_identity(sealed, segment_size)
                if reuse is not None and reuse[2] == raw_sha:
                    os.chmod(sealed, FILE_MODE)
                    entry = WalEntry(
                        name, "segment", timeline, segno, sealed.name, reuse[0], reuse[1], raw_sha, datetime.now(UTC)
                    )
                    self._append(entry, whole)
                    self._drop(raw)
                    return entry
                os.lseek(fd, 0, os.SEEK_SET)
            sealed_size, sealed_sha, raw_sha = self._write_gz(fd, name, sealed, level, segment_size)
        finally:
            os.close(fd)
        entry = WalEntry(
            name, "segment", timeline, segno, sealed.name, sealed_size, sealed_sha, raw_sha, datetime.now(UTC)
        )
        self._append(entry, whole)
        self._drop(raw)
        return entry

    def _write_gz(self, fd: int, name: str, sealed: Path, level: int, segment_size: int) -> tuple[int, str, str]:
        tmp = self.segments / f".{name}.gz{_TMP_MARK}{secrets.token_hex(6)}"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        try:
            sink = _Sink(out)
            raw_digest = hashlib.sha256()
            copied = _gzip_stream(fd, sink, level, raw_digest)
            if copied != segment_size:  # it changed under us: nothing of it is trusted
                raise WalError(f"{name} changed size while being sealed ({copied} bytes read, {segment_size} expected)")
            os.fchmod(out, FILE_MODE)
            os.fsync(out)
        except BaseException:
            os.close(out)
            tmp.unlink(missing_ok=True)
            raise
        os.close(out)
        os.replace(tmp, sealed)
        fsync_dir(self.segments)
        return sink.size, sink.digest.hexdigest(), raw_digest.hexdigest()

    def _gz_identity(self, sealed: Path, segment_size: int) -> tuple[int, str, str] | None:
        """(size, sha256, raw sha256) of a ``.gz`` holding exactly one segment, None if it does not."""
        fd = _open_regular(sealed)
        sealed_bytes, raw_digest, raw_size = _HashedChunks(fd), hashlib.sha256(), 0
        try:
            for out in _gunzip_chunks(sealed_bytes, segment_size, sealed.name):
                raw_digest.update(out)
                raw_size += len(out)
        except CorruptWal:
            return None
        finally:
            os.close(fd)
        if raw_size != segment_size:
            return None
        return sealed_bytes.size, sealed_bytes.digest.hexdigest(), raw_digest.hexdigest()

    def _seal_orphan(self, sealed: Path, catalogued: dict[str, WalEntry], segment_size: int, whole: int) -> WalEntry:
        """A ``<seg>.gz`` nobody catalogued (a crash after its rename, or after a removal's
        catalog rewrite): catalog it again when it holds a whole segment; the raw file, if
        present, is sealed through its own name instead."""
        name = sealed.name[:-3]
        if (self.segments / name).exists():
            raise WalError(f"{sealed.name} has its raw segment {name} beside it: seal {name} instead")
        known = catalogued.get(name)
        if known is not None:
            if known.file == sealed.name:
                return known
            raise WalConflict(f"{sealed.name} is a second sealed copy of {name} (catalogued as {known.file})")
        identity = self._gz_identity(sealed, segment_size)
        if identity is None:
            raise CorruptWal(f"{sealed.name} does not decompress to one whole {segment_size}-byte segment")
        timeline, segno = parse_wal_name(name, segment_size)  # type: ignore[misc]
        os.chmod(sealed, FILE_MODE)
        entry = WalEntry(
            name, "segment", timeline, segno, sealed.name, identity[0], identity[1], identity[2], datetime.now(UTC)
        )
        self._append(entry, whole)
        return entry

    def _seal_history(self, path: Path, catalogued: dict[str, WalEntry], whole: int) -> WalEntry:
        """History files stay uncompressed (a few bytes); their switches go into the catalog."""
        name = path.name
        fd = _open_regular(path)
        try:
            data = b"".join(_read_chunks(fd))
            if len(data) > MAX_HISTORY_BYTES:
                raise WalError(f"{name} is {len(data)} bytes: not a timeline history file")
            sha = hashlib.sha256(data).hexdigest()
            known = catalogued.get(name)
            if known is not None:
                if known.sha256 != sha:
                    raise WalConflict(f"{name} changed since it was sealed (sha256 {known.sha256}, now {sha})")
                return known
            timeline = history_timeline(name)
            switches = tuple(read_history(data.decode("utf-8", errors="strict")))
            if not switches or switches[-1][0] >= timeline:  # type: ignore[operator]
                raise WalError(f"{name} does not list timeline {timeline}'s parents")
            os.fchmod(fd, FILE_MODE)
            os.fsync(fd)
        except UnicodeDecodeError:
            raise WalError(f"{name} is not text: not a timeline history file") from None
        finally:
            os.close(fd)
        entry = WalEntry(name, "history", timeline, None, name, len(data), sha, sha, datetime.now(UTC), switches)  # type: ignore[arg-type]
        self._append(entry, whole)
        return entry

    def _drop(self, raw: Path) -> None:
        raw.unlink(missing_ok=True)
        fsync_dir(self.segments)

    def _sweep_tmp(self, name: str) -> None:
        """Leftovers of a sealer killed while writing ``name`` (under the lock nobody else writes them)."""
        for tmp in self.segments.glob(f".{name}.gz{_TMP_MARK}*"):
            tmp.unlink(missing_ok=True)

    def sweep(self) -> list[str]:
        """Remove every hidden tmp file a killed sealer or catalog rewrite left; returns their names."""
        removed = []
        with self.lock():  # the only writers of these names hold the lock too
            for folder, pattern in ((self.segments, f".*.gz{_TMP_MARK}*"), (self.root, f".{CATALOG_NAME}{_TMP_MARK}*")):
                for tmp in sorted(folder.glob(pattern)):
                    if tmp.is_file() and not tmp.is_symlink():
                        tmp.unlink(missing_ok=True)
                        removed.append(tmp.name)
        return removed

    def completed_unsealed(self) -> list[Path]:
        """What :meth:`seal` still has to do, oldest first: raw completed segments and history
        files not (or not finally) sealed, and ``<seg>.gz`` files nobody catalogued."""
        header, entries, _ = self._read_catalog()
        if header is None or not self.segments.is_dir():
            return []
        segment_size = header["wal_segment_size"]
        catalogued = {e.name: e for e in entries}
        todo: list[tuple[tuple[int, int, int], Path]] = []
        for path in self.segments.iterdir():
            name = path.name
            parsed = parse_wal_name(name, segment_size)
            if parsed is not None:
                known = catalogued.get(name)
                if known is None or known.file != name:  # unsealed, or sealed but the raw copy not dropped
                    todo.append(((parsed[0], 1, parsed[1]), path))
            elif is_history_name(name):
                if name not in catalogued:
                    todo.append(((history_timeline(name), 0, 0), path))  # type: ignore[arg-type]
            elif name.endswith(".gz") and (parsed := parse_wal_name(name[:-3], segment_size)) is not None:
                if name[:-3] not in catalogued and not (self.segments / name[:-3]).exists():
                    todo.append(((parsed[0], 1, parsed[1]), path))
        return [p for _, p in sorted(todo)]

    def partials(self) -> list[Path]:
        """Every ``<seg>.partial`` in segments/, oldest (timeline, segno) first: the newest is the
        segment being received; older ones are the unfinished last segments of ended timelines."""
        try:
            segment_size = self.segment_size
        except WalError:
            segment_size = DEFAULT_SEGMENT_SIZE
        found = []
        if not self.segments.is_dir():
            return []
        for path in self.segments.glob("*.partial"):
            parsed = parse_wal_name(path.name[: -len(".partial")], segment_size)
            if parsed is not None:
                found.append((parsed, path))
        return [p for _, p in sorted(found)]

    def partial(self) -> Path | None:
        """The newest ``<seg>.partial`` (the segment being received), None if there is none."""
        found = self.partials()
        return found[-1] if found else None

    # -- what the receiver has received (its heartbeat, the growing segment)

    def status(self) -> dict[str, Any] | None:
        """The receiver's heartbeat (``receiver.json``), None when absent or unreadable (a torn write is absent)."""
        try:
            value = json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def latest_received(self, entries: Sequence[WalEntry]) -> datetime | None:
        """When WAL was last received: the newest of the last sealed segment's seal time, the
        growing segment's last write, and the heartbeat of a receiver that says it streams."""
        times: list[datetime] = [e.sealed_at for e in entries if e.kind == "segment"][-1:]
        partial = self.partial()
        if partial is not None:
            try:
                times.append(as_utc(datetime.fromtimestamp(partial.stat().st_mtime).astimezone()))
            except FileNotFoundError:
                pass
        status = self.status()
        if status and status.get("state") == "streaming" and status.get("heartbeat_at"):
            try:
                times.append(parse_time(status["heartbeat_at"]))
            except ValueError:
                pass
        return max(times) if times else None

    def received_end_lsn(self, entries: Sequence[WalEntry], segment_size: int) -> int:
        """An upper bound of the WAL received: the end of the growing segment, else of the last sealed one."""
        ends = [
            segment_start_lsn(e.segno + 1, segment_size) for e in entries if e.kind == "segment" and e.segno is not None
        ]
        partial = self.partial()
        if partial is not None:
            parsed = parse_wal_name(partial.name[: -len(".partial")], segment_size)
            if parsed is not None:
                ends.append(segment_start_lsn(parsed[1] + 1, segment_size))
        return max(ends, default=0)

    def received_end_segno(self, entries: Sequence[WalEntry], segment_size: int) -> int | None:
        """The last segment that must be sealed while the receiver writes a later one: the one
        before the growing ``.partial`` (on the newest timeline). A segment missing right
        before it is a gap, though it is at the end of the catalog. None without a partial."""
        partial = self.partial()
        parsed = parse_wal_name(partial.name[: -len(".partial")], segment_size) if partial is not None else None
        if parsed is None:
            return None
        newest = newest_timeline(entries)
        if newest is not None and parsed[0] != newest:
            return None
        return parsed[1] - 1

    # -- reading back

    def path_of(self, entry: WalEntry) -> Path:
        return self.segments / entry.file

    def find(self, name: str) -> WalEntry | None:
        """The catalogued file of that WAL name (segment or history), None if not catalogued."""
        return next((e for e in self.entries() if e.name == name), None)

    def extract(self, entry: WalEntry, dest: Path | str, *, fsync: bool = False) -> None:
        """Write the WAL file ``entry`` to ``dest`` (hidden tmp beside it, then rename), checking
        the sealed file's sha256 while reading and the WAL's own sha256 and size after.
        CorruptWal naming the file when either differs; ``dest`` is then untouched."""
        dest = Path(dest)
        segment_size = self.segment_size if entry.kind == "segment" else MAX_HISTORY_BYTES
        source = self.path_of(entry)
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise CorruptWal(f"{entry.file} is catalogued but missing from {self.segments}") from None
        tmp = dest.with_name(f".{dest.name}{_TMP_MARK}{secrets.token_hex(6)}")
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        try:
            sealed_bytes, raw_digest, raw_size = _HashedChunks(fd), hashlib.sha256(), 0
            stream = _gunzip_chunks(sealed_bytes, segment_size, entry.file) if entry.compressed else sealed_bytes
            for chunk in stream:
                raw_digest.update(chunk)
                raw_size += len(chunk)
                _write_all(out, chunk)
            size, digest = sealed_bytes.size, sealed_bytes.digest
            if size != entry.size or digest.hexdigest() != entry.sha256:
                raise CorruptWal(
                    f"{entry.file} does not match the catalog ({size} bytes, sha256 {digest.hexdigest()}; "
                    f"catalogued {entry.size} bytes, {entry.sha256}): the sealed file changed"
                )
            if raw_digest.hexdigest() != entry.raw_sha256 or (entry.kind == "segment" and raw_size != segment_size):
                raise CorruptWal(f"{entry.file} decompresses to other WAL than was sealed ({raw_size} bytes)")
            if fsync:
                os.fsync(out)
        except BaseException:
            os.close(out)
            tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        os.close(out)
        os.replace(tmp, dest)

    def extract_partial(self, path: Path | str, dest: Path | str) -> None:
        """Copy a raw ``<seg>.partial`` to ``dest`` (restores to the end of the stream replay the
        growing segment too). pg_receivewal pads it to the full segment size; a copy taken
        while it grows may end mid-record, which recovery reads as the end of WAL."""
        path, dest = Path(path), Path(dest)
        if path.parent.resolve() != self.segments.resolve() or not path.name.endswith(".partial"):
            raise WalError(f"{path} is not a .partial segment of {self.segments}")
        segment_size = self.segment_size
        fd = _open_regular(path)
        tmp = dest.with_name(f".{dest.name}{_TMP_MARK}{secrets.token_hex(6)}")
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        try:
            copied = 0
            while copied < segment_size and (chunk := os.read(fd, min(CHUNK_BYTES, segment_size - copied))):
                _write_all(out, chunk)
                copied += len(chunk)
            if copied != segment_size:
                raise WalError(f"{path.name} is {copied} bytes, not a padded {segment_size}-byte segment")
        except BaseException:
            os.close(out)
            tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        os.close(out)
        os.replace(tmp, dest)

    def verify(self, entry: WalEntry, *, deep: bool = False) -> str | None:
        """Re-read a sealed file against its catalogued size and sha256 (``deep``: decompress
        and check the WAL's own sha256 too). The problem, or None."""
        source = self.path_of(entry)
        try:
            size, sha = _hash_file(source)
        except WalError:
            return "missing" if not source.exists() else "unreadable"
        if size != entry.size:
            return f"{size} bytes, catalogued {entry.size}: changed since sealed"
        if sha != entry.sha256:
            return "sha256 differs from the catalog: changed since sealed"
        if deep and entry.compressed:
            identity = self._gz_identity(source, self.segment_size)
            if identity is None or identity[2] != entry.raw_sha256:
                return "does not decompress to the WAL that was sealed"
        return None

    # -- removing

    def remove(self, entries: Iterable[WalEntry]) -> list[str]:
        """Take catalogued files out of the archive: under the lock, rewrite the catalog without
        them (tmp + fsync + rename), then delete their files. Refuses, before any change, a file
        that is not catalogued as given. Returns the names removed."""
        doomed = {e.name: e for e in entries}
        if not doomed:
            return []
        with self.lock():
            header, current, _ = self._read_catalog()
            if header is None:
                raise WalError(f"the WAL archive {self.root} has no catalog: nothing to remove")
            by_name = {e.name: e for e in current}
            strangers = sorted(n for n, e in doomed.items() if by_name.get(n) is None or by_name[n].sha256 != e.sha256)
            if strangers:
                raise WalError(f"not removing anything: not catalogued as given: {', '.join(strangers[:5])}")
            self._write_catalog(header, [e for e in current if e.name not in doomed])
            for entry in doomed.values():
                (self.segments / entry.file).unlink(missing_ok=True)
            fsync_dir(self.segments)
        return sorted(doomed, key=lambda n: by_name[n].sort_key)


# ----------------------------------------------------------------------------- the chain


def timeline_lineage(entries: Iterable[WalEntry], timeline: int) -> list[tuple[int, int, int | None]] | None:
    """[(timeline, begin LSN, end LSN or None)] from timeline 1 down to ``timeline``, read from
    its history file; None when ``timeline`` > 1 has no catalogued history file."""
    _check_timeline(timeline)
    if timeline == 1:
        return [(1, 0, None)]
    history = next((e for e in entries if e.kind == "history" and e.timeline == timeline), None)
    if history is None:
        return None
    lineage: list[tuple[int, int, int | None]] = []
    begin = 0
    for parent, switch in history.switches:
        lineage.append((parent, begin, switch))
        begin = switch
    lineage.append((timeline, begin, None))
    return lineage


def _needed(
    entries: Sequence[WalEntry],
    start_timeline: int,
    start_lsn: int,
    *,
    segment_size: int,
    end_timeline: int | None,
    end_segno: int | None,
) -> tuple[list[tuple[int, int]], list[WalEntry], list[str]]:
    """(segments needed in replay order, history entries of the lineage, problems)."""
    _check_timeline(start_timeline)
    _check_lsn(start_lsn)
    check_segment_size(segment_size)
    if not any(e.kind == "segment" for e in entries):
        return [], [], ["no WAL segments in the catalog: nothing to check"]
    target = end_timeline if end_timeline is not None else newest_timeline(entries)
    assert target is not None
    _check_timeline(target)
    lineage = timeline_lineage(entries, target)
    if lineage is None:
        return (
            [],
            [],
            [
                f"timeline {target} has no history file {history_name(target)} in the catalog: "
                f"cannot follow the chain from timeline {start_timeline}"
            ],
        )
    tlis = [t for t, _, _ in lineage]
    if start_timeline not in tlis:
        path = " -> ".join(str(t) for t in tlis)
        return [], [], [f"timeline {start_timeline} is not an ancestor of timeline {target} (its history: {path})"]
    first_index = tlis.index(start_timeline)
    _, begin, end = lineage[first_index]
    if end is not None and start_lsn >= end:
        return (
            [],
            [],
            [
                f"start {format_lsn(start_lsn)} on timeline {start_timeline} is after that timeline ended at "
                f"{format_lsn(end)}: not on the history of timeline {target}"
            ],
        )
    problems: list[str] = []
    histories = {e.timeline: e for e in entries if e.kind == "history"}
    for tli in tlis[first_index + 1 :]:
        if tli not in histories:
            problems.append(f"missing history file {history_name(tli)} (timeline {tli})")
    catalogued: dict[int, set[int]] = {}
    for e in entries:
        if e.kind == "segment":
            catalogued.setdefault(e.timeline, set()).add(e.segno)  # type: ignore[arg-type]
    needed: list[tuple[int, int]] = []
    for index in range(first_index, len(lineage)):
        tli, begin, end = lineage[index]
        first = segno_of(start_lsn, segment_size) if tli == start_timeline else segno_of(begin, segment_size)
        if end is not None:
            last = segno_of(end, segment_size) - 1
        elif end_segno is not None:
            last = end_segno
            if last < first:
                problems.append(
                    f"the end ({segment_name(tli, end_segno, segment_size)}) is before the start "
                    f"({segment_name(tli, first, segment_size)}) on timeline {tli}"
                )
        else:
            # to the newest sealed segment; the start timeline needs at least its start segment
            last = max((s for s in catalogued.get(tli, ()) if s >= first), default=first - 1)
            if tli == start_timeline:
                last = max(last, first)
        needed += [(tli, s) for s in range(first, last + 1)]
    start_segment = (start_timeline, segno_of(start_lsn, segment_size))
    missing = [(t, s) for t, s in needed if s not in catalogued.get(t, ())]
    for t, lo, hi in _runs(missing):
        if (t, lo) == start_segment:
            what = "missing start segment"
        else:
            what = "missing"
        if lo == hi:
            problems.append(f"{what} {segment_name(t, lo, segment_size)} (timeline {t})")
        else:
            problems.append(
                f"{what} {segment_name(t, lo, segment_size)}..{segment_name(t, hi, segment_size)} "
                f"(timeline {t}, {hi - lo + 1} segments)"
            )
    lineage_histories = [histories[t] for t in tlis if t in histories]
    return needed, lineage_histories, problems


def _runs(items: list[tuple[int, int]]) -> Iterator[tuple[int, int, int]]:
    """Consecutive (timeline, segno) pairs grouped as (timeline, first, last)."""
    run: list[int] | None = None
    for t, s in items:
        if run and run[0] == t and run[2] + 1 == s:
            run[2] = s
            continue
        if run:
            yield run[0], run[1], run[2]
        run = [t, s, s]
    if run:
        yield run[0], run[1], run[2]


def check_chain(
    entries: Sequence[WalEntry],
    start_timeline: int,
    start_lsn: int,
    *,
    segment_size: int,
    end_lsn: int | None = None,
    end_timeline: int | None = None,
    end_segno: int | None = None,
) -> list[str]:
    """Problems with the WAL from ``start_lsn`` on ``start_timeline`` (a base backup's start)
    to ``end_lsn`` (exclusive) / ``end_segno`` (inclusive) on ``end_timeline`` (default: the
    newest sealed segment of the newest timeline). [] means complete; no segment at all is a
    problem. Gaps are named by segment and timeline."""
    if end_lsn is not None:
        end_segno = last_segno_before(end_lsn, segment_size)
    _, _, problems = _needed(
        list(entries),
        start_timeline,
        start_lsn,
        segment_size=segment_size,
        end_timeline=end_timeline,
        end_segno=end_segno,
    )
    return problems


def chain_entries(
    entries: Sequence[WalEntry],
    start_timeline: int,
    start_lsn: int,
    *,
    segment_size: int,
    end_timeline: int | None = None,
    end_segno: int | None = None,
) -> list[WalEntry]:
    """The catalogued files recovery from ``start_lsn`` needs, in order: the lineage's history
    files (oldest timeline first), then the segments in replay order. ChainBroken naming every
    gap when one is missing."""
    entries = list(entries)
    needed, histories, problems = _needed(
        entries, start_timeline, start_lsn, segment_size=segment_size, end_timeline=end_timeline, end_segno=end_segno
    )
    if problems:
        raise ChainBroken("; ".join(problems))
    by_key = {(e.timeline, e.segno): e for e in entries if e.kind == "segment"}
    return histories + [by_key[key] for key in needed]
