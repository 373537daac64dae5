"""PostgreSQL backups with the standard tools: pg_dump -Fd -j, pg_dumpall --globals-only, pg_restore -j.

No Airflow import: the Airflow layer builds an :class:`~dbops.backup.adapter.Endpoint`
from a connection and hands it in.

Credentials: the password reaches the tools only through a 0600 passfile (``PGPASSFILE``)
in a private 0700 temporary folder that is removed when the tool has finished, whether it
succeeded or not. It is never on a command line, and ``PGPASSWORD`` is neutralised (an
empty ``PGPASSWORD`` makes libpq fall back to the passfile) so a value inherited from the
worker's environment cannot win. Host, port, user and database go through ``PG*``
environment variables as well, so a database name can never be taken for an option or
a connection string.

Consistency: dbops exports a snapshot from a REPEATABLE READ transaction, runs
``pg_dump --snapshot`` in it (its ``--jobs`` workers import the same snapshot), and
describes the database (tables, row counts, sampled checksums, database-level state) in
that same transaction while it stays open: the description a drill or a restore compares
with is exactly what the dump holds, however busy the database is. It does
not use ``--serializable-deferrable``, which can wait indefinitely for a safe snapshot.
``--lock-wait-timeout`` (default 10min) makes a dump fail instead of waiting forever
for a table someone holds ACCESS EXCLUSIVE.

Compression "auto" picks zstd, then lz4, then gzip, as the pg_dump binary supports them;
support is probed once per binary (see :func:`supported_compressions`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from dbops.backup.adapter import Check, DumpResult, Endpoint, LogFn
from dbops.sqlfiles import load_sql
from dbops.stores.postgres.dumpfiles import DataFileFollower, DataFileRead, data_files, read_data_file, table_data_files
from dbops.tools import ToolError, find_tool, human_bytes, run_tool, tree_bytes, write_secret_file

DUMP_DIR = "dump"  # the pg_dump directory inside a backup folder
GLOBALS_FILE = "globals.sql"
# Levels when the setting names none. gzip 1, not zlib's 6: measured on this project's
# data (pgvector embeddings dominate, and their text compresses little), 6 took 4.8x the
# time of 1 for a 10% smaller dump (93 MB database: 10.8 s vs 2.2 s, 64 vs 71 MB).
# zstd:1 is smaller than gzip:6 at about gzip:1's speed (docs/benchmarks.md); level 3 costs ~3x its CPU
DEFAULT_LEVELS = {"zstd": 1, "lz4": 1, "gzip": 1}
AUTO_ORDER = ("zstd", "lz4", "gzip")
# pg_restore's sessions (data first, then indexes and constraints, by the archive's sections):
# index builds sort in memory instead of spilling to disk; a commit per TOC entry need not wait
# for its WAL flush (a crash mid-restore drops the unfinished copy anyway).
RESTORE_SESSION_SETTINGS = "-c maintenance_work_mem=256MB -c synchronous_commit=off"
PROTECTED_DATABASES = frozenset({"postgres", "template0", "template1"})
# Endpoint.extra keys passed on to libpq (environment for the tools, keywords for psycopg)
_LIBPQ_EXTRA = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
}
_DUMPALL_HEADER = "-- PostgreSQL database cluster dump"
_DUMPALL_FOOTER = "-- PostgreSQL database cluster dump complete"


class RestoreRefused(ToolError):
    """A restore that would overwrite or mix into existing data without being asked to."""


# --------------------------------------------------------------------------- credentials


def _tool(name: str, bin_dir: str | Path | None) -> str:
    if bin_dir is not None:
        path = Path(bin_dir) / name
        if not os.access(path, os.X_OK):
            raise ToolError(f"{name} not found in {bin_dir}")
        return str(path)
    return find_tool(name)


def _passfile_line(password: str) -> str:
    if "\n" in password or "\r" in password:
        raise ToolError("the PostgreSQL password contains a line break, which a passfile cannot hold")
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:*:{escaped}\n"


@contextmanager
def pg_tool_env(endpoint: Endpoint, database: str | None = None) -> Iterator[dict[str, str]]:
    """Environment for a libpq tool: ``PG*`` variables and a 0600 passfile, removed on exit.

    The passfile lives in a fresh 0700 folder under the temporary directory; the folder
    is deleted in ``finally``, so also when the tool fails or the task is interrupted.
    """
    private = Path(tempfile.mkdtemp(prefix="dbops-pg-"))  # 0700
    try:
        env = {
            "PGHOST": endpoint.host,
            "PGPORT": str(endpoint.port),
            "PGAPPNAME": "dbops",
            "PGPASSWORD": "",  # empty: libpq falls back to PGPASSFILE
            "PGCONNECT_TIMEOUT": "30",
        }
        if endpoint.login:
            env["PGUSER"] = endpoint.login
        if database:
            env["PGDATABASE"] = database
        for key, var in _LIBPQ_EXTRA.items():
            if endpoint.extra.get(key) not in (None, ""):
                env[var] = str(endpoint.extra[key])
        if endpoint.password is not None:
            env["PGPASSFILE"] = str(write_secret_file(private / "pgpass", _passfile_line(endpoint.password)))
        yield env
    finally:
        shutil.rmtree(private, ignore_errors=True)


def pg_connect(endpoint: Endpoint, database: str | None = None, *, autocommit: bool = False) -> psycopg.Connection:
    """A psycopg 3 connection (the password goes in-process, never to a command line)."""
    kwargs: dict[str, Any] = {
        "host": endpoint.host,
        "port": endpoint.port,
        "dbname": database or endpoint.database or "postgres",
        "application_name": "dbops",
        "connect_timeout": 30,
    }
    if endpoint.login:
        kwargs["user"] = endpoint.login
    if endpoint.password is not None:
        kwargs["password"] = endpoint.password
    for key in _LIBPQ_EXTRA:
        if endpoint.extra.get(key) not in (None, ""):
            kwargs[key] = endpoint.extra[key]
    return psycopg.connect(autocommit=autocommit, **kwargs)


# --------------------------------------------------------------------------- compression


def tool_version(tool_path: str) -> str:
    """``pg_dump --version`` and the like, e.g. ``pg_dump (PostgreSQL) 16.14``."""
    return run_tool([tool_path, "--version"], log=lambda _line: None).strip()


def _major(version_text: str) -> int:
    match = re.search(r"\)\s+(\d+)", version_text) or re.search(r"(\d+)", version_text)
    return int(match.group(1)) if match else 0


@functools.cache
def _probe(pg_dump: str) -> frozenset[str]:
    """Methods the binary at ``pg_dump`` (a resolved path) accepts; cached per binary.

    pg_dump validates ``--compress`` before it connects. So each method is tried on a
    schema-only directory dump aimed at a Unix socket that does not exist: "this build
    does not support compression with ZSTD" means no, a connection error means yes.
    Nothing reaches a server; ~10 ms per method.
    """
    if _major(tool_version(pg_dump)) < 16:
        return frozenset({"gzip", "none"})  # before 16: only --compress=0..9 (gzip)
    supported = {"none"}
    with tempfile.TemporaryDirectory(prefix="dbops-pgprobe-") as tmp:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",  # English messages, whatever the worker's locale
            "PGHOST": str(Path(tmp) / "no-socket-here"),
            "PGPORT": "1",
            "PGUSER": "dbops_probe",
            "PGDATABASE": "dbops_probe",
            "PGPASSFILE": str(Path(tmp) / "no-passfile"),
            "PGCONNECT_TIMEOUT": "2",
        }
        for method in AUTO_ORDER:
            out = Path(tmp) / f"out-{method}"
            argv = [pg_dump, "--schema-only", "--format=directory", f"--compress={method}", f"--file={out}"]
            proc = subprocess.run(
                [*argv, "--no-password"], env=env, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
            )
            message = proc.stderr.lower()
            if "compression" in message:
                continue  # "does not support compression with ...", "unrecognized compression algorithm"
            if "connect" in message or "socket" in message:
                supported.add(method)
    return frozenset(supported)


def supported_compressions(pg_dump: str | None = None) -> frozenset[str]:
    """The ``--compress`` methods this pg_dump supports ("none" and some of gzip, lz4, zstd)."""
    return _probe(os.path.realpath(pg_dump or find_tool("pg_dump")))


def dump_tool_supports(compression: str, pg_dump: str | None = None) -> bool:
    """Whether pg_dump (the one on PATH unless given) can write ``compression`` (``zstd``, ``gzip:6``, ...)."""
    method = compression.split(":", 1)[0]
    if method == "auto":
        return True
    return method in supported_compressions(pg_dump)


def resolve_compression(compression: str, pg_dump: str | None = None) -> str:
    """``auto``/``auto:N``/``gzip``/``zstd:9``/``none`` -> the ``METHOD[:LEVEL]`` pg_dump will use."""
    return choose_compression(compression, supported_compressions(pg_dump), tool="pg_dump", levels=DEFAULT_LEVELS)


def choose_compression(spec: str, supported: frozenset[str], *, tool: str, levels: dict[str, int]) -> str:
    """``spec`` (``auto``, a method, optionally ``:LEVEL``) -> the ``METHOD:LEVEL`` (or ``none``)
    of a tool that has the methods ``supported``; ``auto`` takes the best of AUTO_ORDER.

    Raises ToolError for a method this binary was built without (asking for zstd where
    only gzip exists is a configuration error, not something to fall back from silently).
    """
    match = re.fullmatch(r"(auto|none|gzip|lz4|zstd)(?::(\d+))?", spec or "")
    if not match:
        raise ToolError(f"compression {spec!r} is not one of auto, none, gzip, lz4, zstd (optionally :LEVEL)")
    method, level = match.group(1), match.group(2)
    if method == "auto":
        method = next((m for m in AUTO_ORDER if m in supported), "none")
    elif method not in supported:
        raise ToolError(
            f"this {tool} was built without {method} support (it supports: {', '.join(sorted(supported))}); "
            "use compression 'auto' or one of those"
        )
    if method == "none":
        return "none"
    return f"{method}:{int(level) if level is not None else levels[method]}"


def _compress_arg(resolved: str, pg_dump_major: int) -> str:
    if pg_dump_major >= 16:
        return f"--compress={resolved}"
    return "--compress=0" if resolved == "none" else f"--compress={resolved.split(':')[1]}"


# --------------------------------------------------------------------------- describe


def _user_tables(conn: psycopg.Connection) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(load_sql("backup/pg_user_tables.sql")).fetchall()


def _sample_query(table: dict[str, Any], limit: int) -> sql.Composed:
    ident = sql.Identifier(table["schema_name"], table["table_name"])
    if table["pk_columns"]:
        keys = []
        for column, collatable in zip(table["pk_columns"], table["pk_collatable"], strict=True):
            col = sql.Identifier("t", column)
            keys.append(sql.SQL("{} COLLATE {}").format(col, sql.Identifier("C")) if collatable else col)
        order = sql.SQL(", ").join(keys)
    else:  # no key: the row's text, which every type has
        order = sql.SQL("ROW(t.*)::text COLLATE {}").format(sql.Identifier("C"))
    return sql.SQL(load_sql("backup/pg_table_sample.sql")).format(table=ident, order=order, limit=sql.Literal(limit))


def _describe_tables(
    conn: psycopg.Connection, tables: list[dict[str, Any]], sample_rows: int, rows: dict[int, int] | None = None
) -> dict[str, Any]:
    """Row count and sampled-row checksum of each table, read in ``conn``'s current transaction.
    ``rows`` (table oid -> rows, counted in the dump's own data files) spares a ``count(*)``."""
    described: dict[str, Any] = {}
    for table in tables:
        ident = sql.Identifier(table["schema_name"], table["table_name"])
        if rows is not None:
            count = rows.get(int(table["table_oid"]), 0)  # no data file: the dump holds no rows of it
        else:
            counted = conn.execute(sql.SQL(load_sql("backup/pg_table_rows.sql")).format(table=ident)).fetchone()
            assert counted is not None
            count = int(counted[0])
        row = conn.execute(_sample_query(table, sample_rows)).fetchone()
        assert row is not None
        described[f"{table['schema_name']}.{table['table_name']}"] = {
            "rows": count,
            "sampled": int(row[0]),
            "sample_sha256": row[1],
            "primary_key": list(table["pk_columns"]),
        }
    return described


def _extensions(conn: psycopg.Connection) -> dict[str, str]:
    with conn.cursor(row_factory=dict_row) as cur:
        return {r["name"]: r["version"] for r in cur.execute(load_sql("backup/pg_extensions.sql"))}


# dbops' own settings on a database (the restore marker): never part of its state
_DBOPS_SETTING = re.compile(r"^dbops\.", re.IGNORECASE)


def database_state(conn: psycopg.Connection, database: str) -> dict[str, Any]:
    """What a dump without ``--create`` leaves out: owner, encoding and locale, grants,
    ``ALTER DATABASE ... SET``, ``ALTER ROLE ... IN DATABASE ... SET``, comment, connection
    limit. Read in ``conn``'s current transaction (for a dump: its snapshot)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(load_sql("backup/pg_database_state.sql"), [database]).fetchone()
    if row is None:
        raise ToolError(f"database {database!r} not found in pg_database")
    state = dict(row)
    state["settings"] = [s for s in state["settings"] or [] if not _DBOPS_SETTING.match(s)]
    state["role_settings"] = {r: list(v) for r, v in sorted((state["role_settings"] or {}).items())}
    return state


def describe_database(endpoint: Endpoint, database: str, *, sample_rows: int = 1000, log: LogFn) -> dict[str, Any]:
    """Exact row counts and a checksum of the first ``sample_rows`` rows (key order) per table,
    the extensions and the database-level state (:func:`database_state`), now.

    For a restored copy (nobody writes to it). A backup's own description is read inside
    the dump's snapshot instead (see :meth:`PostgresDatabaseBackup.dump`). Read in one
    REPEATABLE READ READ ONLY transaction, so all tables are seen at one instant; values
    are rendered as text under fixed session settings (UTC, ISO dates, shortest exact
    floats, hex bytea), so a restored copy describes identically.
    """
    started = time.monotonic()
    with pg_connect(endpoint, database) as conn:
        conn.execute(load_sql("backup/pg_session_deterministic.sql"))
        conn.commit()
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            described = _describe_tables(conn, _user_tables(conn), sample_rows)
            extensions = _extensions(conn)
            state = database_state(conn, database)
    total = sum(t["rows"] for t in described.values())
    log(f"described {database}: {len(described)} tables, {total} rows in {time.monotonic() - started:.1f}s")
    return {
        "database": database,
        "sample_rows": sample_rows,
        "tables": described,
        "extensions": extensions,
        "database_state": state,
    }


def describe_differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """What differs between two :func:`describe_database` results (the database name aside)."""
    problems = []
    want, got = expected.get("tables", {}), actual.get("tables", {})
    for name in sorted(set(want) - set(got)):
        problems.append(f"table {name} missing")
    for name in sorted(set(got) - set(want)):
        problems.append(f"table {name} unexpected")
    for name in sorted(set(want) & set(got)):
        a, b = want[name], got[name]
        if a["rows"] != b["rows"]:
            problems.append(f"table {name}: {b['rows']} rows, expected {a['rows']}")
        elif a["sample_sha256"] != b["sample_sha256"]:
            problems.append(f"table {name}: sampled rows differ")
    if expected.get("extensions") != actual.get("extensions"):
        problems.append(f"extensions {actual.get('extensions')} != {expected.get('extensions')}")
    return problems


# --------------------------------------------------------------------------- TOC


_TABLE_DATA_LINE = re.compile(r"^\d+;\s+\d+\s+\d+\s+TABLE DATA (.*)$")


def _toc_entries(listing: str) -> list[str]:
    """Lines of ``pg_restore --list`` that are TOC entries (not ';' comments)."""
    return [line for line in listing.splitlines() if line.strip() and not line.startswith(";")]


def _toc_header(listing: str, key: str) -> str | None:
    match = re.search(rf"^;\s+{re.escape(key)}:\s*(.*)$", listing, re.MULTILINE)
    return match.group(1).strip() if match else None


def _table_data_payloads(entries: list[str]) -> list[str]:
    """For ``3345; 0 16401 TABLE DATA public items postgres``: ``public items postgres``."""
    out = []
    for line in entries:
        match = _TABLE_DATA_LINE.match(line)
        if match:
            out.append(match.group(1).rstrip())
    return out


def _table_data_check(entries: list[str], details: dict[str, Any]) -> Check:
    """Every table the manifest names (else: as many as it counted) has a TABLE DATA entry."""
    payloads = set(_table_data_payloads(entries))
    expected = details.get("tables")
    if expected is None:
        count = details.get("table_count")
        ok = count is None or len(payloads) >= int(count)
        detail = f"{len(payloads)} TABLE DATA entries" + ("" if ok else f", expected {count}")
        return Check("table data listed", ok, detail)
    missing = [
        f"{t['schema']}.{t['name']}"
        for t in expected
        if f"{t['schema']} {t['name']} {t['owner']}" not in payloads and f"{t['schema']} {t['name']}" not in payloads
    ]
    if missing:
        return Check("table data listed", False, f"missing TABLE DATA for {', '.join(missing)}")
    return Check("table data listed", True, f"{len(expected)} tables have TABLE DATA")


def _data_files_check(entries: list[str], dump: Path) -> Check:
    """Each TABLE DATA entry's file (``<id>.dat`` plus the compression's suffix) exists."""
    names = {p.name for p in dump.iterdir()} if dump.is_dir() else set()
    ids = [int(line.split(";", 1)[0]) for line in entries if _TABLE_DATA_LINE.match(line)]
    absent = [i for i in ids if not any(f"{i}.dat{suffix}" in names for suffix in ("", ".gz", ".lz4", ".zst"))]
    if absent:
        return Check("data files present", False, f"no data file for TOC ids {absent[:10]}")
    return Check("data files present", True, f"{len(ids)} data files")


def _data_read_check(dump: Path, recorded: dict[str, Any], threads: int) -> Check:
    """Every data file on disk was decompressed to the end: by the dump's read-back when it is
    recorded with the same size, else read now."""
    started = time.monotonic()
    on_disk = {p.name: p for p in data_files(dump)} if dump.is_dir() else {}
    missing = sorted(set(recorded) - set(on_disk))
    unrecorded = [p for name, p in on_disk.items() if (recorded.get(name) or {}).get("bytes") != p.stat().st_size]
    errors = {name: r.get("error") for name, r in recorded.items() if name in on_disk and r.get("error")}
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        errors.update({r.name: r.error for r in pool.map(read_data_file, unrecorded) if r.error})
    problems = [f"{name}: {error}" for name, error in sorted(errors.items())]
    problems += [f"{name}: read back after the dump but no longer there" for name in missing]
    if problems:
        return Check("data files read", False, "; ".join(problems[:5]))
    how = f"{len(on_disk) - len(unrecorded)} by the dump's read-back" + (
        f", {len(unrecorded)} now" if unrecorded else ""
    )
    return Check(
        "data files read", True, f"{len(on_disk)} decompressed to the end ({how}, {time.monotonic() - started:.1f}s)"
    )


def _restrict(path: Path) -> None:
    """Files 0600, folders 0700 (the tools create them by their umask)."""
    if path.is_file():
        path.chmod(0o600)
        return
    path.chmod(0o700)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o700)
        for name in files:
            os.chmod(os.path.join(root, name), 0o600)


def _dump_path(backup_dir: Path) -> Path:
    """A backup folder holds ``dump/``; a pg_dump directory itself is accepted too."""
    backup_dir = Path(backup_dir)
    return backup_dir if (backup_dir / "toc.dat").exists() else backup_dir / DUMP_DIR


# --------------------------------------------------------------------------- adapters


class PostgresDatabaseBackup:
    """One database: ``pg_dump --format=directory --jobs=N`` into ``<staging>/dump``."""

    store = "postgres"

    def __init__(
        self,
        endpoint: Endpoint,
        database: str,
        *,
        jobs: int = 2,
        compression: str = "auto",
        lock_wait_timeout: str | None = "10min",
        sample_rows: int = 1000,
        verify_data: bool = True,
        bin_dir: str | Path | None = None,
    ) -> None:
        if jobs < 1:
            raise ValueError("jobs must be >= 1")
        self.endpoint = endpoint
        self.database = database
        self.jobs = jobs
        self.compression = compression
        self.lock_wait_timeout = lock_wait_timeout
        self.sample_rows = sample_rows
        self.verify_data = verify_data
        self.bin_dir = bin_dir

    def __repr__(self) -> str:
        return f"PostgresDatabaseBackup({self.endpoint!r}, {self.database!r})"

    def dump_argv(self, target: Path, compression: str, pg_dump: str, major: int) -> list[str]:
        """The pg_dump command line (no host, user, database or secret: those are in env)."""
        argv = [
            pg_dump,
            "--format=directory",
            f"--jobs={self.jobs}",
            _compress_arg(compression, major),
            f"--file={target}",
            "--no-password",
        ]
        if self.lock_wait_timeout:
            argv.append(f"--lock-wait-timeout={self.lock_wait_timeout}")
        return argv

    def dump(self, staging: Path, log: LogFn) -> DumpResult:
        """pg_dump in a snapshot this method exports, then the description read in that same
        snapshot (the transaction stays open until both are done): the table list of the
        manifest and the rows a drill compares with are exactly what the dump holds, however
        busy the database is."""
        pg_dump = _tool("pg_dump", self.bin_dir)
        version = tool_version(pg_dump)
        compression = resolve_compression(self.compression, pg_dump)
        target = Path(staging) / DUMP_DIR
        try:
            conn = pg_connect(self.endpoint, self.database)
        except psycopg.OperationalError as exc:  # psycopg's message names no password
            raise ToolError(
                f"pg_dump failed: could not connect to {self.database!r} to export its snapshot: {exc}"
            ) from None
        with conn:
            conn.execute(load_sql("backup/pg_session_deterministic.sql"))
            conn.commit()
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction():
                snapshot = conn.execute(load_sql("backup/pg_export_snapshot.sql")).fetchone()[0]  # type: ignore[index]
                tables = _user_tables(conn)
                if self.lock_wait_timeout:
                    conn.execute(load_sql("backup/pg_lock_timeout.sql"), [self.lock_wait_timeout])
                for table in tables:  # held until described: nothing dumped can be dropped before
                    ident = sql.Identifier(table["schema_name"], table["table_name"])
                    conn.execute(sql.SQL(load_sql("backup/pg_lock_table.sql")).format(table=ident))
                with conn.cursor(row_factory=dict_row) as cur:
                    facts = cur.execute(load_sql("backup/pg_database_facts.sql")).fetchone()
                assert facts is not None
                state = database_state(conn, self.database)
                started = time.monotonic()
                log(
                    f"pg_dump of {self.database} at {self.endpoint.host}:{self.endpoint.port}: directory format, "
                    f"{self.jobs} jobs, compression {compression}, snapshot {snapshot} ({version})"
                )
                # each data file is read while pg_dump writes it (see DataFileFollower)
                with (
                    pg_tool_env(self.endpoint, self.database) as env,
                    DataFileFollower(target, threads=self.jobs) as follower,
                ):
                    argv = [*self.dump_argv(target, compression, pg_dump, _major(version)), f"--snapshot={snapshot}"]
                    run_tool(argv, log=log, env=env, progress_path=target)
                    seconds = time.monotonic() - started
                    reads = follower.finish()
                    read_after = time.monotonic() - started - seconds
                _restrict(target)
                rows = self._rows_read(target, reads, read_after, log)
                described = _describe_tables(conn, tables, self.sample_rows, rows)
                extensions = _extensions(conn)
        dump_bytes = tree_bytes(target)
        total = sum(t["rows"] for t in described.values())
        log(
            f"pg_dump of {self.database} done in {seconds:.1f}s: {human_bytes(dump_bytes)} written "
            f"for {len(tables)} tables ({total} rows in its snapshot), "
            f"database size {human_bytes(facts['size_bytes'])}"
        )
        description = {
            "database": self.database,
            "snapshot": snapshot,
            "sample_rows": self.sample_rows,
            "tables": described,
            "extensions": extensions,
            "database_state": state,
        }
        return DumpResult(
            tool="pg_dump",
            tool_version=version,
            server_version=facts["server_version"],
            compression=compression,
            details={
                "database": self.database,
                "format": "directory",
                "path": DUMP_DIR,
                "jobs": self.jobs,
                "lock_wait_timeout": self.lock_wait_timeout,
                "snapshot": snapshot,
                "server_version_num": facts["server_version_num"],
                "encoding": facts["encoding"],
                "collate": facts["collate"],
                "ctype": facts["ctype"],
                "database_state": state,
                "database_size_bytes": facts["size_bytes"],
                "dump_bytes": dump_bytes,
                "seconds": round(seconds, 3),
                "table_count": len(tables),
                "tables": [{"schema": t["schema_name"], "name": t["table_name"], "owner": t["owner"]} for t in tables],
                "data_files": {r.name: {"bytes": r.bytes, "error": r.error} for r in reads},
            },
            description=description,
            read_back={f"{DUMP_DIR}/{r.name}": r.sha256 for r in reads if r.error is None},
        )

    def _rows_read(self, target: Path, reads: list[DataFileRead], read_after: float, log: LogFn) -> dict[int, int]:
        """The rows of each table (oid -> rows) its data file holds, the file found in the TOC."""
        pg_restore = _tool("pg_restore", self.bin_dir)
        entries = _toc_entries(run_tool([pg_restore, "--list", str(target)], log=log))
        by_name = {r.name: r for r in reads}
        rows = {oid: by_name[name].rows() for oid, name in table_data_files(entries, target).items() if name in by_name}
        bad = [f"{r.name} ({r.error})" for r in reads if r.error]
        log(
            f"read {len(reads)} data files ({human_bytes(sum(r.bytes for r in reads))}) while pg_dump wrote them, "
            f"done {read_after:.1f}s after it: sha256, decompressed to the end, {sum(rows.values())} rows counted"
            + (f"; unreadable: {', '.join(bad[:5])}" if bad else "")
        )
        return rows

    def check(self, backup_dir: Path, manifest: dict[str, Any], log: LogFn) -> list[Check]:
        """``pg_restore --list`` reads the TOC and lists TABLE DATA for every table; the data files
        are there; with ``verify_data``, every data file decompressed to the end (the dump's own
        read-back, whose sha256 the seal compared with the manifest's; read now when the
        manifest has no record of it)."""
        dump = _dump_path(backup_dir)
        pg_restore = _tool("pg_restore", self.bin_dir)
        checks: list[Check] = []
        try:
            listing = run_tool([pg_restore, "--list", str(dump)], log=log)
        except ToolError as exc:
            return [Check("pg_restore --list", False, str(exc))]
        entries = _toc_entries(listing)
        source = _toc_header(listing, "dbname")
        checks.append(Check("pg_restore --list", True, f"{len(entries)} TOC entries, dumped from {source}"))
        checks.append(_table_data_check(entries, manifest.get("details") or {}))
        checks.append(_data_files_check(entries, dump))
        if self.verify_data:
            checks.append(_data_read_check(dump, (manifest.get("details") or {}).get("data_files") or {}, self.jobs))
        return checks


class PostgresGlobalsBackup:
    """Roles and tablespaces: ``pg_dumpall --globals-only`` into ``<staging>/globals.sql``.

    Role passwords can only be read by a superuser; otherwise the dump is taken with
    ``--no-role-passwords`` and ``details["role_passwords"]`` is False.
    """

    store = "postgres"

    def __init__(
        self, endpoint: Endpoint, *, maintenance_db: str = "postgres", bin_dir: str | Path | None = None
    ) -> None:
        self.endpoint = endpoint
        self.maintenance_db = maintenance_db
        self.bin_dir = bin_dir

    def dump(self, staging: Path, log: LogFn) -> DumpResult:
        pg_dumpall = _tool("pg_dumpall", self.bin_dir)
        version = tool_version(pg_dumpall)
        with pg_connect(self.endpoint, self.maintenance_db) as conn:
            with conn.cursor(row_factory=dict_row) as cur:
                role = cur.execute(load_sql("backup/pg_current_role.sql")).fetchone()
                facts = cur.execute(load_sql("backup/pg_database_facts.sql")).fetchone()
                roles = cur.execute(load_sql("backup/pg_roles.sql")).fetchall()
        assert role is not None and facts is not None
        target = Path(staging) / GLOBALS_FILE
        argv = [pg_dumpall, "--globals-only", f"--file={target}", "--no-password"]
        argv.append(f"--database={self.maintenance_db}")
        if not role["superuser"]:
            argv.append("--no-role-passwords")
            log(f"{role['role_name']} is not a superuser: globals dumped with --no-role-passwords")
        with pg_tool_env(self.endpoint) as env:
            run_tool(argv, log=log, env=env)
        _restrict(target)
        size = target.stat().st_size
        # pg_dumpall reads the roles in a snapshot of its own: a role created, dropped or
        # changed while it ran may or may not be in globals.sql. The reference holds the
        # roles read the same way before and after it; the others are named, not judged.
        with pg_connect(self.endpoint, self.maintenance_db) as conn:
            with conn.cursor(row_factory=dict_row) as cur:
                after = {r["name"]: r for r in cur.execute(load_sql("backup/pg_roles.sql")).fetchall()}
        before = {r["name"]: r for r in roles}
        steady = {
            name: {"superuser": r["superuser"], "can_login": r["can_login"]}
            for name, r in before.items()
            if name in after
            and (after[name]["superuser"], after[name]["can_login"]) == (r["superuser"], r["can_login"])
        }
        changed = sorted((set(before) | set(after)) - set(steady))
        if changed:
            log(f"roles changed while pg_dumpall ran (not judged by the drill): {changed}")
        log(f"pg_dumpall --globals-only: {len(steady)} roles, {human_bytes(size)}")
        return DumpResult(
            tool="pg_dumpall",
            tool_version=version,
            server_version=facts["server_version"],
            compression="none",
            details={
                "path": GLOBALS_FILE,
                "as_role": role["role_name"],
                "superuser": bool(role["superuser"]),
                "role_passwords": bool(role["superuser"]),
                "roles": sorted(steady),
                "bytes": size,
            },
            description={"roles": steady, "changed_during_dump": changed},
        )

    def check(self, backup_dir: Path, manifest: dict[str, Any], log: LogFn) -> list[Check]:
        path = Path(backup_dir) / GLOBALS_FILE
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            return [Check("globals.sql present", False, f"{path} missing")]
        except UnicodeDecodeError as exc:
            return [Check("globals.sql is text", False, str(exc))]
        has_header = _DUMPALL_HEADER in text[:200]
        complete = _DUMPALL_FOOTER in text[-400:]
        checks = [
            Check("globals.sql header", has_header, "pg_dumpall header" if has_header else "no pg_dumpall header"),
            Check(
                "globals.sql complete",
                complete,
                "ends with the 'cluster dump complete' marker" if complete else "truncated: no completion marker",
            ),
        ]
        expected = (manifest.get("details") or {}).get("roles") or []
        missing = [r for r in expected if f"CREATE ROLE {_sql_ident_text(r)};" not in text]
        detail = f"missing CREATE ROLE for {missing}" if missing else f"{len(expected)} roles"
        checks.append(Check("roles present", not missing, detail))
        return checks


def _sql_ident_text(name: str) -> str:
    """How pg_dumpall writes a role name (quoted unless a plain lower-case identifier)."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- restore


