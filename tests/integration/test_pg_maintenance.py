"""Online maintenance on the real local PostgreSQL 16, in a scratch database per test.

The headline test keeps a writer committing (INSERT + UPDATE) into a bloated table
while VACUUM (ANALYZE) and REINDEX INDEX CONCURRENTLY run on it, and asserts that no
write transaction took longer than WRITER_BOUND_S and that the writer's backend never
waited on a lock for longer than LOCK_WAIT_BOUND_S (pg_stat_activity sampled every
few milliseconds). The table keeps 400 000 live rows, so the blocking variants fail
this test (tried: a plain REINDEX made the writer wait 0.2 s on a lock, VACUUM FULL
0.66 s); a control test shows both probes do see a lock that blocks writes.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from dbops.config import MaintenanceSettings
from dbops.maintenance import postgres as pm
from dbops.maintenance import reports
from dbops.maintenance.journal import Journal, run_rows
from dbops.maintenance.window import Window
from dbops.migrations import MigrationRunner
from dbops.report import StoreReport
from dbops.stores.postgres.bootstrap import migrations
from tests.support import pg_connect

pytestmark = pytest.mark.integration

# Bounds for the writer during online maintenance (measured here: max transaction 12-74 ms,
# no lock wait seen at all).
WRITER_BOUND_S = 0.3
LOCK_WAIT_BOUND_S = 0.05
ROWS = 1_200_000


@pytest.fixture
def db(scratch_pg):
    """A scratch database with the platform migrations (so dbops.maintenance_report exists)."""
    conn, name = scratch_pg
    with pg_connect(conn, name) as c:
        MigrationRunner(c, migrations()).run(StoreReport("postgres"))
        c.execute("CREATE SCHEMA maint")
        c.commit()
    return conn, name


def connect(db, autocommit=True) -> psycopg.Connection:
    conn, name = db
    return pg_connect(conn, name, autocommit=autocommit)


def make_bloated_table(db, name="events", rows=ROWS) -> None:
    """A table and index with 2 of 3 rows deleted and statistics that say so."""
    with connect(db) as c:
        c.execute(
            f"CREATE TABLE maint.{name} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            "k int NOT NULL, payload text NOT NULL) WITH (autovacuum_enabled = false)"
        )
        c.execute(f"CREATE INDEX {name}_k ON maint.{name} (k)")
        c.execute(
            f"INSERT INTO maint.{name} (k, payload) SELECT g, repeat('x', 80) FROM generate_series(1, %s) g", (rows,)
        )
        c.execute(f"DELETE FROM maint.{name} WHERE id % 3 <> 0")
        c.execute(f"ANALYZE maint.{name}")


class Session:
    """A maintenance context over its own connections, closed at the end."""

    def __init__(self, db, settings: MaintenanceSettings, run_id="test-run", window=None, dry_run=False):
        self.maint = connect(db)
        self.jconn = connect(db)
        pm.prepare_session(self.maint, lock_timeout=settings.lock_timeout, statement_timeout=settings.statement_timeout)
        pm.prepare_session(self.jconn, lock_timeout="10s", statement_timeout="1min")
        self.journal = Journal(self.jconn, run_id, dry_run=dry_run)
        self.ctx = pm.Context(
            self.maint, self.journal, settings, window or Window.starting(None, 60), db[1], dry_run=dry_run
        )

    def rows(self):
        return {(r["kind"], r["target"]): r for r in run_rows(self.jconn, self.journal.run_id)}

    def close(self):
        self.maint.close()
        self.jconn.close()


@pytest.fixture
def session_factory(db):
    made = []

    def make(settings, **kw):
        s = Session(db, settings, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


class Writer(threading.Thread):
    """Commits an INSERT and an UPDATE per iteration, recording how long each transaction took."""

    def __init__(self, db, table="maint.events"):
        super().__init__(daemon=True)
        self.db, self.table = db, table
        self.latencies: list[float] = []
        self.errors: list[BaseException] = []
        self.halt = threading.Event()
        self.first_commit = threading.Event()
        self.pid: int | None = None

    def run(self):
        try:
            with connect(self.db) as c:
                c.execute("SET statement_timeout = '60s'")
                self.pid = c.info.backend_pid
                i = 0
                while not self.halt.is_set():
                    i += 1
                    started = time.perf_counter()
                    with c.transaction():
                        c.execute(f"INSERT INTO {self.table} (k, payload) VALUES (%s, 'w')", (-i,))
                        c.execute(f"UPDATE {self.table} SET k = k + 1 WHERE id = %s", (3 * (i % (ROWS // 3) + 1),))
                    self.latencies.append(time.perf_counter() - started)
                    self.first_commit.set()
                    time.sleep(0.002)
        except BaseException as exc:  # surfaced by the test
            self.errors.append(exc)
            self.first_commit.set()

    def stop(self) -> float:
        self.halt.set()
        self.join(30)
        assert not self.errors, self.errors
        return max(self.latencies)


class LockWaitProbe(threading.Thread):
    """Samples the writer's backend in pg_stat_activity; the longest stretch spent waiting on a lock."""

    def __init__(self, db, pid: int, every_s: float = 0.003):
        super().__init__(daemon=True)
        self.db, self.pid, self.every_s = db, pid, every_s
        self.halt = threading.Event()
        self.samples = 0
        self.longest_s = 0.0
        self.waited_on: set[str] = set()

    def run(self):
        with connect(self.db) as c:
            since = None
            while not self.halt.is_set():
                row = c.execute(
                    "SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s", (self.pid,)
                ).fetchone()
                now = time.perf_counter()
                self.samples += 1
                if row and row[0] == "Lock":
                    self.waited_on.add(row[1])
                    since = since or now
                    self.longest_s = max(self.longest_s, now - since + self.every_s)
                else:
                    since = None
                time.sleep(self.every_s)

    def stop(self) -> float:
        self.halt.set()
        self.join(30)
        return self.longest_s


