"""The one typed configuration of dbops (pure Python, no Airflow import).

Layers, later ones win:
  1. defaults below (retention 30 days, the cron schedules of README.md's table of DAGs, ...);
  2. a YAML file named by ``$DBOPS_CONFIG`` (see ``include/dbops.example.yaml``);
  3. environment variables ``DBOPS_<SECTION>__<KEY>`` (e.g. ``DBOPS_BACKUP__RETENTION_DAYS=14``);
  4. at run time only: the Airflow Variable ``dbops_config`` (JSON) and the DAG run's Params.

Unknown keys and bad values are refused with a message naming the key, so a typo
in a YAML file fails at parse time instead of silently falling back to a default.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dbops.registry import STORES

ENV_PREFIX = "DBOPS_"
CONFIG_FILE_ENV = "DBOPS_CONFIG"

# Folders a backup repository may never be, nor live directly in.
_SYSTEM_DIRS = {
    Path(p)
    for p in (
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib64",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/var",
        "/var/lib",
        "/mnt",
    )
}


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""


# The store names come from the one registry of store adapters.
Store = Enum("Store", [(name.upper(), name) for name in STORES], type=str)  # type: ignore[misc]  # members from the registry


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
    # optional HTTP webhook for alerts of dbops checks; no connection: alerts go to the task log only
    alerts: str = "dbops_alerts"
    # SMTP server for run alerts by e-mail (used only when notify.email_to names someone)
    smtp: str = "dbops_smtp"
    # optional, read by dbops_bootstrap: the platform's initial admin account (login,
    # password, extra {"email": ...}) and the Mongo application user (login, password)
    platform_admin: str = "dbops_platform_admin"
    mongo_app: str = "dbops_mongo_app"
    # optional scratch clusters for restore drills; absent: the drill uses the production
    # cluster (scratch databases named dbops_drill_*) and says so in its log
    drill_postgres: str = "dbops_drill_postgres"
    drill_mongo: str = "dbops_drill_mongo"
    # the replication role base backups connect as (pg_basebackup); absent: ``postgres``
    postgres_replication: str = "dbops_postgres_replication"


CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_clock(value: str) -> tuple[int, int]:
    """``"HH:MM"`` (24 h) as (hour, minute); anything else is refused naming the value."""
    match = CLOCK.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"expected a clock time HH:MM (00:00-23:59), got {value!r}")
    return int(match.group(1)), int(match.group(2))


class Schedules(_Section):
    """Cron expressions (UTC unless ``timezone`` says otherwise)."""

    timezone: str = "UTC"
    nightly_backup: str = "0 2 * * *"
    # dbops_nightly_backup not finished by this clock time (HH:MM, in ``timezone``) alerts, even
    # while it runs (an Airflow deadline alert, see dbops.deadlines); null: no deadline
    nightly_deadline: str | None = "06:00"
    pg_maintenance: str = "0 3 * * 0"
    table_size_monitor: str = "0 0 * * *"
    restore_drill: str = "0 6 * * 6"
    health: str = "*/10 * * * *"
    base_backup: str = "30 1 * * *"
    wal_check: str = "*/15 * * * *"
    # dbops_recovery_check: the age of every recovery point, every 30 minutes
    recovery_check: str = "*/30 * * * *"
    # the disaster-recovery drill: every store restored from each offsite target alone
    dr_drill: str = "0 7 1 * *"

    @field_validator("nightly_deadline")
    @classmethod
    def _clock(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parse_clock(value)
        return value


class BackupSettings(_Section):
    root: Path = Path("/opt/dbops/backups")
    # When set, ``root`` must lie inside it (a guard against a mistyped root).
    allowed_base: Path | None = None
    retention_days: int = Field(30, ge=1, le=3650)
    min_keep: int = Field(3, ge=1, le=1000)
    # beyond the daily window: the newest backup of each of the last N calendar weeks
    # (ISO, UTC) and months; 0 turns a tier off (see dbops.backup.retention)
    keep_weekly: int = Field(8, ge=0, le=520)
    keep_monthly: int = Field(12, ge=0, le=240)
    stale_staging_hours: int = Field(12, ge=1)
    stores: list[Store] = Field(default_factory=lambda: list(Store))
    # Retention trusts no single clock: it refuses when the worker's clock is further than
    # this from the backups and the scheduler's start of the run...
    max_clock_skew_minutes: int = Field(15, ge=1, le=1440)
    # ...or when this run's backup is older than this by the worker's clock (it runs just after it).
    retention_max_delay_hours: float = Field(12.0, gt=0, le=168)

    @field_validator("root")
    @classmethod
    def _safe_root(cls, root: Path) -> Path:
        return checked_backup_root(root)

    @field_validator("allowed_base")
    @classmethod
    def _safe_base(cls, base: Path | None) -> Path | None:
        if base is None:
            return None
        if not base.is_absolute():
            raise ValueError(f"must be an absolute path, got {str(base)!r}")
        return Path(os.path.normpath(base))

    @model_validator(mode="after")
    def _root_inside_base(self) -> BackupSettings:
        if self.allowed_base is not None and not self.root.is_relative_to(self.allowed_base):
            raise ValueError(
                f"backup.root {str(self.root)!r} is outside backup.allowed_base {str(self.allowed_base)!r}"
            )
        return self


class PostgresSettings(_Section):
    # None: every database of the server except templates, Airflow's metadata database,
    # dbops' restore targets and drill scratch databases, and exclude_databases.
    databases: list[str] | None = None
    exclude_databases: list[str] = Field(default_factory=list)
    dump_jobs: int = Field(2, ge=1, le=64)
    # "auto" picks the best method the pg_dump binary supports: zstd, lz4, then gzip.
    compression: str = Field("auto", pattern=r"^(auto|none|gzip|lz4|zstd)(:\d+)?$")
    lock_timeout: str = "10s"
    statement_timeout: str = "30min"
    ann_index: str = Field("ivfflat", pattern=r"^(ivfflat|hnsw)$")
    ivfflat_lists: int = Field(100, ge=1)


class PitrSettings(_Section):
    """Postgres point-in-time recovery: base backups (pg_basebackup) plus the WAL stream a
    ``pg_receivewal`` service writes into ``<backup.root>/postgres_wal/``."""

    enabled: bool = True
    # the physical replication slot the receiver streams from (the server keeps WAL until received)
    slot: str = Field("dbops_pitr", pattern=r"^[a-z0-9_]{1,63}$")
    # the WAL check alerts when the receiver is further behind the server than this
    max_lag_s: float = Field(60.0, gt=0)
    # ...or when a completed segment is still unsealed (no sha256 in the catalog) after this
    seal_timeout_s: float = Field(300.0, gt=0)
    # how the receiver's sealer compresses completed segments
    wal_compression: str = Field("gzip:1", pattern=r"^(none|gzip(:[1-9])?)$")
    # pg_basebackup's client-side compression; auto: the best the tools have (zstd, lz4, gzip)
    base_backup_compression: str = Field("auto", pattern=r"^(auto|none|gzip|lz4|zstd)(:\d+)?$")
    # a base backup is published only once the WAL up to its end is sealed: wait this long for it
    wait_for_wal_s: float = Field(300.0, gt=0)
    # base backups kept: ``backup.retention_days`` (None) or this, never fewer than min_keep verified
    retention_days: int | None = Field(None, ge=1, le=3650)
    min_keep: int = Field(2, ge=1, le=1000)
    # where a restore builds the scratch server's data directory (None: <backup.root>/.scratch)
    scratch_dir: Path | None = None
    # the OS user the scratch server runs as when the worker is root (postgres refuses root)
    scratch_os_user: str | None = None
    # folder holding postgres and pg_ctl of the server's major (None: beside pg_basebackup on PATH)
    server_bin: Path | None = None
    # the database holding dbops.pitr_markers (None: the connection's database)
    marker_database: str | None = None

    @field_validator("scratch_dir", "server_bin")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"must be an absolute path, got {str(value)!r}")
        return value


class MongoSettings(_Section):
    database: str = "ai_platform"


class KafkaSettings(_Section):
    replication_factor: int = Field(3, ge=1, le=10)
    request_timeout_s: float = Field(30.0, gt=0)


REDIS_SNAPSHOT_METHODS = ("auto", "bgsave", "rdb")


class RedisSettings(_Section):
    snapshot_timeout_s: float = Field(600.0, gt=0)
    # How the RDB is taken: "bgsave" (BGSAVE, then a copy of the server's own RDB file: needs
    # that file readable on the worker), "rdb" (redis-cli --rdb, a replication stream: any
    # server the worker reaches), or "auto" (bgsave when the file is proven readable, else rdb)
    snapshot_method: str = "auto"
    # Port of the scratch redis-server a restore or drill starts on 127.0.0.1 (None: a free one);
    # a drill starts two, on this port and the next.
    scratch_port: int | None = Field(None, ge=1024, le=65534)

    @field_validator("snapshot_method")
    @classmethod
    def _snapshot_method(cls, value: str) -> str:
        if value not in REDIS_SNAPSHOT_METHODS:
            raise ValueError(f"{value!r} is not one of {list(REDIS_SNAPSHOT_METHODS)}")
        return value


class WeaviateSettings(_Section):
    # a backend dbops can reach and expire (Weaviate's backup-s3 module); "filesystem"
    # leaves the backups on the Weaviate server, where dbops cannot expire or ship them
    backup_backend: str = "s3"
    backup_timeout_s: float = Field(3600.0, gt=0)
    # backend s3: the Airflow connection whose credentials may list and delete in the bucket
    # Weaviate's backup-s3 module writes to (expiry removes an expired backup's objects), and
    # that bucket (BACKUP_S3_BUCKET of the server; None: the bucket the backup's status names)
    s3_connection: str = "dbops_s3"
    s3_bucket: str | None = None


OFFSITE_TARGETS = ("rsync", "s3")
S3_STORAGE_CLASSES = (
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "GLACIER_IR",
    "OUTPOSTS",
    "SNOW",
    "EXPRESS_ONEZONE",
)
S3_SSE_MODES = ("AES256", "aws:kms", "aws:kms:dsse")
# offsite.s3_object_lock: auto (lock when the bucket has Object Lock), off, or a demanded mode
S3_OBJECT_LOCK_SETTINGS = ("auto", "off", "governance", "compliance")
_REMOTE_PATH = re.compile(r"^/[A-Za-z0-9._/+-]*$")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_S3_PREFIX = re.compile(r"^([A-Za-z0-9!_.*'()=+-]+(/[A-Za-z0-9!_.*'()=+-]+)*)?$")
_SECRET_SOURCE = re.compile(r"^(variable|connection):[A-Za-z0-9_.-]{1,250}$")


class OffsiteSettings(_Section):
    """dbops_offsite_sync: where complete backups go, how, and how long they stay there."""

    targets: list[str] = Field(default_factory=lambda: ["rsync", "s3"])
    # rsync over SSH (connection ``connections.offsite_ssh``)
    rsync_remote_dir: str = "/srv/dbops-offsite"
    rsync_path: str = "rsync"  # the rsync command on the offsite host
    rsync_bwlimit_kib: int | None = Field(None, ge=1)  # --bwlimit in KiB/s; None: unlimited
    rsync_timeout_s: int = Field(600, ge=10, le=86400)  # --timeout: give up on a stalled transfer
    rsync_compress: bool = False  # backups are compressed already; -z would burn CPU for nothing
    ssh_connect_timeout_s: int = Field(15, ge=1, le=300)
    # S3 (connection ``connections.s3``; endpoint_url in its extra for MinIO/SeaweedFS)
    s3_bucket: str = "dbops-offsite"
    s3_prefix: str = "dbops"
    s3_storage_class: str | None = None  # None: the bucket's default
    s3_sse: str | None = None  # server-side encryption: AES256, aws:kms or aws:kms:dsse
    s3_sse_kms_key_id: str | None = None
    s3_multipart_threshold_mib: int = Field(64, ge=5, le=5 * 1024)
    s3_multipart_chunk_mib: int = Field(64, ge=5, le=5 * 1024)  # x10000 parts = the largest file
    s3_max_concurrency: int = Field(4, ge=1, le=64)
    # S3 Object Lock until each copy's expiry (finished_at + retention_days): auto = GOVERNANCE when
    # the bucket has Object Lock enabled; governance / compliance refuse a bucket without it; off
    s3_object_lock: str = "auto"
    # retention of the offsite copies: the local policy's rules, its own numbers
    retention_days: int = Field(30, ge=1, le=3650)
    min_keep: int = Field(3, ge=1, le=1000)
    keep_weekly: int = Field(8, ge=0, le=520)
    keep_monthly: int = Field(12, ge=0, le=240)
    # incomplete offsite entries that nothing will resume are removed after this long
    stale_staging_hours: int = Field(48, ge=1)
    # sha256 of every offsite backup on every run (default: sizes of all, content of new arrivals)
    deep_verify: bool = False
    # client-side encryption (AES-256-GCM, chunked) before anything leaves the host;
    # the key (32 bytes, hex or base64) from an Airflow Variable or a connection's password
    encryption: bool = False
    encryption_key: str = "variable:dbops_offsite_key"
    encryption_chunk_kib: int = Field(1024, ge=4, le=65536)
    # where encrypted copies are prepared for rsync (None: <backup.root>/.offsite-outbox)
    work_dir: Path | None = None
    # where restores and drills from offsite fetch copies (one folder per target; None:
    # <restore.scratch_dir or the system temp folder>/dbops-offsite-fetch); best off the disk of
    # backup.root: a restore from offsite must work with that disk gone
    fetch_dir: Path | None = None

    @field_validator("targets")
    @classmethod
    def _targets(cls, targets: list[str]) -> list[str]:
        unknown = [t for t in targets if t not in OFFSITE_TARGETS]
        if unknown or not targets or len(set(targets)) != len(targets):
            raise ValueError(f"expected distinct targets among {list(OFFSITE_TARGETS)}, got {targets}")
        return targets

    @field_validator("rsync_remote_dir")
    @classmethod
    def _remote_dir(cls, path: str) -> str:
        if not _REMOTE_PATH.match(path) or ".." in path.split("/"):
            raise ValueError(f"{path!r} must be an absolute path of letters, digits and ._/+- without '..'")
        return str(checked_backup_root(Path(path)))

    @field_validator("rsync_path")
    @classmethod
    def _rsync_path(cls, path: str) -> str:
        if not re.match(r"^[A-Za-z0-9._/+-]+$", path):
            raise ValueError(f"{path!r} must be a plain command or path")
        return path

    @field_validator("s3_bucket")
    @classmethod
    def _bucket(cls, bucket: str) -> str:
        if not _S3_BUCKET.match(bucket) or ".." in bucket:
            raise ValueError(f"{bucket!r} is not a valid S3 bucket name")
        return bucket

    @field_validator("s3_prefix")
    @classmethod
    def _prefix(cls, prefix: str) -> str:
        if not _S3_PREFIX.match(prefix) or any(p in (".", "..") for p in prefix.split("/")):
            raise ValueError(f"{prefix!r}: use key-safe characters, no leading, trailing or double '/'")
        return prefix

    @field_validator("s3_storage_class")
    @classmethod
    def _storage_class(cls, value: str | None) -> str | None:
        if value is not None and value not in S3_STORAGE_CLASSES:
            raise ValueError(f"{value!r} is not one of {list(S3_STORAGE_CLASSES)}")
        return value

    @field_validator("s3_sse")
    @classmethod
    def _sse(cls, value: str | None) -> str | None:
        if value is not None and value not in S3_SSE_MODES:
            raise ValueError(f"{value!r} is not one of {list(S3_SSE_MODES)}")
        return value

    @field_validator("s3_object_lock")
    @classmethod
    def _object_lock(cls, value: str) -> str:
        if value not in S3_OBJECT_LOCK_SETTINGS:
            raise ValueError(f"{value!r} is not one of {list(S3_OBJECT_LOCK_SETTINGS)}")
        return value

    @field_validator("s3_sse_kms_key_id")
    @classmethod
    def _kms_key(cls, value: str | None, info) -> str | None:
        if value and not str(info.data.get("s3_sse") or "").startswith("aws:kms"):
            raise ValueError("a KMS key id needs s3_sse aws:kms or aws:kms:dsse")
        return value

    @field_validator("encryption_key")
    @classmethod
    def _key_source(cls, value: str) -> str:
        if not _SECRET_SOURCE.match(value):
            raise ValueError(f"{value!r} must be variable:<name> or connection:<conn_id>")
        return value

    @field_validator("work_dir", "fetch_dir")
    @classmethod
    def _work_dir(cls, path: Path | None) -> Path | None:
        return None if path is None else checked_backup_root(path)


# The platform's PostgreSQL schemas (created by include/sql/migrations/V001__extensions_and_schemas.sql),
# watched by dbops_table_size_monitor.
PLATFORM_SCHEMAS = ["auth", "data_platform", "algo_platform", "model_platform", "service_platform", "public"]
_MIB = 1024 * 1024
_GIB = 1024 * _MIB
# A PostgreSQL duration setting as dbops accepts it: an integer and a unit (no unit: ms).
_PG_DURATION = re.compile(r"^\s*(\d+)\s*(us|ms|s|min|h|d)?\s*$")
_PG_UNIT_MS = {"us": 0.001, "ms": 1, None: 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
# schema.table, each part a name as stored in the catalog (quoted safely when used)
_QUALIFIED_NAME = re.compile(r"^[^.\s\"]+\.[^.\s\"]+$")


def pg_duration_ms(text: str) -> float:
    """Milliseconds of a PostgreSQL duration such as ``5s``, ``30min``, ``250ms``, ``2h``."""
    match = _PG_DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a PostgreSQL duration such as 250ms, 5s, 30min, 2h")
    return int(match.group(1)) * _PG_UNIT_MS[match.group(2)]


def _positive_duration(text: Any) -> str:
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)  # a bare number is milliseconds, as for PostgreSQL (env values are JSON)
    if not isinstance(text, str):
        raise ValueError(f"expected a duration such as 5s or 30min, got {text!r}")
    # 0 would mean "no limit" to PostgreSQL: a timeout must be a real bound
    if pg_duration_ms(text) <= 0:
        raise ValueError(f"{text!r} disables the timeout; give a positive duration")
    return text.strip()


def _qualified_names(names: list[str]) -> list[str]:
    bad = [n for n in names if not _QUALIFIED_NAME.match(n)]
    if bad:
        raise ValueError(f"expected schema.table names, got {bad}")
    return names


class MaintenanceSettings(_Section):
    """dbops_pg_maintenance: which relations need work, and the bounds every statement keeps."""

    # None: the database of the postgres connection
    databases: list[str] | None = None
    # None: every schema except pg_catalog, information_schema and TOAST
    schemas: list[str] | None = None
    # New work starts only within this many minutes of the run's start.
    window_minutes: int = Field(180, ge=1, le=24 * 60)
    lock_timeout: str = "5s"
    statement_timeout: str = "2h"
    # VACUUM (ANALYZE) when dead tuples >= min + fraction * live (autovacuum's rule, stricter),
    vacuum_min_dead_tuples: int = Field(1000, ge=0)
    vacuum_dead_fraction: float = Field(0.05, ge=0, le=10)
    # or when a table changed and was not vacuumed for this many days (None: off).
    vacuum_max_age_days: int | None = Field(7, ge=1)
    # TRUNCATE of trailing empty pages takes a brief ACCESS EXCLUSIVE lock (also replayed on standbys).
    vacuum_truncate: bool = True
    # ANALYZE alone when rows changed since the last analyze >= min + fraction * live.
    analyze_min_changes: int = Field(1000, ge=0)
    analyze_change_fraction: float = Field(0.05, ge=0, le=10)
    # REINDEX INDEX CONCURRENTLY of btree indexes whose estimated bloat passes both bounds,
    reindex_bloat_ratio: float = Field(0.3, gt=0, le=1)
    reindex_min_bytes: int = Field(10 * _MIB, ge=0)
    # and of every valid index of these schemas, whatever its bloat.
    reindex_schemas: list[str] = Field(default_factory=list)
    # VACUUM FULL (ACCESS EXCLUSIVE for its whole duration) only for these schema.table names.
    vacuum_full_tables: list[str] = Field(default_factory=list)
    # The bloat report lists relations with at least this estimated bloat.
    report_bloat_ratio: float = Field(0.2, ge=0, le=1)
    report_min_bytes: int = Field(1 * _MIB, ge=0)

    @field_validator("lock_timeout", "statement_timeout", mode="before")
    @classmethod
    def _timeouts(cls, value: Any) -> Any:
        return _positive_duration(value)

    @field_validator("vacuum_full_tables")
    @classmethod
    def _tables(cls, names: list[str]) -> list[str]:
        return _qualified_names(names)


class MonitorSettings(_Section):
    """dbops_table_size_monitor: what is measured, where reports go, when to alert."""

    # None: the database of the postgres connection
    database: str | None = None
    schemas: list[str] = Field(default_factory=lambda: list(PLATFORM_SCHEMAS), min_length=1)
    reports_dir: Path = Path("/opt/dbops/reports")
    report_retention_days: int = Field(90, ge=1, le=3650)
    # history older than this is deleted by the capture (growth looks back 30 days)
    history_retention_days: int = Field(400, ge=31)
    # A run starting later than this after its logical date measures nothing (backfill / catch-up).
    max_start_delay_hours: float = Field(6.0, gt=0)
    # Alerts: a table larger than its limit, growing faster than max_growth_bytes_per_day
    # (1-day rate), or reaching its limit within alert_days_until_limit days (None: off).
    size_limit_bytes: int = Field(50 * _GIB, gt=0)
    size_limits: dict[str, int] = Field(default_factory=dict)  # "schema.table" -> bytes
    max_growth_bytes_per_day: int | None = Field(1 * _GIB, gt=0)
    alert_days_until_limit: float | None = Field(30.0, gt=0)
    lock_timeout: str = "5s"
    statement_timeout: str = "5min"

    @field_validator("lock_timeout", "statement_timeout", mode="before")
    @classmethod
    def _timeouts(cls, value: Any) -> Any:
        return _positive_duration(value)

    @field_validator("reports_dir")
    @classmethod
    def _safe_reports_dir(cls, path: Path) -> Path:
        if not path.is_absolute():
            raise ValueError(f"must be an absolute path, got {str(path)!r}")
        normal = Path(os.path.normpath(path))
        if normal in _SYSTEM_DIRS:
            raise ValueError(f"{str(path)!r} is a system folder, not a reports folder")
        return normal

    @field_validator("size_limits")
    @classmethod
    def _limits(cls, limits: dict[str, int]) -> dict[str, int]:
        _qualified_names(list(limits))
        bad = {k: v for k, v in limits.items() if v <= 0}
        if bad:
            raise ValueError(f"size limits must be positive byte counts, got {bad}")
        return limits


class RecoveryPointSettings(_Section):
    """dbops_recovery_check and the status at the top of the DB Ops page: how old the newest
    recovery point of every store may be (Barman's last_backup_maximum_age, for every store)."""

    # the newest verified backup of every store and database
    max_backup_age_hours: float = Field(26.0, gt=0, le=24 * 366)
    # the newest copy of every series on every offsite target
    max_offsite_age_hours: float = Field(50.0, gt=0, le=24 * 366)
    # the last passed restore drill of every series, and the last passed PITR drill
    max_drill_age_days: float = Field(8.0, gt=0, le=366)
    # the last passed DR drill (dbops_dr_drill, monthly) of every store from every offsite target
    max_dr_drill_age_days: float = Field(35.0, gt=0, le=366)
    # the newest verified base backup (pitr.enabled)
    max_base_backup_age_hours: float = Field(26.0, gt=0, le=24 * 366)
    # the last WAL check (it runs every 15 minutes); older is a warning
    max_wal_check_age_minutes: float = Field(45.0, gt=0, le=7 * 24 * 60)
    # the newest scheduled run of dbops_nightly_backup
    max_nightly_gap_hours: float = Field(26.0, gt=0, le=24 * 366)
    # an age past this fraction of its limit is "late" (a warning on the page, no alert)
    late_fraction: float = Field(0.95, gt=0, le=1)
    # the next backups are expected as big as the newest ones plus this fraction
    disk_margin: float = Field(0.25, ge=0, le=10)
    # series not checked, as "store" or "store/subject" (e.g. a dropped database's last backups)
    ignore_series: list[str] = Field(default_factory=list)

    @field_validator("ignore_series")
    @classmethod
    def _series(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}(/[a-z0-9_][a-z0-9_.-]{0,62})?", n)]
        if bad:
            raise ValueError(f"expected store or store/subject names, got {bad}")
        return names


class HealthSettings(_Section):
    """dbops_health: the platform's alert rules as checks."""

    # connections to the platform database (pg_stat_activity), rule PostgreSQLHighConnections
    pg_max_connections: int = Field(150, ge=1)
    # used_memory / maxmemory, rule RedisHighMemoryUsage
    redis_max_memory_percent: float = Field(80.0, gt=0, le=100)
    # secondaries behind the primary, rule MongoDBReplicationLag
    mongo_max_replication_lag_s: float = Field(60.0, gt=0)
    # A run starting later than this after its logical date checks nothing (a past state cannot be checked).
    max_start_delay_minutes: int = Field(60, ge=1)


class RestoreSettings(_Section):
    """dbops_restore and dbops_restore_drill."""

    # pg_restore --jobs
    jobs: int = Field(2, ge=1, le=64)
    # Where a scratch Redis keeps its copy of the RDB (None: the system's temporary folder).
    scratch_dir: Path | None = None
    # MIGRATE ... KEYS: keys per command, and its timeout (ms) for one batch
    redis_migrate_batch: int = Field(100, ge=1, le=10_000)
    redis_migrate_timeout_ms: int = Field(60_000, ge=1000, le=3_600_000)
    # Weaviate's restore API: how long to wait for it
    weaviate_timeout_s: float = Field(3600.0, gt=0)
    # How long a destructive step (an overwrite restore, a restore into the live Redis, VACUUM FULL
    # of listed tables) waits for its approval under Required Actions; then it fails, nothing changed.
    approval_timeout_minutes: float = Field(60.0, gt=0, le=7 * 24 * 60)

    @field_validator("scratch_dir")
    @classmethod
    def _scratch_dir(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        if not path.is_absolute():
            raise ValueError(f"must be an absolute path, got {str(path)!r}")
        normal = Path(os.path.normpath(path))
        if normal in _SYSTEM_DIRS - {Path("/tmp")}:
            raise ValueError(f"{str(path)!r} is a system folder; name a folder for scratch copies")
        return normal


_EMAIL = re.compile(r"^[^@\s,;<>\"]+@[^@\s,;<>\"]+\.[^@\s,;<>\"]+$")
_KAFKA_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_MONGO_COLLECTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,119}$")
RUN_OUTCOMES = ("failed", "success")


class ExecutorSettings(_Section):
    # Executor queue (Celery, Kubernetes) of each store's heavy tasks; a store not listed
    # uses Airflow's [operators] default_queue.
    queues: dict[Store, str] = Field(default_factory=dict)
    # execution_timeout of every heavy task (backup, restore, drill, maintenance, bootstrap of
    # a store): a hung dump fails and alerts instead of holding every later night's run
    heavy_task_timeout_minutes: int = Field(360, ge=5, le=7 * 24 * 60)

    @field_validator("queues")
    @classmethod
    def _queue_names(cls, queues: dict[Store, str]) -> dict[Store, str]:
        for store, queue in queues.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", queue):
                raise ValueError(f"queue of {store.value} must be 1-64 letters, digits, '_', '.' or '-', got {queue!r}")
        return queues


class NotifySettings(_Section):
    """Run alerts and run-summary events, sent by every dbops DAG when a run ends.

    Off by default: a failed run only writes a ``DBOPS ALERT`` line to the log.
    """

    # which run outcomes alert (the log line, e-mail, webhook)
    alert_on: list[str] = Field(default_factory=lambda: ["failed"])
    # e-mail through the smtp provider (connection ``connections.smtp``); off while empty
    email_to: list[str] = Field(default_factory=list)
    email_from: str | None = None  # None: the smtp connection's from_email
    # a JSON POST to the HTTP connection ``connections.alerts``
    webhook: bool = False
    # a summary event of every run (JSON) to this Kafka topic (connection ``connections.kafka``)
    kafka_events: bool = False
    kafka_topic: str = "system-logs"
    # ... and as a document into this collection of ``mongo.database`` (connection ``connections.mongo``)
    mongo_events: bool = False
    mongo_collection: str = "system_logs"
    # how long one delivery may take before it counts as failed
    timeout_s: float = Field(10.0, gt=0, le=300)

    @field_validator("alert_on")
    @classmethod
    def _outcomes(cls, outcomes: list[str]) -> list[str]:
        unknown = [o for o in outcomes if o not in RUN_OUTCOMES]
        if unknown or len(set(outcomes)) != len(outcomes):
            raise ValueError(f"expected distinct outcomes among {list(RUN_OUTCOMES)}, got {outcomes}")
        return outcomes

    @field_validator("email_to")
    @classmethod
    def _recipients(cls, addresses: list[str]) -> list[str]:
        bad = [a for a in addresses if not _EMAIL.match(a)]
        if bad:
            raise ValueError(f"not e-mail addresses: {bad}")
        return addresses

    @field_validator("email_from")
    @classmethod
    def _sender(cls, address: str | None) -> str | None:
        if address is not None and not _EMAIL.match(address):
            raise ValueError(f"{address!r} is not an e-mail address")
        return address

    @field_validator("kafka_topic")
    @classmethod
    def _topic(cls, topic: str) -> str:
        if not _KAFKA_TOPIC.match(topic) or topic in (".", ".."):
            raise ValueError(f"{topic!r} is not a Kafka topic name (letters, digits, . _ -)")
        return topic

    @field_validator("mongo_collection")
    @classmethod
    def _collection(cls, name: str) -> str:
        if not _MONGO_COLLECTION.match(name) or name.startswith("system."):
            raise ValueError(f"{name!r} is not a usable MongoDB collection name")
        return name


class DbopsConfig(_Section):
    connections: Connections = Connections()
    schedules: Schedules = Schedules()
    backup: BackupSettings = BackupSettings()
    postgres: PostgresSettings = PostgresSettings()
    pitr: PitrSettings = PitrSettings()
    mongo: MongoSettings = MongoSettings()
    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    weaviate: WeaviateSettings = WeaviateSettings()
    offsite: OffsiteSettings = OffsiteSettings()
    maintenance: MaintenanceSettings = MaintenanceSettings()
    monitor: MonitorSettings = MonitorSettings()
    health: HealthSettings = HealthSettings()
    recovery_point: RecoveryPointSettings = RecoveryPointSettings()
    restore: RestoreSettings = RestoreSettings()
    notify: NotifySettings = NotifySettings()
    executor: ExecutorSettings = ExecutorSettings()

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
        path = name[len(ENV_PREFIX) :].lower().split("__")
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
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
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
