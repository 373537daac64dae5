"""The Weaviate adapter against a stand-in server held to Weaviate's published OpenAPI specs.

No Weaviate server can run here (see tests/weaviate_support.py): the stand-in answers only
the endpoints dbops uses, as the specs of 1.22.13 and 1.39.0 say, and validates every
request dbops sends and every response it gives against them. dbops' code path is the
production one (``requests`` over real HTTP).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from datetime import timedelta
from types import SimpleNamespace

import pytest
import requests

from dbops.backup.adapter import DrillComparison, RestorePlan, RestoreRefused, RestoreRequest
from dbops.backup.repository import BackupRepository
from dbops.backup.runner import take_backup
from dbops.config import DbopsConfig
from dbops.stores.weaviate.adapter import WeaviateAdapter, WeaviateExpiryRefused
from dbops.stores.weaviate.backup import RECORD_FILE, run_backup_id
from tests.weaviate_support import SPEC_DIR, SPEC_VERSIONS, FakeWeaviate, request_errors, response_errors


class Links:
    def __init__(self, fake: FakeWeaviate, s3_client=None) -> None:
        self.fake, self.s3 = fake, s3_client
        self.asked: list[str] = []

    def connection_exists(self, conn_id: str) -> bool:
        return True

    @contextmanager
    def weaviate(self, conn_id: str):
        self.asked.append(conn_id)
        session = requests.Session()
        try:
            yield SimpleNamespace(session=session, base_url=self.fake.url)
        finally:
            session.close()

    def s3_client(self, conn_id: str):
        self.asked.append(conn_id)
        return self.s3


def make_adapter(tmp_path, fake, *, backend="filesystem", s3_client=None, **weaviate):
    config = DbopsConfig.model_validate(
        {"backup": {"root": str(tmp_path / "repo")}, "weaviate": {"backup_backend": backend, **weaviate}}
    )
    adapter = WeaviateAdapter(config, Links(fake, s3_client))
    return adapter


def take(adapter, tmp_path, run_id="run-1", log=None, force=False):
    backup = adapter.series_backup(None, run_key=f"dbops_nightly_backup/{run_id}")
    backup.poll_every = 0
    repo = BackupRepository(tmp_path / "repo")
    take_backup(
        repo,
        backup,
        store="weaviate",
        subject=None,
        run_id=run_id,
        dag_id="dbops_nightly_backup",
        logical_date=None,
        force=force,
        stale_staging=timedelta(hours=1),
        log=log or (lambda _: None),
    )
    return repo, repo.list("weaviate")[-1]


def restore(adapter, backup, request, lines):
    plan = adapter.plan_restore(backup, request, lines.append)
    plan = RestorePlan.from_dict(json.loads(json.dumps(plan.to_dict())))  # through XCom
    return plan, adapter.restore(backup, plan, lines.append)


# --------------------------------------------------------------------------- the specs


def test_vendored_spec_extracts_come_from_the_published_specs():
    for version in SPEC_VERSIONS:
        extract = json.loads((SPEC_DIR / f"openapi-v{version}.dbops.json").read_text())
        assert extract["info"]["version"] == version and extract["swagger"] == "2.0"
        assert len(extract["x-dbops-extracted-from"]["sha256"]) == 64
    assert (SPEC_DIR / "LICENSE").read_text().startswith("Copyright (c) 2020-2024, Weaviate B.V.")


def test_the_spec_checks_catch_what_the_specs_forbid():
    """The validation is not vacuous: bodies and calls that break the specs are caught."""
    for version in SPEC_VERSIONS:
        assert request_errors(version, "POST", "/v1/backups/s3", {"id": "x", "include": "Article"})
        assert request_errors(version, "POST", "/v1/backups/s3/x/restore", {"include": [1]})
        assert response_errors(version, "GET", "/v1/backups/s3/x", 200, {"status": "DONE"})
        assert not request_errors(version, "POST", "/v1/backups/s3", {"id": "x", "include": ["Article"]})
    # 1.22 has no list and no delete (cancel) of backups; 1.39's DELETE is a cancel
    assert request_errors("1.22.13", "GET", "/v1/backups/s3", None)
    assert request_errors("1.22.13", "DELETE", "/v1/backups/s3/x", None)
    assert response_errors("1.22.13", "GET", "/v1/backups/s3/x", 200, {"status": "FINALIZING"})
    assert not response_errors("1.39.0", "GET", "/v1/backups/s3/x", 200, {"status": "FINALIZING"})


# --------------------------------------------------------------------------- backup and restore


@pytest.mark.parametrize("version", ["1.22.13", "1.23.13", "1.39.0"])
def test_backup_and_restore_speak_the_published_api(tmp_path, version):
    with FakeWeaviate(version) as fake:
        fake.add_class("Article", 40)
        fake.add_class("Author", 7)
        adapter = make_adapter(tmp_path, fake)
        lines: list[str] = []
        repo, backup = take(adapter, tmp_path, log=lines.append)
        record = json.loads((backup.path / RECORD_FILE).read_text())
        wid = run_backup_id("dbops_nightly_backup/run-1", 1)
        assert record["id"] == wid and record["backend"] == "filesystem"
        assert record["path"] == f"/var/lib/weaviate/backups/{wid}" and record["status"]["status"] == "SUCCESS"
        assert record["counts"] == {"Article": 40, "Author": 7} and record["server_version"] == version
        assert any("cannot expire or ship" in line for line in lines)
        assert backup.verified

        # 1.22 restores only when the risk is acknowledged (see the test below)
        request = RestoreRequest("weaviate", backup.backup_id, accept_unsafe_version=version == "1.22.13")
        adapter.check_request(request)
        with pytest.raises(RestoreRefused, match=r"classes \['Article', 'Author'\] exist"):
            adapter.plan_restore(backup, request, lines.append)
        fake.classes.clear()
        fake.counts.clear()
        plan, result = restore(adapter, backup, request, lines)
        assert not plan.already and "restore classes Article, Author" in plan.actions[0]
        assert result["differences"] == [] and fake.counts == {"Article": 40, "Author": 7}, result
        _, again = restore(adapter, backup, request, lines)  # a rerun: already restored
        assert again["already"] and again["differences"] == []
        assert fake.violations == [], fake.violations
        assert ("POST", f"/v1/backups/filesystem/{wid}/restore") in fake.calls


def test_description_is_bounded_by_counts_around_the_backup_and_a_changed_count_fails(tmp_path):
    """A writer during the backup: the description keeps the counts before and after it;
    a restored copy outside them, or not equal to an exact count, is a difference."""
    with FakeWeaviate("1.39.0") as fake:
        fake.add_class("Article", 100)
        fake.add_class("Author", 5)

        def writer(server):
            server.counts["Article"] += 3

        fake.on_count = writer
        adapter = make_adapter(tmp_path, fake)
        _, backup = take(adapter, tmp_path)
        fake.on_count = None
        record = json.loads((backup.path / RECORD_FILE).read_text())
        # Article counted 103 before and 109 after (two counts per pass); Author unchanged
        assert record["count_bounds"]["Article"][0] < record["count_bounds"]["Article"][1]
        assert "Article" not in record["counts"]
        expected = json.loads((backup.path / "source_description.json").read_text())
        low, high = expected["count_bounds"]["Article"]
        assert adapter.compare(expected, {"Article": low, "Author": 5 + 1}) == (
            ["class Author: 6 objects, the backup had 5"],
            [f"class Article: {low} objects, within {low}..{high} counted around the backup (written to)"],
        )
        differences, _ = adapter.compare(expected, {"Article": high + 1, "Author": 5})
        assert differences == [f"class Article: {high + 1} objects, the backup had between {low} and {high}"]
        assert fake.violations == []


# --------------------------------------------------------------------------- unsafe versions


@pytest.mark.parametrize("version", ["1.22.13", "1.23.12"])
def test_restore_on_a_server_that_can_corrupt_data_is_refused_unless_acknowledged(tmp_path, version):
    with FakeWeaviate(version) as fake:
        fake.add_class("Article", 3)
        adapter = make_adapter(tmp_path, fake)
        _, backup = take(adapter, tmp_path)
        fake.classes.clear()
        lines: list[str] = []
        with pytest.raises(RestoreRefused, match=rf"runs {version}.*accept_unsafe_version"):
            adapter.plan_restore(backup, RestoreRequest("weaviate", backup.backup_id), lines.append)
        assert not any(method == "POST" and "restore" in path for method, path in fake.calls)
        plan, result = restore(
            adapter, backup, RestoreRequest("weaviate", backup.backup_id, accept_unsafe_version=True), lines
        )
        assert result["differences"] == [] and any("can corrupt data" in line for line in lines)
        assert fake.violations == []


# --------------------------------------------------------------------------- retries


def test_a_retry_finds_the_failed_attempts_backup_and_takes_the_next_id(tmp_path):
    """1.22 cannot list backups: the run's ids are derived from the run, so a retry finds
    the earlier attempt's backup (failed, still running, or finished but never recorded)."""
    with FakeWeaviate("1.22.13") as fake:
        fake.add_class("Article", 10)
        adapter = make_adapter(tmp_path, fake)
        fake.fail_next_backup = True
        with pytest.raises(Exception, match="FAILED: node1: disk full"):
            take(adapter, tmp_path)
        first = run_backup_id("dbops_nightly_backup/run-1", 1)
        assert list(fake.backups) == [("filesystem", first)]
        lines: list[str] = []
        _, backup = take(adapter, tmp_path, log=lines.append)  # the retry
        record = json.loads((backup.path / RECORD_FILE).read_text())
        assert record["id"] == run_backup_id("dbops_nightly_backup/run-1", 2)
        assert any(f"{first} was started by an earlier attempt" in line for line in lines)
        assert any(f"backup {first} is left in backend 'filesystem'" in line for line in lines)
        # a rerun with force: the recorded backup is kept, a third id is used
        _, forced = take(adapter, tmp_path, log=lines.append, force=True)
        assert json.loads((forced.path / RECORD_FILE).read_text())["id"] == run_backup_id(
            "dbops_nightly_backup/run-1", 3
        )
        assert fake.violations == []


