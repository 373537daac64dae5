"""Tasks of ``dbops_dr_drill``: the disaster-recovery drill, from the offsite copies alone.

``plan`` reads each selected target's catalog and picks, for every series of every drilled
store, the latest usable copy there (:func:`dbops.offsite.restore.choose`, what "latest"
means for a restore from offsite), refusing a missing key or a fetch folder too small before
any work; ``drill_<store>`` (mapped over (target, series)) fetches that copy into the target's
fetch repository as ``dbops_restore`` does (:func:`dbops.tasks.restore.fetch_planned`: every
file checked, and the manifest the plan chose), restores it into scratch targets and compares
through the store's adapter exactly as ``dbops_restore_drill`` does
(:func:`dbops.backup.restore.run_drill`), times it, and removes the fetched copy;
``drill_postgres_pitr`` (mapped over targets) fetches the newest base backup and the WAL after
it and recovers to a time between two markers (:func:`dbops.pitr.recovery.drill_pitr`);
``summary`` names every failure and gives the time to recover (RTO) per target and store.

Nothing here reads ``backup.root``: the drill proves what is left after the backup host is
lost. Each drill's result goes to ``<fetch root>/.dr_drill/runs/<run>/`` (the summary reads
them back, so a cleared task's rerun counts); the summary writes the run's outcome and RTO
table to ``<fetch root>/dr_drill.json`` (newest run first, the last :data:`KEEP_RUNS` runs),
where the recovery-point checks read when the last DR drill passed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from dbops.backup.recovery_point import DR_DRILL_FILE
from dbops.config import DbopsConfig
from dbops.dagkit import on_store
from dbops.runtime import offsite_encryption, runtime_config
from dbops.tasks.backup import store_adapter

log = logging.getLogger(__name__)

RESULT_FILE = DR_DRILL_FILE  # read back by the recovery-point checks
RESULTS_DIR = ".dr_drill"  # not a store name: never taken for a series of the fetch repository
KEEP_RUNS = 12
PITR_LABEL = "postgres point-in-time"


def _root(config: DbopsConfig) -> Path:
    from dbops.offsite.restore import fetch_root

    return fetch_root(config)


def _run_dir(config: DbopsConfig, run_id: str) -> Path:
    return _root(config) / RESULTS_DIR / "runs" / re.sub(r"[^A-Za-z0-9_.+-]", "_", run_id)


def _unit_file(config: DbopsConfig, run_id: str, target: str, label: str) -> Path:
    return _run_dir(config, run_id) / f"{target}.{label.replace('/', '.').replace(' ', '_')}.json"


def _write_json(path: Path, data: dict) -> None:
    """Replace ``path`` whole (tmp + rename): a reader never sees half a result."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _record(config: DbopsConfig, unit: dict, result: dict) -> dict:
    """One drill's result (``target`` is the offsite target), in this run's results folder."""
    from dbops.backup.repository import format_time, utc_now

    context = get_current_context()
    record = {
        **result,
        "target": unit["target"],
        "series": unit["label"],
        "backup_id": unit["backup_id"],
        "run_id": context["run_id"],
        "at": format_time(utc_now()),
    }
    _write_json(_unit_file(config, context["run_id"], unit["target"], unit["label"]), record)
    return record


