"""The one typed configuration of dbops (pure Python, no Airflow import).

Layers, later ones win:
  1. defaults below (they follow DESIGN.md: retention 30 days, the cron schedules, ...);
  2. a YAML file named by ``$DBOPS_CONFIG`` (see ``include/dbops.example.yaml``);
  3. environment variables ``DBOPS_<SECTION>__<KEY>`` (e.g. ``DBOPS_BACKUP__RETENTION_DAYS=14``);
  4. at run time only: the Airflow Variable ``dbops_config`` (JSON) and the DAG run's Params.

Unknown keys and bad values are refused with a message naming the key, so a typo
in a YAML file fails at parse time instead of silently falling back to a default.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "DBOPS_"
CONFIG_FILE_ENV = "DBOPS_CONFIG"

# Folders a backup repository may never be, nor live directly in.
_SYSTEM_DIRS = {
    Path(p)
    for p in (
        "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc",
        "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib", "/mnt",
    )
}


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""


class Store(str, Enum):
    POSTGRES = "postgres"
    MONGO = "mongo"
    REDIS = "redis"
    WEAVIATE = "weaviate"
    KAFKA = "kafka"


ALL_STORES = [s.value for s in Store]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Connections(_Section):
    """Airflow connection ids, one per store and offsite target."""

    postgres: str = "dbops_postgres"
    mongo: str = "dbops_mongo"
    redis: str = "dbops_redis"
    kafka: str = "dbops_kafka"
    weaviate: str = "dbops_weaviate"
    s3: str = "dbops_s3"
    offsite_ssh: str = "dbops_offsite_ssh"


class Schedules(_Section):
    """Cron expressions (UTC unless ``timezone`` says otherwise)."""

    timezone: str = "UTC"
    nightly_backup: str = "0 2 * * *"
    pg_maintenance: str = "0 3 * * 0"
    table_size_monitor: str = "0 0 * * *"
    restore_drill: str = "0 6 * * 6"


class BackupSettings(_Section):
    root: Path = Path("/opt/dbops/backups")
    # When set, ``root`` must lie inside it (a guard against a mistyped root).
    allowed_base: Path | None = None
    retention_days: int = Field(30, ge=1, le=3650)
    min_keep: int = Field(3, ge=1, le=1000)
    stale_staging_hours: int = Field(12, ge=1)
    stores: list[Store] = Field(default_factory=lambda: list(Store))

    @field_validator("root")
    @classmethod
    def _safe_root(cls, root: Path) -> Path:
        return checked_backup_root(root)


class PostgresSettings(_Section):
    # None: every database of the server except templates.
    databases: list[str] | None = None
    dump_jobs: int = Field(2, ge=1, le=64)
    # "auto" picks the best method the pg_dump binary supports: zstd, lz4, then gzip.
    compression: str = Field("auto", pattern=r"^(auto|none|gzip|lz4|zstd)(:\d+)?$")
    lock_timeout: str = "10s"
    statement_timeout: str = "30min"
    ann_index: str = Field("ivfflat", pattern=r"^(ivfflat|hnsw)$")
    ivfflat_lists: int = Field(100, ge=1)


class MongoSettings(_Section):
    database: str = "ai_platform"


class KafkaSettings(_Section):
    replication_factor: int = Field(3, ge=1, le=10)
    request_timeout_s: float = Field(30.0, gt=0)


class RedisSettings(_Section):
    snapshot_timeout_s: float = Field(600.0, gt=0)


class WeaviateSettings(_Section):
    backup_backend: str = "filesystem"
    backup_timeout_s: float = Field(3600.0, gt=0)


class OffsiteSettings(_Section):
    targets: list[str] = Field(default_factory=lambda: ["rsync", "s3"])
    rsync_remote_dir: str = "/srv/dbops-offsite"
    s3_bucket: str = "dbops-offsite"
    s3_prefix: str = "dbops"
    retention_days: int = Field(30, ge=1, le=3650)
    min_keep: int = Field(3, ge=1, le=1000)


class DbopsConfig(_Section):
    connections: Connections = Connections()
    schedules: Schedules = Schedules()
    backup: BackupSettings = BackupSettings()
    postgres: PostgresSettings = PostgresSettings()
    mongo: MongoSettings = MongoSettings()
    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    weaviate: WeaviateSettings = WeaviateSettings()
    offsite: OffsiteSettings = OffsiteSettings()

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> DbopsConfig:
        """A new config with nested ``overrides`` applied (validated like the rest)."""
        if not overrides:
            return self
        merged = deep_merge(self.model_dump(mode="json"), overrides)
        return _validate(merged, source="overrides")


def checked_backup_root(root: Path) -> Path:
    if not root.is_absolute():
        raise ValueError(f"must be an absolute path, got {str(root)!r}")
    normal = Path(os.path.normpath(root))
    if normal in _SYSTEM_DIRS:
        raise ValueError(f"{str(root)!r} is a system folder, not a backup repository")
    return normal


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``DBOPS_SECTION__KEY=value`` pairs as a nested dict; JSON values are decoded."""
    result: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = result
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return result


def _validate(data: Mapping[str, Any], source: str) -> DbopsConfig:
    try:
        return DbopsConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid dbops configuration ({source}): {problems}") from None


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> DbopsConfig:
    """Defaults, then the YAML file (``path`` or ``$DBOPS_CONFIG``), then ``DBOPS_*`` env."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_FILE_ENV)
    data: dict[str, Any] = {}
    source = "defaults"
    if path:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"dbops config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"dbops config file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"dbops config file {path} must hold a mapping at the top level")
        data = loaded or {}
    env = env_overrides(environ)
    if env:
        source += " + DBOPS_* environment"
    return _validate(deep_merge(data, env), source)
