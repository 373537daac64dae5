"""The typed configuration: defaults, YAML, environment, and refusing bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbops.config import ConfigError, DbopsConfig, load_config


def test_defaults_follow_the_design():
    config = load_config(environ={})
    assert config.backup.retention_days == 30
    assert config.backup.min_keep >= 1
    assert config.schedules.nightly_backup == "0 2 * * *"
    assert config.schedules.pg_maintenance == "0 3 * * 0"
    assert config.schedules.table_size_monitor == "0 0 * * *"
    assert config.connections.postgres == "dbops_postgres"
    assert [s.value for s in config.backup.stores] == ["postgres", "mongo", "redis", "weaviate", "kafka"]


def test_yaml_then_environment_override(tmp_path: Path):
    path = tmp_path / "dbops.yaml"
    path.write_text("backup:\n  root: /data/backups\n  retention_days: 14\npostgres:\n  dump_jobs: 4\n")
    config = load_config(environ={"DBOPS_CONFIG": str(path), "DBOPS_BACKUP__RETENTION_DAYS": "7"})
    assert config.backup.root == Path("/data/backups")
    assert config.backup.retention_days == 7  # environment wins over the file
    assert config.postgres.dump_jobs == 4


def test_environment_lists_are_json(tmp_path: Path):
    config = load_config(environ={"DBOPS_POSTGRES__DATABASES": '["ai_platform", "other"]'})
    assert config.postgres.databases == ["ai_platform", "other"]


@pytest.mark.parametrize(
    ("yaml_text", "named"),
    [
        ("backup:\n  retention_days: 0\n", "backup.retention_days"),
        ("backup:\n  retention_days: -1\n", "backup.retention_days"),
        ("backup:\n  retention_days: thirty\n", "backup.retention_days"),
        ("backup:\n  min_keep: 0\n", "backup.min_keep"),
        ("backup:\n  root: /\n", "backup.root"),
        ("backup:\n  root: /etc\n", "backup.root"),
        ("backup:\n  root: relative/dir\n", "backup.root"),
        ("backup:\n  stores: [postgres, oracle]\n", "backup.stores"),
        ("backup:\n  retention_dayz: 3\n", "backup.retention_dayz"),
        ("postgres:\n  compression: brotli\n", "postgres.compression"),
        ("postgres:\n  ann_index: annoy\n", "postgres.ann_index"),
        ("kafka:\n  replication_factor: 0\n", "kafka.replication_factor"),
        ("nosuchsection: {}\n", "nosuchsection"),
    ],
)
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, yaml_text: str, named: str):
    path = tmp_path / "dbops.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert named in str(err.value)


def test_invalid_yaml_is_refused_naming_the_file(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("backup: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        load_config(path, environ={})


def test_missing_file_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml", environ={})


def test_root_with_dotdot_is_normalised_before_the_system_folder_check():
    with pytest.raises(ConfigError, match="backup.root"):
        load_config(environ={"DBOPS_BACKUP__ROOT": "/data/backups/../../etc"})


def test_with_overrides_validates():
    config = DbopsConfig()
    assert config.with_overrides({"backup": {"retention_days": 9}}).backup.retention_days == 9
    with pytest.raises(ConfigError, match="backup.retention_days"):
        config.with_overrides({"backup": {"retention_days": 0}})


def test_the_example_file_is_valid_and_equals_the_defaults():
    example = Path(__file__).resolve().parents[2] / "include" / "dbops.example.yaml"
    assert load_config(example, environ={}) == DbopsConfig()


def _keys(value, prefix=""):
    if not isinstance(value, dict):
        return set()
    found = set()
    for key, inner in value.items():
        found.add(prefix + key)
        if key not in ("size_limits",):  # free-form mapping
            found |= _keys(inner, prefix + key + ".")
    return found


def test_the_example_file_lists_every_setting():
    import yaml

    example = Path(__file__).resolve().parents[2] / "include" / "dbops.example.yaml"
    listed = _keys(yaml.safe_load(example.read_text()))
    assert listed == _keys(DbopsConfig().model_dump(mode="json"))