def _target_plan(
    name: str, config: DbopsConfig, stores: list[str], problems: list[str]
) -> tuple[list[dict], list, list, int]:
    """(units, chosen offsite copies, key ids of the WAL, WAL bytes) of one target, its problems appended."""
    from dbops.backup.restore import series_label
    from dbops.offsite.common import OffsiteError, SeriesKey
    from dbops.offsite.restore import choose
    from dbops.offsite.wal import read_offsite_catalog
    from dbops.pitr.wal import BASE_STORE
    from dbops.runtime import open_target

    with open_target(name, config) as target:
        location = target.location()
        catalog = target.catalog(log.info)
        wal = read_offsite_catalog(target, log.info) if "postgres" in stores and config.pitr.enabled else None
    found: list[tuple[str, str | None, str, SeriesKey]] = []
    for store in stores:
        keys = [k for k in catalog.series() if k.store == store]
        if not keys:
            problems.append(f"{name}: no {store} backup offsite ({location}): nothing to drill")
        found += [(store, k.subject, series_label(k.store, k.subject), k) for k in keys]
    if wal is not None:
        found.append((BASE_STORE, None, PITR_LABEL, SeriesKey(BASE_STORE)))
        if wal.header is None:
            problems.append(
                f"{name}: {PITR_LABEL}: no WAL offsite ({location}): a base backup alone recovers no point in time"
            )
    units, chosen = [], []
    for store, subject, label, key in found:
        try:
            item, skipped = choose(catalog, key, "latest", location)
        except OffsiteError as exc:
            problems.append(f"{name}: {label}: {exc}")
            continue
        problems += [f"{name}: newer copy not usable: {line}" for line in skipped]
        chosen.append(item)
        pinned = {series_label(store, subject): item.manifest_sha256}  # the fetch refuses another manifest
        units.append(
            {
                "target": name,
                "store": store,
                "subject": subject,
                "label": label,
                "backup_id": item.backup_id,
                "offsite": {"target": name, "location": location, "manifests": pinned},
            }
        )
    key_ids = [f.key_id for f in wal.files.values()] if wal is not None else []
    wal_bytes = (
        sum(f.stored.plain_bytes + (f.stored.bytes if f.encryption else 0) for f in wal.files.values()) if wal else 0
    )
    return units, chosen, key_ids, wal_bytes


@task
def plan() -> dict:
    """Every (target, series) to drill: the latest usable copy of each series of the selected
    stores on each selected target, read from the targets' catalogs only (with PITR: the newest
    base backup there and the offsite WAL). A target that cannot be read, or holds no copy of a
    selected store, is a problem the summary fails on; a missing or wrong key, or a fetch
    folder too small for the largest copy of each store, refuses the run before any work."""
    from dbops.offsite.restore import fetch_repository, space_needed
    from dbops.pitr.wal import BASE_STORE
    from dbops.registry import DRILLED_STORES
    from dbops.tasks.restore import check_space, decryption, offsite_source

    context = get_current_context()
    params = context["params"]
    config = runtime_config()
    for name in params["targets"]:  # refused before any work: not configured, or no connection
        offsite_source(config, name)
    units: list[dict] = []
    chosen: list = []
    key_ids: list = []
    problems: list[str] = []
    wal_bytes = 0
    notes = [
        f"{store}: not drilled (it has no scratch target)" for store in params["stores"] if store not in DRILLED_STORES
    ]
    stores = [s for s in params["stores"] if s in DRILLED_STORES]
    for name in params["targets"]:
        try:
            found, items, keys, wal = _target_plan(name, config, stores, problems)
        except Exception as exc:  # an unreachable target is this drill's finding, the other target still runs
            problems.append(f"{name}: the offsite target could not be read: {type(exc).__name__}: {exc}")
            continue
        units += found
        chosen += items
        key_ids += keys
        wal_bytes = max(wal_bytes, wal)
    enc = decryption(config, chosen, key_ids)  # refused before any work: a missing key, or another one
    for unit in units:
        unit["offsite"]["encrypted"] = enc is not None
    # each drill removes its copy: at most the largest copy of each store at once (stores run side by side)
    largest: dict[str, int] = {}
    for item in chosen:
        largest[item.key.store] = max(largest.get(item.key.store, 0), space_needed(item))
    if chosen:
        check_space(
            fetch_repository(config, params["targets"][0]),
            sum(largest.values()) + wal_bytes,
            0,
            "the largest offsite copy of each store" + (" and the WAL" if BASE_STORE in largest else ""),
        )
    if str(context["dag_run"].run_type).lower().endswith("backfill"):
        notes.append(f"backfilled run for {context['logical_date']}: it drills the latest offsite copies now")
    for line in notes + problems:
        log.info("%s", line)
    log.info(
        "DR drill from %s: %s", params["targets"], [f"{u['target']}: {u['label']}/{u['backup_id']}" for u in units]
    )
    return {
        "units": [u for u in units if u["store"] != BASE_STORE],
        "pitr": [u for u in units if u["store"] == BASE_STORE],
        "problems": problems,
        "notes": notes,
    }


def units_task(store: str):
    """``units_<store>``: the (target, series) pairs of ``store`` to drill."""

    @task(task_id=f"units_{store}")
    def units(planned: dict) -> list[dict]:
        if store not in get_current_context()["params"]["stores"]:
            raise AirflowSkipException(f"skipped: {store} is not in this run's stores")
        return [u for u in planned["units"] if u["store"] == store]

    units.__doc__ = f"The (target, series) pairs of {store} with an offsite copy to drill."
    return units


