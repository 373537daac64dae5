"""Retention: which backups of a series are obsolete, and expiring them safely.

In the spirit of Barman's retention policies: a policy object looks at a catalog and
reports, for every backup, whether it is kept and why; deleting is a separate step
(:func:`apply_retention`) that follows pgBackRest's rule of expiring only after this
run's new backup succeeded. The old cron job (``find -mtime +30 -delete``) deleted old
backups even when every new one had failed; here that cannot happen.

The rules, for one series (one store, or one Postgres database):

* Age is ``now - finished_at``, in UTC, as plain 24-hour days: DST and month lengths
  play no part. A backup is *inside the window* when its age is strictly less than
  ``retention_days`` days; one exactly ``retention_days`` days old is outside (so with
  one backup a day, "30 days" keeps 30 backups).
* Everything inside the window is kept.
* A backup outside the window is obsolete only when at least ``min_keep`` *verified*
  backups newer than it exist. So the newest ``min_keep`` verified backups always stay,
  whatever their age, and a backup whose latest verify/drill failed never counts toward
  ``min_keep`` (it may itself stay while too few verified newer ones exist: nothing is
  deleted on the strength of backups we do not trust).
* **Pins**: a backup whose ``pin`` sidecar says ``pinned`` (or that the caller names in
  ``pins``, such as an offsite target's ``pins.json``) is kept whatever its age ("pinned:
  <reason>"), until it is unpinned. A pinned backup never counts toward ``min_keep`` (it
  stays anyway, so it must not stand in for the recent ones), as with PITR base backups.
  A ``pin`` sidecar that cannot be read keeps its backup: a pin is never lost to a doubt.
* **Tiers** (off when ``keep_weekly`` / ``keep_monthly`` are 0: then the rules above are
  all there is). Calendar weeks are ISO weeks (Monday to Sunday) and months are calendar
  months, both of ``finished_at`` in UTC. The weekly tier covers the ``keep_weekly`` most
  recent calendar weeks, the week of ``now`` included (with ``keep_weekly`` 8 on a
  Wednesday: this week and the 7 before it); the monthly tier the ``keep_monthly`` most
  recent calendar months, the month of ``now`` included. For each such week (month) that
  holds backups, one is its *tier member* and is kept: the newest verified one of that
  week (month), or, when none of them is verified, the newest one. Its reason names the
  tier ("weekly tier: newest of 2026-W40", "monthly tier: newest verified of 2026-10").
  A member stays a member until its week (month) leaves the tier (on the Monday, or the
  first of the month, ``keep_weekly`` weeks / ``keep_monthly`` months later, 00:00 UTC),
  unless a newer backup of the same week (month) takes its place or it fails a verify or
  drill while a verified one of its week exists. A tier member counts toward ``min_keep``
  like any verified backup.
* Order of the reasons: pinned, inside the window, tier member, kept by ``min_keep``,
  else obsolete.
* Only :class:`Backup` objects are judged; the repository lists only complete ones, so
  staging folders, half-deleted folders and strangers are never even considered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from dbops.backup.adapter import ExpiryRefused, NotRetryable
from dbops.backup.repository import Backup, BackupRepository, RepositoryError, as_utc, checks_ok

LogFn = Callable[[str], None]


class RetentionRefused(NotRetryable, RepositoryError):
    """Retention was not applied (nothing deleted); the message says why."""


@dataclass(frozen=True)
class Decision:
    backup: Backup
    keep: bool
    reason: str


def _age_text(age: timedelta) -> str:
    if age < timedelta(0):
        return f"finished {_age_text(-age)} in the future"
    days, rest = divmod(int(age.total_seconds()), 86400)
    return f"{days}d {rest // 3600}h"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def pin_reason(backup: Backup) -> str | None:
    """Why ``backup`` is pinned (its ``pin`` sidecar), or None when it is not.

    A ``pin`` sidecar without ``pinned`` true or false (unreadable, or not ours) counts
    as a pin: a backup is never expired because its pin could not be read."""
    pin = backup.sidecars.get("pin")
    if pin is None or pin.get("pinned") is False:
        return None
    if pin.get("pinned") is True:
        return str(pin.get("reason") or "no reason given")
    return f"pin.json unreadable ({pin.get('detail') or 'no pinned true/false in it'}), kept until it is fixed"


def pin_record(reason: str, by: str) -> dict[str, Any]:
    """The body of a ``pin`` sidecar (``BackupRepository.record`` adds ``kind`` and ``at``)."""
    reason = reason.strip() if isinstance(reason, str) else ""
    if not reason:
        raise ValueError("a pin needs a reason (why this backup must stay)")
    return {"ok": True, "pinned": True, "reason": reason, "by": by}


def unpin_record(by: str) -> dict[str, Any]:
    """The ``pin`` sidecar of an unpinned backup (kept as a record of who released it)."""
    return {"ok": True, "pinned": False, "reason": None, "by": by}


def week_label(at: datetime) -> str:
    """The ISO week of a UTC time: ``2026-W40``."""
    year, week, _ = as_utc(at, "at").isocalendar()
    return f"{year}-W{week:02d}"


def month_label(at: datetime) -> str:
    """The calendar month of a UTC time: ``2026-10``."""
    at = as_utc(at, "at")
    return f"{at.year}-{at.month:02d}"


def _week_index(at: datetime) -> int:
    """Weeks since the Monday of 0001-01-01 (consecutive weeks differ by one)."""
    monday = at.date() - timedelta(days=at.weekday())
    return (monday.toordinal() - 1) // 7


def _month_index(at: datetime) -> int:
    return at.year * 12 + at.month - 1


@dataclass(frozen=True)
class _Tier:
    name: str  # "weekly" / "monthly"
    periods: int
    index: Callable[[datetime], int]
    label: Callable[[datetime], str]


@dataclass(frozen=True)
class RetentionPolicy:
    """Keep ``retention_days`` of backups, the newest of each of the last ``keep_weekly``
    weeks and ``keep_monthly`` months, pinned ones, and never fewer than ``min_keep``
    verified ones (see the module docstring for the exact rules)."""

    retention_days: int
    min_keep: int
    keep_weekly: int = 0
    keep_monthly: int = 0

    def __post_init__(self) -> None:
        for name, least in (("retention_days", 1), ("min_keep", 1), ("keep_weekly", 0), ("keep_monthly", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")

    @classmethod
    def of(cls, settings: Any) -> RetentionPolicy:
        """The policy of a config section (``backup`` or ``offsite``): its retention_days,
        min_keep, keep_weekly and keep_monthly."""
        return cls(settings.retention_days, settings.min_keep, settings.keep_weekly, settings.keep_monthly)

    @property
    def window(self) -> timedelta:
        return timedelta(days=self.retention_days)

    def describe(self) -> str:
        text = f"retention {_plural(self.retention_days, 'day')}, min_keep {self.min_keep}"
        if self.keep_weekly or self.keep_monthly:
            text += f", weekly {self.keep_weekly}, monthly {self.keep_monthly}"
        return text

    def _tiers(self) -> list[_Tier]:
        tiers = [
            _Tier("weekly", self.keep_weekly, _week_index, week_label),
            _Tier("monthly", self.keep_monthly, _month_index, month_label),
        ]
        return [t for t in tiers if t.periods > 0]

    def evaluate(
        self, backups: Iterable[Backup], now: datetime, *, pins: Mapping[str, str] | None = None
    ) -> list[Decision]:
        """One decision per backup, oldest first; the same whatever the input order.

        All backups must belong to one series and have distinct ids. ``pins`` maps more
        pinned backup ids to their reason, beside the backups' own ``pin`` sidecars.
        """
        now = as_utc(now, "now")
        catalog = list(backups)
        for b in catalog:
            if not isinstance(b, Backup):
                raise TypeError(f"retention judges only listed Backups, got {type(b).__name__}")
        series = {(b.store, b.subject) for b in catalog}
        if len(series) > 1:
            raise ValueError(f"retention works on one series at a time, got {sorted(series, key=str)}")
        ids = [b.backup_id for b in catalog]
        if len(set(ids)) != len(ids):
            raise ValueError("the same backup id appears twice in the catalog")
        pins = dict(pins or {})

        ordered = sorted(catalog, key=lambda b: b.sort_key)  # oldest first; keys are unique
        pinned = {b.backup_id: pin_reason(b) or pins.get(b.backup_id) for b in ordered}
        # verified_newer[i]: how many verified, unpinned backups are newer than ordered[i]
        verified_newer = [0] * len(ordered)
        count = 0
        for i in range(len(ordered) - 1, -1, -1):
            verified_newer[i] = count
            if ordered[i].verified and not pinned[ordered[i].backup_id]:
                count += 1
        members, misses = self._tier_members(ordered, now)

        days = _plural(self.retention_days, "day")
        decisions = []
        for backup, newer in zip(ordered, verified_newer, strict=True):
            age = now - backup.finished_at
            state = "" if backup.verified else ", latest verification failed"
            if pinned[backup.backup_id]:
                decisions.append(Decision(backup, True, f"pinned: {pinned[backup.backup_id]} (age {_age_text(age)})"))
            elif age < self.window:
                tier = f"; {members[backup.backup_id]}" if backup.backup_id in members else ""
                decisions.append(Decision(backup, True, f"younger than {days} (age {_age_text(age)}){state}{tier}"))
            elif backup.backup_id in members:
                decisions.append(Decision(backup, True, f"{members[backup.backup_id]} (age {_age_text(age)}){state}"))
            elif newer < self.min_keep:
                what = "one of the newest verified backups" if backup.verified else "not verified"
                decisions.append(
                    Decision(
                        backup,
                        True,
                        f"older than {days} (age {_age_text(age)}) but kept by min_keep={self.min_keep}: "
                        f"{what}, only {_plural(newer, 'newer verified backup')} exist",
                    )
                )
            else:
                miss = misses.get(backup.backup_id)
                decisions.append(
                    Decision(
                        backup,
                        False,
                        f"older than {days} (age {_age_text(age)}){state} and "
                        f"{_plural(newer, 'newer verified backup')} exist" + (f"; {miss}" if miss else ""),
                    )
                )
        return decisions

    def _tier_members(self, ordered: list[Backup], now: datetime) -> tuple[dict[str, str], dict[str, str]]:
        """(member id -> "weekly tier: newest of 2026-W40[; monthly tier: ...]",
        non-member id -> why no tier keeps it)."""
        members: dict[str, list[str]] = {}
        misses: dict[str, list[str]] = {}
        for tier in self._tiers():
            current = tier.index(now)
            buckets: dict[int, list[Backup]] = {}
            for b in ordered:
                buckets.setdefault(tier.index(b.finished_at), []).append(b)
            for index, group in buckets.items():
                label = tier.label(group[0].finished_at)
                if not 0 <= current - index < tier.periods:
                    for b in group:
                        misses.setdefault(b.backup_id, []).append(
                            f"{label} is past the {_plural(tier.periods, tier.name[:-2])} of the {tier.name} tier"
                        )
                    continue
                good = [b for b in group if b.verified]
                member = (good or group)[-1]  # group is oldest first
                which = "newest" if member is group[-1] else "newest verified"
                note = "" if good else " (none of it verified)"
                members.setdefault(member.backup_id, []).append(f"{tier.name} tier: {which} of {label}{note}")
                for b in group:
                    if b is not member:
                        misses.setdefault(b.backup_id, []).append(
                            f"{tier.name} tier keeps {member.backup_id} of {label}"
                        )
        return ({k: "; ".join(v) for k, v in members.items()}, {k: "; ".join(v) for k, v in misses.items()})


def apply_retention(
    repo: BackupRepository,
    store: str,
    subject: str | None,
    policy: RetentionPolicy,
    *,
    now: datetime,
    new_backup_id: str | None,
    dry_run: bool,
    log: LogFn | None = None,
    before_delete: Callable[[Backup], None] | None = None,
) -> list[Decision]:
    """Evaluate ``policy`` on the series and delete the obsolete backups (unless dry_run).

    Refuses (:class:`RetentionRefused`, nothing deleted) unless ``new_backup_id`` names a
    listed, verified backup of this series that the policy keeps: expiry happens only
    after this run's new backup succeeded. Deletions happen oldest first; each goes
    through :meth:`BackupRepository.delete`, which re-checks the folder.

    Before anything is deleted, the backups that make others obsolete (the newest
    ``min_keep`` verified ones) are re-read against their manifests: one that changed on
    disk since it was sealed (a flipped byte) gets a failed "verify" result recorded, no
    longer counts, and the decisions are made again without it.

    ``before_delete`` removes what a backup keeps outside the repository (its store's
    ``expire``): when it refuses (ExpiryRefused) the backup's folder stays, said in the log;
    any other failure stops retention before the folder is deleted.
    """
    say = log or (lambda _msg: None)
    backups = repo.list(store, subject)
    where = f"{store}/{subject}" if subject else store
    new = next((b for b in backups if b.backup_id == new_backup_id), None)
    if new is None:
        raise RetentionRefused(
            f"retention of {where} not applied: new backup {new_backup_id!r} is not a complete backup "
            "of this series, nothing deleted"
        )
    if not new.verified:
        raise RetentionRefused(
            f"retention of {where} not applied: new backup {new_backup_id} failed verification, nothing deleted"
        )
    decisions = policy.evaluate(backups, now)
    if any(not d.keep for d in decisions) and _distrust_changed_witnesses(repo, backups, policy, where, say):
        backups = repo.list(store, subject)
        decisions = policy.evaluate(backups, now)
        new = next((b for b in backups if b.backup_id == new_backup_id), None)
        if new is None or not new.verified:
            raise RetentionRefused(
                f"retention of {where} not applied: new backup {new_backup_id} no longer matches its manifest, "
                "nothing deleted"
            )
    if any(d.backup.backup_id == new.backup_id and not d.keep for d in decisions):
        raise RetentionRefused(
            f"retention of {where} not applied: new backup {new_backup_id} would itself be obsolete "
            "(it is not this run's fresh backup), nothing deleted"
        )
    for d in decisions:
        if d.keep:
            continue
        if dry_run:
            say(f"dry run: would delete {where} {d.backup.backup_id}: {d.reason}")
        else:
            if before_delete is not None:
                try:
                    before_delete(d.backup)
                except ExpiryRefused as exc:
                    say(f"kept {where} {d.backup.backup_id} although obsolete: {exc}")
                    continue
            repo.delete(d.backup)
            say(f"deleted {where} {d.backup.backup_id}: {d.reason}")
    return decisions


def _distrust_changed_witnesses(
    repo: BackupRepository, backups: list[Backup], policy: RetentionPolicy, where: str, say: LogFn
) -> bool:
    """Re-read the newest ``min_keep`` verified, unpinned backups (every obsolete backup has
    them all newer than itself); record a failed "verify" on each that no longer matches its
    manifest, and go on to the next verified one in its place. True if any was recorded."""
    distrusted = False
    trusted = 0
    witnesses = (b for b in backups if b.verified and pin_reason(b) is None)
    for backup in sorted(witnesses, key=lambda b: b.sort_key, reverse=True):
        if trusted == policy.min_keep:
            break
        checks = repo.verify(backup)
        if checks_ok(checks):
            trusted += 1
            continue
        failed = "; ".join(f"{c['name']}: {c['detail']}" for c in checks if not c["ok"])
        repo.record(backup, "verify", {"ok": False, "detail": failed, "checks": checks})
        say(f"{where} {backup.backup_id} no longer matches its manifest, not counted as a good backup: {failed}")
        distrusted = True
    return distrusted


def check_clock(
    *,
    now: datetime,
    new: Backup,
    newest_other: Backup | None,
    run_started_at: datetime | None,
    max_skew: timedelta,
    max_delay: timedelta,
    where: str,
) -> None:
    """Refuse (RetentionRefused) when the clock retention would judge ages by cannot be trusted.

    Ages are differences between ``now`` and the backups' times, all read from one clock
    (the worker's); a clock that is days fast makes every backup look old. So ``now`` is
    held against what other clocks and the repository say:

    - this run's new backup must be recent by ``now`` (taken at most ``max_delay`` ago:
      retention runs just after it), and not in ``now``'s future;
    - ``now`` must not be earlier than the newest other backup (a clock set back);
    - the new backup must have been taken after the run started by the scheduler's clock
      (``run_started_at``), and within ``max_delay`` of it.
    """
    now = as_utc(now, "now")
    taken = new.taken_at
    problems = []
    if taken - now > max_skew:
        problems.append(
            f"this run's backup {new.backup_id} is {_age_text(taken - now)} "
            f"in the future of now ({now:%Y-%m-%dT%H:%M:%SZ})"
        )
    elif now - taken > max_delay:
        problems.append(
            f"this run's backup {new.backup_id} is {_age_text(now - taken)} old by this clock: retention runs only "
            f"just after it (within {_age_text(max_delay)})"
        )
    if newest_other is not None and newest_other.taken_at - now > max_skew:
        problems.append(
            f"now ({now:%Y-%m-%dT%H:%M:%SZ}) is earlier than the newest other backup {newest_other.backup_id}"
        )
    if run_started_at is not None:
        started = as_utc(run_started_at, "run_started_at")
        if started - taken > max_skew or taken - started > max_delay:
            problems.append(
                f"this run started at {started:%Y-%m-%dT%H:%M:%SZ} by the scheduler's clock, but its backup "
                f"{new.backup_id} was stamped {_age_text(abs(taken - started))} "
                f"{'later' if taken > started else 'earlier'} by this worker's clock"
            )
    if problems:
        raise RetentionRefused(
            f"retention of {where} not applied, nothing deleted: the clock disagrees with the backups: "
            + "; ".join(problems)
            + ". Fix the worker's clock (NTP), then clear this task"
        )
