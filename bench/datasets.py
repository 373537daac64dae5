"""The benchmark's data: a Postgres database of pgbench tables plus a vector(1536)
table (half of the bytes each), and a Redis filled by pipelined SETs."""

from __future__ import annotations

import os
import subprocess
import time

from bench.env import BENCH_DATABASE, Bench, start_with_retries
from bench.measure import BenchError
from dbops.sqlfiles import load_sql

GB = 1024**3
MB = 1024**2
PGBENCH_BYTES_PER_SCALE = 15.6 * MB  # pgbench_accounts + index per scale unit (measured)
VECTOR_ROW_BYTES = 6_250  # vector(1536) = 6 KiB + row and TOAST overhead (measured)
REDIS_VALUE_BYTES = 1_000


def database_bytes(bench: Bench, database: str = BENCH_DATABASE) -> int:
    with bench.pg_connect(bench.source_pg) as conn:
        row = conn.execute(
            "SELECT pg_database_size(datname) FROM pg_database WHERE datname = %s", [database]
        ).fetchone()
    return int(row[0]) if row else 0


def _relation_bytes(bench: Bench, name: str) -> int:
    with bench.pg_connect(bench.source_pg, BENCH_DATABASE) as conn:
        return int(conn.execute(load_sql("bench/relation_bytes.sql"), {"name": name}).fetchone()[0])


def build_postgres(bench: Bench, size_gb: float, log) -> dict:
    """Make ``dbops_bench`` about ``size_gb`` (grows an existing one; rebuilds one far larger):
    ``pgbench -i -s N`` for half of it, random vectors appended for the other half."""
    started = time.perf_counter()
    target = size_gb * GB
    with bench.pg_connect(bench.source_pg) as conn:
        if database_bytes(bench) > 1.3 * target:  # left larger by an earlier run: start again
            log(f"{BENCH_DATABASE} is larger than {size_gb} GB: dropped, built again")
            conn.execute(f'DROP DATABASE "{BENCH_DATABASE}" WITH (FORCE)')
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DATABASE]).fetchone():
            conn.execute(f'CREATE DATABASE "{BENCH_DATABASE}"')
    scale = max(1, round(target / 2 / PGBENCH_BYTES_PER_SCALE))
    if _relation_bytes(bench, "pgbench_accounts") < 0.9 * scale * PGBENCH_BYTES_PER_SCALE:
        log(f"pgbench -i -s {scale} in {BENCH_DATABASE}")
        result = subprocess.run(
            ["pgbench", "-i", "-q", "-s", str(scale), BENCH_DATABASE],
            env=bench.pg_env(bench.source_pg),
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise BenchError(f"pgbench -i failed: {result.stderr[-2000:]}")
    with bench.pg_connect(bench.source_pg, BENCH_DATABASE) as conn:
        conn.execute(load_sql("bench/vectors_create.sql"))
    missing_rows = int((target / 2 - _relation_bytes(bench, "bench_embeddings")) / VECTOR_ROW_BYTES)
    batch = 20_000
    while missing_rows > 0:
        rows = min(batch, missing_rows)
        with bench.pg_connect(bench.source_pg, BENCH_DATABASE) as conn:
            conn.execute(load_sql("bench/vectors_append.sql"), {"rows": rows})
        missing_rows -= rows
        log(f"  vectors: {rows} rows appended, {max(missing_rows, 0)} to go")
    with bench.pg_connect(bench.source_pg, BENCH_DATABASE) as conn:
        conn.execute("CHECKPOINT")
    size = database_bytes(bench)
    log(f"{BENCH_DATABASE}: {size / GB:.2f} GB (built in {time.perf_counter() - started:.0f}s)")
    return {"database": BENCH_DATABASE, "bytes": size, "pgbench_scale": scale}


def build_redis(bench: Bench, size_mb: int, log) -> dict:
    """Start the scratch Redis and fill it to about ``size_mb`` of values (1 kB random
    bytes each, keys ``bench:<n>``), by pipelined SETs."""
    redis = bench.redis(maxmemory=f"{max(2 * size_mb, 64)}mb")
    start_with_retries(redis)
    client = redis.client()
    client.connection_pool.connection_kwargs["socket_timeout"] = 60
    wanted = int(size_mb * MB / REDIS_VALUE_BYTES)
    present = client.dbsize()
    if present < wanted:
        log(f"redis: {wanted - present} keys to SET")
        pipe = client.pipeline(transaction=False)
        for n in range(present, wanted):
            pipe.set(f"bench:{n}", os.urandom(REDIS_VALUE_BYTES))
            if n % 5_000 == 4_999:
                pipe.execute()
        pipe.execute()
    used = int(client.info("memory")["used_memory"])
    client.close()
    log(f"redis: {wanted} keys, used_memory {used / MB:.0f} MB")
    return {"keys": wanted, "used_memory_bytes": used}
