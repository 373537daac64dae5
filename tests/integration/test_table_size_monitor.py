"""Table size history and growth on the real local PostgreSQL, in a scratch database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dbops.config import PLATFORM_SCHEMAS, MonitorSettings
from dbops.maintenance import sizes
from dbops.migrations import MigrationRunner
from dbops.report import StoreReport
from dbops.stores.postgres.bootstrap import migrations
from tests.support import pg_connect

pytestmark = pytest.mark.integration

TABLE = ("data_platform", "data_sources")


@pytest.fixture
def db(scratch_pg):
    conn, name = scratch_pg
    with pg_connect(conn, name) as c:
        MigrationRunner(c, migrations()).run(StoreReport("postgres"))
    return conn, name


@pytest.fixture
def conn(db):
    with pg_connect(*db) as c:
        sizes.prepare_session(c, MonitorSettings())
        yield c


def add_rows(conn, n: int, width: int = 200) -> None:
    """Grow data_platform.data_sources by ``n`` rows (real bytes, not made-up history)."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO data_platform.data_sources (name, source_type, connection_info) "
            "SELECT 's' || g, 'file', jsonb_build_object('pad', repeat('p', %s)) FROM generate_series(1, %s) g",
            (width, n),
        )


def history(conn, captured_at):
    rows = conn.execute(
        "SELECT schema_name, table_name, total_bytes, heap_bytes, index_bytes, toast_bytes, live_tuples "
        "FROM dbops.table_size_history WHERE captured_at = %s",
        (captured_at,),
    ).fetchall()
    conn.rollback()
    return {(r[0], r[1]): r[2:] for r in rows}


def test_a_capture_records_every_platform_table_with_consistent_sizes(conn):
    captured_at, count = sizes.capture(conn, PLATFORM_SCHEMAS)
    tables = conn.execute(
        "SELECT n.nspname, c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = ANY(%s)",
        (PLATFORM_SCHEMAS,),
    ).fetchall()
    conn.rollback()
    recorded = history(conn, captured_at)
    assert count == len(tables) == len(recorded) >= 14
    assert ("dbops", "table_size_history") not in recorded  # only the configured schemas
    for schema, table, total in tables:
        got_total, heap, index, toast, _ = recorded[(schema, table)]
        assert got_total == total == heap + index + toast


def test_growth_over_several_captures_by_window_functions(conn):
    """Captures 30, 7 and ~1 day back and now, each after real growth; rates over the real spans."""
    now = datetime.now(UTC).replace(microsecond=0)
    stamps = [now - timedelta(days=30), now - timedelta(days=7), now - timedelta(hours=23, minutes=50), now]
    for i, at in enumerate(stamps):
        if i:
            add_rows(conn, 500 * i)
        sizes.capture(conn, PLATFORM_SCHEMAS, captured_at=at)
    totals = [history(conn, at)[TABLE][0] for at in stamps]
    assert totals[0] < totals[1] < totals[2] < totals[3]

    limit = totals[3] + 10_000_000
    settings = MonitorSettings(size_limits={".".join(TABLE): limit})
    rows = {(r["schema_name"], r["table_name"]): r for r in sizes.growth(conn, now, settings)}
    r = rows[TABLE]
    day = 23 / 24 + 50 / 1440  # the "1 day" base ran 10 minutes early: within the slack, real span used
    assert r["captures"] == 4
    assert r["growth_1d"] == pytest.approx((totals[3] - totals[2]) / day, abs=0.1)
    assert r["growth_7d"] == pytest.approx((totals[3] - totals[1]) / 7, abs=0.1)
    assert r["growth_30d"] == pytest.approx((totals[3] - totals[0]) / 30, abs=0.1)
    assert r["span_1d_days"] == pytest.approx(day, abs=0.001) and r["span_30d_days"] == 30
    assert r["limit_bytes"] == limit
    assert r["days_to_limit"] == pytest.approx((limit - totals[3]) / r["growth_7d"], abs=0.1)

    # a table that did not change has zero growth and no forecast; others use the default limit
    still = rows[("auth", "users")]
    assert (still["growth_1d"], still["growth_7d"], still["growth_30d"]) == (0, 0, 0)
    assert still["days_to_limit"] is None and still["limit_bytes"] == settings.size_limit_bytes