def index_state(db, table="events") -> dict[str, tuple[bool, int]]:
    with connect(db) as c:
        rows = c.execute(
            "SELECT c.relname, i.indisvalid, pg_relation_size(c.oid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass",
            (f"maint.{table}",),
        ).fetchall()
    return {name: (valid, size) for name, valid, size in rows}


def dead_tuples(db, table="events") -> int:
    with connect(db) as c:
        return c.execute(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = %s::regclass", (f"maint.{table}",)
        ).fetchone()[0]


SETTINGS = MaintenanceSettings(schemas=["maint"], reindex_min_bytes=0, lock_timeout="2s", statement_timeout="5min")


def test_vacuum_and_concurrent_reindex_of_a_bloated_table_never_block_a_writer(db, session_factory, record_property):
    make_bloated_table(db)
    before = index_state(db)
    deleted = ROWS - ROWS // 3
    assert dead_tuples(db) == deleted
    s = session_factory(SETTINGS)

    writer = Writer(db)
    writer.start()
    assert writer.first_commit.wait(10)
    probe = LockWaitProbe(db, writer.pid)
    probe.start()
    commits_before = len(writer.latencies)
    started = time.perf_counter()
    vacuumed = pm.vacuum_phase(s.ctx)
    reindexed = pm.reindex_phase(s.ctx)
    maintenance_s = time.perf_counter() - started
    during = writer.latencies[commits_before:]
    time.sleep(0.2)
    lock_wait = probe.stop()
    worst = writer.stop()
    record_property("writer_max_transaction_s", round(worst, 4))
    record_property("writer_longest_lock_wait_s", round(lock_wait, 4))
    record_property("writer_commits_during_maintenance", len(during))
    record_property("maintenance_s", round(maintenance_s, 3))
    print(
        f"\nmaintenance {maintenance_s:.2f} s; writer: {len(during)} commits during it, max transaction "
        f"{worst * 1000:.1f} ms, median {sorted(during)[len(during) // 2] * 1000:.2f} ms; longest lock wait "
        f"{lock_wait * 1000:.0f} ms over {probe.samples} samples {sorted(probe.waited_on)}"
    )

    assert worst < WRITER_BOUND_S, f"a write transaction took {worst:.3f} s during maintenance"
    assert lock_wait < LOCK_WAIT_BOUND_S, f"the writer waited {lock_wait:.3f} s on a lock {probe.waited_on}"
    assert len(during) > 50 and probe.samples > 50, "the writer did not keep committing during maintenance"

    assert [(e.kind, e.target, e.action) for e in vacuumed] == [("vacuum", "maint.events", "vacuum")]
    assert dead_tuples(db) < 1000  # the writer's own updates leave a few
    done = {e.target: e for e in reindexed if e.action == "reindex"}
    assert set(done) == {"maint.events_pkey", "maint.events_k"}, [(e.target, e.action, e.note) for e in reindexed]
    after = index_state(db)
    for name in ("events_pkey", "events_k"):
        assert after[name][0], f"{name} must be valid"
        assert after[name][1] < before[name][1] * 0.5, (name, before[name], after[name])
        entry = done[f"maint.{name}"]
        assert entry.before_bytes >= before[name][1]  # measured when its rebuild started
        assert entry.after_bytes <= after[name][1]  # the writer kept adding entries afterwards
        assert entry.duration_ms is not None and "estimated bloat" in entry.note
    assert set(after) == {"events_pkey", "events_k"}, "no leftover index may remain"

    rows = s.rows()
    assert rows[("vacuum", "maint.events")]["finished_at"] is not None
    assert rows[("vacuum", "maint.events")]["detail"]["dead_tuples_before"] == deleted
    assert rows[("reindex", "maint.events_k")]["after_bytes"] == done["maint.events_k"].after_bytes
    assert "REINDEX INDEX CONCURRENTLY" in rows[("reindex", "maint.events_k")]["detail"]["statement"]


