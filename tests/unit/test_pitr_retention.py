"""PITR retention: base backups by window / min_keep / pin, and exactly the WAL recovery needs.

The headline case is a 40-day catalog (a segment every 15 minutes, a base backup every night,
a promotion on day 25, a pinned base backup on day 3): the kept segments are computed here
from the timetable alone and compared with the plan, then the plan is applied to a real
archive and the chain from every kept base backup is checked again.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbops.pitr.retention import BaseInfo, plan_base_retention, plan_wal_retention
from dbops.pitr.wal import (
    WalArchive,
    WalEntry,
    check_chain,
    history_name,
    last_segno_before,
    segment_name,
    segno_of,
)

UTC = UTC
SEG = 16 * 1024 * 1024
T0 = datetime(2026, 3, 1, tzinfo=UTC)
STEP = timedelta(minutes=15)  # one segment of WAL every 15 minutes
DAYS = 40
SEGMENTS = DAYS * 24 * 4
NOW = T0 + timedelta(days=DAYS)
SWITCH_AT = T0 + timedelta(days=25, hours=12, minutes=7, seconds=30)  # promotion: timeline 1 -> 2
SYSID = "7301234567890123456"


def lsn_at(when: datetime) -> int:
    return int((when - T0) / STEP * SEG)


SWITCH_LSN = lsn_at(SWITCH_AT)
SWITCH_SEGNO = SWITCH_LSN // SEG  # timeline 1 ends in this segment; timeline 2's copy is the one kept


def seg(timeline: int, segno: int) -> WalEntry:
    name = segment_name(timeline, segno, SEG)
    return WalEntry(
        name,
        "segment",
        timeline,
        segno,
        f"{name}.gz",
        1000,
        f"{segno:064x}",
        f"{segno + 1:064x}",
        T0 + (segno + 1) * STEP,
    )


def hist(timeline: int, *switches: tuple[int, int]) -> WalEntry:
    name = history_name(timeline)
    return WalEntry(name, "history", timeline, None, name, 42, "a" * 64, "a" * 64, T0, tuple(switches))


def forty_day_catalog() -> list[WalEntry]:
    entries = [seg(1 if s < SWITCH_SEGNO else 2, s) for s in range(SEGMENTS)]
    return entries + [hist(2, (1, SWITCH_LSN))]


def nightly_base(day: int, *, pinned: bool = False, verified: bool = True) -> BaseInfo:
    taken = T0 + timedelta(days=day, hours=1)
    start = lsn_at(taken) + 0x28
    stop = lsn_at(taken + timedelta(minutes=20))
    return BaseInfo(f"{taken:%Y%m%dT%H%M%SZ}", taken, 1 if start < SWITCH_LSN else 2, start, stop, verified, pinned)


def forty_nightly_bases() -> list[BaseInfo]:
    return [nightly_base(day, pinned=day == 3) for day in range(DAYS)]


def chain_problems(entries: list[WalEntry], base: BaseInfo) -> list[str]:
    if base.pinned:  # a pinned base backup is kept consistent: its start to its stop
        return check_chain(
            entries, base.timeline, base.start_lsn, segment_size=SEG, end_lsn=base.stop_lsn, end_timeline=base.timeline
        )
    return check_chain(entries, base.timeline, base.start_lsn, segment_size=SEG)


def test_forty_day_catalog_keeps_exactly_what_recovery_needs(tmp_path):
    entries = forty_day_catalog()
    bases = forty_nightly_bases()
    plan = plan_wal_retention(bases, entries, now=NOW, retention_days=30, min_keep=2, segment_size=SEG)

    # base backups: days 10..39 are inside 30 days at NOW (day 10's is 29 d 23 h old), day 3 is pinned
    assert [b.backup_id for b in plan.keep_backups] == [nightly_base(3).backup_id] + [
        nightly_base(d).backup_id for d in range(10, DAYS)
    ]
    assert [b.backup_id for b in plan.expire_backups] == [
        nightly_base(d).backup_id for d in (0, 1, 2, 4, 5, 6, 7, 8, 9)
    ]
    assert plan.anchor == bases[10]
    assert "pinned" in plan.backup_reasons[bases[3].backup_id]
    assert "older than 30 days" in plan.backup_reasons[bases[9].backup_id]

    # WAL, from the timetable: day 10's base starts at 01:00 -> segment (10*24+1)*4; the pinned
    # day-3 base runs 01:00..01:20 -> segments (3*24+1)*4 and the one after; timeline 2 from
    # the segment of the promotion on; the history file always
    oldest_kept_start = (10 * 24 + 1) * 4
    pinned_start = (3 * 24 + 1) * 4
    expected_segments = {s for s in range(SEGMENTS) if s >= oldest_kept_start} | {pinned_start, pinned_start + 1}
    expected = {segment_name(1 if s < SWITCH_SEGNO else 2, s, SEG) for s in expected_segments} | {"00000002.history"}
    assert {e.name for e in plan.keep_entries} == expected
    assert {e.name for e in plan.expire_entries} == {e.name for e in entries} - expected
    assert len(plan.expire_entries) == oldest_kept_start - 2
    assert plan.reasons[0].startswith(f"WAL kept from {segment_name(1, oldest_kept_start, SEG)} on")
    assert any("pinned base backup" in r and segment_name(1, pinned_start + 1, SEG) in r for r in plan.reasons)

    # applied to a real archive: the catalog shrinks, and every kept base backup still recovers
    archive = WalArchive(tmp_path / "postgres_wal")
    archive.init(SYSID, SEG)
    with open(archive.catalog_path, "a") as fh:
        for entry in entries:
            fh.write(json.dumps(entry.to_json()) + "\n")
    assert archive.entries() == sorted(entries, key=lambda e: e.sort_key)
    for base in bases:  # before: every base backup has its chain
        assert chain_problems(archive.entries(), base) == [], base
    archive.remove(plan.expire_entries)
    remaining = archive.entries()
    assert {e.name for e in remaining} == expected
    for base in plan.keep_backups:
        assert chain_problems(remaining, base) == [], base
    # and the check is not vacuous: an expired base backup lost its WAL, the pinned one cannot
    # be rolled forward, and one segment less breaks the oldest kept base backup's chain
    assert chain_problems(remaining, bases[9])[0].startswith("missing start segment")
    assert check_chain(remaining, 1, bases[3].start_lsn, segment_size=SEG) != []
    one_less = [e for e in remaining if e.segno != oldest_kept_start + 500]
    assert check_chain(one_less, 1, bases[10].start_lsn, segment_size=SEG) == [
        f"missing {segment_name(1, oldest_kept_start + 500, SEG)} (timeline 1)"
    ]


def test_applying_the_plan_twice_expires_nothing_more():
    entries = forty_day_catalog()
    bases = forty_nightly_bases()
    first = plan_wal_retention(bases, entries, now=NOW, retention_days=30, min_keep=2, segment_size=SEG)
    second = plan_wal_retention(
        first.keep_backups, first.keep_entries, now=NOW, retention_days=30, min_keep=2, segment_size=SEG
    )
    assert second.expire_entries == [] and second.expire_backups == []
    assert "no WAL segment expires" in second.reasons


def test_after_the_promotion_the_old_timeline_goes_once_no_base_backup_needs_it():
    entries = forty_day_catalog()
    bases = [nightly_base(d) for d in range(27, DAYS)]  # all on timeline 2
    assert {b.timeline for b in bases} == {2}
    plan = plan_wal_retention(bases, entries, now=NOW, retention_days=30, min_keep=2, segment_size=SEG)
    start = segno_of(bases[0].start_lsn, SEG)
    assert {e.name for e in plan.keep_entries} == {segment_name(2, s, SEG) for s in range(start, SEGMENTS)} | {
        "00000002.history"
    }
    assert all(e.timeline == 1 or e.segno < start for e in plan.expire_entries)


def test_no_base_backup_means_no_wal_expires():
    entries = forty_day_catalog()
    plan = plan_wal_retention([], entries, now=NOW, retention_days=30, min_keep=2, segment_size=SEG)
    assert plan.expire_entries == [] and len(plan.keep_entries) == len(entries)
    assert plan.anchor is None
    assert "no base backup is kept" in plan.reasons[0]
    empty = plan_wal_retention(forty_nightly_bases(), [], now=NOW, retention_days=30, min_keep=2, segment_size=SEG)
    assert empty.expire_entries == [] and "catalog is empty" in empty.reasons[0]


def test_min_keep_counts_only_verified_unpinned_base_backups():
    bases = [nightly_base(d, verified=d < 5) for d in range(DAYS)]  # only days 0..4 verified
    kept, expired, reasons = plan_base_retention(bases, now=NOW, retention_days=30, min_keep=2)
    # days 3 and 4 are the newest verified: kept although old; 0..2 go. The unverified 5..9 stay:
    # nothing expires on the strength of base backups nobody verified
    assert [b.backup_id for b in kept] == [bases[d].backup_id for d in range(3, DAYS)]
    assert [b.backup_id for b in expired] == [bases[d].backup_id for d in range(3)]
    assert "min_keep=2" in reasons[bases[3].backup_id] and "only 0 newer verified" in reasons[bases[9].backup_id]
    # a pinned base backup does not stand in for recent verified ones
    bases = [nightly_base(d, verified=d < 5, pinned=d == 4) for d in range(DAYS)]
    kept, _, _ = plan_base_retention(bases, now=NOW, retention_days=30, min_keep=2)
    assert [b.backup_id for b in kept][:3] == [bases[d].backup_id for d in (2, 3, 4)]


def test_only_pinned_base_backups_left():
    entries = forty_day_catalog()
    bases = [nightly_base(3, pinned=True), nightly_base(6, pinned=True)]
    plan = plan_wal_retention(bases, entries, now=NOW, retention_days=30, min_keep=2, segment_size=SEG)
    assert plan.anchor == bases[1]
    newest_start = segno_of(bases[1].start_lsn, SEG)
    first_start = segno_of(bases[0].start_lsn, SEG)
    kept = {e.segno for e in plan.keep_entries if e.kind == "segment"}
    assert kept == {first_start, first_start + 1} | set(range(newest_start, SEGMENTS))
    assert "every kept base backup is pinned" in " ".join(plan.reasons)


def test_unknown_lineage_keeps_the_older_timelines():
    entries = [e for e in forty_day_catalog() if e.kind != "history"]  # 00000002.history lost
    bases = [nightly_base(d) for d in range(30, DAYS)]
    plan = plan_wal_retention(bases, entries, now=NOW, retention_days=30, min_keep=2, segment_size=SEG)
    # timeline 2's ancestry is unknown, so no timeline-1 segment can be shown obsolete
    assert all(e.timeline == 2 for e in plan.expire_entries)
    assert not any(e.timeline == 1 for e in plan.expire_entries)
    assert any("history file is not catalogued" in r for r in plan.reasons)


def test_a_branch_from_before_the_oldest_base_keeps_its_segments():
    """Timeline 2 branched from timeline 1 at segment 20; the oldest kept base is on timeline 1
    at segment 40 (the old history, still restorable), a newer one on timeline 2 at segment 25."""
    switch = 20 * SEG + 100
    entries = [seg(1, s) for s in range(60)] + [hist(2, (1, switch))] + [seg(2, s) for s in range(20, 70)]
    old_line = BaseInfo("b1", NOW - timedelta(days=2), 1, 40 * SEG, 40 * SEG + 10, True, False)
    branch = BaseInfo("b2", NOW - timedelta(days=1), 2, 25 * SEG, 25 * SEG + 10, True, False)
    plan = plan_wal_retention([old_line, branch], entries, now=NOW, retention_days=30, min_keep=2, segment_size=SEG)
    expired = {(e.timeline, e.segno) for e in plan.expire_entries}
    # timeline 1 from segment 40 on stays for the old line; its segments 20..39 are past the
    # branch point (not on timeline 2's history) and before the old line's start: they go
    assert expired == {(1, s) for s in range(40)}
    remaining = plan.keep_entries
    assert check_chain(remaining, 2, branch.start_lsn, segment_size=SEG) == []
    assert check_chain(remaining, 1, old_line.start_lsn, segment_size=SEG, end_timeline=1) == []


def test_pinned_base_ending_in_the_promotion_segment_keeps_the_new_timeline_copy():
    """Timeline 1's copy of the promotion segment is a .partial (never catalogued): a base
    backup stopping there is made consistent from timeline 2's copy."""
    switch = 10 * SEG + SEG // 2
    entries = [seg(1, s) for s in range(10)] + [hist(2, (1, switch))] + [seg(2, s) for s in range(10, 30)]
    pinned = BaseInfo("p", NOW - timedelta(days=100), 1, 9 * SEG + 50, 10 * SEG + 100, True, True)
    recent = BaseInfo("r", NOW - timedelta(hours=1), 2, 20 * SEG, 20 * SEG + 10, True, False)
    plan = plan_wal_retention([pinned, recent], entries, now=NOW, retention_days=30, min_keep=1, segment_size=SEG)
    kept = {(e.timeline, e.segno) for e in plan.keep_entries if e.kind == "segment"}
    assert {(1, 9), (2, 10)} <= kept
    # followed on timeline 1 alone the end is missing; through the promotion it is complete
    assert check_chain(
        plan.keep_entries, 1, pinned.start_lsn, segment_size=SEG, end_lsn=pinned.stop_lsn, end_timeline=1
    ) == ["missing 00000001000000000000000A (timeline 1)"]
    assert check_chain(plan.keep_entries, 1, pinned.start_lsn, segment_size=SEG, end_lsn=pinned.stop_lsn) == []
    assert {(e.timeline, e.segno) for e in plan.expire_entries} == {(1, s) for s in range(9)} | {
        (2, s) for s in range(11, 20)
    }


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="retention_days"):
        plan_wal_retention([], [], now=NOW, retention_days=0, min_keep=2, segment_size=SEG)
    with pytest.raises(ValueError, match="min_keep"):
        plan_wal_retention([], [], now=NOW, retention_days=30, min_keep=True, segment_size=SEG)
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_wal_retention([], [], now=datetime(2026, 1, 1), retention_days=30, min_keep=2, segment_size=SEG)
    with pytest.raises(ValueError, match="power of two"):
        plan_wal_retention([], [], now=NOW, retention_days=30, min_keep=2, segment_size=1000)
    with pytest.raises(ValueError, match="twice"):
        plan_wal_retention(
            [nightly_base(1), nightly_base(1)], [], now=NOW, retention_days=30, min_keep=2, segment_size=SEG
        )
    with pytest.raises(ValueError, match="timezone-aware"):
        BaseInfo("x", datetime(2026, 1, 1), 1, 0, 1, True, False)
    with pytest.raises(ValueError, match="start_lsn <= stop_lsn"):
        BaseInfo("x", NOW, 1, 5, 1, True, False)


