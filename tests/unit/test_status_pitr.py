"""The point-in-time recovery part of the DB Ops page, from a real BackupRepository in a
temp folder (base backups made through its own begin/seal) and hand-written check.json and
receiver.json as the WAL check and the receiver write them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dbops.backup.repository import BackupRepository, format_time
from dbops.config import DbopsConfig
from dbops.pitr import check
from dbops.pitr.wal import BASE_STORE, WAL_DIR, WalArchive
from dbops.status import pitr

UTC = UTC
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def make_base_backup(repo: BackupRepository, taken: datetime, timeline: int, start_lsn: str, stop_lsn: str):
    details = {
        "timeline": timeline,
        "start_lsn": start_lsn,
        "stop_lsn": stop_lsn,
        "start_segment": "000000010000000000000002",
        "stop_segment": "000000010000000000000002",
        "system_identifier": "7345678901234567890",
        "wal_segment_size": 16 * 1024 * 1024,
        "consistent_at": format_time(taken + timedelta(seconds=30)),
        "server_version": "16.14",
        "compression": "gzip",
    }
    meta = {
        "tool": "pg_basebackup",
        "tool_version": "16.14",
        "server_version": "16.14",
        "compression": "gzip",
        "details": details,
    }
    with repo.begin(
        BASE_STORE, None, run_id=f"run_{taken:%Y%m%d%H}", dag_id="dbops_base_backup", logical_date=taken, now=taken
    ) as staging:
        (staging.path / "base.tar.gz").write_bytes(b"base" * 100)
        (staging.path / "backup_manifest").write_text("{}")
        return staging.seal(
            meta, [{"name": "pg_basebackup", "ok": True, "detail": ""}], now=taken + timedelta(minutes=1)
        )


def write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def check_result(
    at: datetime,
    *,
    ok: bool = True,
    problems=(),
    lag_s=0.4,
    lag_bytes=1200,
    earliest="2026-11-28T01:30:30Z",
    latest="2026-12-01T11:50:00Z",
) -> dict:
    """check.json exactly as the WAL check writes it (its own dataclass)."""
    return check.WalCheck(
        at=format_time(at),
        ok=ok,
        problems=list(problems),
        lag_s=lag_s,
        lag_bytes=lag_bytes,
        earliest=earliest,
        latest=latest,
        base_backups=2,
        segments=140,
        rehashed=3,
    ).to_dict()


def heartbeat(at: datetime, state="streaming", error=None) -> dict:
    return {
        "pid": 4242,
        "started_at": format_time(at - timedelta(hours=5)),
        "heartbeat_at": format_time(at),
        "state": state,
        "error": error,
        "system_identifier": "7345678901234567890",
        "timeline": 1,
        "last_sealed": "00000001000000000000008B",
    }


@pytest.fixture
def wal_root(repo) -> Path:
    return repo.root / WAL_DIR


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


def test_window_lag_check_and_base_backups_newest_first_with_drills(repo, wal_root):
    older = make_base_backup(repo, NOW - timedelta(days=3, hours=10), 1, "0/2000028", "0/2000138")
    newer = make_base_backup(repo, NOW - timedelta(hours=10), 1, "0/8A000028", "0/8A000100")
    repo.record(
        older, "drill", {"ok": True, "target": "2026-11-29T08:00:00Z", "differences": []}, now=NOW - timedelta(days=1)
    )
    repo.record(older, "pin", {"pinned": True, "reason": "audit 2026-11", "ok": True}, now=NOW - timedelta(days=1))
    repo.record(
        newer,
        "drill",
        {"ok": False, "target": "2026-12-01T05:00:00Z", "differences": ["marker 17 missing"]},
        now=NOW - timedelta(hours=2),
    )
    write_json(wal_root / check.CHECK_FILE, check_result(NOW - timedelta(minutes=4)))
    write_json(WalArchive(wal_root).status_path, heartbeat(NOW - timedelta(seconds=3)))
    before = snapshot(repo.root)

    result = pitr.pitr_overview(repo, wal_root, NOW, enabled=True, max_lag_s=60)

    assert result["enabled"] is True and result["message"] is None
    assert result["window"] == {
        "earliest": "2026-11-28T01:30:30Z",
        "latest": "2026-12-01T11:50:00Z",
        "as_of": format_time(NOW - timedelta(minutes=4)),
        "proven": True,
    }
    receiver = result["receiver"]
    assert receiver["state"] == "streaming" and receiver["alive"] is True
    assert receiver["heartbeat_age_s"] == 3.0 and receiver["error"] is None
    assert receiver["lag_s"] == 0.4 and receiver["lag_bytes"] == 1200 and receiver["lag_over_limit"] is False
    assert receiver["last_sealed"] == "00000001000000000000008B" and receiver["timeline"] == 1
    last = result["last_check"]
    assert last["status"] == "ok" and last["ok"] is True and last["stale"] is False
    assert last["age_s"] == 240.0 and last["problems"] == [] and last["segments"] == 140
    # base backups newest first, with where they sit in the WAL, the pin and the drill
    backups = result["base_backups"]
    assert result["base_backups_status"] == "ok" and result["base_backups_error"] is None
    assert [b["backup_id"] for b in backups] == [newer.backup_id, older.backup_id]
    assert backups[0]["details"]["start_lsn"] == "0/8A000028" and backups[1]["details"]["timeline"] == 1
    assert backups[1]["details"]["consistent_at"] == format_time(older.finished_at - timedelta(seconds=30))
    assert backups[0]["drill"]["ok"] is False and backups[0]["drill"]["differences"] == ["marker 17 missing"]
    assert backups[0]["verified"] is False  # a failed drill un-verifies it, as everywhere else
    assert backups[1]["drill"]["ok"] is True and backups[1]["verified"] is True
    assert (backups[1]["pinned"], backups[1]["pin_reason"]) == (True, "audit 2026-11")
    assert (backups[0]["pinned"], backups[0]["pin_reason"]) == (False, None)
    assert backups[0]["total_bytes"] == newer.total_bytes
    # the page only reads: not a file added, changed or touched
    assert snapshot(repo.root) == before
    json.dumps(result)  # the API returns it as is


def test_nothing_yet_says_so_for_each_part(repo, wal_root):
    result = pitr.pitr_overview(repo, wal_root, NOW, enabled=True, max_lag_s=60)

    assert result["last_check"]["status"] == pitr.NEVER_CHECKED and result["last_check"]["ok"] is None
    assert result["receiver"]["state"] == pitr.NEVER_REPORTED and result["receiver"]["alive"] is False
    assert result["receiver"]["lag_s"] is None and result["receiver"]["lag_over_limit"] is False
    assert result["base_backups_status"] == pitr.NO_BASE_BACKUP_YET and result["base_backups"] == []
    assert result["window"] == {"earliest": None, "latest": None, "as_of": None, "proven": False}
    assert not wal_root.exists() and not (repo.root / BASE_STORE).exists()  # nothing created by looking


def test_a_failed_check_shows_its_problems_and_a_late_lag(repo, wal_root):
    make_base_backup(repo, NOW - timedelta(days=1), 1, "0/2000028", "0/2000138")
    problems = [
        "WAL chain from base backup x: segment 000000010000000000000007 missing",
        "the receiver is 95 s (8000 bytes) behind the server (pitr.max_lag_s 60)",
    ]
    write_json(
        wal_root / check.CHECK_FILE,
        check_result(NOW - timedelta(minutes=10), ok=False, problems=problems, lag_s=95.0, lag_bytes=8000),
    )
    write_json(WalArchive(wal_root).status_path, heartbeat(NOW - timedelta(seconds=2)))

    result = pitr.pitr_overview(repo, wal_root, NOW, enabled=True, max_lag_s=60)

    last = result["last_check"]
    assert (last["status"], last["ok"], last["stale"]) == ("failed", False, False)
    assert last["problems"] == problems
    assert result["receiver"]["lag_s"] == 95.0 and result["receiver"]["lag_over_limit"] is True
    # the window the failed check saw is shown, but not as proven
    assert result["window"]["earliest"] == "2026-11-28T01:30:30Z" and result["window"]["proven"] is False


@pytest.mark.parametrize("age_minutes, status, proven", [(29, "ok", True), (31, "stale", False)])
def test_a_check_older_than_30_minutes_is_stale(repo, wal_root, age_minutes, status, proven):
    write_json(wal_root / check.CHECK_FILE, check_result(NOW - timedelta(minutes=age_minutes)))

    result = pitr.pitr_overview(repo, wal_root, NOW, enabled=True)

    assert result["last_check"]["status"] == status and result["last_check"]["ok"] is True
    assert result["last_check"]["stale"] is (not proven) and result["window"]["proven"] is proven


@pytest.mark.parametrize(
    "content, status",
    [
        (
            {"at": "yesterday", "ok": True, "earliest": "2026-11-28T01:30:30Z", "latest": "2026-12-01T11:50:00Z"},
            "unreadable",
        ),  # a pass of unknown age proves nothing now
        ({"at": "2026-12-01T11:55:00Z", "ok": "yes"}, "failed"),  # only a literal true passes
        ({"at": "2026-12-01T11:55:00Z"}, "failed"),
    ],
)
def test_a_check_file_that_does_not_say_ok_plainly_is_not_a_pass(repo, wal_root, content, status):
    write_json(wal_root / check.CHECK_FILE, content)

    result = pitr.pitr_overview(repo, wal_root, NOW, enabled=True)

    last = result["last_check"]
    assert last["status"] == status and result["window"]["proven"] is False
    if status == "unreadable":
        assert last["stale"] is True and last["age_s"] is None
    else:
        assert last["ok"] is False and last["problems"] == ["the check did not pass and named no problem"]


def test_a_torn_check_file_reads_as_never_checked(repo, wal_root):
    wal_root.mkdir(parents=True)
    (wal_root / check.CHECK_FILE).write_text('{"at": "2026-12-01T11:55:00Z", "ok": tr')

    assert pitr.pitr_overview(repo, wal_root, NOW, enabled=True)["last_check"]["status"] == pitr.NEVER_CHECKED


@pytest.mark.parametrize(
    "beat, state, alive, error",
    [
        (heartbeat(NOW - timedelta(seconds=5), state="starting"), "starting", True, None),
        (
            heartbeat(NOW - timedelta(seconds=5), state="error", error="FATAL: password authentication failed"),
            "error",
            False,
            "FATAL: password authentication failed",
        ),
        # a killed receiver cannot report: its heartbeat just gets old
        (heartbeat(NOW - timedelta(minutes=5)), "not running", False, None),
        ({**heartbeat(NOW), "heartbeat_at": None}, "unreadable", False, None),
    ],
)
def test_receiver_states(repo, wal_root, beat, state, alive, error):
    write_json(WalArchive(wal_root).status_path, beat)

    receiver = pitr.pitr_overview(repo, wal_root, NOW, enabled=True)["receiver"]

    assert (receiver["state"], receiver["alive"], receiver["error"]) == (state, alive, error)


def test_off_says_so_and_reads_nothing(repo, wal_root):
    make_base_backup(repo, NOW - timedelta(days=1), 1, "0/2000028", "0/2000138")
    write_json(wal_root / check.CHECK_FILE, check_result(NOW - timedelta(minutes=4)))

    result = pitr.pitr_overview(repo, wal_root, NOW, enabled=False)

    assert result["enabled"] is False and result["message"] == pitr.PITR_OFF
    assert result["window"] is None and result["last_check"] is None and result["base_backups"] == []


def test_an_unreadable_base_backup_store_shows_its_error_beside_the_rest(repo, wal_root):
    repo.root.mkdir(parents=True, exist_ok=True)
    (repo.root / BASE_STORE).write_text("not a folder")
    write_json(wal_root / check.CHECK_FILE, check_result(NOW - timedelta(minutes=4)))

    result = pitr.pitr_overview(repo, wal_root, NOW, enabled=True)

    assert result["base_backups_status"] == "error" and BASE_STORE in result["base_backups_error"]
    assert result["last_check"]["status"] == "ok"


def test_api_pitr_serves_the_overview_behind_the_login(repo, wal_root, monkeypatch):
    """The endpoint's wiring (config -> paths -> JSON) through FastAPI itself; the login
    dependency is replaced here, the real one is exercised by tests/e2e/test_browser.py."""
    from fastapi.testclient import TestClient

    from dbops.status import app as status_app

    base = make_base_backup(repo, NOW - timedelta(hours=3), 1, "0/2000028", "0/2000138")
    write_json(wal_root / check.CHECK_FILE, check_result(datetime.now(UTC) - timedelta(minutes=1)))
    config = DbopsConfig().with_overrides({"backup": {"root": str(repo.root)}, "pitr": {"max_lag_s": 30}})
    monkeypatch.setattr(status_app, "_config", lambda: config)
    app = status_app.create_app()
    client = TestClient(app)

    assert client.get("/api/pitr").status_code == 401  # the real login check, no user here

    app.dependency_overrides[status_app.current_user] = lambda: "tester"
    body = client.get("/api/pitr").json()
    assert body["error"] is None and body["enabled"] is True and body["max_lag_s"] == 30
    assert body["wal_root"] == str(wal_root) and body["last_check"]["status"] == "ok"
    assert [b["backup_id"] for b in body["base_backups"]] == [base.backup_id]

    monkeypatch.setattr(status_app, "_config", lambda: config.with_overrides({"pitr": {"enabled": False}}))
    off = client.get("/api/pitr").json()
    assert off["enabled"] is False and off["message"] == pitr.PITR_OFF