@dataclass
class RestoreResult:
    target_database: str
    source_database: str | None
    created: bool
    replaced: bool
    owners_kept: bool
    toc_entries: int
    table_data_entries: int
    tool_version: str
    seconds: float
    description: dict[str, Any] | None = field(default=None)
    set_aside: str | None = None  # the old database, renamed and kept (replace=True)
    ended_sessions: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # database state that could not be applied

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _exists(conn: psycopg.Connection, database: str) -> bool:
    row = conn.execute(load_sql("backup/pg_database_exists.sql"), [database]).fetchone()
    return bool(row and row[0])


def _database_ddl(admin: psycopg.Connection, file: str, **names: str) -> None:
    """Run ``include/sql/backup/<file>`` with its ``{placeholders}`` as identifiers."""
    statement = sql.SQL(load_sql(f"backup/{file}")).format(**{k: sql.Identifier(v) for k, v in names.items()})
    admin.execute(statement)


def _fit_name(head: str, tail: str, limit: int = 63) -> str:
    """``head + tail`` within ``limit`` bytes (PostgreSQL would silently cut a longer name)."""
    room = limit - len(tail.encode())
    return head.encode()[:room].decode(errors="ignore") + tail


def _scratch_name(target: str) -> str:
    return _fit_name(target, f"__dbops_restore_{uuid.uuid4().hex[:8]}")


