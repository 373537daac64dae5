"""Whole jobs: Postgres maintenance under a committing writer, and the nightly backup of
every local store (old scripts one after another vs ``airflow dags test``)."""

from __future__ import annotations

import json
import random
import subprocess
import time
from statistics import median

from bench import oldway
from bench.env import BENCH_DATABASE
from bench.measure import BenchError, LatencyProbe, alternating, run_measured
from bench.rows import Context, ratio_of, row
from dbops.sqlfiles import load_sql
from devstack import service
from devstack.core import write_private

OWN_DATABASE = "ai_platform"  # the connection's database on the bench server (holds dbops' journal)


def airflow_db(ctx: Context) -> None:
    """The bench's own Airflow metadata DB (once per run)."""
    if ctx.shared.get("airflow_db"):
        return
    result = subprocess.run(
        [ctx.python(), "-m", "airflow", "db", "migrate"], env=ctx.bench.tool_env(), capture_output=True, text=True
    )
    if result.returncode != 0:
        raise BenchError(f"airflow db migrate failed: {result.stderr[-2000:]}")
    ctx.shared["airflow_db"] = True


def _bootstrap_journal(ctx: Context) -> None:
    """dbops' migrations in the bench server's own database (the maintenance journal lives there)."""
    from dbops.migrations import MigrationRunner, discover
    from dbops.report import StoreReport
    from dbops.sqlfiles import MIGRATIONS_DIR

    with ctx.bench.pg_connect(ctx.bench.source_pg, OWN_DATABASE, autocommit=False) as conn:
        MigrationRunner(conn, discover(MIGRATIONS_DIR)).run(StoreReport("postgres"))
        conn.commit()


def maintenance_row(ctx: Context) -> list[dict]:
    bench = ctx.bench
    _bootstrap_journal(ctx)
    airflow_db(ctx)
    sql_file = ctx.work / "pg_maintenance.sql"
    sql_file.write_text(oldway.PG_MAINTENANCE_SQL.format(database=BENCH_DATABASE))
    env = bench.pg_env(bench.source_pg)
    env["DBOPS_MAINTENANCE__DATABASES"] = json.dumps([BENCH_DATABASE])
    with bench.pg_connect(bench.source_pg, BENCH_DATABASE) as conn:
        accounts = conn.execute("SELECT max(aid) FROM pgbench_accounts").fetchone()[0]
    writer = bench.pg_connect(bench.source_pg, BENCH_DATABASE)
    commit_sql = load_sql("bench/writer_commit.sql")

    def commit() -> None:
        writer.execute(commit_sql, {"delta": random.randint(-5000, 5000), "aid": random.randint(1, accounts)})

    def make_work() -> None:  # the same dead tuples and index churn before each side
        with bench.pg_connect(bench.source_pg, BENCH_DATABASE) as conn:
            conn.execute(load_sql("bench/bloat_accounts.sql"), {"every": 5})

    windows: dict[str, list[dict]] = {"old": [], "dbops": [], "no_job": []}

    def record(side: str, probe: LatencyProbe, started: float, ended: float) -> dict:
        window = probe.window(started, ended)
        window["seconds"] = ended - started
        window["commits_per_s"] = window["operations"] / window["seconds"]
        windows[side].append(window)
        return window

    def measured(side: str, argv: list[str], marked: bool) -> float:
        make_work()
        marks: dict[str, float] = {}

        def on_line(line: str) -> None:
            if line in ("JOB START", "JOB END"):
                marks[line] = time.perf_counter()

        with LatencyProbe(commit, f"writer ({side})") as probe:
            time.sleep(0.5)
            started = time.perf_counter()
            run_measured(argv, env=env, what=f"maintenance ({side})", on_line=on_line)
            ended = time.perf_counter()
            time.sleep(0.2)
        if marked:
            started, ended = marks["JOB START"], marks["JOB END"]
        return record(side, probe, started, ended)["worst_s"]

    def no_job(seconds: float) -> None:
        """The writer alone for ``seconds``, set up like a job's window (no dead tuples made:
        they are the jobs' work, and the jobs before it removed theirs)."""
        with LatencyProbe(commit, "writer (no job)") as probe:
            time.sleep(0.5)
            started = time.perf_counter()
            time.sleep(seconds)
            ended = time.perf_counter()
            time.sleep(0.2)
        record("no_job", probe, started, ended)

    def old() -> float:
        script = oldway.PG_MAINTENANCE.format(database=BENCH_DATABASE, sql_file=oldway.q(sql_file))
        return measured("old", oldway.bash(script), marked=False)

    def dbops_job() -> float:
        # full runs warm up with a dry run, so that the window holds only the real job
        warmup = None if ctx.smoke else {"dry_run": True}
        args = {"dag_id": "dbops_pg_maintenance", "warmup_conf": warmup, "conf": {}}
        return measured("dbops", [ctx.python(), "-m", "bench.worker", "dag_test", json.dumps(args)], marked=True)

    def dbops() -> float:
        """The dbops job and a no-job window of its length, in alternating order: after the job
        on even repetitions (its length), before it on odd ones (the previous job's length)."""
        if len(windows["dbops"]) % 2 == 0:
            wait = dbops_job()
            no_job(windows["dbops"][-1]["seconds"])
        else:
            no_job(windows["dbops"][-1]["seconds"])
            wait = dbops_job()
        return wait

    olds, news = alternating(ctx.repetitions, old, dbops)
    writer.close()
    wait_ratio = ratio_of(news, olds)
    rate_ratio = median(w["commits_per_s"] for w in windows["dbops"]) / max(
        median(w["commits_per_s"] for w in windows["no_job"]), 1e-9
    )
    return [
        row(
            "pg_maintenance_writer",
            what="Postgres maintenance while a writer commits in a loop",
            old_way="`ANALYZE VERBOSE; REINDEX DATABASE; VACUUM FULL VERBOSE`",
            dbops_way="dbops_pg_maintenance (`dag.test()`, default settings)",
            metric="writer's longest wait (s); also its commits/s during the dbops job vs with no job running",
            old=olds,
            dbops=news,
            target="longest wait <= 0.1x; commits/s during the dbops job >= 0.9x of no job",
            ratio=wait_ratio,
            met=wait_ratio <= 0.1 and rate_ratio >= 0.9,
            also={"commits/s vs no job": rate_ratio},
            details={
                "commit_rate_ratio": rate_ratio,
                "commits_per_s": {
                    side: [round(w["commits_per_s"], 1) for w in side_windows] for side, side_windows in windows.items()
                },
                "writer_windows": windows,
                "note": "commits/s: the writer during the dbops job (between its JOB START and JOB END) "
                "against the writer alone over a window of the same length, in the same run on the same "
                "database, the order alternating per repetition",
            },
        )
    ]


