"""Retention trusts no single clock: ``runner.expire`` refuses, deleting nothing, when the
clock it would judge ages by disagrees with the backups or with the scheduler's start of
the run. On today's main a worker clock 40 days fast deleted 27 of 30 daily backups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dbops.backup.repository import BackupRepository
from dbops.backup.retention import RetentionPolicy, RetentionRefused
from dbops.backup.runner import expire
from tests.support import make_backup

UTC = UTC
DAY = timedelta(days=1)
REAL_NOW = datetime(2026, 11, 30, 2, 10, tzinfo=UTC)  # the true time of tonight's run
RUN_STARTED = datetime(2026, 11, 30, 2, 0, 5, tzinfo=UTC)  # the scheduler's clock
META = {"tool": "redis-cli", "tool_version": "7.0", "server_version": "7.0", "compression": "none"}
POLICY = RetentionPolicy(30, 3)


def write(repo: BackupRepository, at: datetime, run_id: str):
    """A redis backup begun at ``at`` (by the clock of the worker that took it), sealed 2 minutes later."""
    return make_backup(
        repo, now=at, took=timedelta(minutes=2), run_id=run_id, meta=META, files={"dump.rdb": f"dump of {at}".encode()}
    )


@pytest.fixture
def thirty_nights(repo: BackupRepository) -> BackupRepository:
    """``repo`` with thirty daily backups taken by good clocks, the newest last night."""
    for i in range(30, 0, -1):
        write(repo, REAL_NOW - i * DAY, f"night-{i}")
    return repo


pytestmark = pytest.mark.usefixtures("thirty_nights")


def ids(repo: BackupRepository) -> list[str]:
    return [b.backup_id for b in repo.list("redis")]


def run_retention(repo, *, now, run_started_at=RUN_STARTED, dry_run=False):
    return expire(
        repo,
        "redis",
        None,
        POLICY,
        run_id="tonight",
        dag_id="dbops_nightly_backup",
        now=now,
        run_started_at=run_started_at,
        max_clock_skew=timedelta(minutes=15),
        max_delay=timedelta(hours=12),
        dry_run=dry_run,
        log=lambda _line: None,
    )


def test_a_worker_clock_forty_days_fast_deletes_nothing_and_says_why(repo):
    fast = timedelta(days=40)
    write(repo, REAL_NOW - timedelta(minutes=8) + fast, "tonight")  # stamped by the fast clock
    before = ids(repo)
    with pytest.raises(
        RetentionRefused, match=r"nothing deleted: the clock disagrees.*scheduler's clock.*40d 0h later"
    ):
        run_retention(repo, now=REAL_NOW + fast)
    assert ids(repo) == before and len(before) == 31


def test_a_clock_set_back_is_refused_naming_the_newest_backup(repo):
    newest_before = ids(repo)[-1]
    write(repo, REAL_NOW - 5 * DAY - timedelta(hours=1), "tonight")  # slow clock: "tonight" looks older
    with pytest.raises(RetentionRefused, match=f"earlier than the newest other backup {newest_before}"):
        run_retention(repo, now=REAL_NOW - 5 * DAY, run_started_at=None)
    assert len(ids(repo)) == 31


def test_retention_long_after_its_backup_is_refused(repo):
    """A cleared retention task days later: 'now' no longer belongs with this run's backup."""
    write(repo, REAL_NOW - timedelta(minutes=8), "tonight")
    with pytest.raises(RetentionRefused, match=r"old by this clock: retention runs only just after it"):
        run_retention(repo, now=REAL_NOW + 3 * DAY, run_started_at=None)
    assert len(ids(repo)) == 31


def test_a_backup_in_the_future_of_now_is_refused(repo):
    write(repo, REAL_NOW + 2 * DAY, "tonight")
    with pytest.raises(RetentionRefused, match="in the future of now"):
        run_retention(repo, now=REAL_NOW, run_started_at=None)


def test_clocks_that_agree_apply_the_policy(repo):
    write(repo, REAL_NOW - timedelta(minutes=8), "tonight")
    result = run_retention(repo, now=REAL_NOW + timedelta(minutes=5))
    # 31 backups, the oldest finished 30 days and 3 minutes ago: outside the 30-day window, deleted
    assert len(result["obsolete"]) == 1 and len(ids(repo)) == 30
