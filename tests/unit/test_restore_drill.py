"""Pure parts of restores and drills: resolving backups, comparisons with their tolerances,
the drill record (sidecar) and what it does to "verified", Weaviate's restore API."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dbops.backup import restore as r
from dbops.backup.repository import BackupRepository
from dbops.backup.runner import DESCRIPTION_FILE

UTC = timezone.utc
T0 = datetime(2026, 3, 1, 2, 0, 0, tzinfo=UTC)
META = {"tool": "redis-cli --rdb", "tool_version": "7", "server_version": "7", "compression": "lzf"}


def log(_line: str) -> None:
    pass


@pytest.fixture
def repo(tmp_path: Path) -> BackupRepository:
    return BackupRepository(tmp_path / "backups")


def make_backup(repo, store="redis", subject=None, *, at=T0, description=None, data=b"REDIS0011" + b"x" * 100):
    with repo.begin(store, subject, run_id=f"run-{at.isoformat()}", dag_id="dbops_nightly_backup",
                    logical_date=at, now=at) as staging:
        (staging.path / "dump.rdb").write_bytes(data)
        (staging.path / DESCRIPTION_FILE).write_text(json.dumps(description or {"keys": {}}))
        return staging.seal(META, now=at + timedelta(minutes=1))


# --------------------------------------------------------------------------- resolving


def test_latest_is_the_newest_verified_backup(repo):
    old = make_backup(repo, at=T0)
    new = make_backup(repo, at=T0 + timedelta(days=1))
    assert r.resolve_backup(repo, "redis", None, "latest").backup_id == new.backup_id
    repo.record(new, "drill", {"ok": False, "differences": ["key 0:a missing"]})
    assert r.resolve_backup(repo, "redis", None, "latest").backup_id == old.backup_id
    # an exact id still resolves (its files are verified again before any restore)
    assert r.resolve_backup(repo, "redis", None, new.backup_id).backup_id == new.backup_id


def test_no_verified_backup_is_refused_saying_why(repo):
    with pytest.raises(r.RestoreRefused, match="no backups of redis"):
        r.resolve_backup(repo, "redis", None, "latest")
    only = make_backup(repo)
    repo.record(only, "drill", {"ok": False, "differences": ["key 0:a missing"]})
    with pytest.raises(r.RestoreRefused, match="none verified.*drill failed at .*key 0:a missing"):
        r.resolve_backup(repo, "redis", None, "latest")


def test_an_unknown_id_is_refused_listing_the_newest(repo):
    made = make_backup(repo)
    with pytest.raises(r.RestoreRefused, match=f"no backup 20200101T000000Z of redis .*newest: {made.backup_id}"):
        r.resolve_backup(repo, "redis", None, "20200101T000000Z")


def test_verify_files_refuses_a_flipped_byte(repo):
    backup = make_backup(repo)
    assert r.verify_files(repo, backup, log)
    path = backup.path / "dump.rdb"
    data = bytearray(path.read_bytes())
    data[50] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(r.CorruptBackup, match="corrupted, refusing to restore it: changed:dump.rdb"):
        r.verify_files(repo, backup, log)


# --------------------------------------------------------------------------- drill record


def test_a_passing_drill_records_ok_and_keeps_the_backup_verified(repo):
    backup = make_backup(repo)
    seen = []

    def drill(b, found):
        seen.append(b.backup_id)
        found.notes.append("3 keys loaded")

    result = r.run_drill(repo, backup, target="scratch", drill=drill, run_id="run-1", dag_id="d", log=log)
    assert seen == [backup.backup_id]
    assert result["ok"] is True and result["differences"] == [] and result["target"] == "scratch"
    assert result["seconds"] >= 0 and result["run_id"] == "run-1"
    stored = repo.list("redis")[0]
    assert stored.sidecars["drill"]["ok"] is True and stored.verified
    assert set(stored.sidecars["drill"]) >= {"ok", "differences", "target", "seconds"}


def test_a_corrupted_backup_fails_the_drill_without_restoring_and_is_no_longer_verified(repo):
    backup = make_backup(repo)
    path = backup.path / "dump.rdb"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))

    def drill(b, found):
        raise AssertionError("a corrupted backup must not be restored")

    result = r.run_drill(repo, backup, target="scratch", drill=drill, run_id="run-1", dag_id="d", log=log)
    assert result["ok"] is False
    assert any(d.startswith("corrupted: changed:dump.rdb") for d in result["differences"])
    assert not repo.list("redis")[0].verified
    assert repo.latest("redis") is None


def test_a_failing_restore_or_a_mismatch_fails_the_drill(repo):
    backup = make_backup(repo)

    def broken(b, found):
        raise RuntimeError("pg_restore failed: boom")

    result = r.run_drill(repo, backup, target="t", drill=broken, run_id="run-1", dag_id="d", log=log)
    assert result["ok"] is False and result["differences"] == ["restore failed: RuntimeError: pg_restore failed: boom"]

    def differs(b, found):
        found.differences.append("table public.items: 499 rows, expected 500")

    result = r.run_drill(repo, backup, target="t", drill=differs, run_id="run-2", dag_id="d", log=log)
    assert result["ok"] is False and repo.latest("redis") is None

    # a later passing drill makes it count again
    result = r.run_drill(repo, backup, target="t", drill=lambda b, f: None, run_id="run-3", dag_id="d", log=log)
    assert result["ok"] is True and repo.latest("redis").backup_id == backup.backup_id


def test_leftovers_are_reported_but_do_not_blame_the_backup(repo):
    backup = make_backup(repo)

    def drill(b, found):
        r._cleanup(found, "database dbops_drill_x", lambda: (_ for _ in ()).throw(OSError("server gone")), log)

    result = r.run_drill(repo, backup, target="t", drill=drill, run_id="run-1", dag_id="d", log=log)
    assert result["ok"] is True and result["leftovers"] == ["database dbops_drill_x: OSError: server gone"]


def test_a_drill_stopped_by_its_environment_is_no_verdict_on_the_backup(repo):
    """A port in use or a full disk is an error of the drill: nothing is recorded, the backup
    stays verified (on today's main it was marked not verified, and `latest` went back a day)."""
    import errno

    backup = make_backup(repo)

    def port_taken(b, found):
        raise r.DrillEnvironmentError("port 56390 on 127.0.0.1 is in use")

    def disk_full(b, found):
        raise OSError(errno.ENOSPC, "No space left on device")

    for drill in (port_taken, disk_full):
        with pytest.raises(r.DrillEnvironmentError):
            r.run_drill(repo, backup, target="t", drill=drill, run_id="run-1", dag_id="d", log=log)
    stored = repo.list("redis")[0]
    assert "drill" not in stored.sidecars and stored.verified and repo.latest("redis").backup_id == backup.backup_id


# --------------------------------------------------------------------------- comparisons


def _redis(keys, sample="all", databases=None):
    return {"keys": keys, "sample": sample, "match": None, "databases": databases or {}, "matched": {}}


def test_redis_comparison_tolerates_only_expired_volatile_keys():
    source = _redis({
        "0:session:a": {"type": "string", "expires": True, "digest": "1"},
        "0:cache:b": {"type": "hash", "expires": False, "digest": "2"},
        "0:stats:c": {"type": "zset", "expires": False, "digest": "3"},
    })
    restored = _redis({"0:cache:b": {"type": "hash", "expires": False, "digest": "2"},
                       "0:stats:c": {"type": "zset", "expires": False, "digest": "3"}})
    differences, notes = r.compare_redis(source, restored)
    assert differences == [] and "expired since the backup" in notes[0]

    del restored["keys"]["0:cache:b"]
    restored["keys"]["0:stats:c"] = {"type": "zset", "expires": False, "digest": "X"}
    restored["keys"]["0:other"] = {"type": "string", "expires": False, "digest": "4"}
    differences, _ = r.compare_redis(source, restored)
    assert differences[0] == "key 0:cache:b missing"
    assert differences[1] == "key 0:other unexpected"
    assert differences[2].startswith("key 0:stats:c:")


def test_redis_comparison_of_a_sampled_source_checks_counts():
    source = _redis({"0:k": {"type": "string", "expires": False, "digest": "1"}}, sample="sha1-prefix-0",
                    databases={"0": {"keys": 20000, "expires": 100}})
    restored = {**_redis({"0:k": {"type": "string", "expires": False, "digest": "1"}, "0:z": {}}),
                "matched": {"0": 19950}}
    differences, notes = r.compare_redis(source, restored)
    assert differences == [] and any("sampled" in n for n in notes)  # unexpected keys cannot be judged
    restored["matched"] = {"0": 19000}
    assert r.compare_redis(source, restored)[0] == ["db 0: 19000 keys restored, the source had 20000 (100 with a TTL)"]


def _coll(count, ttl=None, sample="s"):
    index = {"name": "last_updated_1", "key": [["last_updated", 1]], "unique": False, "expireAfterSeconds": ttl}
    return {"count": count, "indexes": [index], "sample": {"size": min(count, 100), "sha256": sample}}


def test_mongo_comparison_tolerates_ttl_removals_only_when_every_document_was_restored():
    source = {"collections": {"task_status_cache": _coll(10, ttl=86400, sample="a"), "logs": _coll(5, sample="b")}}
    restored = {"collections": {"task_status_cache": _coll(7, ttl=86400, sample="c"), "logs": _coll(5, sample="b"),
                                r.MONGO_MARKER: {"count": 1}}}
    differences, notes = r.compare_mongo(source, restored, dumped=15, restored=15)
    assert differences == [] and "3 document(s) already removed by its TTL index" in notes[0]
    # mongorestore restored fewer than the archive holds: no tolerance, and it is named
    differences, notes = r.compare_mongo(source, restored, dumped=15, restored=12)
    assert differences[0] == "mongorestore restored 12 documents, the archive holds 15"
    assert any("task_status_cache: count" in d for d in differences) and notes == []


def test_mongo_comparison_sees_lost_documents_and_indexes():
    source = {"collections": {"logs": _coll(5, sample="b"), "cache": _coll(3, ttl=60)}}
    restored = {"collections": {"logs": _coll(4, sample="b"), "cache": _coll(3, ttl=120)}}
    differences, _ = r.compare_mongo(source, restored, dumped=8, restored=8)
    assert any(d.startswith("collection logs: count 5 != 4") for d in differences)
    assert any(d.startswith("collection cache: indexes") for d in differences)


GLOBALS = '''--
-- PostgreSQL database cluster dump
--
CREATE ROLE app_reader;
ALTER ROLE app_reader WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS;
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:x';
CREATE ROLE "Odd ""Name""";
ALTER ROLE "Odd ""Name""" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
--
-- PostgreSQL database cluster dump complete
--
'''


def test_roles_in_globals_are_parsed_and_compared():
    roles = r.roles_in_globals(GLOBALS)
    assert roles == {
        "app_reader": {"superuser": False, "can_login": True},
        "postgres": {"superuser": True, "can_login": True},
        'Odd "Name"': {"superuser": False, "can_login": False},
    }
    source = {"roles": {**roles, "postgres": {"superuser": True, "can_login": True}}}
    assert r.compare_roles(source, roles) == []
    source["roles"]["etl"] = {"superuser": False, "can_login": True}
    source["roles"]["app_reader"] = {"superuser": True, "can_login": True}
    assert r.compare_roles(source, roles) == ["role etl missing", "role app_reader: superuser False, the source had True"]


# --------------------------------------------------------------------------- Weaviate


class FakeResponse:
    def __init__(self, status, body):
        self.status_code, self._body = status, body
        self.content = json.dumps(body).encode()
        self.text = self.content.decode()

    def json(self):
        return self._body


class FakeWeaviate:
    """The REST endpoints a restore uses: schema, restore, restore status, aggregate."""

    def __init__(self, classes):
        self.classes = set(classes)
        self.posts = []
        self.restored = False

    def get(self, url, timeout=None):
        if url.endswith("/v1/schema"):
            return FakeResponse(200, {"classes": [{"class": c} for c in sorted(self.classes)]})
        if url.endswith("/restore"):
            if not self.restored:
                return FakeResponse(404, {"error": "not found"})
            return FakeResponse(200, {"status": "SUCCESS"})
        raise AssertionError(url)

    def post(self, url, json=None, timeout=None):
        self.posts.append((url, json))
        if url.endswith("/restore"):
            self.classes |= set(json["include"])
            self.restored = True
            return FakeResponse(200, {"status": "STARTED"})
        if url.endswith("/v1/graphql"):
            name = json["query"].split("{")[2].strip()
            return FakeResponse(200, {"data": {"Aggregate": {name: [{"meta": {"count": 4}}]}}})
        raise AssertionError(url)


def weaviate_backup(repo):
    with repo.begin("weaviate", run_id="r", dag_id="d", logical_date=T0, now=T0) as staging:
        (staging.path / "weaviate_backup.json").write_text(json.dumps(
            {"id": "dbops-x", "backend": "filesystem", "classes": ["Document", "Image"], "status": {}, "counts": {}}))
        (staging.path / DESCRIPTION_FILE).write_text(json.dumps({"classes": ["Document", "Image"],
                                                                  "counts": {"Document": 4, "Image": 4}}))
        return staging.seal({**META, "tool": "weaviate-backup-api"}, now=T0)


def test_weaviate_restore_into_missing_classes_then_a_rerun_reports_it(repo):
    backup = weaviate_backup(repo)
    api = FakeWeaviate(classes=["ModelData"])
    result = r.restore_weaviate(api, "http://weaviate:8080", backup, timeout=5, poll_every=0, log=log)
    assert result["differences"] == [] and not result["already"]
    assert api.posts[0] == ("http://weaviate:8080/v1/backups/filesystem/dbops-x/restore", {"include": ["Document", "Image"]})
    again = r.restore_weaviate(api, "http://weaviate:8080", backup, timeout=5, poll_every=0, log=log)
    assert again["already"] and len([p for p in api.posts if p[0].endswith("/restore")]) == 1


def test_weaviate_restore_over_existing_classes_is_refused(repo):
    backup = weaviate_backup(repo)
    api = FakeWeaviate(classes=["Document"])
    with pytest.raises(r.RestoreRefused, match=r"classes \['Document'\] exist"):
        r.restore_weaviate(api, "http://weaviate:8080", backup, timeout=5, poll_every=0, log=log)
    assert api.posts == []
