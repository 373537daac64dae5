"""Redis: check the settings the platform relies on; apply them only when asked.

The spec (``include/scripts/redis_settings.json``) gives, per setting, the value
``CONFIG GET`` should report and whether dbops may ``CONFIG SET`` it: lowering
maxmemory evicts keys at once, so some settings are only ever reported.
Takes a redis-py client; no Airflow import.
"""

from __future__ import annotations

from typing import Any

from dbops.report import StoreReport


def bootstrap(client, spec: dict[str, Any], *, apply: bool = False, dry_run: bool = False) -> StoreReport:
    """Compare CONFIG GET with the spec; CONFIG SET the differences only when ``apply``."""
    report = StoreReport("redis", dry_run=dry_run)
    for key, setting in spec["settings"].items():
        wanted = str(setting["expected"]).lower()
        actual = str(next(iter(client.config_get(key).values()), "<unset>")).lower()
        target = f"setting {key}"
        if actual == wanted:
            report.add("unchanged", target, wanted)
        elif not setting.get("apply", False):
            report.add(
                "drift",
                target,
                f"is {actual}, platform expects {wanted}; report only: {setting.get('note', 'change it by hand')}",
            )
        elif not apply:
            report.add("drift", target, f"is {actual}, platform expects {wanted} (Param apply_redis_settings sets it)")
        elif dry_run:
            report.add("update", target, f"would set {actual} -> {wanted}")
        else:
            client.config_set(key, setting["expected"])
            report.add("update", target, f"set {actual} -> {wanted}")
    return report


def verify(client, spec: dict[str, Any]) -> StoreReport:
    return bootstrap(client, spec, apply=False, dry_run=True).as_verification()