def _fail(config: DbopsConfig, unit: dict, started: float, timing: dict, what: str, exc: BaseException) -> None:
    """Record a drill that failed before its verdict (the fetch, the environment); the caller
    re-raises, so Airflow's retry policy decides (a refusal or a mismatch is not retried)."""
    problem = f"{what}: {type(exc).__name__}: {exc}"
    log.error("DR drill of %s/%s from %s: %s", unit["label"], unit["backup_id"], unit["target"], problem)
    _record(
        config,
        unit,
        {
            "ok": False,
            "differences": [problem],
            "notes": [],
            "leftovers": [],
            "rto_s": round(time.monotonic() - started, 3),
            **timing,
        },
    )


def drill_task(store: str):
    """``drill_<store>`` of one (target, series), in the store's pool."""

    @task(task_id=f"drill_{store}", map_index_template="{{ unit['target'] }}: {{ unit['label'] }}", **on_store(store))
    def drill(unit: dict) -> dict:
        from dbops.tasks.drill import drill_backup
        from dbops.tasks.restore import fetch_planned

        context = get_current_context()
        config = runtime_config()
        started = time.monotonic()
        timing: dict = {}
        backup = None
        try:
            try:  # checked file by file, and against the manifest the plan chose
                repo, backup = fetch_planned(config, unit["offsite"], store, unit["subject"], unit["backup_id"])
                timing["fetch_s"] = round(time.monotonic() - started, 3)
            except Exception as exc:
                _fail(config, unit, started, timing, "fetch failed", exc)
                raise
            adapter = store_adapter(store, config)
            try:
                result = drill_backup(repo, backup, adapter, context, fetched=True)
            except Exception as exc:  # the environment stopped it (run_drill records verdicts itself)
                _fail(config, unit, started, timing, "drill could not run", exc)
                raise
        finally:
            if backup is not None:  # the offsite copy stays offsite; the fetched one is scratch
                repo.delete(backup)
                log.info("removed the fetched copy %s", backup.path)
        rto = round(time.monotonic() - started, 3)
        record = _record(
            config,
            unit,
            {
                **{k: result[k] for k in ("ok", "differences", "notes", "leftovers")},
                "scratch_target": result["target"],
                "drill_s": result["seconds"],
                "rto_s": rto,
                **timing,
            },
        )
        problems = [f"MISMATCH: {d}" for d in result["differences"]] + [
            f"scratch target NOT removed: {d}" for d in result["leftovers"]
        ]
        if problems:
            raise AirflowFailException(
                f"DR drill of {unit['label']}/{unit['backup_id']} from {unit['target']} failed:\n  "
                + "\n  ".join(problems)
            )
        log.info(
            "DR drill of %s/%s from %s passed: fetched in %.1fs, restored and equal in %.1fs; time to recover %.1fs",
            unit["label"],
            unit["backup_id"],
            unit["target"],
            timing["fetch_s"],
            result["seconds"],
            rto,
        )
        return record

    drill.__doc__ = (
        f"Fetch the chosen offsite {store} copy, restore it into scratch targets, compare, time it, remove it."
    )
    return drill


@task
def pitr_units(planned: dict) -> list[dict]:
    """The targets with a base backup and WAL offsite to drill point-in-time recovery from."""
    if "postgres" not in get_current_context()["params"]["stores"]:
        raise AirflowSkipException("skipped: postgres is not in this run's stores")
    if not runtime_config().pitr.enabled:
        raise AirflowSkipException("skipped: point-in-time recovery is off (pitr.enabled)")
    return planned["pitr"]