def test_growth_is_unknown_until_the_history_is_long_enough(conn):
    now = datetime.now(UTC)
    sizes.capture(conn, PLATFORM_SCHEMAS, captured_at=now - timedelta(hours=12))  # too recent for "1 day"
    add_rows(conn, 100)
    sizes.capture(conn, PLATFORM_SCHEMAS, captured_at=now)
    r = {(x["schema_name"], x["table_name"]): x for x in sizes.growth(conn, now, MonitorSettings())}[TABLE]
    assert (r["growth_1d"], r["growth_7d"], r["growth_30d"], r["days_to_limit"]) == (None, None, None, None)


def test_thresholds_fire_naming_the_table_and_the_threshold(conn):
    now = datetime.now(UTC)
    sizes.capture(conn, PLATFORM_SCHEMAS, captured_at=now - timedelta(days=1))
    add_rows(conn, 2000)
    sizes.capture(conn, PLATFORM_SCHEMAS, captured_at=now)
    settings = MonitorSettings(max_growth_bytes_per_day=100_000, alert_days_until_limit=None)
    rows = sizes.growth(conn, now, settings)
    found = sizes.alerts(rows, settings)
    assert [(a.table, a.rule) for a in found] == [("data_platform.data_sources", "growth")]
    assert "monitor.max_growth_bytes_per_day = 100000" in found[0].message

    grown = next(r for r in rows if (r["schema_name"], r["table_name"]) == TABLE)["total_bytes"]
    capped = MonitorSettings(size_limits={"data_platform.data_sources": grown - 1})
    found = sizes.alerts(sizes.growth(conn, now, capped), capped)
    assert [(a.table, a.rule) for a in found] == [("data_platform.data_sources", "size_limit")]
    assert f"monitor.size_limits['data_platform.data_sources'] = {grown - 1}" in found[0].message


def test_report_and_prometheus_files_from_real_rows(conn, tmp_path):
    now = datetime.now(UTC)
    sizes.capture(conn, PLATFORM_SCHEMAS, captured_at=now - timedelta(days=1))
    add_rows(conn, 300)
    captured_at, _ = sizes.capture(conn, PLATFORM_SCHEMAS, captured_at=now)
    settings = MonitorSettings(reports_dir=tmp_path)
    rows = sizes.growth(conn, captured_at, settings)
    report = sizes.atomic_write(
        sizes.report_path(tmp_path, captured_at),
        sizes.render_report(rows, [], captured_at=captured_at, database="x", schemas=settings.schemas),
    )
    metrics = sizes.atomic_write(sizes.metrics_path(tmp_path), sizes.render_metrics(rows, [], captured_at))
    assert "data_platform.data_sources" in report.read_text()
    families = {f.name: f for f in text_string_to_metric_families(metrics.read_text())}
    totals = {(s.labels["schema"], s.labels["table"]): s.value for s in families["dbops_table_total_bytes"].samples}
    assert len(totals) == len(rows) and totals[TABLE] == history(conn, captured_at)[TABLE][0]
    growth = {(s.labels["table"], s.labels["window"]) for s in families["dbops_table_growth_bytes_per_day"].samples}
    assert ("data_sources", "1d") in growth and ("data_sources", "7d") not in growth


def test_old_history_is_pruned_recent_history_kept(conn):
    now = datetime.now(UTC)
    sizes.capture(conn, PLATFORM_SCHEMAS, captured_at=now - timedelta(days=401))
    sizes.capture(conn, PLATFORM_SCHEMAS, captured_at=now - timedelta(days=399))
    removed = sizes.prune_history(conn, 400)
    assert removed > 0
    left = conn.execute("SELECT min(captured_at) FROM dbops.table_size_history").fetchone()[0]
    assert left > now - timedelta(days=400)


def test_a_database_without_the_history_table_is_refused(scratch_pg):
    with pg_connect(*scratch_pg) as c:
        with pytest.raises(sizes.HistoryNotReady, match="run dbops_bootstrap first"):
            sizes.ensure_ready(c)
