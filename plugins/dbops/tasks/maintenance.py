"""Tasks of ``dbops_pg_maintenance``: plan, then one task per phase, then the report.

Each phase works on every configured database in turn, on its own autocommit
connection bounded by ``maintenance.lock_timeout`` / ``statement_timeout``, and writes
what it does to ``dbops.maintenance_report`` as it goes. A relation whose statement
fails is recorded as failed and the phase goes on; ``report`` fails the run at the end
if anything failed or a phase did not complete. The window is the run's start (reset
when the run is cleared) plus ``window_minutes``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from typing import Any

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from dbops import runtime
from dbops.config import ConfigError, DbopsConfig
from dbops.dagkit import on_store
from dbops.runtime import runtime_config

log = logging.getLogger(__name__)

PHASES = ("drop_invalid_indexes", "vacuum_analyze", "reindex", "vacuum_full")
# the journal connection only inserts rows: keep it on a short leash
_JOURNAL_TIMEOUTS = {"lock_timeout": "10s", "statement_timeout": "1min"}


def _union(first: list[str], second: list[str]) -> list[str]:
    return list(dict.fromkeys([*first, *second]))


def maintenance_config(params: dict[str, Any]) -> DbopsConfig:
    """The run's config: Params add tables/schemas to the configured ones and may set the window."""
    base = runtime_config()
    m = base.maintenance
    overrides: dict[str, Any] = {
        "vacuum_full_tables": _union(m.vacuum_full_tables, params.get("vacuum_full_tables") or []),
        "reindex_schemas": _union(m.reindex_schemas, params.get("reindex_schemas") or []),
    }
    if params.get("window_minutes") is not None:
        overrides["window_minutes"] = params["window_minutes"]
    try:
        return base.with_overrides({"maintenance": overrides})
    except ConfigError as exc:
        raise AirflowFailException(f"refused before any work: {exc}") from None


def _window(context: Mapping[str, Any], minutes: int):
    from dbops.maintenance.window import Window

    return Window.starting(context["dag_run"].start_date, minutes)


def _databases(config: DbopsConfig) -> tuple[str, list[str]]:
    """(the connection's own database, the databases to maintain); refuses unknown names:
    databases, schemas and tables (each must exist in at least one maintained database) and
    any system schema, before any work."""
    from dbops.maintenance.postgres import existing_databases, existing_names, refused_names

    m = config.maintenance
    schemas = {"maintenance.schemas": m.schemas or [], "reindex_schemas": m.reindex_schemas}
    tables = {"vacuum_full_tables": m.vacuum_full_tables}
    problems = refused_names(schemas, tables)
    if problems:
        raise AirflowFailException("refused before any work:\n  " + "\n  ".join(problems))
    with runtime.postgres(config.connections.postgres) as conn:
        own = conn.info.dbname
        wanted = m.databases or [own]
        present = existing_databases(conn, wanted)
        conn.rollback()
    missing = [d for d in wanted if d not in present]
    if missing:
        raise AirflowFailException(
            f"refused before any work: database(s) {missing} of maintenance.databases do not exist "
            "or do not accept connections"
        )
    all_schemas = sorted({n for names in schemas.values() for n in names})
    found_schemas: set[str] = set()
    found_tables: set[str] = set()
    for database in wanted:
        with runtime.postgres(config.connections.postgres, database) as conn:
            have_schemas, have_tables = existing_names(conn, all_schemas, m.vacuum_full_tables)
            conn.rollback()
        found_schemas |= have_schemas
        found_tables |= have_tables
    unknown = [
        f"{setting}: schema {n} does not exist"
        for setting, names in schemas.items()
        for n in names
        if n not in found_schemas
    ]
    unknown += [
        f"vacuum_full_tables: table {n} does not exist (or is not a table)"
        for n in m.vacuum_full_tables
        if n not in found_tables
    ]
    if unknown:
        where = f"database {wanted[0]}" if len(wanted) == 1 else f"any of the databases {', '.join(wanted)}"
        raise AirflowFailException(f"refused before any work, unknown in {where}:\n  " + "\n  ".join(unknown))
    return own, wanted


@contextmanager
def _journal(config: DbopsConfig, run_id: str, dry_run: bool):
    from dbops.maintenance.journal import Journal, JournalNotReady
    from dbops.maintenance.postgres import prepare_session

    with runtime.postgres(config.connections.postgres) as conn:
        prepare_session(conn, **_JOURNAL_TIMEOUTS)
        try:
            yield Journal(conn, run_id, dry_run=dry_run)
        except JournalNotReady as exc:
            raise AirflowFailException(str(exc)) from None


