"""The benchmark harness: old way vs dbops, side by side, in one run, on this machine.

    .venv/bin/python -m bench                    # full sizes of the issue -> bench/results/latest.json
                                                 #   and docs/benchmarks.md
    .venv/bin/python -m bench --smoke --out DIR  # tiny data, 1 repetition: proves every pair runs
    .venv/bin/python -m bench --scale 0.2 --out DIR --repetitions 3   # a medium run

Needs the local stores (``make stores``); starts scratch servers of its own (two
Postgres clusters, one Redis) and stops them at the end. Any pair that fails makes the
run fail (exit 1) after writing what was measured; no number is ever made up.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from bench.env import REPO, Bench, machine, versions
from bench.report import write_markdown
from bench.rows import Context, dag_parse, jobs, offsite, pitr, postgres, redis

# The order matters: rows reuse the dataset and artifacts of earlier rows, and the memory
# row measures the small database before the main rows grow it and the large one last.
STEPS = [
    ("memory_small", lambda ctx: postgres.memory_measure(ctx, ctx.memory_gb[0])),
    ("pg_backup", postgres.backup_rows),
    ("pg_restore", postgres.restore_row),
    ("s3_upload", offsite.s3_row),
    ("pg_restore_s3", offsite.restore_s3_row),
    ("offsite_second_sync", offsite.rsync_row),
    ("pg_drill", postgres.drill_row),  # after the offsite rows: the drill records drill.json in the backup
    ("redis_backup", redis.run),
    ("pg_maintenance", jobs.maintenance_row),
    ("nightly", jobs.nightly_row),
    ("pitr", pitr.rows),
    ("memory_large", lambda ctx: postgres.memory_measure(ctx, ctx.memory_gb[1])),
    ("pg_backup_memory", postgres.memory_row),
    ("pitr_memory", pitr.memory_row),
    ("dag_parse", dag_parse.run),
]
EXPECTED_ROWS = [
    "pg_backup_vs_dumpall",
    "pg_backup_vs_floor",
    "pg_restore",
    "pg_restore_s3",
    "pg_drill",
    "pg_backup_memory",
    "redis_backup_stall",
    "pg_maintenance_writer",
    "offsite_second_sync",
    "s3_upload",
    "nightly_all",
    "dag_parse",
    "pitr_base_backup",
    "pitr_restore_time",
    "pitr_recovery_point",
    "pitr_repository_bytes",
    "pitr_memory",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny data, 1 repetition (CI)")
    parser.add_argument("--scale", type=float, help="GB of the main Postgres database (default 2; smoke 0.02)")
    parser.add_argument(
        "--memory-scales",
        type=float,
        nargs=2,
        metavar=("SMALL", "LARGE"),
        help="GB of the two databases of the memory row (default 1 4, or scale/2 and 2*scale)",
    )
    parser.add_argument("--redis-mb", type=int, help="MB of Redis data (default 1024; smoke 8)")
    parser.add_argument("--repetitions", type=int, help="runs of each side (default 3; smoke 1)")
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for latest.json and benchmarks.md (default: bench/results/ and docs/; required with --smoke)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[name for name, _ in STEPS],
        metavar="STEP",
        help="run only these steps (later steps may need earlier ones' artifacts)",
    )
    parser.add_argument("--work", type=Path, help="folder for datasets and artifacts (default bench/data/)")
    parser.add_argument(
        "--note",
        help="with --only into the recorded results: a note on the partial run "
        "(e.g. that the machine was shared), shown on the page",
    )
    args = parser.parse_args(argv)
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out DIR: a smoke run never overwrites the recorded results")
    if args.note and not args.only:
        parser.error("--note is for a partial run (--only)")
    for name in ("scale", "redis_mb", "repetitions"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.memory_scales and not 0 < args.memory_scales[0] < args.memory_scales[1]:
        parser.error(f"--memory-scales needs 0 < SMALL < LARGE, got {args.memory_scales}")
    return args


def make_context(args: argparse.Namespace, bench: Bench) -> Context:
    scale = args.scale or (0.02 if args.smoke else 2.0)
    if args.memory_scales:
        memory = tuple(args.memory_scales)
    elif args.smoke or args.scale:
        memory = (scale / 2, scale * 2)
    else:
        memory = (1.0, 4.0)
    return Context(
        bench=bench,
        repetitions=args.repetitions or (1 if args.smoke else 3),
        pg_gb=scale,
        memory_gb=memory,
        redis_mb=args.redis_mb or (8 if args.smoke else 1024),
        smoke=args.smoke,
    )


def one_run_at_a_time():
    """An exclusive lock in the local state folder: two runs would share scratch servers."""
    import fcntl

    from devstack.core import state_dir

    handle = open(state_dir() / "bench.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit("another benchmark run is in progress (it holds the scratch servers); wait for it") from None
    return handle


def merge_partial(recorded: dict, partial: dict, steps: list[str], note: str | None) -> dict:
    """``recorded`` with the rows (and failures) of a ``--only`` run in place of its own; the
    partial run's time, settings, machine and note are listed under ``partial_runs``."""
    new_ids = {row["id"] for row in partial["rows"]}
    merged = dict(recorded)
    merged["rows"] = [row for row in recorded["rows"] if row["id"] not in new_ids] + partial["rows"]
    merged["failures"] = [f for f in recorded.get("failures", []) if f["step"] not in steps] + partial["failures"]
    merged["missing_rows"] = [r for r in EXPECTED_ROWS if r not in {row["id"] for row in merged["rows"]}]
    merged["partial_runs"] = [
        *[run for run in recorded.get("partial_runs", []) if not set(run["rows"]) <= new_ids],
        {key: partial.get(key) for key in ("started_at", "mode", "seconds", "settings", "machine", "versions")}
        | {"steps": steps, "rows": sorted(new_ids), "note": note},
    ]
    return merged


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lock = one_run_at_a_time()  # noqa: F841  (held until the process ends)
    work = args.work or (Path(tempfile.mkdtemp(prefix="dbops-bench-")) if args.smoke else REPO / "bench" / "data")
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(work=work, airflow_home=Path(tempfile.mkdtemp(prefix="dbops-bench-airflow-")))
    json_path = (args.out or REPO / "bench" / "results") / "latest.json"
    md_path = (args.out / "benchmarks.md") if args.out else REPO / "docs" / "benchmarks.md"
    ctx = make_context(args, bench)
    started = time.perf_counter()
    result = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "smoke" if args.smoke else "full" if not (args.scale or args.memory_scales) else "custom",
        "settings": {
            "repetitions": ctx.repetitions,
            "postgres_gb": ctx.pg_gb,
            "memory_gb": list(ctx.memory_gb),
            "redis_mb": ctx.redis_mb,
        },
        "machine": machine(),
        "rows": [],
        "failures": [],
    }
    try:
        bench.start_servers()
        result["versions"] = versions(bench)
        for name, step in STEPS:
            if args.only and name not in args.only:
                continue
            step_started = time.perf_counter()
            ctx.log(f"--- {name}")
            try:
                result["rows"].extend(step(ctx) or [])
            except Exception as exc:  # recorded, and the run fails at the end
                traceback.print_exc()
                result["failures"].append({"step": name, "error": f"{type(exc).__name__}: {exc}"[:3000]})
            ctx.log(f"--- {name}: {time.perf_counter() - step_started:.0f}s")
    finally:
        bench.stop_servers()
        shutil.rmtree(bench.airflow_home, ignore_errors=True)
        if args.smoke and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    missing = [r for r in EXPECTED_ROWS if r not in {row["id"] for row in result["rows"]}]
    result["missing_rows"] = missing
    if args.only and json_path.exists() and not args.smoke:
        # a partial run into recorded results replaces its own rows and keeps every other one
        result = merge_partial(json.loads(json_path.read_text()), result, args.only, args.note)
        missing = result["missing_rows"]
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    write_markdown(result, md_path)
    print(f"wrote {json_path} and {md_path} ({result['seconds']:.0f}s)")
    if result["failures"] or missing:
        print(f"FAILED: {result['failures']} missing rows: {missing}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
