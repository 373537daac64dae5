"""Postgres: backup vs ``pg_dumpall | gzip``, backup vs the ``pg_dump -Fd -j N`` floor,
restore vs ``psql < dump.sql``, and the worker's memory at two database sizes.

All three backups read the same database of the source scratch cluster (which holds
nothing else), in rotating order within each repetition. The dbops side runs
``bench.worker pg_backup``: what the nightly tasks ``backup_postgres`` (every database
of the server, as ``postgres_databases`` lists them) and ``backup_postgres_globals`` do.
"""

from __future__ import annotations

import json
import shutil
from statistics import median

from bench import oldway
from bench.datasets import GB, build_postgres, database_bytes
from bench.env import BENCH_DATABASE
from bench.measure import BenchError, alternating, run_measured
from bench.rows import Context, ratio_of, row
from dbops.stores.postgres.backup import DUMP_DIR
from dbops.tools import tree_bytes


def _databases(ctx: Context) -> list[str]:
    with ctx.bench.pg_connect(ctx.bench.source_pg) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname"
        ).fetchall()
    return [r[0] for r in rows]


def _dbops_backup(ctx: Context, root) -> tuple[float, int, int]:
    env = ctx.bench.pg_env(ctx.bench.source_pg)
    env["DBOPS_BACKUP__ROOT"] = str(root)
    args = json.dumps({"databases": _databases(ctx)})
    run = run_measured([ctx.python(), "-m", "bench.worker", "pg_backup", args], env=env, what="dbops pg_backup")
    return run.task_seconds(), run.peak_rss_bytes, int(run.json_tail()["total_bytes"])


def _keep_newest_backup(root) -> None:
    """Remove all but the newest backup of each series (disk space between repetitions)."""
    for series in (root / "postgres").iterdir():
        backups = sorted(p for p in series.iterdir() if not p.name.startswith("."))
        for old in backups[:-1]:
            shutil.rmtree(old)


def backup_rows(ctx: Context) -> list[dict]:
    bench = ctx.bench
    dataset = build_postgres(bench, ctx.pg_gb, ctx.log)
    jobs = 2  # postgres.dump_jobs default, which the dbops side uses too
    root = ctx.work / "dbops-backups"
    old_dump = ctx.work / "old" / "postgres_full.sql.gz"
    old_dump.parent.mkdir(parents=True, exist_ok=True)
    floor_dir = ctx.work / "floor"
    env = bench.pg_env(bench.source_pg)
    times: dict[str, list[float]] = {"old": [], "dbops": [], "floor": []}
    sizes: dict[str, list[int]] = {"old": [], "dbops": [], "floor": []}
    rss: list[int] = []

    def old() -> None:
        run = run_measured(
            oldway.bash(oldway.PG_BACKUP.format(out=oldway.q(old_dump))), env=env, what="pg_dumpall | gzip"
        )
        times["old"].append(run.seconds)
        sizes["old"].append(old_dump.stat().st_size)

    def dbops() -> None:
        seconds, peak, total = _dbops_backup(ctx, root)
        times["dbops"].append(seconds)
        sizes["dbops"].append(total)
        rss.append(peak)
        _keep_newest_backup(root)

    def floor() -> None:
        shutil.rmtree(floor_dir, ignore_errors=True)
        argv = ["pg_dump", "-Fd", f"-j{jobs}", "-Z0", "-f", str(floor_dir), BENCH_DATABASE]
        run = run_measured(argv, env=env, what="pg_dump -Fd -j uncompressed")
        times["floor"].append(run.seconds)
        sizes["floor"].append(tree_bytes(floor_dir))
        shutil.rmtree(floor_dir)

    sides = [old, dbops, floor]
    for index in range(ctx.repetitions):
        ctx.log(f"postgres backup repetition {index + 1}/{ctx.repetitions}")
        for side in sides[index % 3 :] + sides[: index % 3]:  # rotating order
            side()
    ctx.shared.update(pg_old_dump=old_dump, pg_root=root, pg_dataset=dataset)
    size_ratio = median(sizes["dbops"]) / median(sizes["old"])
    wall = ratio_of(times["dbops"], times["old"])
    floor_ratio = ratio_of(times["dbops"], times["floor"])
    details = {
        "database_bytes": dataset["bytes"],
        "pgbench_scale": dataset["pgbench_scale"],
        "artifact_bytes": {k: int(median(v)) for k, v in sizes.items()},
        "artifact_ratio": size_ratio,
        "dbops_peak_rss_bytes": max(rss),
        "pg_dump_jobs": jobs,
        "dbops_includes": "pg_dump -Fd -j2 (gzip:1) of every database + globals, sha256 re-read, "
        "pg_restore --list and a full read of the dump, source description",
    }
    return [
        row(
            "pg_backup_vs_dumpall",
            what=f"Postgres backup, database of {dataset['bytes'] / GB:.2f} GB",
            old_way="`pg_dumpall | gzip`",
            dbops_way="nightly backup task (`backup_postgres` + globals)",
            metric="wall time (s)",
            old=times["old"],
            dbops=times["dbops"],
            target="<= 0.5x wall time; artifact not larger",
            ratio=wall,
            met=wall <= 0.5 and size_ratio <= 1.0,
            also={"artifact": size_ratio},
            details=details,
        ),
        row(
            "pg_backup_vs_floor",
            what="Postgres backup vs the floor",
            old_way=f"`pg_dump -Fd -j {jobs}` uncompressed, local disk",
            dbops_way="same task",
            metric="wall time (s)",
            old=times["floor"],
            dbops=times["dbops"],
            target="<= 1.3x",
            ratio=floor_ratio,
            met=floor_ratio <= 1.3,
            details=details,
        ),
    ]