def test_the_writer_probe_sees_a_lock_that_blocks_writes(db):
    """Control: the same probe measures a real block (so the bound above can fail)."""
    make_bloated_table(db, rows=1000)
    writer = Writer(db)
    writer.start()
    assert writer.first_commit.wait(10)
    probe = LockWaitProbe(db, writer.pid)
    probe.start()
    with connect(db, autocommit=False) as locker:
        locker.execute("LOCK TABLE maint.events IN ACCESS EXCLUSIVE MODE")
        time.sleep(2 * WRITER_BOUND_S)
        locker.commit()
    time.sleep(0.1)
    assert probe.stop() >= 1.5 * WRITER_BOUND_S and probe.waited_on == {"relation"}
    assert writer.stop() >= 1.5 * WRITER_BOUND_S


def test_statements_run_under_the_configured_timeouts_in_autocommit(db, session_factory):
    s = session_factory(MaintenanceSettings(lock_timeout="1500ms", statement_timeout="7min"))
    assert s.maint.autocommit
    assert s.maint.execute("SHOW lock_timeout").fetchone()[0] == "1500ms"
    assert s.maint.execute("SHOW statement_timeout").fetchone()[0] == "7min"
    assert s.maint.execute("SHOW application_name").fetchone()[0] == "dbops_pg_maintenance"