def set_aside_name(target: str, tag: str) -> str:
    """Where an overwrite keeps the old database: ``<target>_dbops_old_<tag>`` (<= 63 bytes)."""
    return _fit_name(target, f"_dbops_old_{tag.lower()}")


# --------------------------------------------------------------------------- database state


_LOCALE_PROVIDERS = {"c": "libc", "i": "icu", "b": "builtin"}
_DATABASE_PRIVILEGES = {"CREATE", "TEMPORARY", "CONNECT"}
# Settings whose value is a list pg_dump writes element by element (GUC_LIST_QUOTE)
_LIST_SETTINGS = {
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "shared_preload_libraries",
    "local_preload_libraries",
    "unix_socket_directories",
}


def create_database(admin: psycopg.Connection, database: str, state: dict[str, Any] | None) -> None:
    """CREATE DATABASE from template0 with the source's encoding and locale (``state``), or
    the server's defaults when the backup recorded none."""
    options: list[sql.Composable] = []
    if state:
        options.append(sql.SQL("ENCODING {}").format(sql.Literal(state["encoding"])))
        provider = _LOCALE_PROVIDERS.get(state.get("locale_provider") or "c", "libc")
        options.append(sql.SQL("LOCALE_PROVIDER {}").format(sql.SQL(provider)))
        options.append(
            sql.SQL("LC_COLLATE {} LC_CTYPE {}").format(sql.Literal(state["collate"]), sql.Literal(state["ctype"]))
        )
        if provider == "icu" and state.get("icu_locale"):
            options.append(sql.SQL("ICU_LOCALE {}").format(sql.Literal(state["icu_locale"])))
        if provider == "icu" and state.get("icu_rules"):
            options.append(sql.SQL("ICU_RULES {}").format(sql.Literal(state["icu_rules"])))
    statement = sql.SQL(load_sql("backup/pg_create_database_like.sql")).format(
        database=sql.Identifier(database), options=sql.SQL(" ").join(options)
    )
    admin.execute(statement)