# ----------------------------------------------------------------------------- properties


@st.composite
def archives(draw):
    """A WAL history with up to two promotions, base backups anywhere on it, some pinned."""
    n = draw(st.integers(8, 80))
    cuts = sorted(draw(st.lists(st.integers(1, n - 1), max_size=2, unique=True)))
    switches = [c * SEG + draw(st.integers(0, SEG - 1)) for c in cuts]

    def timeline_of_lsn(lsn: int) -> int:
        return 1 + sum(1 for s in switches if lsn >= s)

    def timeline_of_segno(segno: int) -> int:  # whose copy of a segment is catalogued
        return 1 + sum(1 for c in cuts if segno >= c)

    entries = [seg(timeline_of_segno(s), s) for s in range(n)]
    for t in range(2, len(switches) + 2):
        if draw(st.integers(0, 9)) > 0:  # now and then a history file is lost
            entries.append(hist(t, *[(p + 1, switches[p]) for p in range(t - 1)]))
    bases = []
    for i in range(draw(st.integers(0, 8))):
        start = draw(st.integers(0, n * SEG - 1))
        tl = timeline_of_lsn(start)
        limit = switches[tl - 1] - 1 if tl - 1 < len(switches) else n * SEG  # a backup never spans a promotion
        stop = min(start + draw(st.integers(0, 2 * SEG)), limit)
        stop = max(stop, start)
        bases.append(
            BaseInfo(
                f"b{i}",
                T0 + timedelta(hours=start // SEG),
                tl,
                start,
                stop,
                draw(st.booleans()),
                draw(st.integers(0, 5)) == 0,
            )
        )
    now = T0 + timedelta(hours=n + draw(st.integers(0, 24 * 10)))
    return entries, bases, timeline_of_segno, now, draw(st.integers(1, 5)), draw(st.integers(1, 4))


def needed_segments(base: BaseInfo, timeline_of_segno, n: int, *, to_stop: bool) -> set[tuple[int, int]]:
    """From the generated history itself (not from the code under test)."""
    first = base.start_lsn // SEG
    last = last_segno_before(max(base.stop_lsn, base.start_lsn + 1), SEG) if to_stop else n - 1
    return {(timeline_of_segno(s), s) for s in range(first, last + 1)}


def check_plan(entries, bases, timeline_of_segno, now, retention_days, min_keep) -> None:
    plan = plan_wal_retention(
        bases, entries, now=now, retention_days=retention_days, min_keep=min_keep, segment_size=SEG
    )
    n = sum(1 for e in entries if e.kind == "segment")
    assert sorted(plan.keep_entries + plan.expire_entries, key=lambda e: e.sort_key) == sorted(
        entries, key=lambda e: e.sort_key
    )
    assert not {e.name for e in plan.keep_entries} & {e.name for e in plan.expire_entries}
    assert all(e.kind == "segment" for e in plan.expire_entries)  # history files always stay
    verified = [b for b in bases if b.verified]
    assert sum(1 for b in plan.keep_backups if b.verified) >= min(min_keep, len(verified))
    assert all(b in plan.keep_backups for b in bases if b.pinned)
    assert all(b in plan.keep_backups for b in bases if now - b.taken_at < timedelta(days=retention_days))
    kept = {(e.timeline, e.segno) for e in plan.keep_entries}
    for base in plan.keep_backups:
        need = needed_segments(base, timeline_of_segno, n, to_stop=base.pinned)
        assert need <= kept, (base, sorted(need - kept))
    if not plan.keep_backups:
        assert plan.expire_entries == []


@given(archives())
@settings(max_examples=300, deadline=None)
def test_property_plan_keeps_every_chain_segment_and_min_keep(case):
    check_plan(*case)


def test_randomized_forty_day_catalogs():
    """The same rules on full-size catalogs with random pins, verification and clock."""
    rng = random.Random(15)
    entries = forty_day_catalog()
    for _ in range(20):
        bases = [nightly_base(d, pinned=rng.random() < 0.1, verified=rng.random() < 0.8) for d in range(DAYS)]
        now = NOW + timedelta(hours=rng.randrange(0, 24 * 20))
        check_plan(
            entries, bases, lambda s: 1 if s < SWITCH_SEGNO else 2, now, rng.randrange(1, 40), rng.randrange(1, 5)
        )