def _leave_ccnew_behind(db, index="events_k") -> None:
    """A REINDEX CONCURRENTLY that fails on lock_timeout (a writer's transaction stays open)."""
    with connect(db, autocommit=False) as holder, connect(db) as victim:
        holder.execute("INSERT INTO maint.events (k, payload) VALUES (0, 'holder')")
        victim.execute("SET lock_timeout = '300ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            victim.execute(f"REINDEX INDEX CONCURRENTLY maint.{index}")
        holder.rollback()


def test_an_invalid_ccnew_leftover_is_dropped_concurrently_and_the_reindex_retried(db, session_factory):
    make_bloated_table(db, rows=20_000)
    _leave_ccnew_behind(db)
    state = index_state(db)
    assert state["events_k_ccnew"][0] is False, state  # the leftover, INVALID
    # an invalid index that is not a reindex leftover: reported, never dropped
    with connect(db) as c:
        c.execute("INSERT INTO maint.events (k, payload) VALUES (1, 'dup'), (1, 'dup')")
        with pytest.raises(psycopg.errors.UniqueViolation):
            c.execute("CREATE UNIQUE INDEX CONCURRENTLY events_payload_uq ON maint.events (payload)")
    s = session_factory(MaintenanceSettings(schemas=["maint"], reindex_bloat_ratio=1.0, reindex_min_bytes=10**12))

    dropped, retry = pm.drop_invalid_leftovers(s.ctx)
    assert [(e.target, e.action) for e in dropped] == [
        ("maint.events_k_ccnew", "drop_index"),
        ("maint.events_payload_uq", "report"),
    ]
    assert "DROP INDEX CONCURRENTLY" in dropped[0].detail["statement"]
    assert [(r["schema"], r["index"]) for r in retry] == [("maint", "events_k")]

    reindexed = pm.reindex_phase(s.ctx, retry)  # nothing is bloated enough: only the retry runs
    assert [(e.target, e.action) for e in reindexed] == [("maint.events_k", "reindex")]
    assert reindexed[0].note.startswith("retry: its rebuild left events_k_ccnew behind")

    state = index_state(db)
    assert "events_k_ccnew" not in state and state["events_k"][0] is True
    assert state["events_payload_uq"][0] is False  # untouched
    rows = s.rows()
    assert rows[("invalid_index", "maint.events_k_ccnew")]["action"] == "drop_index"
    assert rows[("reindex", "maint.events_k")]["action"] == "reindex"


class SignallingJournal(Journal):
    """Sets ``event`` when a reindex attempt finishes without success."""

    def __init__(self, *a, event: threading.Event, **kw):
        super().__init__(*a, **kw)
        self.event = event

    def finish(self, row_id, entry):
        super().finish(row_id, entry)
        if entry.kind == "reindex" and entry.action != "reindex":
            self.event.set()


def test_a_reindex_that_fails_on_its_lock_timeout_cleans_up_and_succeeds_on_retry(db, session_factory):
    make_bloated_table(db, rows=20_000)
    s = session_factory(MaintenanceSettings(schemas=["maint"], lock_timeout="500ms"))
    failed_once = threading.Event()
    s.ctx.journal = SignallingJournal(s.jconn, "retry-run", event=failed_once)
    s.journal = s.ctx.journal
    holding = threading.Event()

    def hold():  # a transaction that writes, open until the first attempt has given up
        with connect(db, autocommit=False) as holder:
            holder.execute("INSERT INTO maint.events (k, payload) VALUES (0, 'holder')")
            holding.set()
            failed_once.wait(30)
            holder.rollback()

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert holding.wait(10)
    entries = pm.reindex_one(s.ctx, "maint", "events_k", "test")
    t.join(10)
    assert [(e.kind, e.target, e.action) for e in entries] == [
        ("reindex", "maint.events_k", "skipped"),
        ("invalid_index", "maint.events_k_ccnew", "drop_index"),
        ("reindex", "maint.events_k", "reindex"),
    ], [(e.target, e.action, e.note) for e in entries]
    assert entries[0].detail["sqlstate"] == "55P03"
    assert entries[2].detail["attempt"] == 2
    assert set(index_state(db)) == {"events_pkey", "events_k"}


def test_unused_index_report_names_exactly_the_unused_non_unique_index(db, session_factory):
    with connect(db) as c:
        c.execute("SELECT pg_stat_reset()")  # the report must state the statistics' age
        c.execute(
            "CREATE TABLE maint.accounts (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text UNIQUE, "
            "tenant int, name text, code text, period tsrange, EXCLUDE USING gist (period WITH &&))"
        )
        c.execute("CREATE TABLE maint.orders (id int PRIMARY KEY, account_id int REFERENCES maint.accounts)")
        c.execute("CREATE INDEX accounts_tenant_used ON maint.accounts (tenant)")
        c.execute("CREATE INDEX accounts_name_unused ON maint.accounts (lower(name))")
        c.execute("CREATE UNIQUE INDEX accounts_code_uq ON maint.accounts (code)")
        c.execute(
            "INSERT INTO maint.accounts (email, tenant, name, code) "
            "SELECT 'u' || g || '@x', g % 10, 'n' || g, 'c' || g FROM generate_series(1, 500) g"
        )
        c.execute("ANALYZE maint.accounts")
        c.execute("SET enable_seqscan = off")
        assert c.execute("SELECT count(*) FROM maint.accounts WHERE tenant = 3").fetchone()[0] == 50
        c.execute("SELECT pg_stat_force_next_flush()")
    deadline = time.monotonic() + 15
    with connect(db) as c:
        while time.monotonic() < deadline:  # statistics reach shared memory asynchronously
            scans = c.execute(
                "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'accounts_tenant_used'"
            ).fetchone()[0]
            if scans:
                break
            time.sleep(0.2)
        assert scans, "the scan of accounts_tenant_used never reached the statistics"

    s = session_factory(MaintenanceSettings(schemas=["maint"]))
    entries, age = reports.unused_index_entries(s.maint, ["maint"], s.ctx.target)
    assert [e.target for e in entries] == ["maint.accounts_name_unused"]
    assert entries[0].detail["definition"].startswith("CREATE INDEX accounts_name_unused")
    assert entries[0].detail["stats_reset"] is not None and entries[0].detail["stats_age_s"] >= 0
    assert age.startswith("statistics reset ") and "days" in age
    assert "DROP INDEX CONCURRENTLY maint.accounts_name_unused" in entries[0].detail["suggestion"]
    text = reports.render_unused(entries, age)
    assert "maint.accounts_name_unused" in text and "statistics reset" in text


def test_bloat_estimates_from_catalog_statistics(db, session_factory):
    make_bloated_table(db, "bloated", rows=50_000)
    with connect(db) as c:
        c.execute("CREATE TABLE maint.tight (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO maint.tight SELECT g, md5(g::text) FROM generate_series(1, 50000) g")
        c.execute("ANALYZE maint.tight")
        c.execute("CREATE TABLE maint.never_analyzed (id int PRIMARY KEY)")
    s = session_factory(MaintenanceSettings(schemas=["maint"], report_bloat_ratio=0.5, report_min_bytes=0))
    tables = {r["table_name"]: r for r in reports.table_bloat(s.maint, ["maint"])}
    assert float(tables["bloated"]["bloat_ratio"]) > 0.55  # 2 of 3 rows are dead
    assert float(tables["tight"]["bloat_ratio"]) < 0.15
    assert tables["never_analyzed"]["bloat_ratio"] is None and tables["never_analyzed"]["stats_missing"]
    indexes = {r["index_name"]: r for r in pm.index_bloat(s.maint, ["maint"])}
    assert float(indexes["bloated_pkey"]["bloat_ratio"]) > 0.55
    assert float(indexes["tight_pkey"]["bloat_ratio"]) < 0.2
    found = {(e.kind, e.target) for e in reports.bloat_entries(s.maint, s.ctx.settings, s.ctx.target)}
    assert ("table_bloat", "maint.bloated") in found and ("index_bloat", "maint.bloated_pkey") in found
    assert not any("tight" in target for _, target in found)


def test_vacuum_full_rewrites_only_listed_tables_and_gives_up_on_a_busy_lock(db, session_factory):
    make_bloated_table(db, "listed", rows=20_000)
    make_bloated_table(db, "busy", rows=20_000)
    make_bloated_table(db, "unlisted", rows=20_000)

    def filenodes():
        with connect(db) as c:
            return dict(
                c.execute(
                    "SELECT relname, relfilenode FROM pg_class WHERE relnamespace = 'maint'::regnamespace "
                    "AND relkind = 'r'"
                ).fetchall()
            )

    before = filenodes()
    s = session_factory(MaintenanceSettings(schemas=["maint"], lock_timeout="300ms"))
    with connect(db, autocommit=False) as reader:  # an open transaction that read 'busy'
        reader.execute("SELECT count(*) FROM maint.busy")
        started = time.monotonic()
        entries = pm.vacuum_full_phase(s.ctx, ["maint.listed", "maint.busy", "maint.absent"])
        elapsed = time.monotonic() - started
        reader.rollback()
    by_target = {e.target: e for e in entries}
    assert by_target["maint.listed"].action == "vacuum_full"
    assert by_target["maint.listed"].after_bytes < by_target["maint.listed"].before_bytes * 0.5
    assert by_target["maint.busy"].action == "skipped" and by_target["maint.busy"].detail["sqlstate"] == "55P03"
    assert "lock not granted within lock_timeout 300ms" in by_target["maint.busy"].detail["outcome"]
    assert by_target["maint.absent"].action == "skipped" and by_target["maint.absent"].detail["missing"]
    assert elapsed < 5, "the busy table must be given up after lock_timeout, not waited for"
    after = filenodes()
    assert after["listed"] != before["listed"]  # rewritten
    assert after["busy"] == before["busy"] and after["unlisted"] == before["unlisted"]


def test_past_the_window_end_nothing_starts_and_everything_is_reported_skipped(db, session_factory):
    make_bloated_table(db, rows=20_000)
    start = datetime.now(UTC) - timedelta(minutes=61)
    s = session_factory(SETTINGS, window=Window.starting(start, 60))
    entries = pm.vacuum_phase(s.ctx) + pm.reindex_phase(s.ctx) + pm.vacuum_full_phase(s.ctx, ["maint.events"])
    assert {(e.kind, e.target) for e in entries} == {
        ("vacuum", "maint.events"),
        ("reindex", "maint.events_pkey"),
        ("reindex", "maint.events_k"),
        ("vacuum_full", "maint.events"),
    }
    assert all(e.action == "skipped" and "maintenance window ended at" in e.note for e in entries)
    assert dead_tuples(db) == 20_000 - 20_000 // 3  # nothing ran
    assert all(r["action"] == "skipped" for r in s.rows().values())


def test_the_window_closing_midway_stops_starting_new_work(db, session_factory):
    make_bloated_table(db, "first", rows=20_000)
    make_bloated_table(db, "second", rows=10_000)
    clock = {"calls": 0}
    now = datetime.now(UTC)

    def tick():  # open for the first check, closed from the second on
        clock["calls"] += 1
        return now if clock["calls"] == 1 else now + timedelta(hours=2)

    s = session_factory(SETTINGS, window=Window(now, now + timedelta(hours=1), tick))
    entries = pm.vacuum_phase(s.ctx)
    assert [(e.target, e.action) for e in entries] == [("maint.first", "vacuum"), ("maint.second", "skipped")]


def test_dry_run_executes_and_records_nothing(db, session_factory):
    make_bloated_table(db, rows=20_000)
    s = session_factory(SETTINGS, dry_run=True)
    entries = pm.vacuum_phase(s.ctx) + pm.reindex_phase(s.ctx) + pm.vacuum_full_phase(s.ctx, ["maint.events"])
    assert {e.action for e in entries} == {"planned"}
    assert any(e.detail["statement"].startswith("VACUUM (FULL true, ANALYZE true)") for e in entries)
    assert dead_tuples(db) == 20_000 - 20_000 // 3
    assert run_rows(s.jconn, s.journal.run_id) == []