def split_setting(setting: str) -> tuple[str, list[str]]:
    """``search_path="$user", public`` -> (``search_path``, [``$user``, ``public``]); other
    settings keep their value whole."""
    name, _, value = setting.partition("=")
    if name.lower() not in _LIST_SETTINGS:
        return name, [value]
    items, current, quoted, i = [], "", False, 0
    while i < len(value):
        ch = value[i]
        if quoted:
            if ch == '"' and value[i + 1 : i + 2] == '"':
                current += '"'
                i += 1
            elif ch == '"':
                quoted = False
            else:
                current += ch
        elif ch == '"':
            quoted = True
        elif ch == ",":
            items.append(current.strip())
            current = ""
        else:
            current += ch
        i += 1
    if current.strip() or items:
        items.append(current.strip())
    return name, items


def _setting_sql(file: str, setting: str, **idents: str) -> sql.Composed:
    name, values = split_setting(setting)
    value = sql.SQL(", ").join(sql.Literal(v) for v in values) if values else sql.Literal("")
    parts = {k: sql.Identifier(v) for k, v in idents.items()}
    return sql.SQL(load_sql(f"restore/{file}")).format(
        name=sql.SQL(".").join(sql.Identifier(n) for n in name.split(".")), value=value, **parts
    )


def state_roles(state: dict[str, Any] | None) -> set[str]:
    """The roles a database state names (owner, grantees, per-role settings)."""
    if not state:
        return set()
    roles = {state.get("owner")} | set(state.get("role_settings") or {})
    roles |= {g["grantee"] for g in state.get("grants") or [] if g["grantee"] != "PUBLIC"}
    return {r for r in roles if r}


