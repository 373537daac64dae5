"""The benchmark harness runs every pair (tiny data, once) and fails loudly when one fails.

This is how CI keeps the harness from rotting: the full benchmark is `make bench`.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from bench.__main__ import EXPECTED_ROWS

REPO = Path(__file__).resolve().parents[2]


def run_bench(*args: str, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _number(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_smoke_runs_every_pair_and_writes_numbers(tmp_path):
    done = run_bench(out=tmp_path)
    assert done.returncode == 0, done.stderr[-5000:]
    result = json.loads((tmp_path / "latest.json").read_text())
    assert result["failures"] == [] and result["missing_rows"] == []
    rows = {row["id"]: row for row in result["rows"]}
    assert sorted(rows) == sorted(EXPECTED_ROWS)
    for row_id, row in rows.items():
        for side in ("old", "dbops"):
            stats = row[side]
            if stats is None:  # rows without an old way (dag parse)
                assert side == "old" and row["old_way"] == "-", row_id
                continue
            assert all(_number(stats[k]) for k in ("median", "min", "max")), (row_id, side, stats)
            assert stats["min"] <= stats["median"] <= stats["max"], (row_id, side, stats)
            assert len(stats["runs"]) == result["settings"]["repetitions"] or row_id == "dag_parse"
        assert _number(row["ratio"]) and isinstance(row["met"], bool), row_id
    assert rows["pg_backup_vs_dumpall"]["details"]["artifact_bytes"]["old"] > 0
    assert rows["pg_backup_memory"]["dbops"]["median"] > 0
    # two-condition targets: the second ratio is measured and part of met
    maintenance = rows["pg_maintenance_writer"]
    assert _number(maintenance["also"]["commits/s vs no job"])
    rates = maintenance["details"]["commits_per_s"]
    assert len(rates["no_job"]) == len(rates["dbops"]) == result["settings"]["repetitions"]
    assert all(rate > 0 for rate in rates["no_job"] + rates["dbops"])
    # the S3 restore's anchor is made of parts measured in the same run
    s3 = rows["pg_restore_s3"]["details"]
    assert all(s > 0 for key in ("local_restore_s", "boto3_download_s", "s3_restore_s") for s in s3[key])
    assert s3["object_bytes"] > 0 and all(s > 0 for s in s3["dbops_download_s"])
    assert all(d["ok"] for d in rows["pg_drill"]["details"]["drills"])
    redis = rows["redis_backup_stall"]
    assert _number(redis["also"]["wall time"]) and all(
        s > 0 for side in ("old", "dbops") for s in redis["details"]["wall_s"][side]
    )
    assert result["versions"]["postgres"].startswith("16.")
    markdown = (tmp_path / "benchmarks.md").read_text()
    for row in rows.values():
        assert row["what"].replace("|", "\\|") in markdown
    # a smoke run never touches the recorded results
    assert not (tmp_path / "docs").exists()


def test_a_failing_pair_fails_the_run(tmp_path):
    # the restore pair needs the backup pair's artifacts: run alone, it fails
    done = run_bench("--only", "pg_restore", out=tmp_path)
    assert done.returncode == 1
    result = json.loads((tmp_path / "latest.json").read_text())
    assert [f["step"] for f in result["failures"]] == ["pg_restore"]
    assert "needs the backup row" in result["failures"][0]["error"]
    assert set(result["missing_rows"]) == set(EXPECTED_ROWS)
    assert "**failed**" in (tmp_path / "benchmarks.md").read_text()


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "--smoke needs --out" in done.stderr
    done = run_bench("--scale", "-1", out=tmp_path)
    assert done.returncode == 2 and "--scale must be positive" in done.stderr
    assert not (tmp_path / "latest.json").exists()
