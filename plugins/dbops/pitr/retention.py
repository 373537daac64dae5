"""Retention of point-in-time recovery: which base backups expire, and which WAL goes with them.

Pure (no Airflow, no database driver): the caller lists the base backups and the WAL
catalog, passes ``now`` (its clock is checked elsewhere), and applies the plan.

Base backups follow the rules of every dbops series (:mod:`dbops.backup.retention`): age is
``now - taken_at`` in plain 24-hour days; younger than ``retention_days`` is kept; an older
one expires only when at least ``min_keep`` verified, unpinned base backups newer than it
exist (a pinned one is kept anyway, so it never stands in for the recent ones); a pinned
base backup never expires.

WAL never breaks a chain. A segment expires only when no kept unpinned base backup needs it:
for each of them it lies on the backup's own timeline before its start segment, or on an
ancestor timeline (replay starts on the backup's timeline; an ancestor's segments are older,
or past the promotion and so not on this history). A segment of any other timeline (a
descendant, reached after a later promotion, or one whose relation is unknown) is needed, so
everything else stays and each kept base backup can be replayed to the end of the archive. A
pinned base backup older than all of them keeps the segments from its start to its stop (on its
timeline and, for the segment of a later promotion, on the timelines descending from it): enough
to make it consistent, not to roll it forward. History files are always kept (a few bytes, and
recovery probes them to find the newest timeline). When a timeline's lineage is unknown (its
history file is missing), its segments are kept. With no kept base backup at all nothing is
deleted: nothing would anchor the chain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from dbops.pitr.wal import (
    WalEntry,
    check_segment_size,
    last_segno_before,
    parse_lsn,
    segment_name,
    segno_of,
    timeline_lineage,
)


@dataclass(frozen=True)
class BaseInfo:
    """What retention needs to know of one base backup (from its manifest and sidecars)."""

    backup_id: str
    taken_at: datetime
    timeline: int
    start_lsn: int
    stop_lsn: int
    verified: bool  # its latest verify / PITR drill passed
    pinned: bool

    @classmethod
    def of(
        cls, backup_id: str, taken_at: datetime, details: Mapping[str, Any], *, verified: bool, pinned: bool
    ) -> BaseInfo:
        """From a base backup's manifest details (``timeline``, ``start_lsn``, ``stop_lsn``)."""
        return cls(
            backup_id,
            taken_at,
            int(details["timeline"]),
            parse_lsn(details["start_lsn"]),
            parse_lsn(details["stop_lsn"]),
            verified,
            pinned,
        )

    def __post_init__(self) -> None:
        if self.taken_at.tzinfo is None or self.taken_at.utcoffset() is None:
            raise ValueError(f"base backup {self.backup_id}: taken_at must be timezone-aware")
        if not isinstance(self.timeline, int) or self.timeline < 1:
            raise ValueError(f"base backup {self.backup_id}: timeline must be >= 1, got {self.timeline!r}")
        if not 0 <= self.start_lsn <= self.stop_lsn:
            raise ValueError(f"base backup {self.backup_id}: needs 0 <= start_lsn <= stop_lsn")


@dataclass
class WalRetentionPlan:
    keep_backups: list[BaseInfo]
    expire_backups: list[BaseInfo]
    keep_entries: list[WalEntry]
    expire_entries: list[WalEntry]
    reasons: list[str]  # the WAL decisions, one line each
    backup_reasons: dict[str, str] = field(default_factory=dict)  # backup_id -> why kept / expired
    # the oldest kept unpinned base backup: the WAL from its start on is kept
    anchor: BaseInfo | None = None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _age_text(age: timedelta) -> str:
    if age < timedelta(0):
        return f"{_age_text(-age)} in the future"
    days, rest = divmod(int(age.total_seconds()), 86400)
    return f"{days}d {rest // 3600}h"


def _check_positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def plan_base_retention(
    base_backups: Sequence[BaseInfo], *, now: datetime, retention_days: int, min_keep: int
) -> tuple[list[BaseInfo], list[BaseInfo], dict[str, str]]:
    """(kept, expired, reason by backup id), both lists oldest first."""
    _check_positive("retention_days", retention_days)
    _check_positive("min_keep", min_keep)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    ids = [b.backup_id for b in base_backups]
    if len(set(ids)) != len(ids):
        raise ValueError("the same base backup id appears twice")
    ordered = sorted(base_backups, key=lambda b: (b.taken_at, b.backup_id))
    window = timedelta(days=retention_days)
    days = _plural(retention_days, "day")
    kept: list[BaseInfo] = []
    expired: list[BaseInfo] = []
    reasons: dict[str, str] = {}
    verified_newer = 0
    for backup in reversed(ordered):  # newest first, counting verified unpinned newer ones
        age = now - backup.taken_at
        if backup.pinned:
            kept.append(backup)
            reasons[backup.backup_id] = f"pinned (age {_age_text(age)})"
        elif age < window:
            kept.append(backup)
            reasons[backup.backup_id] = f"younger than {days} (age {_age_text(age)})"
        elif verified_newer < min_keep:
            kept.append(backup)
            reasons[backup.backup_id] = (
                f"older than {days} (age {_age_text(age)}) but kept by min_keep={min_keep}: "
                f"only {_plural(verified_newer, 'newer verified base backup')} exist"
            )
        else:
            expired.append(backup)
            reasons[backup.backup_id] = (
                f"older than {days} (age {_age_text(age)}) and "
                f"{_plural(verified_newer, 'newer verified base backup')} exist"
            )
        if backup.verified and not backup.pinned:
            verified_newer += 1
    return kept[::-1], expired[::-1], reasons