def absent_roles(conn: psycopg.Connection, roles: set[str]) -> list[str]:
    """Those of ``roles`` this cluster does not have."""
    if not roles:
        return []
    present = {r[0] for r in conn.execute(load_sql("backup/pg_role_exists.sql"), [sorted(roles)])}
    return sorted(roles - present)


def apply_database_state(
    admin: psycopg.Connection, database: str, state: dict[str, Any], *, log: LogFn, connection_limit: bool = True
) -> list[str]:
    """Owner, settings, per-role settings, grants and comment of the source, on ``database``
    (``admin``: an autocommit connection to another database). Roles this cluster lacks are
    skipped and returned as notes; a statement the server refuses is a note too (the
    comparison then names the difference)."""
    notes: list[str] = []
    missing = set(absent_roles(admin, state_roles(state)))
    db = sql.Identifier(database)

    def run(statement: sql.Composed, what: str) -> None:
        try:
            admin.execute(statement)
        except psycopg.Error as exc:
            notes.append(f"database state: could not apply {what}: {str(exc).strip()}")

    owner = state.get("owner")
    if owner and owner in missing:
        notes.append(
            f"database owner {owner!r} is not a role of this cluster: the database is owned by the restoring role"
        )
    elif owner:
        run(
            sql.SQL(load_sql("restore/pg_database_owner.sql")).format(database=db, owner=sql.Identifier(owner)),
            f"owner {owner}",
        )
    for setting in state.get("settings") or []:
        run(_setting_sql("pg_database_setting.sql", setting, database=database), f"ALTER DATABASE SET {setting}")
    for role, settings in sorted((state.get("role_settings") or {}).items()):
        if role in missing:
            notes.append(f"settings of role {role!r} in this database not applied: no such role in this cluster")
            continue
        for setting in settings:
            run(
                _setting_sql("pg_role_database_setting.sql", setting, role=role, database=database),
                f"ALTER ROLE {role} IN DATABASE SET {setting}",
            )
    grants = state.get("grants")
    if grants is not None:
        run(sql.SQL(load_sql("restore/pg_database_revoke_public.sql")).format(database=db), "REVOKE ALL FROM PUBLIC")
        for grant in grants:
            grantee, privilege = grant["grantee"], grant["privilege"]
            if privilege not in _DATABASE_PRIVILEGES:
                notes.append(f"database privilege {privilege!r} of {grantee} not understood: not granted")
                continue
            if grantee in missing:
                notes.append(f"{privilege} on the database for {grantee!r} not granted: no such role in this cluster")
                continue
            statement = sql.SQL(load_sql("restore/pg_database_grant.sql")).format(
                privilege=sql.SQL(privilege),
                database=db,
                grantee=sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee),
                option=sql.SQL(" WITH GRANT OPTION") if grant.get("grantable") else sql.SQL(""),
            )
            run(statement, f"GRANT {privilege} TO {grantee}")
    if state.get("comment") is not None:
        run(
            sql.SQL(load_sql("restore/pg_database_comment.sql")).format(
                database=db, comment=sql.Literal(state["comment"])
            ),
            "comment",
        )
    limit = state.get("connection_limit")
    if connection_limit and limit is not None and int(limit) != -1:
        run(
            sql.SQL(load_sql("restore/pg_database_connection_limit.sql")).format(
                database=db, limit=sql.Literal(int(limit))
            ),
            f"connection limit {limit}",
        )
    applied = f"owner {owner}, {len(state.get('settings') or [])} setting(s), {len(grants or [])} grant(s)"
    log(f"database state applied to {database}: {applied}" + (f"; {len(notes)} note(s)" if notes else ""))
    return notes


