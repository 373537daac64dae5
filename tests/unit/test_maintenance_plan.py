"""What needs VACUUM / ANALYZE / REINDEX (pure decisions over catalog statistics), and the window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dbops.config import MaintenanceSettings
from dbops.maintenance.postgres import ANALYZE, VACUUM, TableActivity, plan_vacuum, reindex_candidates
from dbops.maintenance.window import Window

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def activity(name="t", *, live=10_000, dead=0, changed=0, inserted=0, vacuumed=NOW, analyzed=NOW, size=8192):
    return TableActivity("s", name, live, dead, changed, inserted, vacuumed, analyzed, size)


def settings(**kw) -> MaintenanceSettings:
    return MaintenanceSettings(**kw)


def test_dead_tuples_over_min_plus_fraction_of_live_need_vacuum():
    s = settings(vacuum_min_dead_tuples=1000, vacuum_dead_fraction=0.05)  # 1000 + 0.05 x 10000 = 1500
    plan = plan_vacuum([activity("under", dead=1499), activity("at", dead=1500)], s, NOW)
    assert [(p.table_name, p.kind) for p in plan] == [("at", VACUUM)]
    assert "1500 dead tuples >= 1500" in plan[0].reason


def test_a_changed_table_not_vacuumed_for_too_long_needs_vacuum_an_unchanged_one_does_not():
    s = settings(vacuum_max_age_days=7)
    old = NOW - timedelta(days=8)
    plan = plan_vacuum(
        [
            activity("changed", dead=1, vacuumed=old),
            activity("inserted_only", inserted=5, vacuumed=old),
            activity("unchanged", vacuumed=old),
            activity("recent", dead=1, vacuumed=NOW - timedelta(days=6)),
            activity("never", dead=3, vacuumed=None),
        ],
        s,
        NOW,
    )
    assert {p.table_name for p in plan if p.kind == VACUUM} == {"changed", "inserted_only", "never"}
    assert any("never vacuumed" in p.reason for p in plan)


def test_age_rule_can_be_switched_off():
    plan = plan_vacuum([activity(dead=1, vacuumed=None)], settings(vacuum_max_age_days=None), NOW)
    assert plan == []


def test_stale_statistics_need_analyze_only():
    s = settings(analyze_min_changes=100, analyze_change_fraction=0.1)  # 100 + 0.1 x 10000 = 1100
    plan = plan_vacuum(
        [
            activity("stale", changed=1100),
            activity("fresh", changed=1099),
            activity("never_analyzed", analyzed=None),
            activity("empty_never_analyzed", live=0, analyzed=None),
        ],
        s,
        NOW,
    )
    assert [(p.table_name, p.kind) for p in plan] == [("never_analyzed", ANALYZE), ("stale", ANALYZE)]


def test_vacuum_analyze_covers_analyze_and_the_most_dead_go_first():
    s = settings()
    plan = plan_vacuum(
        [
            activity("a", dead=2000, changed=50_000),
            activity("b", dead=90_000),
            activity("c", changed=50_000),
        ],
        s,
        NOW,
    )
    assert [(p.table_name, p.kind) for p in plan] == [("b", VACUUM), ("a", VACUUM), ("c", ANALYZE)]


def bloat_row(name, *, ratio, size, valid=True, stats_missing=False):
    return {
        "schema_name": "s",
        "index_name": name,
        "table_name": "t",
        "valid": valid,
        "index_bytes": size,
        "bloat_bytes": None if ratio is None else int(size * ratio),
        "bloat_ratio": ratio,
        "stats_missing": stats_missing,
    }


def test_reindex_candidates_pass_both_the_ratio_and_the_size_bound():
    s = settings(reindex_bloat_ratio=0.3, reindex_min_bytes=1_000_000)
    rows = [
        bloat_row("big_bloated", ratio=0.5, size=5_000_000),
        bloat_row("small_bloated", ratio=0.9, size=500_000),
        bloat_row("big_tight", ratio=0.29, size=50_000_000),
        bloat_row("invalid", ratio=0.9, size=5_000_000, valid=False),
        bloat_row("no_stats", ratio=None, size=5_000_000, stats_missing=True),
    ]
    chosen = reindex_candidates(rows, [], s)
    assert [c.index_name for c in chosen] == ["big_bloated"]
    assert "estimated bloat 50%" in chosen[0].reason


def test_listed_schemas_add_every_index_once_biggest_bloat_first():
    s = settings(reindex_bloat_ratio=0.3, reindex_min_bytes=0)
    listed = [
        {"schema_name": "s", "index_name": n, "table_name": "t", "index_bytes": b}
        for n, b in (("bloated", 10), ("other", 20))
    ]
    chosen = reindex_candidates([bloat_row("bloated", ratio=0.6, size=10)], listed, s)
    assert [c.index_name for c in chosen] == ["bloated", "other"]
    assert "reindex_schemas" in chosen[1].reason


def test_window_closes_at_its_end():
    clock = [NOW]
    w = Window.starting(NOW, 30, clock=lambda: clock[0])
    assert w.end == NOW + timedelta(minutes=30) and not w.closed()
    clock[0] = NOW + timedelta(minutes=29, seconds=59)
    assert not w.closed() and w.remaining_s() == 1
    clock[0] = NOW + timedelta(minutes=30)
    assert w.closed() and w.remaining_s() == 0


def test_window_needs_an_aware_start():
    with pytest.raises(ValueError):
        Window.starting(datetime(2026, 1, 1), 10)
