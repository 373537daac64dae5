"""Base backups for point-in-time recovery: ``pg_basebackup`` into the backup repository.

A base backup is a normal repository backup (series ``postgres_pitr``, no subject): the tar
of the data directory (client-side compression) and the server's ``backup_manifest``,
staged, sealed and published by the one atomic rename every backup goes through.

It is taken with ``-X none``: the WAL that makes it consistent is already streamed into the
WAL archive by the receiver service. So a base backup is published only once the WAL from
its start segment to its stop segment is *sealed* in the archive's catalog (sha256, 0600):
a published base backup can always be restored. If that WAL does not arrive within
``wait_for_wal_s`` (the receiver is down, or behind), nothing is published and the task
fails saying so.

Before any work the server's configuration is checked (wal_level, max_wal_senders, the
role's REPLICATION attribute, a pg_hba.conf entry for a replication connection, the same
cluster as the archive's): a clear refusal names everything missing; dbops never changes
server settings.

Seal-time check (cheap, but it reads everything once): ``backup_manifest``'s own
Manifest-Checksum, the tar read to its end (the compressor's own checksum included) with
every file the manifest lists present at its size, and the cluster's system identifier
from ``global/pg_control`` in the tar equal to the archive's. The per-file CRCs of the
manifest are checked by ``pg_verifybackup`` in the PITR drill, on the extracted copy.

No Airflow import: the task layer builds the endpoints from connections and calls
:func:`take_base_backup`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import lz4.frame
import psycopg
import zstandard
from psycopg.rows import dict_row

from dbops.backup.adapter import BackupRefused, Check, Endpoint, LogFn
from dbops.backup.repository import Backup, BackupRepository, RepositoryError, as_utc, format_time
from dbops.pitr.wal import (
    BASE_STORE,
    WalArchive,
    check_chain,
    format_lsn,
    last_segno_before,
    parse_lsn,
    parse_wal_name,
    segment_name,
    segno_of,
)
from dbops.sqlfiles import load_sql
from dbops.stores.postgres.backup import AUTO_ORDER, choose_compression, pg_connect, pg_tool_env, tool_version
from dbops.tools import ToolError, find_tool, run_tool

MANIFEST_FILE = "backup_manifest"  # the server's manifest, kept beside the tar
TAR_NAMES = {"none": "base.tar", "gzip": "base.tar.gz", "lz4": "base.tar.lz4", "zstd": "base.tar.zst"}
# Level 1 for every method: measured with pg_basebackup 16 on a 387 MiB cluster, zstd:1 1.5 s /
# 248 MiB, lz4 1.4 s / 306 MiB, gzip:1 6.7 s / 241 MiB; higher levels cost far more time.
DEFAULT_LEVELS = {"zstd": 1, "lz4": 1, "gzip": 1}
_STALE_STAGING = timedelta(hours=12)
_POLL_S = 0.5


class BaseBackupRefused(BackupRefused):
    """The server or the archive is not ready for a base backup; nothing was done."""


class WalNotSealed(RepositoryError):
    """The WAL a base backup needs was not sealed in time: the backup was not published."""


# --------------------------------------------------------------------------- compression


def _probe_env(tmp: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LC_ALL": "C",
        "PGHOST": str(Path(tmp) / "no-socket-here"),
        "PGPORT": "1",
        "PGUSER": "dbops_probe",
        "PGPASSFILE": str(Path(tmp) / "no-passfile"),
        "PGCONNECT_TIMEOUT": "2",
    }


_PROBED: dict[str, frozenset[str]] = {}


def supported_compressions(pg_basebackup: str | None = None) -> frozenset[str]:
    """The ``client-<method>`` compressions this pg_basebackup was built with ("none" always).

    pg_basebackup validates ``--compress`` before it connects ("this build does not support
    compression with ZSTD"), so each method is tried against a socket that does not exist,
    like the pg_dump probe: a connection error means the method is there. Nothing reaches a
    server; cached per binary.
    """
    binary = os.path.realpath(pg_basebackup or find_tool("pg_basebackup"))
    if binary in _PROBED:
        return _PROBED[binary]
    supported = {"none"}
    with tempfile.TemporaryDirectory(prefix="dbops-bbprobe-") as tmp:
        for method in AUTO_ORDER:
            argv = [
                binary,
                "-D",
                str(Path(tmp) / method),
                "-Ft",
                "-X",
                "none",
                f"--compress=client-{method}",
                "--no-password",
            ]
            proc = subprocess.run(
                argv, env=_probe_env(tmp), capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
            )
            message = proc.stderr.lower()
            if "compression" in message:
                continue
            if "connect" in message or "socket" in message:
                supported.add(method)
    _PROBED[binary] = frozenset(supported)
    return _PROBED[binary]


def resolve_compression(spec: str, pg_basebackup: str | None = None) -> str:
    """``auto``/``gzip``/``zstd:3``/``none`` -> the ``METHOD:LEVEL`` (or ``none``) to use;
    ``auto``: the best this pg_basebackup has. A method it lacks is refused, not replaced."""
    try:
        return choose_compression(
            spec, supported_compressions(pg_basebackup), tool="pg_basebackup", levels=DEFAULT_LEVELS
        )
    except ToolError as exc:
        raise BaseBackupRefused(f"pitr.base_backup_compression: {exc}") from None


def tar_name(compression: str) -> str:
    return TAR_NAMES[compression.split(":", 1)[0]]


# --------------------------------------------------------------------------- the manifest


def read_backup_manifest(path: Path) -> dict[str, Any]:
    """``backup_manifest`` parsed, after checking its own Manifest-Checksum (sha256 of
    everything up to and including the newline before the checksum line, as
    pg_verifybackup computes it). ValueError naming the problem."""
    data = Path(path).read_bytes()
    newlines = _last_newlines(data)
    if len(newlines) < 2:
        raise ValueError(f"{path.name} is truncated (fewer than two lines)")
    penultimate = newlines[-2]
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{path.name} is not valid JSON: {exc}") from None
    recorded = manifest.get("Manifest-Checksum") if isinstance(manifest, dict) else None
    actual = hashlib.sha256(data[: penultimate + 1]).hexdigest()
    if recorded != actual:
        raise ValueError(f"{path.name}: Manifest-Checksum {recorded} does not match its content ({actual})")
    if manifest.get("PostgreSQL-Backup-Manifest-Version") not in (1, 2):
        raise ValueError(
            f"{path.name}: unknown manifest version {manifest.get('PostgreSQL-Backup-Manifest-Version')!r}"
        )
    if not manifest.get("Files") or not manifest.get("WAL-Ranges"):
        raise ValueError(f"{path.name} lists no files or no WAL range")
    return manifest


def _last_newlines(data: bytes) -> list[int]:
    last = data.rfind(b"\n")
    before = data.rfind(b"\n", 0, last) if last > 0 else -1
    return [i for i in (before, last) if i >= 0]


def wal_range(manifest: dict[str, Any]) -> tuple[int, int, int, int]:
    """(start timeline, start LSN, end timeline, end LSN) of the WAL the backup needs."""
    ranges = manifest["WAL-Ranges"]
    first, last = ranges[0], ranges[-1]
    return int(first["Timeline"]), parse_lsn(first["Start-LSN"]), int(last["Timeline"]), parse_lsn(last["End-LSN"])


def stop_segno(stop_lsn: int, start_lsn: int, segment_size: int) -> int:
    """The segment holding the last byte of the backup's WAL (an end exactly on a segment
    boundary belongs to the segment before, as the server names the stop file)."""
    return max(segno_of(start_lsn, segment_size), last_segno_before(max(stop_lsn, 1), segment_size))


# --------------------------------------------------------------------------- reading the tar


@contextmanager
def open_tar(path: Path) -> Iterator[tarfile.TarFile]:
    """The tar at ``path`` as a sequential stream, whatever its compression (by the codecs'
    Python libraries: zlib, python-zstandard, python-lz4). Read to the end after the caller is
    done, where a codec checks its frame checksum; a stream that does not decompress raises
    ToolError naming the file."""
    name = Path(path).name
    method = next((m for m, n in TAR_NAMES.items() if n == name), None)
    if method is None:
        raise ValueError(f"{name} is not a base backup tar ({', '.join(TAR_NAMES.values())})")
    with open(path, "rb") as raw:
        stream: Any = raw
        if method == "gzip":
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        elif method == "zstd":
            stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        elif method == "lz4":
            stream = lz4.frame.LZ4FrameFile(raw, mode="rb")
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                yield tar
            while stream.read(1 << 20):  # to the end: the codec checks its frame checksum there
                pass
        except zstandard.ZstdError as exc:
            raise ToolError(f"{name} cannot be decompressed: {exc}") from exc
        except RuntimeError as exc:
            if not str(exc).startswith("LZ4F"):  # python-lz4's decompression errors
                raise
            raise ToolError(f"{name} cannot be decompressed: {exc}") from exc


def system_identifier_of(pg_control: bytes) -> str:
    """The cluster's system identifier: the first field of ControlFileData (uint64, in the
    server's byte order; little-endian on the platforms dbops runs on)."""
    if len(pg_control) < 8:
        raise ValueError("global/pg_control is shorter than 8 bytes")
    return str(int.from_bytes(pg_control[:8], "little"))


