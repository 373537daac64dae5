"""The pure rules of restores: backup ids, target names, the confirm rule, Param checks, settings."""

from __future__ import annotations

import pytest

from dbops.backup import restore as r
from dbops.config import ConfigError, DbopsConfig
from dbops.stores.mongo import recovery as mongo_recovery
from dbops.stores.postgres import recovery as pg_recovery

ID = "20260301T020000Z"


# --------------------------------------------------------------------------- backup ids


@pytest.mark.parametrize("good", ["latest", ID, f"{ID}-2", "20261231T235959Z-17"])
def test_valid_backup_ids(good):
    assert r.check_backup_id(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "../../etc",
        "..",
        "/etc/passwd",
        "",
        None,
        20260301,
        "LATEST",
        "latest ",
        "20260230T020000Z",
        f"{ID}-1",
        f"{ID}-02",
        "20260301t020000z",
        f"{ID}/../x",
        f"{ID}\x00",
        "2026-03-01T02:00:00Z",
    ],
)
def test_malformed_backup_ids_are_refused_naming_the_format(bad):
    with pytest.raises(r.RestoreRefused, match="YYYYMMDDTHHMMSSZ"):
        r.check_backup_id(bad)


def test_the_param_pattern_agrees_with_the_check():
    import re

    pattern = re.compile(r.BACKUP_ID_PATTERN)
    for text in ("latest", ID, f"{ID}-2"):
        assert pattern.match(text)
    for text in ("../../etc", "", f"{ID}-0", f"{ID}/x", "latest/../x"):
        assert not pattern.match(text)


def test_a_malformed_id_is_refused_before_the_repository_is_read(tmp_path):
    class Untouchable:
        root = tmp_path

        def list(self, *args, **kwargs):
            raise AssertionError("the repository was read for a malformed id")

    with pytest.raises(r.RestoreRefused, match="neither 'latest' nor a backup id"):
        r.resolve_backup(Untouchable(), "postgres", "ai_platform", "../../etc")


@pytest.mark.parametrize("store, subject", [("../x", None), ("postgres", "../../etc"), ("postgres", "a/b")])
def test_unsafe_series_names_are_refused(tmp_path, store, subject):
    from dbops.backup.repository import BackupRepository

    with pytest.raises(r.RestoreRefused):
        r.resolve_backup(BackupRepository(tmp_path / "backups"), store, subject, "latest")


# --------------------------------------------------------------------------- names


def test_default_target_is_the_database_restored_at_the_backup_id():
    assert r.default_target("ai_platform", ID) == "ai_platform_restored_20260301t020000z"
    assert r.default_target("ai_platform", f"{ID}-3") == "ai_platform_restored_20260301t020000z-3"


def test_a_default_target_longer_than_63_bytes_is_refused():
    with pytest.raises(r.RestoreRefused, match="longer than 63 bytes; give a shorter target"):
        r.default_target("d" * 40, ID)


@pytest.mark.parametrize("subject", ["ai_platform", "x" * 63, "ünïcödé" * 9, "MixedCase.db-1"])
def test_drill_names_are_prefixed_short_and_distinct(subject):
    name = r.drill_name(subject, ID)
    assert name.startswith("dbops_drill_") and len(name.encode()) <= 63
    assert name.endswith("_20260301t020000z")
    assert name == r.drill_name(subject, ID)  # a rerun finds (and drops) what a killed drill left
    assert name != r.drill_name(subject, f"{ID}-2")
    assert r.drill_name(subject, ID) != r.drill_name(subject + "x", ID)


def test_drill_topics():
    assert r.drill_topic("data-ingestion", ID) == "dbops_drill_20260301t020000z_data-ingestion"
    assert len(r.drill_topic("t" * 249, ID)) <= 249


@pytest.mark.parametrize("name", ["postgres", "template0", "template1", "", "x" * 64, "dbops_drill_x", "a\x00b"])
def test_postgres_targets_that_are_never_allowed(name):
    with pytest.raises(r.RestoreRefused):
        pg_recovery.check_pg_target(name)


@pytest.mark.parametrize("name", ["admin", "local", "config", "a.b", "a b", "x" * 64, "", "dbops_drill_x", "$x"])
def test_mongo_targets_that_are_never_allowed(name):
    with pytest.raises(r.RestoreRefused):
        mongo_recovery.check_mongo_name(name)