def test_the_run_key_defaults_to_the_run_airflow_names(tmp_path, monkeypatch):
    with FakeWeaviate("1.39.0") as fake:
        adapter = make_adapter(tmp_path, fake)
        monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "dbops_nightly_backup")
        monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "scheduled__2026-03-01")
        assert adapter.series_backup(None).run_key == "dbops_nightly_backup/scheduled__2026-03-01"
        digest = hashlib.sha256(b"dbops_nightly_backup/scheduled__2026-03-01").hexdigest()[:20]
        assert run_backup_id("dbops_nightly_backup/scheduled__2026-03-01", 1) == f"dbops-{digest}"


# --------------------------------------------------------------------------- refusals


def test_requests_expiry_and_drill_that_cannot_work_are_refused_clearly(tmp_path):
    with FakeWeaviate("1.39.0") as fake:
        fake.add_class("Article", 1)
        adapter = make_adapter(tmp_path, fake)
        assert adapter.series(lambda _: None) == [None] and adapter.drillable is False
        for bad, match in (
            (RestoreRequest("weaviate", "latest", topics=("t",)), "topics applies to store kafka only"),
            (RestoreRequest("weaviate", "latest", target="Other"), "target does not apply to weaviate"),
            (RestoreRequest("weaviate", "latest", database="db"), "database does not apply to weaviate"),
        ):
            with pytest.raises(RestoreRefused, match=match):
                adapter.check_request(bad)
        _, backup = take(adapter, tmp_path)
        with pytest.raises(WeaviateExpiryRefused, match="backend 'filesystem'.*cannot reach"):
            adapter.expire(backup, lambda _: None)
        with pytest.raises(NotImplementedError, match="cannot be drilled"):
            adapter.drill(backup, DrillComparison(), lambda _: None)
