"""Redis: a client doing GET/SET in a loop while the backup runs; its worst stall under
``redis-cli SAVE`` + cp versus the dbops Redis backup task (BGSAVE + copy where the worker can read
the server's RDB file, else ``redis-cli --rdb``)."""

from __future__ import annotations

import json
import time

from bench import oldway
from bench.datasets import build_redis
from bench.measure import LatencyProbe, alternating, run_measured
from bench.rows import Context, ratio_of, row


def run(ctx: Context) -> list[dict]:
    bench = ctx.bench
    dataset = build_redis(bench, ctx.redis_mb, ctx.log)
    redis = bench.redis()
    env = bench.redis_env(redis)
    out = ctx.work / "old" / "redis.rdb"
    out.parent.mkdir(parents=True, exist_ok=True)
    root = ctx.work / "redis-backups"
    env["DBOPS_BACKUP__ROOT"] = str(root)
    client = redis.client()
    client.connection_pool.connection_kwargs["socket_timeout"] = 600
    counter = iter(range(10**12))

    def get_set() -> None:
        n = next(counter)
        client.set(f"probe:{n % 1000}", n)
        client.get(f"bench:{n % dataset['keys']}")

    windows: dict[str, list[dict]] = {"old": [], "dbops": []}

    def measured(side: str, argv: list[str]) -> float:
        with LatencyProbe(get_set, f"redis client ({side})") as probe:
            time.sleep(0.5)  # the client is in its loop before the job starts
            started = time.perf_counter()
            run = run_measured(argv, env=env, what=f"redis backup ({side})")
            ended = time.perf_counter()
            time.sleep(0.2)
        window = probe.window(started, ended)
        # the whole backup: snapshot, copy, checks (dbops: and the description); the dbops task's
        # own time, the old way's whole script
        window["wall_s"] = run.job_seconds if run.job_seconds is not None else run.seconds
        windows[side].append(window)
        return window["worst_s"]

    def old() -> float:
        script = oldway.REDIS_BACKUP.format(port=redis.port, rdb=oldway.q(redis.dir / "dump.rdb"), out=oldway.q(out))
        return measured("old", oldway.bash(script))

    def dbops() -> float:
        return measured("dbops", [ctx.python(), "-m", "bench.worker", "redis_backup", json.dumps({})])

    olds, news = alternating(ctx.repetitions, old, dbops)
    client.close()
    ratio = ratio_of(news, olds)
    wall_ratio = ratio_of([w["wall_s"] for w in windows["dbops"]], [w["wall_s"] for w in windows["old"]])
    return [
        row(
            "redis_backup_stall",
            what=f"Redis with {dataset['used_memory_bytes'] / 1024**2:.0f} MB of data, "
            "a client doing GET/SET in a loop during the backup",
            old_way="`redis-cli SAVE` + cp",
            dbops_way="Redis backup task (BGSAVE + copy, else `redis-cli --rdb`; redis-check-rdb)",
            metric="client's worst stall (s)",
            old=olds,
            dbops=news,
            target="worst stall <= 0.1x; wall time <= 1.0x",
            ratio=ratio,
            met=ratio <= 0.1 and wall_ratio <= 1.0,
            also={"wall time": wall_ratio},
            details={
                "dataset": dataset,
                "client_windows": windows,
                "wall_s": {side: [w["wall_s"] for w in windows[side]] for side in windows},
            },
        )
    ]
