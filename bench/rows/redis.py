"""Redis: a client doing GET/SET in a loop while the backup runs; its worst stall under
``redis-cli SAVE`` + cp versus the dbops Redis backup task (``redis-cli --rdb``)."""

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
            run_measured(argv, env=env, what=f"redis backup ({side})")
            ended = time.perf_counter()
            time.sleep(0.2)
        window = probe.window(started, ended)
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
    return [
        row(
            "redis_backup_stall",
            what=f"Redis with {dataset['used_memory_bytes'] / 1024**2:.0f} MB of data, "
            "a client doing GET/SET in a loop during the backup",
            old_way="`redis-cli SAVE` + cp",
            dbops_way="Redis backup task (`redis-cli --rdb`, redis-check-rdb)",
            metric="client's worst stall (s)",
            old=olds,
            dbops=news,
            target="<= 0.1x",
            ratio=ratio,
            met=ratio <= 0.1,
            details={"dataset": dataset, "client_windows": windows},
        )
    ]