def database_sessions(admin: psycopg.Connection, database: str) -> list[dict[str, Any]]:
    """The sessions connected to ``database`` (pid, user, application, client, state)."""
    with admin.cursor(row_factory=dict_row) as cur:
        return cur.execute(load_sql("restore/pg_database_sessions.sql"), [database]).fetchall()


def session_text(session: dict[str, Any]) -> str:
    return f"pid {session['pid']} (user {session['user']}, application {session['application_name'] or '-'})"


def _allow_connections(admin: psycopg.Connection, database: str, allow: bool) -> None:
    admin.execute(
        sql.SQL(load_sql("restore/pg_allow_connections.sql")).format(
            database=sql.Identifier(database), allow=sql.Literal(allow)
        )
    )


def swap_in(
    endpoint: Endpoint, copy: str, target: str, keep_old_as: str, *, maintenance_db: str = "postgres", log: LogFn
) -> list[dict[str, Any]]:
    """Set ``target`` aside as ``keep_old_as`` (its sessions ended first) and give ``copy`` its
    name. Returns the sessions that were ended. If a rename fails, the old database gets its
    name and its connections back."""
    with pg_connect(endpoint, maintenance_db, autocommit=True) as admin:
        if _exists(admin, keep_old_as):
            raise RestoreRefused(
                f"database {keep_old_as!r} exists already: cannot set {target!r} aside under that name"
            )
        _allow_connections(admin, target, False)  # no new session between the end of the old ones and the rename
        renamed = False
        try:
            ended = database_sessions(admin, target)
            for session in ended:
                admin.execute(load_sql("restore/pg_terminate_session.sql"), [session["pid"]])
                log(f"ended session {session_text(session)} of {target}")
            for _ in range(50):  # pg_terminate_backend only signals: wait until they are gone
                if not database_sessions(admin, target):
                    break
                time.sleep(0.1)
            _database_ddl(admin, "pg_rename_database.sql", old=target, new=keep_old_as)
            renamed = True
            _database_ddl(admin, "pg_rename_database.sql", old=copy, new=target)
        except BaseException:
            if renamed:
                _database_ddl(admin, "pg_rename_database.sql", old=keep_old_as, new=target)
            _allow_connections(admin, target, True)
            raise
        _allow_connections(admin, keep_old_as, True)
    log(
        f"the old {target} is kept as {keep_old_as} (drop it once the restored copy is accepted); "
        f"{copy} is now {target}"
    )
    return ended