def _each_database(phase: str, work: Callable[[Any, list], None]) -> dict[str, Any]:
    """Run ``work(ctx, entries)`` for every database; log the entries as a table; return a summary."""
    from dbops.maintenance import postgres
    from dbops.maintenance.reports import render_entries

    context = get_current_context()
    params = context["params"]
    config = maintenance_config(params)
    settings = config.maintenance
    window = _window(context, settings.window_minutes)
    own, databases = _databases(config)
    entries: list = []
    with _journal(config, context["run_id"], params["dry_run"]) as journal:
        for database in databases:
            with runtime.postgres(config.connections.postgres, database) as conn:
                postgres.prepare_session(
                    conn, lock_timeout=settings.lock_timeout, statement_timeout=settings.statement_timeout
                )
                ctx = postgres.Context(
                    conn, journal, settings, window, database, label_database=database != own, dry_run=params["dry_run"]
                )
                work(ctx, entries)
    title = (
        f"{phase}: window {window.describe()}; lock_timeout {settings.lock_timeout}, "
        f"statement_timeout {settings.statement_timeout}"
    )
    if params["dry_run"]:
        title += " [dry run: nothing was executed or recorded]"
    log.info("%s", render_entries(title, entries))
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.action] = counts.get(e.action, 0) + 1
    return {"phase": phase, "counts": counts, "entries": [e.to_dict() for e in entries]}


@task
def plan() -> dict:
    """Validate Params and config, resolve the databases, log what this run may do."""
    context = get_current_context()
    params = context["params"]
    config = maintenance_config(params)
    m = config.maintenance
    own, databases = _databases(config)
    if not params["dry_run"]:
        with _journal(config, context["run_id"], dry_run=False):
            pass  # refuses now, before any work, when dbops.maintenance_report is missing
    window = _window(context, m.window_minutes)
    lines = [
        f"databases: {', '.join(databases)} (journal in {own}.dbops.maintenance_report)",
        f"schemas: {', '.join(m.schemas) if m.schemas else 'all but system schemas'}",
        f"window: {window.describe()} ({m.window_minutes} min from the run's start)",
        f"timeouts: lock_timeout {m.lock_timeout}, statement_timeout {m.statement_timeout}",
        f"VACUUM (ANALYZE): dead tuples >= {m.vacuum_min_dead_tuples} + {m.vacuum_dead_fraction:g} x live, "
        f"or changed and not vacuumed for {m.vacuum_max_age_days} days; TRUNCATE {m.vacuum_truncate}",
        f"ANALYZE: changes >= {m.analyze_min_changes} + {m.analyze_change_fraction:g} x live, or never analyzed",
        f"REINDEX CONCURRENTLY: btree bloat >= {m.reindex_bloat_ratio:.0%} and size >= {m.reindex_min_bytes} bytes"
        + (f"; every index of {', '.join(m.reindex_schemas)}" if m.reindex_schemas else ""),
        "VACUUM FULL: "
        f"{', '.join(m.vacuum_full_tables) if m.vacuum_full_tables else 'none (only listed tables, ever)'}",
        f"dry run: {params['dry_run']}",
    ]
    log.info("maintenance plan\n  %s", "\n  ".join(lines))
    return {
        "databases": databases,
        "journal_database": own,
        "window_end": window.end.isoformat(),
        "vacuum_full_tables": m.vacuum_full_tables,
        "reindex_schemas": m.reindex_schemas,
    }


@task(**on_store("postgres"))
def drop_invalid_indexes() -> dict:
    """DROP INDEX CONCURRENTLY of invalid _ccnew/_ccold leftovers; other invalid indexes reported."""
    from dbops.maintenance.postgres import drop_invalid_leftovers

    retry: list[dict] = []

    def work(ctx, entries):
        found, again = drop_invalid_leftovers(ctx)
        entries += found
        retry.extend({**r, "database": ctx.database} for r in again)

    summary = _each_database("drop_invalid_indexes", work)
    summary["retry"] = retry
    return summary


@task(**on_store("postgres"))
def vacuum_analyze() -> dict:
    """VACUUM (ANALYZE) of tables over the dead-tuple or age thresholds; ANALYZE of stale ones."""
    from dbops.maintenance.postgres import vacuum_phase

    return _each_database("vacuum_analyze", lambda ctx, entries: entries.extend(vacuum_phase(ctx)))


@task(**on_store("postgres"))
def reindex() -> dict:
    """REINDEX INDEX CONCURRENTLY: retries from the cleanup, bloated indexes, listed schemas."""
    from dbops.maintenance.postgres import reindex_phase

    cleanup = get_current_context()["ti"].xcom_pull(task_ids="drop_invalid_indexes") or {}
    retry = cleanup.get("retry", [])

    def work(ctx, entries):
        mine = [r for r in retry if r.get("database") == ctx.database]
        entries.extend(reindex_phase(ctx, mine))

    return _each_database("reindex", work)