def restore_row(ctx: Context) -> list[dict]:
    """Both restore into the restore scratch cluster: the old way replays the whole
    ``pg_dumpall`` (it creates the database), dbops restores its own backup of it (the
    newest one of the backup row: the same data) as dbops_restore does."""
    bench = ctx.bench
    if "pg_old_dump" not in ctx.shared:
        raise BenchError("the restore row needs the backup row's artifacts (run pg_backup first)")
    target_pg = bench.restore_pg
    env = bench.pg_env(target_pg)
    env["DBOPS_BACKUP__ROOT"] = str(ctx.shared["pg_root"])
    restored = "dbops_bench_restored"

    def drop_all() -> None:
        with bench.pg_connect(target_pg) as conn:
            for name in (BENCH_DATABASE, restored):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def old() -> float:
        drop_all()
        script = oldway.PG_RESTORE.format(dump=oldway.q(ctx.shared["pg_old_dump"]))
        seconds = run_measured(oldway.bash(script), env=env, what="gunzip | psql").seconds
        with bench.pg_connect(target_pg, BENCH_DATABASE) as conn:  # the data really arrived
            if conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()[0] == 0:
                raise BenchError("psql restore left pgbench_accounts empty")
        return seconds

    def dbops() -> float:
        drop_all()
        args = json.dumps({"database": BENCH_DATABASE, "target": restored})
        run = run_measured([ctx.python(), "-m", "bench.worker", "pg_restore", args], env=env, what="dbops pg_restore")
        return run.task_seconds()

    olds, news = alternating(ctx.repetitions, old, dbops)
    drop_all()
    ratio = ratio_of(news, olds)
    return [
        row(
            "pg_restore",
            what="Postgres restore of that backup",
            old_way="`gunzip -c | psql` of the dump",
            dbops_way="`dbops_restore` path (`restore_postgres`: pg_restore -j, marker, compare)",
            metric="wall time (s)",
            old=olds,
            dbops=news,
            target="<= 0.5x",
            ratio=ratio,
            met=ratio <= 0.5,
            details={
                "restore_jobs": 2,
                "dbops_includes": "sha256 of every file, pg_restore -j2, description and comparison with the source",
            },
        )
    ]


def memory_measure(ctx: Context, size_gb: float) -> None:
    """Peak RSS of the dbops backup's process tree (worker + pg_dump processes) with the
    database at ``size_gb``: the small size before the main rows, the large one after."""
    build_postgres(ctx.bench, size_gb, ctx.log)
    root = ctx.work / "memory-backups"
    peaks = []
    for _ in range(ctx.repetitions):
        _seconds, peak, _total = _dbops_backup(ctx, root)
        peaks.append(peak / 1024**2)
        shutil.rmtree(root)
    ctx.shared.setdefault("memory", []).append({"bytes": database_bytes(ctx.bench), "peak_rss_mb": peaks})