# --------------------------------------------------------------------------- restore


def restore_database(
    endpoint: Endpoint,
    backup_dir: Path,
    target_database: str,
    *,
    jobs: int = 2,
    create: bool = True,
    replace: bool = False,
    no_owner: bool = False,
    no_privileges: bool = False,
    analyze: bool = True,
    describe: bool = False,
    sample_rows: int = 1000,
    maintenance_db: str = "postgres",
    bin_dir: str | Path | None = None,
    database_state: dict[str, Any] | None = None,
    keep_old_as: str | None = None,
    before_swap: Callable[[str, dict[str, Any] | None], None] | None = None,
    log: LogFn,
) -> RestoreResult:
    """Restore the dump of ``backup_dir`` into ``target_database`` with ``pg_restore --jobs --exit-on-error``.

    - ``create=True`` (default): the target must not exist; it is created from template0
      (with the source's encoding and locale when ``database_state`` is given) and dropped
      again if the restore fails, so a rerun starts clean.
    - An existing target is refused unless ``replace=True``. Then the dump is restored
      into a new database beside it first; ``before_swap(copy, description)`` may check it
      (raising keeps the old database and drops the copy); only then are the old
      database's sessions ended and it is **renamed aside** (``keep_old_as``, default
      ``<target>_dbops_old_<time>``), never dropped, and the copy takes its name.
    - ``create=False``: restore into an existing database the caller prepared (e.g. with
      its own owner or locale); it must hold no user tables.
    - Owners are kept (``no_owner=False``): right when restoring as a superuser into a
      cluster that has the roles (restore the globals first). ``no_owner=True`` makes the
      restoring role own everything, for a restore by a non-superuser or into another cluster.
    - ``database_state`` (see :func:`database_state`): owner, settings, per-role settings,
      grants, comment and connection limit of the source are applied to the new database;
      what this cluster cannot take (a missing role) is returned in ``notes``.

    ``postgres``, ``template0`` and ``template1`` are never a target.
    """
    if not target_database or target_database in PROTECTED_DATABASES:
        raise RestoreRefused(f"{target_database!r} cannot be a restore target")
    if replace and not create:
        raise RestoreRefused("replace=True needs create=True (the copy is built beside the old database)")
    dump = _dump_path(backup_dir)
    if not (dump / "toc.dat").is_file():
        raise ToolError(f"{dump} is not a pg_dump directory (no toc.dat)")
    pg_restore = _tool("pg_restore", bin_dir)
    version = tool_version(pg_restore)
    listing = run_tool([pg_restore, "--list", str(dump)], log=log)
    entries = _toc_entries(listing)
    source = _toc_header(listing, "dbname")

    with pg_connect(endpoint, maintenance_db, autocommit=True) as admin:
        exists = _exists(admin, target_database)
        if create and exists and not replace:
            raise RestoreRefused(
                f"database {target_database!r} already exists: dbops restores into a new database. "
                "Choose another name, or pass replace=True to swap it for the restored copy"
            )
        if not create:
            if not exists:
                raise RestoreRefused(
                    f"database {target_database!r} does not exist (create=False restores into an existing one)"
                )
            with pg_connect(endpoint, target_database) as conn:
                if _user_tables(conn):
                    raise RestoreRefused(
                        f"database {target_database!r} already holds tables; restore into an empty database"
                    )
        restore_into = target_database
        if create:
            restore_into = _scratch_name(target_database) if exists else target_database
            create_database(admin, restore_into, database_state)
            log(
                f"created database {restore_into}"
                + (f" ({database_state['encoding']}, collate {database_state['collate']})" if database_state else "")
            )

    conninfo = make_conninfo("", dbname=restore_into)  # quoted: any database name is safe here
    argv = [pg_restore, f"--jobs={jobs}", "--exit-on-error", "--no-password", f"--dbname={conninfo}"]
    if no_owner:
        argv.append("--no-owner")
    if no_privileges:
        argv.append("--no-privileges")
    argv.append(str(dump))
    started = time.monotonic()
    log(
        f"pg_restore of {source} into {restore_into}: {jobs} jobs, {len(entries)} TOC entries, "
        f"{'owners from the dump' if not no_owner else 'owned by ' + str(endpoint.login)}"
    )
    notes: list[str] = []
    description = None
    try:
        with pg_tool_env(endpoint) as env:
            run_tool(argv, log=log, env={**env, "PGOPTIONS": RESTORE_SESSION_SETTINGS})
        if analyze:
            with pg_connect(endpoint, restore_into, autocommit=True) as conn:
                conn.execute(load_sql("backup/pg_analyze.sql"))
        if create and database_state:
            with pg_connect(endpoint, maintenance_db, autocommit=True) as admin:
                notes = apply_database_state(admin, restore_into, database_state, log=log)
        if describe or before_swap is not None:
            description = describe_database(endpoint, restore_into, sample_rows=sample_rows, log=log)
        if before_swap is not None:
            before_swap(restore_into, description)
    except BaseException:
        if create:
            try:
                with pg_connect(endpoint, maintenance_db, autocommit=True) as admin:
                    _database_ddl(admin, "pg_drop_database.sql", database=restore_into)
                log(
                    f"restore failed: dropped the partly restored database {restore_into}"
                    + (f"; {target_database} is untouched" if restore_into != target_database else "")
                )
            except psycopg.Error as exc:  # keep the restore's own error; say what is left behind
                log(f"restore failed, and dropping the partly restored database {restore_into} failed too: {exc}")
        raise
    seconds = time.monotonic() - started

    set_aside, ended = None, []
    if restore_into != target_database:
        set_aside = keep_old_as or set_aside_name(target_database, time.strftime("%Y%m%dt%H%M%Sz", time.gmtime()))
        try:
            ended = swap_in(endpoint, restore_into, target_database, set_aside, maintenance_db=maintenance_db, log=log)
        except BaseException:
            with pg_connect(endpoint, maintenance_db, autocommit=True) as admin:
                _database_ddl(admin, "pg_drop_database.sql", database=restore_into)
            log(f"swap failed: dropped the restored copy {restore_into}; {target_database} is untouched")
            raise
        if description is not None:
            description["database"] = target_database
    log(f"restored {source} into {target_database} in {seconds:.1f}s")
    return RestoreResult(
        target_database=target_database,
        source_database=source,
        created=create,
        replaced=exists and replace,
        owners_kept=not no_owner,
        toc_entries=len(entries),
        table_data_entries=len(_table_data_payloads(entries)),
        tool_version=version,
        seconds=round(seconds, 3),
        description=description if describe else None,
        set_aside=set_aside,
        ended_sessions=ended,
        notes=notes,
    )


# --------------------------------------------------------------------------- series names


SERIES_NAME = re.compile(r"^[a-z0-9_][a-z0-9_.-]{0,62}$")  # what the repository accepts (check_subject_name)
RESERVED_SERIES = frozenset({"_globals"})  # the roles' series


def series_name(database: str) -> str:
    """The repository series of a database: its own name when that is a valid series name
    (a-z 0-9 _ . -), else a readable slug and a short hash of the real name, e.g.
    ``Sales`` -> ``sales-<8 hex>``, ``my "db"`` -> ``my_db-<8 hex>``. Deterministic, so a
    restore finds the series from the real name; the real name is kept in the manifest."""
    if SERIES_NAME.match(database) and ".." not in database and database not in RESERVED_SERIES:
        return database
    slug = re.sub(r"[^a-z0-9_.-]+", "_", database.lower())
    slug = re.sub(r"\.{2,}", ".", slug).strip("._-")[:40] or "db"
    digest = hashlib.sha1(database.encode()).hexdigest()[:8]
    return f"{slug}-{digest}"