@task(**on_store("postgres"))
def vacuum_full() -> dict:
    """VACUUM (FULL, ANALYZE) of the listed tables only, each bounded by lock_timeout."""
    from dbops.maintenance.journal import FAILED, Entry
    from dbops.maintenance.postgres import VACUUM_FULL, vacuum_full_phase

    context = get_current_context()
    config = maintenance_config(context["params"])
    tables = config.maintenance.vacuum_full_tables
    if not tables:
        log.info("no table listed in maintenance.vacuum_full_tables or the vacuum_full_tables Param: nothing to do")
        return {"phase": "vacuum_full", "counts": {}, "entries": []}
    found: set[str] = set()

    def work(ctx, entries):
        for e in vacuum_full_phase(ctx, tables):
            if not e.detail.get("missing"):
                found.add(e.detail["table"])
            entries.append(e)

    summary = _each_database("vacuum_full", work)
    absent = [name for name in tables if name not in found]
    if absent:  # listed explicitly, so its absence everywhere is an error, not a skip
        _, databases = _databases(config)
        with _journal(config, context["run_id"], context["params"]["dry_run"]) as journal:
            for name in absent:
                reason = f"listed table {name} exists in none of the maintained databases {databases}"
                entry = journal.record(Entry(VACUUM_FULL, name, FAILED, detail={"reason": reason}))
                summary["entries"].append(entry.to_dict())
                log.error("%s", reason)
    return summary


@task(**on_store("postgres"), trigger_rule="all_done")
def report() -> dict:
    """Unused indexes and estimated bloat (stored and logged), the run's actions; fails if any failed."""
    from dbops.maintenance import postgres, reports
    from dbops.maintenance.journal import FAILED, Entry, run_rows

    context = get_current_context()
    params = context["params"]
    ti = context["ti"]
    # a rejected VACUUM FULL was skipped on purpose: not a phase that failed to complete
    rejected = (ti.xcom_pull(task_ids="approve_vacuum_full", key="approval") or {}).get("approved") is False
    missing = [p for p in PHASES if ti.xcom_pull(task_ids=p) is None and not (rejected and p == "vacuum_full")]
    try:
        config = maintenance_config(params)
        own, databases = _databases(config)
    except AirflowFailException as exc:
        raise AirflowFailException(f"no report: {exc}") from None
    settings = config.maintenance
    findings: list[Entry] = []
    unused_text = []
    with _journal(config, context["run_id"], params["dry_run"]) as journal:
        for database in databases:
            label = database != own

            def target(schema: str, name: str, database=database, label=label) -> str:
                return f"{database}:{schema}.{name}" if label else f"{schema}.{name}"

            with runtime.postgres(config.connections.postgres, database) as conn:
                postgres.prepare_session(
                    conn, lock_timeout=settings.lock_timeout, statement_timeout=settings.statement_timeout
                )
                unused, age = reports.unused_index_entries(conn, settings.schemas, target)
                bloat = reports.bloat_entries(conn, settings, target)
            for e in unused + bloat:
                e.detail["database"] = database
            unused_text.append(f"[{database}] " + reports.render_unused(unused, age))
            findings += reports.record_all(journal, unused + bloat)
            log.info("%s\n\n[%s] %s", unused_text[-1], database, reports.render_bloat(bloat))
        if params["dry_run"]:
            actions = [Entry(**e) for p in PHASES for e in (ti.xcom_pull(task_ids=p) or {}).get("entries", [])]
        else:
            actions = [
                e
                for e in reports.journal_entries(run_rows(journal.conn, context["run_id"]))
                if e.kind not in (reports.UNUSED_INDEX, reports.TABLE_BLOAT, reports.INDEX_BLOAT)
            ]
    log.info("%s", reports.render_entries(f"maintenance run {context['run_id']}: actions", actions))
    failed = [e for e in actions if e.action == FAILED]
    summary = {
        "actions": {a: sum(e.action == a for e in actions) for a in sorted({e.action for e in actions})},
        "unused_indexes": [e.target for e in findings if e.kind == reports.UNUSED_INDEX],
        "bloated": [e.target for e in findings if e.kind != reports.UNUSED_INDEX],
        "failed": [f"{e.kind} {e.target}: {e.note}" for e in failed],
        "phases_not_completed": missing,
    }
    if failed or missing:
        problems = [f"phase {p} did not complete (see its log)" for p in missing]
        problems += [f"{e.kind} {e.target} failed: {e.note}" for e in failed]
        raise AirflowFailException("maintenance did not complete:\n  " + "\n  ".join(problems))
    return summary