def plan_wal_retention(
    base_backups: Sequence[BaseInfo],
    entries: Sequence[WalEntry],
    *,
    now: datetime,
    retention_days: int,
    min_keep: int,
    segment_size: int,
) -> WalRetentionPlan:
    """Which base backups and which catalogued WAL files expire (see the module's rules)."""
    check_segment_size(segment_size)
    kept, expired, backup_reasons = plan_base_retention(
        base_backups, now=now, retention_days=retention_days, min_keep=min_keep
    )
    entries = sorted(entries, key=lambda e: e.sort_key)
    plan = WalRetentionPlan(kept, expired, [], [], [], backup_reasons)
    if not entries:
        plan.reasons.append("the WAL catalog is empty: nothing to expire")
        return plan
    unpinned = [b for b in kept if not b.pinned]
    pinned = [b for b in kept if b.pinned]
    if not kept:
        plan.keep_entries = entries
        plan.reasons.append(
            "no base backup is kept: no WAL expires (nothing anchors the chain; WAL without a base backup "
            "is all that is left to rebuild from)"
        )
        return plan
    if unpinned:
        anchors = unpinned
        plan.anchor = unpinned[0]
    else:
        # only pinned base backups are left: the newest of them keeps the WAL to the end
        anchors = [pinned[-1]]
        plan.anchor = pinned[-1]
        plan.reasons.append(
            f"every kept base backup is pinned: base backup {pinned[-1].backup_id} (the newest) "
            "anchors the WAL to the end"
        )

    # per anchor: the timelines of its lineage, and its start segment
    anchor_cuts: list[tuple[BaseInfo, set[int], int]] = []
    for base in anchors:
        lineage = timeline_lineage(entries, base.timeline)
        timelines = {t for t, _, _ in lineage} if lineage is not None else {base.timeline}
        anchor_cuts.append((base, timelines, segno_of(base.start_lsn, segment_size)))
        if lineage is None:
            plan.reasons.append(
                f"base backup {base.backup_id} is on timeline {base.timeline} whose history file is not catalogued: "
                "segments of its ancestors are kept (their lineage is unknown)"
            )
    pinned_ranges = [
        (
            b,
            b.timeline,
            segno_of(b.start_lsn, segment_size),
            last_segno_before(max(b.stop_lsn, b.start_lsn + 1), segment_size),
        )
        for b in pinned
        if b is not plan.anchor
    ]

    lineages: dict[int, set[int] | None] = {}

    def descends(timeline: int, ancestor: int) -> bool:
        """``timeline`` is ``ancestor`` or descends from it (unknown lineage: assume it does).
        A pinned base backup that stops just before a promotion finds its last segment on the
        new timeline: the old timeline's copy of that segment stays a .partial."""
        if timeline == ancestor:
            return True
        if timeline not in lineages:
            lineage = timeline_lineage(entries, timeline)
            lineages[timeline] = None if lineage is None else {t for t, _, _ in lineage}
        known = lineages[timeline]
        return known is None or ancestor in known

    for entry in entries:
        if entry.kind == "history":
            plan.keep_entries.append(entry)
            continue
        segno = entry.segno
        assert segno is not None
        needed_by_no_anchor = all(
            entry.timeline in timelines and (entry.timeline != base.timeline or segno < cut)
            for base, timelines, cut in anchor_cuts
        )
        in_pinned = any(
            first <= segno <= last and descends(entry.timeline, tli) for _, tli, first, last in pinned_ranges
        )
        if needed_by_no_anchor and not in_pinned:
            plan.expire_entries.append(entry)
        else:
            plan.keep_entries.append(entry)

    anchor = plan.anchor
    plan.reasons.insert(
        0,
        f"WAL kept from {segment_name(anchor.timeline, segno_of(anchor.start_lsn, segment_size), segment_size)} "
        f"on: the start of base backup {anchor.backup_id}, the oldest kept"
        f"{'' if unpinned else ' (pinned)'} base backup, to the end of the archive",
    )
    for base, tli, first, last in pinned_ranges:
        plan.reasons.append(
            f"pinned base backup {base.backup_id} keeps {segment_name(tli, first, segment_size)}.."
            f"{segment_name(tli, last, segment_size)} (its start to its stop, timeline {tli})"
        )
    histories = sum(1 for e in entries if e.kind == "history")
    if histories:
        plan.reasons.append(f"{_plural(histories, 'history file')} kept (always)")
    if plan.expire_entries:
        first_e, last_e = plan.expire_entries[0], plan.expire_entries[-1]
        plan.reasons.append(
            f"{_plural(len(plan.expire_entries), 'segment')} expire ({first_e.name}..{last_e.name}): "
            "no kept base backup replays them (before its start on its timeline, or on an ancestor timeline)"
        )
    else:
        plan.reasons.append("no WAL segment expires")
    return plan
