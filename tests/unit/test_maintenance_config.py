"""The maintenance, monitor and health sections of the config: defaults and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbops.config import PLATFORM_SCHEMAS, ConfigError, load_config, pg_duration_ms


def test_defaults():
    c = load_config(environ={})
    assert c.maintenance.vacuum_full_tables == [] and c.maintenance.window_minutes == 180
    assert c.maintenance.lock_timeout == "5s"
    assert c.monitor.schemas == PLATFORM_SCHEMAS
    assert set(PLATFORM_SCHEMAS) == {
        "auth",
        "data_platform",
        "algo_platform",
        "model_platform",
        "service_platform",
        "public",
    }
    assert c.monitor.reports_dir == Path("/opt/dbops/reports")
    assert (c.health.pg_max_connections, c.health.redis_max_memory_percent, c.health.mongo_max_replication_lag_s) == (
        150,
        80.0,
        60.0,
    )
    assert c.schedules.health == "*/10 * * * *"


def test_environment_sets_lists_and_durations():
    c = load_config(
        environ={
            "DBOPS_MAINTENANCE__VACUUM_FULL_TABLES": '["auth.users", "data_platform.data_items"]',
            "DBOPS_MAINTENANCE__LOCK_TIMEOUT": "2500",  # JSON number: milliseconds, as PostgreSQL reads it
            "DBOPS_MONITOR__SIZE_LIMITS": '{"data_platform.data_items": 1000}',
        }
    )
    assert c.maintenance.vacuum_full_tables == ["auth.users", "data_platform.data_items"]
    assert c.maintenance.lock_timeout == "2500"
    assert c.monitor.size_limits == {"data_platform.data_items": 1000}


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("250ms", 250),
        ("5s", 5000),
        ("30min", 1_800_000),
        ("2h", 7_200_000),
        ("1d", 86_400_000),
        ("100", 100),
        (" 7 s ", 7000),
    ],
)
def test_durations(text, ms):
    assert pg_duration_ms(text) == ms


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DBOPS_MAINTENANCE__LOCK_TIMEOUT": "0"}, "maintenance.lock_timeout"),
        ({"DBOPS_MAINTENANCE__STATEMENT_TIMEOUT": "0s"}, "maintenance.statement_timeout"),
        ({"DBOPS_MAINTENANCE__LOCK_TIMEOUT": "soon"}, "maintenance.lock_timeout"),
        ({"DBOPS_MAINTENANCE__VACUUM_FULL_TABLES": '["users"]'}, "maintenance.vacuum_full_tables"),
        ({"DBOPS_MAINTENANCE__VACUUM_FULL_TABLES": '["auth.users; DROP TABLE x"]'}, "maintenance.vacuum_full_tables"),
        ({"DBOPS_MAINTENANCE__WINDOW_MINUTES": "0"}, "maintenance.window_minutes"),
        ({"DBOPS_MAINTENANCE__REINDEX_BLOAT_RATIO": "1.5"}, "maintenance.reindex_bloat_ratio"),
        ({"DBOPS_MAINTENANCE__VACUUM_FULL": "true"}, "maintenance.vacuum_full"),
        ({"DBOPS_MONITOR__REPORTS_DIR": "/etc"}, "monitor.reports_dir"),
        ({"DBOPS_MONITOR__REPORTS_DIR": "reports"}, "monitor.reports_dir"),
        ({"DBOPS_MONITOR__SCHEMAS": "[]"}, "monitor.schemas"),
        ({"DBOPS_MONITOR__SIZE_LIMITS": '{"nodot": 5}'}, "monitor.size_limits"),
        ({"DBOPS_MONITOR__SIZE_LIMITS": '{"a.b": -5}'}, "monitor.size_limits"),
        ({"DBOPS_MONITOR__HISTORY_RETENTION_DAYS": "7"}, "monitor.history_retention_days"),
        ({"DBOPS_HEALTH__REDIS_MAX_MEMORY_PERCENT": "120"}, "health.redis_max_memory_percent"),
        ({"DBOPS_HEALTH__PG_MAX_CONNECTIONS": "0"}, "health.pg_max_connections"),
    ],
)
def test_bad_values_are_refused_naming_the_key(env, named):
    with pytest.raises(ConfigError) as err:
        load_config(environ=env)
    assert named in str(err.value)