@task(map_index_template="{{ unit['target'] }}", **on_store("postgres"))
def drill_postgres_pitr(unit: dict) -> dict:
    """Fetch the newest base backup offsite and the WAL after it, recover to a time between
    two markers in that WAL, check exactly the markers up to it; time it; remove the copies."""
    from dbops.offsite.restore import fetch_repository
    from dbops.offsite.wal_fetch import fetch_wal_archive, last_commit_time
    from dbops.pitr.recovery import drill_pitr, server_bin_dir
    from dbops.pitr.wal import BASE_STORE
    from dbops.runtime import open_target
    from dbops.tasks.pitr import admin_endpoint, marker_database
    from dbops.tasks.restore import PITR_WAL_FOLDER, fetch_planned, pitr_scratch_dir

    context = get_current_context()
    config = runtime_config()
    started = time.monotonic()
    timing: dict = {}
    repo = fetch_repository(config, unit["target"])
    wal_root = repo.root / PITR_WAL_FOLDER  # the folder a point-in-time restore from offsite uses
    base = None
    try:
        try:
            # the key whatever offsite.encryption says now: the copies were encrypted when shipped
            enc = None
            if unit["offsite"]["encrypted"]:
                enc = offsite_encryption(config.with_overrides({"offsite": {"encryption": True}}))
            repo, base = fetch_planned(config, unit["offsite"], BASE_STORE, None, unit["backup_id"])
            with open_target(unit["target"], config) as target:
                archive = fetch_wal_archive(
                    target,
                    wal_root,
                    system_identifier=str(base.manifest["details"]["system_identifier"]),
                    encryption=enc,
                    base=base,
                    log=log.info,
                )
            timing["fetch_s"] = round(time.monotonic() - started, 3)
            ends = last_commit_time(archive, bin_dir=server_bin_dir(config.pitr.server_bin), log=log.info)
            if ends is None:
                raise AirflowFailException(
                    f"the WAL offsite on {unit['target']} after base backup {base.backup_id} "
                    "holds no transaction: nothing to recover to"
                )
        except Exception as exc:
            _fail(config, unit, started, timing, "fetch failed", exc)
            raise
        try:
            result = drill_pitr(
                repo,
                archive,
                admin_endpoint(config),
                marker_database(config),
                scratch_dir=pitr_scratch_dir(config),
                server_bin=config.pitr.server_bin,
                os_user=config.pitr.scratch_os_user,
                wait_for_wal_s=0,
                wal_ends_at=ends,
                run_id=context["run_id"],
                dag_id=context["dag"].dag_id,
                log=log.info,
            )
        except Exception as exc:
            _fail(config, unit, started, timing, "point-in-time drill could not run", exc)
            raise
    finally:
        if base is not None:
            repo.delete(base)
        shutil.rmtree(wal_root, ignore_errors=True)
        log.info("removed the fetched base backup and WAL from %s", repo.root)
    rto = round(time.monotonic() - started, 3)
    record = _record(
        config,
        unit,
        {
            **{k: result.get(k) for k in ("ok", "differences", "notes", "leftovers")},
            "scratch_target": result.get("target"),
            "target_time": result["target_time"],
            "drill_s": result["seconds"],
            "rto_s": rto,
            **timing,
        },
    )
    if not result["ok"]:
        raise AirflowFailException(
            f"DR point-in-time drill from {unit['target']} failed:\n  " + "\n  ".join(result["differences"])
        )
    log.info(
        "DR point-in-time drill from %s passed: base backup %s recovered to %s; time to recover %.1fs",
        unit["target"],
        unit["backup_id"],
        result["target_time"],
        rto,
    )
    return record


