"""The configuration a running task (or the status page) uses: the parse-time config plus
the Airflow Variable ``dbops_config`` (JSON) and a run's overrides."""

from __future__ import annotations

import json
from typing import Any

from dbops.config import ConfigError, DbopsConfig, load_config

_PARSED: DbopsConfig | None = None


def base_config() -> DbopsConfig:
    """The YAML file and environment, read once per process."""
    global _PARSED
    if _PARSED is None:
        _PARSED = load_config()
    return _PARSED


def runtime_config(overrides: dict[str, Any] | None = None) -> DbopsConfig:
    """The parse-time config plus the ``dbops_config`` Variable (JSON) and ``overrides``."""
    from airflow.sdk import Variable

    raw = Variable.get("dbops_config", default=None)
    config = base_config()
    if raw:
        try:
            variable = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError as exc:
            raise ConfigError(f"Airflow Variable dbops_config is not valid JSON: {exc}") from None
        config = config.with_overrides(variable)
    return config.with_overrides(overrides)
