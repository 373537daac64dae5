"""Versioned SQL migrations (Flyway-style ``V001__description.sql``), pure Python.

Rules a database engineer relies on:
- files are applied in version order, each in its own transaction, and recorded with
  the sha256 of their text in ``dbops.schema_migrations``; a failed file leaves the
  database as it was before that file;
- a rerun applies nothing that is already recorded;
- an applied file whose text changed, an applied version whose file is gone, or a new
  file numbered below the newest applied one is refused, naming the file, before
  anything is applied: history is never rewritten, a change is a new migration;
- one runner at a time per database (a transaction-level advisory lock).

The runner takes a psycopg 3 connection (autocommit off); it imports no Airflow.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

from dbops.report import StoreReport
from dbops.sqlfiles import load_sql

FILE_PATTERN = re.compile(r"^V(?P<version>\d{3,})__(?P<description>[A-Za-z0-9_]+)\.sql$")
# any 64-bit number that is ours: "dbops-migrations" folded into a bigint
ADVISORY_LOCK_KEY = int.from_bytes(hashlib.sha256(b"dbops-migrations").digest()[:8], "big", signed=True)


class MigrationError(RuntimeError):
    """The migration history and the files disagree, or a file is malformed."""


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    filename: str
    sql: str
    checksum: str

    @classmethod
    def from_file(cls, path: Path) -> Migration:
        match = FILE_PATTERN.match(path.name)
        if not match:
            raise MigrationError(f"migration file {path.name!r} is not named V<NNN>__<description>.sql")
        text = path.read_text(encoding="utf-8")
        return cls(
            version=int(match["version"]),
            description=match["description"],
            filename=path.name,
            sql=text,
            checksum=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        )


def discover(folder: Path) -> list[Migration]:
    """Every ``*.sql`` file of ``folder`` as a migration, in version order."""
    migrations = [Migration.from_file(p) for p in sorted(folder.glob("*.sql"))]
    seen: dict[int, str] = {}
    for m in migrations:
        if m.version in seen:
            raise MigrationError(f"two migration files share version {m.version}: {seen[m.version]} and {m.filename}")
        seen[m.version] = m.filename
    if not migrations:
        raise MigrationError(f"no migration files in {folder}")
    return sorted(migrations, key=lambda m: m.version)


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    filename: str
    checksum: str


class MigrationRunner:
    def __init__(self, conn, migrations: list[Migration]):
        if conn.autocommit:
            raise MigrationError("the migration runner needs a connection with autocommit off")
        self.conn = conn
        self.migrations = migrations

    def applied(self) -> dict[int, AppliedMigration]:
        with self.conn.cursor() as cur:
            cur.execute(load_sql("bootstrap/migrations_table_exists.sql"))
            if not cur.fetchone()[0]:
                return {}
            cur.execute(load_sql("bootstrap/migrations_applied.sql"))
            return {row[0]: AppliedMigration(*row) for row in cur.fetchall()}

    def pending(self) -> list[Migration]:
        """Migrations still to apply, after checking the history against the files."""
        applied = self.applied()
        by_version = {m.version: m for m in self.migrations}
        for version, done in sorted(applied.items()):
            current = by_version.get(version)
            if current is None:
                raise MigrationError(f"migration {done.filename} is recorded as applied but its file is gone")
            if current.checksum != done.checksum:
                raise MigrationError(
                    f"migration {current.filename} was changed after it was applied "
                    f"(recorded sha256 {done.checksum[:12]}…, file now {current.checksum[:12]}…); "
                    "restore the file and put the change in a new migration"
                )
        newest = max(applied, default=0)
        pending = [m for m in self.migrations if m.version not in applied]
        late = [m.filename for m in pending if m.version < newest]
        if late:
            raise MigrationError(
                f"migration(s) {', '.join(late)} are numbered below the newest applied "
                f"version {newest}; renumber them after it"
            )
        return pending

    def run(self, report: StoreReport, dry_run: bool = False) -> None:
        """Apply what is pending (or, with ``dry_run``, only report it)."""
        pending = self.pending()
        self.conn.rollback()  # end the reading transaction: each migration gets its own
        for m in self.migrations:
            if m not in pending:
                report.add("unchanged", f"migration {m.filename}")
        if dry_run:
            for m in pending:
                report.add("create", f"migration {m.filename}", "would apply")
            return
        for m in pending:
            started = time.monotonic()
            with self.conn.transaction():
                with self.conn.cursor() as cur:
                    cur.execute(load_sql("bootstrap/migrations_lock.sql"), (ADVISORY_LOCK_KEY,))
                    cur.execute(load_sql("bootstrap/migrations_table.sql"))
                    # another runner may have applied it while we waited for the lock
                    cur.execute(load_sql("bootstrap/migrations_is_applied.sql"), (m.version,))
                    if cur.fetchone():
                        report.add("unchanged", f"migration {m.filename}", "applied concurrently")
                        continue
                    cur.execute(m.sql)
                    elapsed_ms = int((time.monotonic() - started) * 1000)
                    cur.execute(
                        load_sql("bootstrap/migrations_record.sql"),
                        (m.version, m.description, m.filename, m.checksum, elapsed_ms),
                    )
            report.add("create", f"migration {m.filename}", f"applied in {elapsed_ms} ms")