# --------------------------------------------------------------------------- confirm rule


def test_nothing_overwritten_needs_no_confirm():
    assert r.confirm_overwrite(target="new_db", reason=None, confirm="") is False


def test_an_overwrite_without_confirm_is_refused_naming_what_to_type():
    with pytest.raises(r.RestoreRefused) as err:
        r.confirm_overwrite(target="ai_platform", reason="database 'ai_platform' exists", confirm="")
    assert "set confirm_overwrite to 'ai_platform' (exactly)" in str(err.value)
    assert "database 'ai_platform' exists" in str(err.value)


@pytest.mark.parametrize("confirm", ["AI_PLATFORM", "ai_platform ", " ai_platform", "ai_platfor", "yes", "true"])
def test_a_confirm_that_is_not_exactly_the_target_is_refused(confirm):
    with pytest.raises(r.RestoreRefused, match="must name the target exactly"):
        r.confirm_overwrite(target="ai_platform", reason="database 'ai_platform' exists", confirm=confirm)


def test_a_confirm_naming_another_target_is_refused_even_when_nothing_is_overwritten():
    # the operator meant to overwrite ai_platform but the run would write elsewhere
    with pytest.raises(r.RestoreRefused, match="must name the target exactly"):
        r.confirm_overwrite(target="ai_platform_restored_x", reason=None, confirm="ai_platform")


def test_the_exact_target_confirms():
    assert r.confirm_overwrite(target="ai_platform", reason="database 'ai_platform' exists", confirm="ai_platform")
    assert r.confirm_overwrite(target="dbops_redis", reason=None, confirm="dbops_redis")


# --------------------------------------------------------------------------- Params


def test_check_request_normalises():
    req = r.check_request(store="postgres", backup_id="latest", database="", target="", confirm="")
    assert req == r.RestoreRequest("postgres", "latest", "", "", "", ())


def check(store: str, **kwargs) -> None:
    """The generic checks, then the store adapter's own (neither does any I/O)."""
    from dbops.registry import adapter_class

    request = r.check_request(store=store, **{"backup_id": "latest", **kwargs})
    adapter_class(store)(DbopsConfig(), links=None).check_request(request)


@pytest.mark.parametrize(
    "store, kwargs, message",
    [
        ("oracle", {}, "store 'oracle'"),
        ("postgres", {"backup_id": "../../etc"}, "neither 'latest'"),
        ("redis", {}, "needs target"),
        ("redis", {"target": "a b"}, "not an Airflow connection id"),
        ("postgres", {"database": "_globals"}, "cluster-wide"),
        ("postgres", {"target": "template1"}, "never a restore target"),
        ("postgres", {"target": "x" * 64}, "longer than 63 bytes"),
        ("mongo", {"target": "admin"}, "system database"),
        ("mongo", {"database": "a.b"}, "not a MongoDB database name"),
        ("postgres", {"topics": ["t"]}, "kafka only"),
        ("kafka", {"topics": ["bad topic"]}, "not Kafka topic names"),
        ("weaviate", {"target": "elsewhere"}, "target"),
    ],
)
def test_check_request_refuses(store, kwargs, message):
    with pytest.raises(r.RestoreRefused, match=message):
        check(store, **kwargs)


@pytest.mark.parametrize("name", ["Sales", "q4 report", 'the "best" db'])
def test_odd_postgres_database_names_are_accepted_for_restore(name):
    check("postgres", database=name)


# --------------------------------------------------------------------------- settings


def test_restore_settings_defaults_and_validation():
    config = DbopsConfig()
    assert config.restore.jobs == 2 and config.restore.scratch_dir is None and config.redis.scratch_port is None
    assert config.with_overrides({"redis": {"scratch_port": 56390}}).redis.scratch_port == 56390
    for bad in (
        {"redis": {"scratch_port": 80}},
        {"restore": {"jobs": 0}},
        {"restore": {"scratch_dir": "relative"}},
        {"restore": {"scratch_dir": "/etc"}},
        {"restore": {"unknown": 1}},
    ):
        with pytest.raises(ConfigError):
            config.with_overrides(bad)