def check_tar(path: Path, manifest: dict[str, Any]) -> tuple[list[Check], str | None]:
    """(checks, system identifier) of a base tar read to its end against ``backup_manifest``."""
    expected = {f["Path"]: int(f["Size"]) for f in manifest["Files"]}
    seen: dict[str, int] = {}
    system_id = None
    try:
        with open_tar(path) as tar:
            for member in tar:
                if member.issym() or member.islnk():
                    return [
                        Check("tar", False, f"{member.name} is a link: tablespaces are not supported by dbops PITR")
                    ], None
                if not member.isfile():
                    continue
                seen[member.name] = member.size
                if member.name == "global/pg_control":
                    handle = tar.extractfile(member)
                    assert handle is not None
                    system_id = system_identifier_of(handle.read())
    except (tarfile.TarError, OSError, EOFError, ToolError, ValueError) as exc:
        return [Check("tar", False, f"{path.name} cannot be read to its end: {exc}")], None
    missing = sorted(p for p in expected if p not in seen)
    wrong = sorted(p for p in expected if p in seen and seen[p] != expected[p])
    extra = sorted(p for p in seen if p not in expected)
    checks = [Check("tar readable", True, f"{path.name}: {len(seen)} files read to the end")]
    problems = []
    if missing:
        problems.append(f"{len(missing)} file(s) of the manifest missing, e.g. {missing[:3]}")
    if wrong:
        problems.append(f"{len(wrong)} file(s) of another size than the manifest says, e.g. {wrong[:3]}")
    if extra:
        problems.append(f"{len(extra)} file(s) not in the manifest, e.g. {extra[:3]}")
    checks.append(
        Check(
            "tar matches backup_manifest",
            not problems,
            "; ".join(problems) or f"all {len(expected)} files at their sizes",
        )
    )
    if system_id is None:
        checks.append(Check("pg_control", False, "no global/pg_control in the tar"))
    return checks, system_id


