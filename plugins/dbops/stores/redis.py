"""Redis: check the settings the platform relies on; apply them only when asked.

Takes a redis-py client; no Airflow import.
"""

from __future__ import annotations

from typing import Any

from dbops.report import StoreReport

def memory_bytes(value: str | int) -> int:
    """Redis memory notation to bytes, as redis.conf reads it (1gb = 1024^3, 1g = 10^9)."""
    text = str(value).strip().lower()
    units = (("gb", 1024**3), ("mb", 1024**2), ("kb", 1024), ("g", 10**9), ("m", 10**6), ("k", 1000), ("b", 1))
    for suffix, factor in units:
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def desired_settings(spec: dict[str, Any]) -> dict[str, str]:
    """The CONFIG-settable values of the spec, normalised as CONFIG GET reports them."""
    settings = {}
    for key, value in spec["settings"].items():
        if key == "maxmemory":
            value = memory_bytes(value)
        settings[key] = str(value).lower()
    return settings


def bootstrap(client, spec: dict[str, Any], *, apply: bool = False, dry_run: bool = False) -> StoreReport:
    """Compare CONFIG GET with the spec; CONFIG SET the differences only when ``apply``."""
    report = StoreReport("redis", dry_run=dry_run)
    for key, wanted in desired_settings(spec).items():
        actual = str(next(iter(client.config_get(key).values()), "<unset>")).lower()
        if actual == wanted:
            report.add("unchanged", f"setting {key}", wanted)
        elif not apply:
            report.add("drift", f"setting {key}", f"is {actual}, platform expects {wanted} (apply_redis_settings=true sets it)")
        elif dry_run:
            report.add("update", f"setting {key}", f"would set {actual} -> {wanted}")
        else:
            client.config_set(key, wanted)
            report.add("update", f"setting {key}", f"set {actual} -> {wanted}")
    return report


def verify(client, spec: dict[str, Any]) -> StoreReport:
    return bootstrap(client, spec, apply=False, dry_run=True).as_verification()