def _bootstrap_mongo(mongo: dict) -> None:
    """The platform's collections in the Mongo database the connection names, as dbops_bootstrap
    creates them: dbops refuses to back up a database that does not exist (a fresh stack)."""
    import pymongo

    from dbops.sqlfiles import load_spec
    from dbops.stores.mongo import bootstrap as mongo_store

    with pymongo.MongoClient(
        host="127.0.0.1",
        port=int(mongo["port"]),
        username=mongo["login"],
        password=mongo["password"],
        authSource="admin",
    ) as client:
        mongo_store.bootstrap(client[mongo["schema"]], load_spec("mongo_collections.json"))


def nightly_row(ctx: Context) -> list[dict]:
    bench = ctx.bench
    airflow_db(ctx)
    redis = bench.redis()
    if not redis.running():
        raise BenchError("the nightly row needs the Redis row's scratch server (run redis_backup first)")
    mongo_conn = service("mongo").connections()
    mongo = next(iter(mongo_conn.values()))
    _bootstrap_mongo(mongo)
    env = bench.pg_env(bench.source_pg)
    env.update({k: v for k, v in bench.redis_env(redis).items() if k in ("AIRFLOW_CONN_DBOPS_REDIS", "REDISCLI_AUTH")})
    root = ctx.work / "nightly"
    env["DBOPS_BACKUP__ROOT"] = str(root / "dbops")
    env["DBOPS_BACKUP__STORES"] = json.dumps(["postgres", "mongo", "redis", "kafka"])
    mongo_config = write_private(
        ctx.work / "mongo-tool.yaml",
        f"uri: mongodb://{mongo['login']}:{mongo['password']}@127.0.0.1:{mongo['port']}/?authSource=admin\n",
    )
    old_root = root / "old"
    day = "20260101_020000"
    old_script = " && ".join(
        [
            f"mkdir -p {old_root}/postgres {old_root}/mongodb {old_root}/redis",
            oldway.PG_BACKUP.format(out=f"{old_root}/postgres/postgres_{day}.sql.gz"),
            oldway.MONGO_BACKUP.format(config=oldway.q(mongo_config), out=f"{old_root}/mongodb/mongodb_{day}"),
            oldway.REDIS_BACKUP.format(
                port=redis.port, rdb=oldway.q(redis.dir / "dump.rdb"), out=f"{old_root}/redis/redis_{day}.rdb"
            ),
            oldway.RETENTION.format(root=f"{old_root}/postgres", pattern="postgres_*.sql.gz"),
            oldway.RETENTION.format(root=f"{old_root}/redis", pattern="redis_*.rdb"),
        ]
    )
    dates = iter(f"2026-01-{day:02d}T02:00:00+00:00" for day in range(1, 32))

    def old() -> float:
        import shutil

        shutil.rmtree(old_root, ignore_errors=True)
        return run_measured(oldway.bash(old_script), env=env, what="old nightly scripts").seconds

    def dbops() -> float:
        import shutil

        shutil.rmtree(root / "dbops", ignore_errors=True)
        argv = [ctx.python(), "-m", "airflow", "dags", "test", "dbops_nightly_backup", next(dates)]
        return run_measured(argv, env=env, what="airflow dags test dbops_nightly_backup").seconds

    try:
        olds, news = alternating(ctx.repetitions, old, dbops)
    finally:
        mongo_config.unlink()  # it holds the password
    ratio = ratio_of(news, olds)
    return [
        row(
            "nightly_all",
            what="nightly backup of all local stores (Postgres bench database, Mongo, Redis, Kafka)",
            old_way="the old scripts one after another",
            dbops_way="dbops_nightly_backup via `airflow dags test`",
            metric="wall time (s)",
            old=olds,
            dbops=news,
            target="<= 0.6x",
            ratio=ratio,
            met=ratio <= 0.6,
            details={
                "dbops_includes": "process start and DAG parse, verification of every backup, "
                "Kafka definitions (the old scripts had none), retention"
            },
        )
    ]