def memory_row(ctx: Context) -> list[dict]:
    small, large = ctx.shared["memory"]
    growth = median(large["peak_rss_mb"]) / median(small["peak_rss_mb"])
    return [
        row(
            "pg_backup_memory",
            what=f"worker memory during the Postgres backup at "
            f"{small['bytes'] / GB:.2f} GB and {large['bytes'] / GB:.2f} GB",
            old_way="-",
            dbops_way="peak RSS of the task process tree (worker + pg_dump)",
            metric="peak RSS (MB); old column: the small database, dbops column: the large one",
            old=small["peak_rss_mb"],
            dbops=large["peak_rss_mb"],
            target="large within 1.2x of small, under 300 MB",
            ratio=growth,
            met=growth <= 1.2 and max(large["peak_rss_mb"]) < 300,
            details={"database_bytes": [small["bytes"], large["bytes"]]},
        )
    ]


# a plain restore: a fresh database, pg_restore -j2 owned by the restoring role (as the drill), no checks
PLAIN_RESTORE = "createdb {database} && pg_restore -j{jobs} --no-owner --exit-on-error -d {database} {dump}"


def drill_row(ctx: Context) -> list[dict]:
    """The restore drill of the Postgres backup (what ``drill_postgres`` of dbops_restore_drill
    does: files re-verified, pg_restore into a scratch database, description compared, the
    scratch database dropped, ``drill.json`` recorded) against a plain ``pg_restore -j2`` of the
    same dump into a fresh database, both on the restore scratch cluster."""
    bench = ctx.bench
    if "pg_root" not in ctx.shared:
        raise BenchError("the drill row needs the backup row's artifacts (run pg_backup first)")
    target_pg = bench.restore_pg
    env = bench.pg_env(target_pg)
    env.pop("AIRFLOW_CONN_DBOPS_DRILL_POSTGRES", None)  # the drill restores into the same cluster as the plain one
    env["DBOPS_BACKUP__ROOT"] = str(ctx.shared["pg_root"])
    backup_dir = max((ctx.shared["pg_root"] / "postgres" / BENCH_DATABASE).glob("2*"))
    plain_db = "dbops_bench_plain"
    jobs = 2  # restore.jobs default, which the drill uses

    def drop_plain() -> None:
        with bench.pg_connect(target_pg) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{plain_db}" WITH (FORCE)')

    def plain() -> float:
        drop_plain()
        script = PLAIN_RESTORE.format(database=plain_db, jobs=jobs, dump=oldway.q(backup_dir / DUMP_DIR))
        seconds = run_measured(oldway.bash(script), env=env, what="plain pg_restore").seconds
        with bench.pg_connect(target_pg, plain_db) as conn:  # the data really arrived
            if conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()[0] == 0:
                raise BenchError("the plain restore left pgbench_accounts empty")
        drop_plain()  # the drill finds the cluster as the plain restore did
        return seconds

    drills: list[dict] = []

    def drill() -> float:
        args = json.dumps({"database": BENCH_DATABASE})
        run = run_measured([ctx.python(), "-m", "bench.worker", "pg_drill", args], env=env, what="dbops pg_drill")
        result = run.json_tail()
        drills.append({k: result.get(k) for k in ("ok", "seconds", "target", "notes")})
        return run.task_seconds()

    try:
        olds, news = alternating(ctx.repetitions, plain, drill)
    finally:
        drop_plain()
    ratio = ratio_of(news, olds)
    return [
        row(
            "pg_drill",
            what="restore drill of that backup vs a plain restore of it",
            old_way=f"`createdb` + `pg_restore -j{jobs} --no-owner` of its dump, no checks",
            dbops_way="`dbops_restore_drill` path (`drill_postgres`: sha256 of every file, pg_restore -j, "
            "compare with the backup's description, drop, drill.json)",
            metric="wall time (s)",
            old=olds,
            dbops=news,
            target="<= 1.2x",
            ratio=ratio,
            met=ratio <= 1.2,
            details={
                "restore_jobs": jobs,
                "drills": drills,
                "timed": "both whole processes; the drill's own seconds (from its drill.json) are in drills",
            },
        )
    ]
