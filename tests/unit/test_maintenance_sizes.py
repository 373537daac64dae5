"""Monitor logic without a database: past dates, thresholds, report and Prometheus files."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dbops.config import MonitorSettings
from dbops.maintenance import sizes

NOW = datetime(2026, 11, 22, 0, 0, 5, tzinfo=UTC)


def row(table="data_items", *, total=1000, g1=None, g7=None, g30=None, limit=10_000, days=None, schema="data_platform"):
    return {
        "schema_name": schema,
        "table_name": table,
        "captured_at": NOW,
        "total_bytes": total,
        "heap_bytes": total // 2,
        "index_bytes": total // 4,
        "toast_bytes": total - total // 2 - total // 4,
        "live_tuples": 10,
        "dead_tuples": 1,
        "captures": 3,
        "growth_1d": g1,
        "growth_7d": g7,
        "growth_30d": g30,
        "span_1d_days": 1.0 if g1 is not None else None,
        "span_7d_days": None,
        "span_30d_days": None,
        "limit_bytes": limit,
        "days_to_limit": days,
    }


@pytest.mark.parametrize(
    ("logical_date", "measures"),
    [
        (None, True),  # a manual trigger without a logical date
        (NOW - timedelta(seconds=5), True),  # the scheduled run, on time
        (NOW - timedelta(hours=5, minutes=59), True),  # late, within tolerance
        (NOW - timedelta(hours=6, minutes=1), False),
        (NOW - timedelta(days=30), False),  # a backfill
    ],
)
def test_only_a_current_run_measures(logical_date, measures):
    refusal = sizes.measurement_refusal(logical_date, NOW, 6)
    assert (refusal is None) is measures
    if refusal:
        assert "can only be measured now" in refusal and "max_start_delay_hours" in refusal


def test_alert_names_table_and_threshold_for_size_growth_and_forecast():
    s = MonitorSettings(
        size_limit_bytes=10_000,
        size_limits={"auth.users": 500},
        max_growth_bytes_per_day=100,
        alert_days_until_limit=30,
    )
    rows = [
        row("users", schema="auth", total=600, limit=500, days=0),
        row("fast", g1=150.0, g7=150.0, days=60.0),
        row("soon", g1=10.0, g7=50.0, days=20.0, total=9000),
        row("fine", g1=10.0, g7=10.0, days=900.0),
        row("young", g1=None, g7=None, days=None),
    ]
    found = sizes.alerts(rows, s)
    assert [(a.table, a.rule) for a in found] == [
        ("auth.users", "size_limit"),
        ("data_platform.fast", "growth"),
        ("data_platform.soon", "days_to_limit"),
    ]
    assert "monitor.size_limits['auth.users'] = 500" in found[0].message
    assert "monitor.max_growth_bytes_per_day = 100" in found[1].message
    assert "in 20 days" in found[2].message and "monitor.alert_days_until_limit = 30" in found[2].message


def test_thresholds_can_be_switched_off():
    s = MonitorSettings(max_growth_bytes_per_day=None, alert_days_until_limit=None)
    assert sizes.alerts([row(g1=1e12, g7=1e12, days=0.1)], s) == []


def test_metrics_parse_as_prometheus_text_and_leave_unknowns_out():
    rows = [row("a", g1=12.5, g7=10.0, days=42.0), row('b"x', g1=None)]
    text = sizes.render_metrics(rows, [], NOW)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    total = {(s.labels["schema"], s.labels["table"]): s.value for s in families["dbops_table_total_bytes"].samples}
    assert total == {("data_platform", "a"): 1000, ("data_platform", 'b"x'): 1000}
    growth = {
        (s.labels["table"], s.labels["window"]): s.value for s in families["dbops_table_growth_bytes_per_day"].samples
    }
    assert growth == {("a", "1d"): 12.5, ("a", "7d"): 10.0}  # no sample for unknown growth
    assert families["dbops_table_days_until_size_limit"].samples[0].value == 42
    assert families["dbops_table_size_capture_timestamp_seconds"].samples[0].value == NOW.timestamp()
    assert all(f.type == "gauge" for f in families.values())


def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "metrics" / "x.prom"
    sizes.atomic_write(target, "one\n")
    sizes.atomic_write(target, "two\n", mode=0o644)
    assert target.read_text() == "two\n"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["x.prom"]


def test_report_files_are_named_by_capture_time_and_old_ones_pruned(tmp_path):
    new = sizes.report_path(tmp_path, NOW)
    old = sizes.report_path(tmp_path, NOW - timedelta(days=91))
    assert new.name == "table_sizes_20261122T000005Z.txt"
    for p in (new, old):
        sizes.atomic_write(p, "x")
    foreign = tmp_path / sizes.REPORT_SUBDIR / "notes.txt"
    foreign.write_text("keep me")
    assert sizes.prune_reports(tmp_path, 90, NOW) == [old]
    assert sorted(p.name for p in new.parent.iterdir()) == ["notes.txt", new.name]


def test_report_text_lists_tables_and_alerts():
    s = MonitorSettings(size_limit_bytes=500)
    rows = [row("big", total=600, limit=500, days=0)]
    text = sizes.render_report(
        rows, sizes.alerts(rows, s), captured_at=NOW, database="ai_platform", schemas=["data_platform"]
    )
    assert "data_platform.big" in text and "alerts:" in text and "over its size limit" in text
