"""Rendering what a maintenance run did and found; the alert webhook address."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from dbops.alerting import webhook_url
from dbops.maintenance import reports
from dbops.maintenance.journal import Entry

T0 = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def journal_row(action, finished=True, **detail):
    return {
        "kind": "reindex",
        "target": "s.i",
        "action": action,
        "before_bytes": 8192 * 100,
        "after_bytes": 8192 * 10 if finished else None,
        "duration_ms": 1500 if finished else None,
        "started_at": T0,
        "finished_at": T0 if finished else None,
        "detail": detail,
    }


def test_an_action_that_never_finished_counts_as_failed():
    entries = reports.journal_entries([journal_row("reindex"), journal_row("reindex", finished=False)])
    assert [e.action for e in entries] == ["reindex", "failed"]
    assert "never finished" in entries[1].note


def test_actions_render_as_a_table_with_sizes_durations_and_reasons():
    entries = reports.journal_entries([journal_row("reindex", reason="estimated bloat 90%")])
    text = reports.render_entries("run x", entries)
    assert text.splitlines()[1].split() == ["kind", "target", "action", "before", "after", "took", "note"]
    assert "800.0 kB" in text and "80.0 kB" in text and "1.5 s" in text and "estimated bloat 90%" in text


def test_stats_age_wording():
    assert reports.stats_age(None, None).startswith("statistics never reset")
    assert reports.stats_age(T0, 3 * 86400 + 5 * 3600) == "statistics reset 2026-11-22 03:00 UTC, 3 days 5 h ago"


def test_entry_note_joins_reason_and_error():
    e = Entry("vacuum", "s.t", "failed", detail={"reason": "dead tuples", "error": "canceling statement"})
    assert e.note == "dead tuples; canceling statement"


def test_webhook_url_from_an_http_connection():
    conn = SimpleNamespace(
        schema="https",
        host="alerts.example",
        port=9443,
        extra='{"endpoint": "hook"}',
        extra_dejson={"endpoint": "hook"},
    )
    assert webhook_url(conn) == "https://alerts.example:9443/hook"
    bare = SimpleNamespace(schema=None, host="relay", port=None, extra=None, extra_dejson={})
    assert webhook_url(bare) == "http://relay"