# --------------------------------------------------------------------------- the server


def _replication_identity(endpoint: Endpoint) -> dict[str, Any]:
    """IDENTIFY_SYSTEM over a replication connection: proves the pg_hba.conf entry, the
    role's REPLICATION attribute and the password, exactly as pg_basebackup will connect."""
    kwargs: dict[str, Any] = {
        "host": endpoint.host,
        "port": endpoint.port,
        "dbname": "replication",
        "replication": "true",
        "application_name": "dbops",
        "connect_timeout": 30,
    }
    if endpoint.login:
        kwargs["user"] = endpoint.login
    if endpoint.password is not None:
        kwargs["password"] = endpoint.password
    for key in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
        if endpoint.extra.get(key) not in (None, ""):
            kwargs[key] = endpoint.extra[key]
    with psycopg.connect(autocommit=True, **kwargs) as conn:
        result = conn.pgconn.exec_(b"IDENTIFY_SYSTEM")
        if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
            raise psycopg.OperationalError((result.error_message or b"IDENTIFY_SYSTEM failed").decode(errors="replace"))
        values = [result.get_value(0, i) or b"" for i in range(result.nfields)]
    return {"system_identifier": values[0].decode(), "timeline": int(values[1]), "lsn": values[2].decode()}


def _replication_problem(exc: Exception, endpoint: Endpoint) -> str:
    text = str(exc)
    role = endpoint.login or "(default user)"
    if "no pg_hba.conf entry for replication" in text:
        return (
            f"pg_hba.conf has no replication entry for role {role} from this worker: add a line such as "
            f"'host replication {role} <worker address>/32 scram-sha-256' and reload ({text.strip().splitlines()[-1]})"
        )
    if "permission denied to start WAL sender" in text or "REPLICATION attribute" in text:
        return f"role {role} may not stream WAL: it needs the REPLICATION attribute (ALTER ROLE {role} REPLICATION)"
    if "exceeds max_wal_senders" in text or "too many" in text.lower():
        return f"no free WAL sender: every one of max_wal_senders is in use ({text.strip()})"
    if "password authentication failed" in text:
        return f"password authentication failed for replication role {role} (check its Airflow connection)"
    return f"a replication connection as {role} to {endpoint.host}:{endpoint.port} failed: {text.strip()}"


