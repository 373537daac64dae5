"""
### dbops_pg_maintenance: online PostgreSQL maintenance, never database-wide locks

Replaces the Sunday script (`ANALYZE VERBOSE; REINDEX DATABASE; VACUUM FULL VERBOSE;`, which
locked every table for the whole night) with work done relation by relation, only where the
statistics say it is needed, on autocommit connections where every statement runs under
`maintenance.lock_timeout` and `maintenance.statement_timeout`:

| task | what it does |
|---|---|
| `plan` | validates Params and config, checks the databases (`maintenance.databases`, default: the connection's) and the journal table; refuses by name, before any work, every schema (`maintenance.schemas`, `reindex_schemas`) and `vacuum_full_tables` table that exists in none of those databases, and every system schema (`pg_catalog`, `information_schema`, `pg_toast`, `pg_temp_N`, `pg_toast_temp_N`: any `pg_*`); logs the plan |
| `drop_invalid_indexes` | `DROP INDEX CONCURRENTLY` of invalid `*_ccnew` / `*_ccold` leftovers of failed concurrent reindexes (the reindex of a `_ccnew`'s original is retried in `reindex`); other invalid indexes are reported, not touched |
| `vacuum_analyze` | `VACUUM (ANALYZE)` where dead tuples pass `vacuum_min_dead_tuples + vacuum_dead_fraction x live`, or a changed table was not vacuumed for `vacuum_max_age_days`; `ANALYZE` where rows changed since the last analyze pass the analyze bounds |
| `reindex` | `REINDEX INDEX CONCURRENTLY` of btree indexes whose estimated bloat passes `reindex_bloat_ratio` and `reindex_min_bytes`, and of every index of `reindex_schemas`; a failed rebuild's leftover is dropped and the rebuild retried once |
| `approve_vacuum_full` | when tables are listed for `VACUUM FULL` (and not a dry run): waits for an approval under **Required Actions** showing the tables and databases. Reject: `vacuum_full` is skipped, nothing rewritten, the run stays green; no answer within `restore.approval_timeout_minutes` (default 60): it fails, nothing rewritten. Nothing listed: passes at once |
| `vacuum_full` | `VACUUM (FULL, ANALYZE)` only of the tables listed in `maintenance.vacuum_full_tables` or the Param, once approved; a table whose lock is not granted within `lock_timeout` is skipped and reported |
| `report` | unused indexes (idx_scan = 0, not unique/primary/constraint-backing, with the statistics' age) and estimated table and index bloat from catalog statistics; the run's actions with before/after sizes and durations, as a table in the log; fails if anything failed or a phase did not complete |

Everything done or found is written to `dbops.maintenance_report` (one row per action, written when it
starts and completed when it ends). All heavy tasks share the `dbops_postgres` pool with backups.

**Window**: new work starts only within `window_minutes` (config, or the Param) of the run's start;
past the end, each remaining item is recorded as `skipped` with the window end, and the run stays green.

**Params**: `dry_run` (log the statements each phase would run; nothing executed or recorded),
`vacuum_full_tables` (`schema.table` names added to the configured ones), `reindex_schemas`,
`window_minutes`.

**Rerun / backfill**: maintenance acts on the database as it is now, so a backfilled run for a past
Sunday simply does the maintenance that is due today (it cannot be done "then"); with `max_active_runs=1`
and the `dbops_postgres` pool, runs never overlap each other or a backup. A rerun (clear) converges:
needs are re-read from the statistics, so what was done is not redone, and a cleared run gets a fresh
window from its restart. Journal rows of a rerun are appended; readers take the latest per target.
"""

from airflow.sdk import Param

from dbops.dagkit import CONFIG, cron, dbops_dag, dry_run_param
from dbops.tasks.approval import DestructionApproval, describe_vacuum_full
from dbops.tasks.maintenance import drop_invalid_indexes, plan, reindex, report, vacuum_analyze, vacuum_full
from dbops.tasks.summary import summary

with dbops_dag(
    "dbops_pg_maintenance",
    schedule=cron(CONFIG.schedules.pg_maintenance),
    doc_md=__doc__,
    tags=["maintenance", "postgres"],
    params={
        "dry_run": dry_run_param("Log the statements each phase would run; execute and record nothing."),
        "vacuum_full_tables": Param(
            [],
            type="array",
            items={"type": "string", "pattern": r"^[^.\s\"]+\.[^.\s\"]+$"},
            uniqueItems=True,
            title="VACUUM FULL tables",
            description="schema.table names to rewrite with VACUUM FULL (ACCESS EXCLUSIVE while it runs), "
            "in addition to maintenance.vacuum_full_tables.",
        ),
        "reindex_schemas": Param(
            [],
            type="array",
            items={"type": "string", "minLength": 1},
            uniqueItems=True,
            title="Reindex schemas",
            description="Schemas whose every index is rebuilt concurrently, whatever its bloat.",
        ),
        "window_minutes": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=1440,
            title="Window (minutes)",
            description="No new work starts later than this after the run's start; empty: maintenance.window_minutes.",
        ),
    },
):
    # VACUUM FULL of listed tables waits for a person's approval (nothing listed, or a dry run: it passes at once)
    approval = DestructionApproval(task_id="approve_vacuum_full", describe=describe_vacuum_full)
    plan() >> drop_invalid_indexes() >> vacuum_analyze() >> reindex() >> approval >> vacuum_full() >> report()
    summary()