def rto_table(records: list[dict]) -> str:
    """The results as a text table: target, series, backup, fetch / drill / total seconds, verdict."""
    rows = [("target", "series", "backup", "fetch s", "restore+compare s", "RTO s", "result")]
    for r in records:
        rows.append(
            (
                r["target"],
                r["series"],
                r["backup_id"],
                f"{r.get('fetch_s', 0):.1f}",
                f"{r.get('drill_s', 0):.1f}" if "drill_s" in r else "-",
                f"{r['rto_s']:.1f}",
                "ok" if r["ok"] else "FAILED",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


@task(trigger_rule="all_done")
def summary(planned: dict) -> str:
    """Every drill of this run read back from its result file: fails naming every failure,
    every planned drill without a result and a run that drilled nothing; the RTO table (per
    series, and per target and store) in the log and the return value, and in dr_drill.json."""
    from dbops.backup.repository import format_time, utc_now

    context = get_current_context()
    config = runtime_config()
    run_id = context["run_id"]
    problems = list(planned["problems"])
    records = []
    for unit in planned["units"] + planned["pitr"]:
        path = _unit_file(config, run_id, unit["target"], unit["label"])
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = None
        if not record or record.get("run_id") != run_id or record.get("backup_id") != unit["backup_id"]:
            problems.append(
                f"{unit['target']}: {unit['label']}/{unit['backup_id']}: no DR drill result from this run "
                "(its task did not run or failed before recording: see its log)"
            )
            continue
        records.append(record)
        problems += [
            f"{unit['target']}: {unit['label']}/{unit['backup_id']}: {d}" for d in record.get("differences") or []
        ]
        problems += [
            f"{unit['target']}: {unit['label']}: scratch target not removed: {d}" for d in record.get("leftovers") or []
        ]
    if not planned["units"] and not planned["pitr"] and not problems:
        problems.append("nothing was drilled: no selected store has a copy on any selected target")
    by_store: dict[str, dict[str, float]] = {}
    for r in records:
        store = "postgres_pitr" if r["series"] == PITR_LABEL else r["series"].partition("/")[0]
        by_store.setdefault(r["target"], {}).setdefault(store, 0.0)
        by_store[r["target"]][store] = round(by_store[r["target"]][store] + r["rto_s"], 3)
    table = rto_table(records)
    outcome = {
        "run_id": run_id,
        "dag_id": context["dag"].dag_id,
        "at": format_time(utc_now()),
        "ok": not problems,
        "targets": context["params"]["targets"],
        "stores": context["params"]["stores"],
        "failures": problems,
        "rto": [
            {k: r.get(k) for k in ("target", "series", "backup_id", "fetch_s", "drill_s", "rto_s", "ok")}
            for r in records
        ],
        "rto_by_store": by_store,
    }
    _save(config, outcome)
    for note in planned["notes"]:
        log.info("%s", note)
    log.info("time to recover from offsite (fetch + restore + compare), per series:\n%s", table)
    log.info("time to recover per target and store (seconds): %s", json.dumps(by_store, sort_keys=True))
    text = dr_drill_text(outcome, table)
    ti = context["ti"]
    ti.xcom_push(key="result", value={**outcome, "table": table})  # the structured results, for tools and tests
    log.info("run summary:\n%s", text)
    if problems:
        ti.xcom_push(key="return_value", value=text)  # a failing task returns nothing: its summary still shows
        raise AirflowFailException(f"DR drill: {len(problems)} failure(s):\n  " + "\n  ".join(problems) + "\n" + table)
    log.info("DR drill passed: %d restore(s) from offsite, each equal to its backup", len(records))
    return text


def dr_drill_text(outcome: dict, table: str) -> str:
    """The run's summary (the contract of ``dbops.tasks.summary``): the verdict, every failure
    itself, the time to recover per target and store, then the per-series table; <= 25 lines."""
    from dbops.tasks.summary import MAX_LINES

    verdict = "passed" if outcome["ok"] else f"FAILED ({len(outcome['failures'])} failure(s))"
    lines = [f"DR drill from {', '.join(outcome['targets'])} of {', '.join(outcome['stores'])}: {verdict}"]
    lines += [f"failure: {f}" for f in outcome["failures"]]
    for target, stores in sorted(outcome["rto_by_store"].items()):
        lines.append(f"time to recover from {target}: " + ", ".join(f"{s} {v:.1f}s" for s, v in sorted(stores.items())))
    lines += table.splitlines()
    if len(lines) > MAX_LINES:
        lines = [*lines[: MAX_LINES - 1], f"... and {len(lines) - MAX_LINES + 1} more line(s): see the log"]
    return "\n".join(lines)


def _save(config: DbopsConfig, outcome: dict) -> None:
    """``dr_drill.json``: this run first, then the earlier ones (a rerun of the summary replaces its own entry)."""
    path = _root(config) / RESULT_FILE
    try:
        runs = json.loads(path.read_text()).get("runs", [])
    except (OSError, ValueError, AttributeError):
        runs = []
    runs = [outcome] + [r for r in runs if isinstance(r, dict) and r.get("run_id") != outcome["run_id"]]
    _write_json(path, {"format": "dbops-dr-drill", "version": 1, "runs": runs[:KEEP_RUNS]})
    old = sorted((_root(config) / RESULTS_DIR / "runs").glob("*"), key=lambda p: p.stat().st_mtime)
    for folder in old[:-KEEP_RUNS]:
        shutil.rmtree(folder, ignore_errors=True)
