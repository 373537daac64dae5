"""Online PostgreSQL maintenance: VACUUM (ANALYZE), ANALYZE, REINDEX CONCURRENTLY, VACUUM FULL.

What the Sunday script did database-wide (``REINDEX DATABASE; VACUUM FULL``, which
locks every table for its whole duration) is done here relation by relation, only
where statistics say it is needed, and never in a way that blocks the application:

- every statement runs in autocommit (VACUUM and the CONCURRENTLY commands refuse a
  transaction block) under the session's ``lock_timeout`` and ``statement_timeout``;
- VACUUM and REINDEX CONCURRENTLY take SHARE UPDATE EXCLUSIVE locks only, which let
  reads and writes through; VACUUM FULL (ACCESS EXCLUSIVE) runs only for tables named
  in config or Params, and gives up after ``lock_timeout`` rather than queue behind a
  transaction and make every writer wait behind itself;
- before each statement the window is checked: past its end nothing new starts and
  every remaining item is recorded as skipped;
- a failed REINDEX CONCURRENTLY leaves an invalid ``<index>_ccnew`` behind: it is
  dropped concurrently and the reindex is retried once.

Identifiers (from the catalog, config or Params) are always ``psycopg.sql.Identifier``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import errors, sql

from dbops.config import MaintenanceSettings
from dbops.maintenance.journal import FAILED, PLANNED, REPORT, SKIPPED, Entry, Journal
from dbops.maintenance.window import Window
from dbops.sqlfiles import load_sql

APPLICATION_NAME = "dbops_pg_maintenance"

# kinds of journal entries
VACUUM = "vacuum"
ANALYZE = "analyze"
REINDEX = "reindex"
INVALID_INDEX = "invalid_index"
VACUUM_FULL = "vacuum_full"
DROP_INDEX = "drop_index"

# Errors after which one more attempt is worth it (the lock holder is usually gone by then).
_RETRYABLE = (errors.LockNotAvailable, errors.DeadlockDetected)


# ----------------------------------------------------------------------------- session


def prepare_session(
    conn, *, lock_timeout: str, statement_timeout: str, application_name: str = APPLICATION_NAME
) -> None:
    """Autocommit, and the timeouts that bound every following statement of ``conn``."""
    conn.autocommit = True
    conn.execute(
        load_sql("maintenance/session_settings.sql"),
        {"lock_timeout": lock_timeout, "statement_timeout": statement_timeout, "application_name": application_name},
    )


def fetch_dicts(conn, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with conn.cursor() as cur:
        cur.execute(query, params or {})
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def existing_databases(conn, names: list[str]) -> set[str]:
    rows = fetch_dicts(conn, load_sql("maintenance/databases_exist.sql"), {"names": names})
    return {r["datname"] for r in rows}


# ----------------------------------------------------------------------------- names in Params


def system_schema(name: str) -> bool:
    """A schema of PostgreSQL itself: ``pg_catalog``, ``pg_toast``, the per-session ``pg_temp_N`` /
    ``pg_toast_temp_N`` (every ``pg_`` name is reserved for the system) and ``information_schema``."""
    return name == "information_schema" or name.startswith("pg_")


def refused_names(schemas: dict[str, list[str]], tables: dict[str, list[str]]) -> list[str]:
    """Why named schemas and tables cannot be maintained, before any database is asked.

    ``schemas`` / ``tables``: setting name -> names (``schema.table`` for tables)."""
    problems = []
    for setting, names in schemas.items():
        problems += [
            f"{setting}: {n} is a system schema (pg_catalog, information_schema, pg_toast, "
            f"pg_temp*: never maintained by dbops)"
            for n in names
            if system_schema(n)
        ]
    for setting, names in tables.items():
        problems += [
            f"{setting}: {n} is in the system schema {n.split('.', 1)[0]} (never maintained by dbops)"
            for n in names
            if system_schema(n.split(".", 1)[0])
        ]
    return problems


def existing_names(conn, schemas: list[str], tables: list[str]) -> tuple[set[str], set[str]]:
    """(the schemas, the ``schema.table`` tables) of the given names present in this database."""
    rows = fetch_dicts(conn, load_sql("maintenance/names_exist.sql"), {"schemas": schemas, "tables": tables})
    return ({r["name"] for r in rows if r["kind"] == "schema"}, {r["name"] for r in rows if r["kind"] == "table"})


def _statement(name: str, **identifiers: sql.Composable) -> sql.Composed:
    return sql.SQL(load_sql(f"maintenance/{name}.sql").strip()).format(**identifiers)


def _describe_error(exc: psycopg.Error) -> dict[str, Any]:
    message = (exc.diag.message_primary if exc.diag else None) or str(exc).splitlines()[0]
    return {"error": message, "sqlstate": exc.sqlstate}


def _outcome_of_error(exc: psycopg.Error, lock_timeout: str) -> tuple[str, str]:
    """(action, reason): a lock timeout means the relation was busy, not broken."""
    if isinstance(exc, errors.LockNotAvailable):
        return SKIPPED, f"lock not granted within lock_timeout {lock_timeout}: the relation was busy"
    if isinstance(exc, errors.QueryCanceled):
        return FAILED, "canceled (statement_timeout or an operator's cancel)"
    return FAILED, "error"


@dataclass
class Context:
    """What every phase needs: where, with which bounds, recording where."""

    conn: Any  # psycopg connection to the maintained database, prepared by prepare_session
    journal: Journal
    settings: MaintenanceSettings
    window: Window
    database: str
    label_database: bool = False  # prefix targets with "<database>:" (not the journal's database)
    dry_run: bool = False

    def __post_init__(self) -> None:
        if not self.conn.autocommit:  # VACUUM and the CONCURRENTLY commands refuse a transaction block
            raise ValueError("maintenance needs an autocommit connection prepared by prepare_session()")

    def target(self, schema: str, name: str) -> str:
        return f"{self.database}:{schema}.{name}" if self.label_database else f"{schema}.{name}"

    def base_detail(self, **extra: Any) -> dict[str, Any]:
        return {"database": self.database, **{k: v for k, v in extra.items() if v is not None}}

    def skipped_by_window(self, entry: Entry) -> Entry:
        entry.action = SKIPPED
        entry.detail["reason"] = f"maintenance window ended at {self.window.end:%Y-%m-%d %H:%M:%S} UTC; not started"
        return self.journal.record(entry)

    def execute(self, entry: Entry, statement: sql.Composed, after: Callable[[], int | None] | None = None) -> Entry:
        """Run one maintenance statement, timing it and recording its outcome."""
        entry.detail["statement"] = statement.as_string(self.conn)
        if self.dry_run:
            entry.action = PLANNED
            return entry
        row_id = self.journal.start(entry)
        started = time.monotonic()
        try:
            self.conn.execute(statement)
        except psycopg.Error as exc:
            entry.duration_ms = int((time.monotonic() - started) * 1000)
            action, reason = _outcome_of_error(exc, self.settings.lock_timeout)
            entry.action = action
            entry.detail.update(_describe_error(exc), outcome=reason, retryable=isinstance(exc, _RETRYABLE))
        else:
            entry.duration_ms = int((time.monotonic() - started) * 1000)
            if after is not None:
                try:
                    entry.after_bytes = after()
                except psycopg.Error as exc:  # the work is done; only the measurement failed
                    entry.detail["after_error"] = _describe_error(exc)["error"]
        self.journal.finish(row_id, entry)
        return entry


# ----------------------------------------------------------------------------- VACUUM / ANALYZE


@dataclass(frozen=True)
class TableActivity:
    schema_name: str
    table_name: str
    live_tuples: int
    dead_tuples: int
    changes_since_analyze: int
    inserts_since_vacuum: int
    last_vacuum: datetime | None
    last_analyze: datetime | None
    table_bytes: int


@dataclass(frozen=True)
class Planned:
    kind: str  # VACUUM or ANALYZE
    schema_name: str
    table_name: str
    reason: str
    table_bytes: int
    dead_tuples: int


def table_activity(conn, schemas: list[str] | None) -> list[TableActivity]:
    return [
        TableActivity(**r) for r in fetch_dicts(conn, load_sql("maintenance/table_activity.sql"), {"schemas": schemas})
    ]


def vacuum_reason(t: TableActivity, s: MaintenanceSettings, now: datetime) -> str | None:
    """Why ``t`` needs VACUUM (ANALYZE), or None."""
    threshold = s.vacuum_min_dead_tuples + s.vacuum_dead_fraction * t.live_tuples
    if t.dead_tuples > 0 and t.dead_tuples >= threshold:
        return (
            f"{t.dead_tuples} dead tuples >= {threshold:.0f} "
            f"({s.vacuum_min_dead_tuples} + {s.vacuum_dead_fraction:g} x {t.live_tuples} live)"
        )
    changed = t.dead_tuples > 0 or t.inserts_since_vacuum > 0
    if s.vacuum_max_age_days is not None and changed:
        changes = f"{t.dead_tuples} dead, {t.inserts_since_vacuum} inserted since"
        if t.last_vacuum is None:
            return f"never vacuumed ({changes})"
        age = now - t.last_vacuum
        if age > timedelta(days=s.vacuum_max_age_days):
            return f"last vacuum {age.days} days ago > {s.vacuum_max_age_days} ({changes})"
    return None


def analyze_reason(t: TableActivity, s: MaintenanceSettings) -> str | None:
    """Why ``t`` needs ANALYZE alone (when it does not need VACUUM (ANALYZE)), or None."""
    threshold = s.analyze_min_changes + s.analyze_change_fraction * t.live_tuples
    if t.changes_since_analyze > 0 and t.changes_since_analyze >= threshold:
        return (
            f"{t.changes_since_analyze} rows changed since the last analyze >= {threshold:.0f} "
            f"({s.analyze_min_changes} + {s.analyze_change_fraction:g} x {t.live_tuples} live)"
        )
    if t.last_analyze is None and t.live_tuples > 0:
        return f"never analyzed ({t.live_tuples} live rows)"
    return None


def plan_vacuum(tables: list[TableActivity], s: MaintenanceSettings, now: datetime | None = None) -> list[Planned]:
    """VACUUM (ANALYZE) where needed, else ANALYZE where statistics are stale; most dead first."""
    now = now or datetime.now(UTC)
    plan = []
    for t in tables:
        reason = vacuum_reason(t, s, now)
        kind = VACUUM
        if reason is None:
            reason, kind = analyze_reason(t, s), ANALYZE
        if reason is not None:
            plan.append(Planned(kind, t.schema_name, t.table_name, reason, t.table_bytes, t.dead_tuples))
    return sorted(plan, key=lambda p: (p.kind != VACUUM, -p.dead_tuples, p.schema_name, p.table_name))


def _table_facts(conn, schema: str, name: str) -> dict[str, Any] | None:
    rows = fetch_dicts(conn, load_sql("maintenance/table_facts.sql"), {"schema": schema, "name": name})
    return rows[0] if rows else None


def vacuum_phase(ctx: Context, now: datetime | None = None) -> list[Entry]:
    """VACUUM (ANALYZE) / ANALYZE of every table that needs it, within the window."""
    entries = []
    for p in plan_vacuum(table_activity(ctx.conn, ctx.settings.schemas), ctx.settings, now):
        entry = Entry(
            p.kind,
            ctx.target(p.schema_name, p.table_name),
            p.kind,
            before_bytes=p.table_bytes,
            detail=ctx.base_detail(reason=p.reason, dead_tuples_before=p.dead_tuples),
        )
        if ctx.window.closed():
            entries.append(ctx.skipped_by_window(entry))
            continue
        table = sql.Identifier(p.schema_name, p.table_name)
        if p.kind == VACUUM:
            statement = _statement("vacuum", table=table, truncate=sql.Literal(ctx.settings.vacuum_truncate))
        else:
            statement = _statement("analyze", table=table)

        def after(schema=p.schema_name, name=p.table_name, entry=entry) -> int | None:
            facts = _table_facts(ctx.conn, schema, name)
            if facts is None:
                return None
            entry.detail["dead_tuples_after"] = facts["dead_tuples"]
            return facts["table_bytes"]

        entries.append(ctx.execute(entry, statement, after))
    return entries


# ----------------------------------------------------------------------------- indexes


def _index_facts(conn, schema: str, name: str) -> dict[str, Any] | None:
    rows = fetch_dicts(conn, load_sql("maintenance/index_facts.sql"), {"schema": schema, "name": name})
    return rows[0] if rows else None


def invalid_indexes(conn, schemas: list[str] | None) -> list[dict[str, Any]]:
    return fetch_dicts(conn, load_sql("maintenance/invalid_indexes.sql"), {"schemas": schemas})


def index_bloat(conn, schemas: list[str] | None) -> list[dict[str, Any]]:
    return fetch_dicts(conn, load_sql("maintenance/index_bloat.sql"), {"schemas": schemas})


def _drop_index(ctx: Context, row: dict[str, Any], reason: str) -> Entry:
    entry = Entry(
        INVALID_INDEX,
        ctx.target(row["schema_name"], row["index_name"]),
        DROP_INDEX,
        before_bytes=row["index_bytes"],
        detail=ctx.base_detail(reason=reason, table=row["table_name"]),
    )
    if ctx.window.closed():
        return ctx.skipped_by_window(entry)
    statement = _statement("drop_index", index=sql.Identifier(row["schema_name"], row["index_name"]))
    return ctx.execute(entry, statement, after=lambda: 0)


def drop_invalid_leftovers(ctx: Context) -> tuple[list[Entry], list[dict[str, str]]]:
    """Drop invalid ``_ccnew``/``_ccold`` leftovers of failed concurrent reindexes.

    Returns the entries and the indexes whose reindex is to be retried (the originals
    of ``_ccnew`` leftovers: their rebuild never completed). Other invalid indexes are
    reported, never dropped: they belong to whoever tried to build them.
    """
    entries: list[Entry] = []
    retry: list[dict[str, str]] = []
    for row in invalid_indexes(ctx.conn, ctx.settings.schemas):
        target = ctx.target(row["schema_name"], row["index_name"])
        if not row["leftover_of"]:
            reason = "invalid index, not a REINDEX CONCURRENTLY leftover: rebuild or drop it (left untouched)"
            entries.append(
                ctx.journal.record(
                    Entry(
                        INVALID_INDEX,
                        target,
                        REPORT,
                        before_bytes=row["index_bytes"],
                        detail=ctx.base_detail(table=row["table_name"], reason=reason),
                    )
                )
            )
            continue
        if row["build_in_progress"]:
            entries.append(
                ctx.journal.record(
                    Entry(
                        INVALID_INDEX,
                        target,
                        SKIPPED,
                        before_bytes=row["index_bytes"],
                        detail=ctx.base_detail(
                            table=row["table_name"], reason=f"an index build on {row['table_name']} is running now"
                        ),
                    )
                )
            )
            continue
        reason = f"leftover of a failed REINDEX CONCURRENTLY (_cc{row['leftover_of']})"
        entry = _drop_index(ctx, row, reason)
        entries.append(entry)
        if entry.action in (DROP_INDEX, PLANNED) and row["leftover_of"] == "new" and row["original_name"]:
            original = _index_facts(ctx.conn, row["schema_name"], row["original_name"])
            if original is not None and original["valid"]:
                retry.append(
                    {
                        "schema": row["schema_name"],
                        "index": row["original_name"],
                        "reason": f"retry: its rebuild left {row['index_name']} behind (now dropped)",
                    }
                )
    return entries, retry


@dataclass(frozen=True)
class IndexCandidate:
    schema_name: str
    index_name: str
    table_name: str
    index_bytes: int
    reason: str
    bloat_bytes: int | None = None
    bloat_ratio: float | None = None


def reindex_candidates(
    bloat_rows: list[dict[str, Any]], listed_rows: list[dict[str, Any]], s: MaintenanceSettings
) -> list[IndexCandidate]:
    """Bloated btree indexes (estimate over both bounds), then every index of the listed schemas."""
    chosen: dict[tuple[str, str], IndexCandidate] = {}
    for r in bloat_rows:
        ratio = r["bloat_ratio"]
        if not r["valid"] or ratio is None or r["stats_missing"]:
            continue
        if float(ratio) >= s.reindex_bloat_ratio and r["index_bytes"] >= s.reindex_min_bytes:
            chosen[(r["schema_name"], r["index_name"])] = IndexCandidate(
                r["schema_name"],
                r["index_name"],
                r["table_name"],
                r["index_bytes"],
                reason=(
                    f"estimated bloat {float(ratio):.0%} ({r['bloat_bytes']} of {r['index_bytes']} bytes) "
                    f">= {s.reindex_bloat_ratio:.0%}"
                ),
                bloat_bytes=r["bloat_bytes"],
                bloat_ratio=float(ratio),
            )
    for r in listed_rows:
        key = (r["schema_name"], r["index_name"])
        if key not in chosen:
            chosen[key] = IndexCandidate(
                r["schema_name"],
                r["index_name"],
                r["table_name"],
                r["index_bytes"],
                reason=f"schema {r['schema_name']} is listed in reindex_schemas",
            )
    return sorted(chosen.values(), key=lambda c: (-(c.bloat_bytes or 0), -c.index_bytes, c.schema_name, c.index_name))


def _leftovers_of(ctx: Context, schema: str, index: str) -> list[dict[str, Any]]:
    return [
        r
        for r in invalid_indexes(ctx.conn, [schema])
        if r["original_name"] == index and r["leftover_of"] and not r["build_in_progress"]
    ]


def reindex_one(ctx: Context, schema: str, index: str, reason: str, extra: dict[str, Any] | None = None) -> list[Entry]:
    """REINDEX INDEX CONCURRENTLY; on failure drop what it left behind and try once more."""
    target = ctx.target(schema, index)
    facts = _index_facts(ctx.conn, schema, index)
    entry = Entry(REINDEX, target, REINDEX, detail=ctx.base_detail(reason=reason, **(extra or {})))
    if facts is None:
        entry.action, entry.detail["reason"] = SKIPPED, f"{reason}; the index no longer exists"
        return [ctx.journal.record(entry)]
    entry.before_bytes = facts["index_bytes"]
    entry.detail["table"] = facts["table_name"]
    if facts["exclusion"]:
        entry.action = SKIPPED
        entry.detail["reason"] = "backs an exclusion constraint: REINDEX CONCURRENTLY cannot rebuild it"
        return [ctx.journal.record(entry)]
    entries: list[Entry] = []
    statement = _statement("reindex_index", index=sql.Identifier(schema, index))

    def after() -> int | None:
        now = _index_facts(ctx.conn, schema, index)
        return None if now is None else now["index_bytes"]

    for attempt in (1, 2):
        if ctx.window.closed():
            entries.append(ctx.skipped_by_window(entry))
            return entries
        entry.detail["attempt"] = attempt
        ctx.execute(entry, statement, after)
        entries.append(entry)
        if entry.action in (REINDEX, PLANNED):
            return entries
        # A failed concurrent rebuild leaves <index>_ccnew (or _ccold) INVALID: drop it now.
        for leftover in _leftovers_of(ctx, schema, index):
            entries.append(_drop_index(ctx, leftover, f"left behind by the failed reindex of {target}"))
        if attempt == 2 or not entry.detail.get("retryable"):
            return entries
        entry = Entry(
            REINDEX,
            target,
            REINDEX,
            before_bytes=facts["index_bytes"],
            detail=ctx.base_detail(
                reason=f"{reason}; retry after: {entry.detail.get('error')}", table=facts["table_name"], **(extra or {})
            ),
        )
    return entries


def reindex_phase(ctx: Context, retry: list[dict[str, str]] | None = None) -> list[Entry]:
    """Retries from the leftover cleanup first, then bloated indexes and listed schemas."""
    entries: list[Entry] = []
    done: set[tuple[str, str]] = set()
    for item in retry or []:
        done.add((item["schema"], item["index"]))
        entries += reindex_one(ctx, item["schema"], item["index"], item.get("reason", "retry"))
    bloat_rows = index_bloat(ctx.conn, ctx.settings.schemas)
    listed = []
    if ctx.settings.reindex_schemas:
        listed = fetch_dicts(
            ctx.conn, load_sql("maintenance/reindexable_indexes.sql"), {"schemas": ctx.settings.reindex_schemas}
        )
    for c in reindex_candidates(bloat_rows, listed, ctx.settings):
        if (c.schema_name, c.index_name) in done:
            continue
        extra = {"bloat_ratio": c.bloat_ratio, "bloat_bytes": c.bloat_bytes}
        entries += reindex_one(ctx, c.schema_name, c.index_name, c.reason, extra)
    return entries


# ----------------------------------------------------------------------------- VACUUM FULL


def vacuum_full_phase(ctx: Context, tables: list[str]) -> list[Entry]:
    """VACUUM (FULL, ANALYZE) of exactly the listed ``schema.table`` names, one at a time.

    ACCESS EXCLUSIVE for the whole rewrite: only ever for tables someone listed, and
    only when the lock is granted within ``lock_timeout`` (else: skipped, reported).
    A listed table missing from this database is skipped with ``detail.missing``; the
    caller decides whether it exists anywhere.
    """
    entries = []
    for name in tables:
        schema, table = name.split(".", 1)
        target = ctx.target(schema, table)
        facts = _table_facts(ctx.conn, schema, table)
        entry = Entry(
            VACUUM_FULL, target, VACUUM_FULL, detail=ctx.base_detail(reason="listed in vacuum_full_tables", table=name)
        )
        if facts is None:
            entry.action = SKIPPED
            entry.detail.update(missing=True, reason=f"table {name} does not exist in database {ctx.database}")
            entries.append(ctx.journal.record(entry))
            continue
        entry.before_bytes = facts["total_bytes"]
        entry.detail["dead_tuples_before"] = facts["dead_tuples"]
        if ctx.window.closed():
            entries.append(ctx.skipped_by_window(entry))
            continue
        statement = _statement("vacuum_full", table=sql.Identifier(schema, table))

        def after(schema=schema, table=table) -> int | None:
            now = _table_facts(ctx.conn, schema, table)
            return None if now is None else now["total_bytes"]

        entries.append(ctx.execute(entry, statement, after))
    return entries