def check_server(admin: Endpoint, replication: Endpoint, archive: WalArchive) -> dict[str, Any]:
    """Every setting dbops needs, checked and reported together; BaseBackupRefused naming each
    one that is missing. Nothing on the server is changed."""
    problems: list[str] = []
    header = archive.header() if archive.catalog_path.exists() else None
    if header is None:
        problems.append(
            f"the WAL archive {archive.root} has no catalog yet: start the WAL receiver first "
            "(a base backup without its WAL restores nothing)"
        )
    try:
        with pg_connect(admin, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
            facts = cur.execute(load_sql("pitr/base_backup_server.sql"), {"role": replication.login}).fetchone()
    except psycopg.Error as exc:
        raise BaseBackupRefused(f"cannot read the server's settings over {admin!r}: {exc}") from None
    assert facts is not None
    if facts["wal_level"] not in ("replica", "logical"):
        problems.append(f"wal_level is {facts['wal_level']!r}: set wal_level = replica and restart the server")
    if facts["max_wal_senders"] < 1:
        problems.append("max_wal_senders is 0: pg_basebackup needs a WAL sender (set it to 10 and restart)")
    elif facts["wal_senders_in_use"] >= facts["max_wal_senders"]:
        problems.append(
            f"all {facts['max_wal_senders']} WAL senders are in use (max_wal_senders): raise it and restart"
        )
    if replication.login and facts["role_exists"] is False:
        problems.append(f"role {replication.login} does not exist on the server")
    elif replication.login and not facts["role_can_replicate"]:
        problems.append(
            f"role {replication.login} lacks the REPLICATION attribute (ALTER ROLE {replication.login} REPLICATION)"
        )
    if header is not None:
        if str(header.get("system_identifier")) != facts["system_identifier"]:
            problems.append(
                f"the server is cluster {facts['system_identifier']} but the WAL archive holds the WAL of "
                f"cluster {header.get('system_identifier')}: a base backup of it could never be recovered "
                "with that WAL"
            )
        if int(header.get("wal_segment_size") or 0) != facts["wal_segment_size"]:
            problems.append(
                f"the server's wal_segment_size is {facts['wal_segment_size']}, the archive's "
                f"{header.get('wal_segment_size')}"
            )
    if not problems:
        try:
            _replication_identity(replication)
        except psycopg.Error as exc:
            problems.append(_replication_problem(exc, replication))
    if problems:
        raise BaseBackupRefused(
            "the server is not ready for point-in-time recovery base backups: " + "; ".join(problems)
        )
    return dict(facts)


def _switch_wal(admin: Endpoint) -> str | None:
    """pg_switch_wal(): the current segment is completed now (the receiver then seals it)."""
    with pg_connect(admin, autocommit=True) as conn:
        row = conn.execute(load_sql("pitr/switch_wal.sql")).fetchone()
    return None if row is None else str(row[0])


def _current_lsn(admin: Endpoint) -> int:
    with pg_connect(admin, autocommit=True) as conn:
        row = conn.execute(load_sql("pitr/current_wal_lsn.sql")).fetchone()
    assert row is not None
    return parse_lsn(str(row[0]))


def wait_for_sealed(
    archive: WalArchive,
    admin: Endpoint,
    *,
    timeline: int,
    start_lsn: int,
    end_lsn: int,
    segment_size: int,
    timeout_s: float,
    log: LogFn,
    only_end: bool = False,
) -> float:
    """Wait until the WAL from ``start_lsn`` to ``end_lsn`` (exclusive) is sealed in the catalog;
    returns the seconds waited. ``only_end``: wait only for the last segment (a gap before it
    is for the caller to name, not to wait for). If the last segment needed is still the
    server's current one, ``pg_switch_wal()`` completes it (once). WalNotSealed after ``timeout_s``."""
    started = time.monotonic()
    last_segno = stop_segno(end_lsn, start_lsn, segment_size)
    last_segment = segment_name(timeline, last_segno, segment_size)
    switched = False
    problems: list[str] = []
    while True:
        entries = archive.entries()
        if only_end:
            sealed = any(
                e.kind == "segment" and e.timeline >= timeline and (e.segno or 0) >= last_segno for e in entries
            )
            partial = archive.partial()
            receiving = parse_wal_name(partial.name[: -len(".partial")], segment_size) if partial else None
            # the receiver writes a later segment and nothing waits to be sealed: it went past
            past = receiving is not None and receiving[1] > last_segno and not archive.completed_unsealed()
            problems = [] if sealed or past else [f"segment {last_segment} (or a later one) not sealed yet"]
        else:
            problems = check_chain(
                entries,
                timeline,
                start_lsn,
                segment_size=segment_size,
                end_lsn=max(end_lsn, start_lsn + 1),
                end_timeline=timeline,
            )
        if not problems:
            waited = time.monotonic() - started
            log(
                f"WAL {format_lsn(start_lsn)}..{format_lsn(end_lsn)} (up to {last_segment}) is sealed in the archive "
                f"(waited {waited:.1f}s)"
            )
            return waited
        if not switched:
            try:
                if segno_of(_current_lsn(admin), segment_size) <= last_segno:
                    where = _switch_wal(admin)
                    log(f"{last_segment} was still being written: pg_switch_wal() completed it (at {where})")
                switched = True
            except psycopg.Error as exc:  # no privilege: archive_timeout or traffic completes it
                log(f"could not complete the current WAL segment (pg_switch_wal: {str(exc).strip()}); waiting for it")
                switched = True
        if time.monotonic() - started > timeout_s:
            status = archive.status_path
            heartbeat = status.read_text()[:300] if status.exists() else "no receiver.json"
            raise WalNotSealed(
                f"the WAL needed ({format_lsn(start_lsn)}..{format_lsn(end_lsn)}, up to {last_segment}) "
                f"was not sealed within {timeout_s:.0f}s (pitr.wait_for_wal_s): {'; '.join(problems[:3])}. "
                f"Is the WAL receiver running and streaming? Its heartbeat: {heartbeat}"
            )
        time.sleep(_POLL_S)


# --------------------------------------------------------------------------- the backup


def take_base_backup(
    repo: BackupRepository,
    archive: WalArchive,
    *,
    endpoint: Endpoint,
    admin: Endpoint,
    compression: str = "auto",
    wait_for_wal_s: float = 300.0,
    run_id: str,
    dag_id: str,
    logical_date: datetime | None,
    log: LogFn,
    bin_dir: str | Path | None = None,
    force: bool = False,
) -> Backup:
    """pg_basebackup (tar, client-side compression, ``-X none``) of the cluster at ``endpoint``
    (the replication role) into a new ``postgres_pitr`` backup, published once its WAL is
    sealed in ``archive``. ``admin``: a normal SQL connection (checks, server time,
    ``pg_switch_wal()``). A rerun of a run whose base backup is published returns it (unless
    ``force``). BaseBackupRefused before any work when the server or archive is not ready."""
    pg_basebackup = str(Path(bin_dir) / "pg_basebackup") if bin_dir else find_tool("pg_basebackup")
    version = tool_version(pg_basebackup)
    resolved = resolve_compression(compression, pg_basebackup)
    facts = check_server(admin, endpoint, archive)
    segment_size = int(facts["wal_segment_size"])
    with repo.writer_lock(BASE_STORE, None, holder=f"{dag_id} run {run_id}"):
        for removed in repo.sweep(BASE_STORE, None, older_than=_STALE_STAGING):
            log(f"swept stale staging folder {removed}")
        existing = repo.find_by_run(BASE_STORE, None, run_id, dag_id=dag_id)
        if existing is not None and not force:
            log(f"base backup {existing.backup_id} already made by this run: nothing to do")
            return existing
        started = time.monotonic()
        with repo.begin(BASE_STORE, None, run_id=run_id, dag_id=dag_id, logical_date=logical_date) as staging:
            label = f"dbops-{staging.backup_id}"
            argv = [
                pg_basebackup,
                "-D",
                str(staging.path),
                "--format=tar",
                "--wal-method=none",
                "--checkpoint=fast",
                f"--label={label}",
                "--no-password",
                "--verbose",
                # the repository fsyncs every file when it seals: pg_basebackup's own sync is redundant
                "--no-sync",
            ]
            if resolved != "none":
                argv.append(f"--compress=client-{resolved}")
            log(
                f"pg_basebackup of {endpoint.host}:{endpoint.port} as {endpoint.login}: tar, compression {resolved}, "
                f"WAL from the archive ({version})"
            )
            with pg_tool_env(endpoint) as env:
                run_tool(argv, log=log, env=env, progress_path=staging.path)
            with pg_connect(admin, autocommit=True) as conn:
                consistent_at = conn.execute(load_sql("pitr/server_time.sql")).fetchone()[0]  # type: ignore[index]
            seconds = time.monotonic() - started
            tars = sorted(p.name for p in staging.path.iterdir() if p.name != MANIFEST_FILE)
            expected_tar = tar_name(resolved)
            if tars != [expected_tar]:
                raise BaseBackupRefused(
                    f"pg_basebackup wrote {tars}, expected only {expected_tar}: "
                    "clusters with tablespaces are not supported by dbops point-in-time recovery"
                )
            manifest = read_backup_manifest(staging.path / MANIFEST_FILE)
            timeline, start_lsn, end_timeline, stop_lsn = wal_range(manifest)
            if end_timeline != timeline:
                raise BaseBackupRefused(
                    f"the server changed timeline during the base backup ({timeline} -> {end_timeline}): take it again"
                )
            start_seg = segno_of(start_lsn, segment_size)
            stop_seg = stop_segno(stop_lsn, start_lsn, segment_size)
            log(
                f"base backup WAL: timeline {timeline}, {format_lsn(start_lsn)}..{format_lsn(stop_lsn)} "
                f"({segment_name(timeline, start_seg, segment_size)}.."
                f"{segment_name(timeline, stop_seg, segment_size)}), consistent at "
                f"{format_time(as_utc(consistent_at))}"
            )
            try:
                waited = wait_for_sealed(
                    archive,
                    admin,
                    timeline=timeline,
                    start_lsn=start_lsn,
                    end_lsn=stop_lsn,
                    segment_size=segment_size,
                    timeout_s=wait_for_wal_s,
                    log=log,
                )
            except WalNotSealed as exc:
                raise WalNotSealed(f"base backup not published: {exc}") from None
            header = archive.header() or {}
            details = {
                "timeline": timeline,
                "start_lsn": format_lsn(start_lsn),
                "stop_lsn": format_lsn(stop_lsn),
                "start_segment": segment_name(timeline, start_seg, segment_size),
                "stop_segment": segment_name(timeline, stop_seg, segment_size),
                "system_identifier": facts["system_identifier"],
                "wal_segment_size": segment_size,
                "consistent_at": format_time(as_utc(consistent_at)),
                "server_version": facts["server_version"],
                "server_version_num": facts["server_version_num"],
                "compression": resolved,
                "tar": expected_tar,
                "label": label,
                "bootstrap_superuser": facts["bootstrap_superuser"],
                "databases": facts["databases"],
                "seconds": round(seconds, 3),
                "wal_wait_seconds": round(waited, 3),
            }
            sealed = Check(
                "wal sealed", True, f"{details['start_segment']}..{details['stop_segment']} sealed in the catalog"
            )

            def tool_check(path: Path, draft: dict[str, Any]) -> list[Check]:
                checks = [Check("backup_manifest checksum", True, "Manifest-Checksum matches")]
                try:
                    read_backup_manifest(path / MANIFEST_FILE)  # again: the staged file as it will be sealed
                except (OSError, ValueError) as exc:
                    return [Check("backup_manifest checksum", False, str(exc))]
                tar_checks, system_id = check_tar(path / expected_tar, manifest)
                checks += tar_checks
                if system_id is not None:
                    same = system_id == str(header.get("system_identifier"))
                    checks.append(
                        Check(
                            "system identifier",
                            same,
                            f"pg_control says {system_id}, the WAL archive {header.get('system_identifier')}",
                        )
                    )
                for check in checks:
                    log(f"check {check.name}: {'ok' if check.ok else 'FAILED'} {check.detail}")
                return checks

            backup = staging.seal(
                {
                    "tool": "pg_basebackup",
                    "tool_version": version,
                    "server_version": facts["server_version"],
                    "compression": resolved,
                    "details": details,
                },
                [sealed],
                check=tool_check,
            )
    log(
        f"base backup {backup.backup_id} published: {backup.total_bytes} bytes in {time.monotonic() - started:.1f}s "
        f"-> {backup.path}"
    )
    return backup
