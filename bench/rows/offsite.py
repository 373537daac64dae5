"""Offsite: the second rsync of unchanged backups, and S3 upload throughput.

Both use the dbops backup made by the Postgres backup row (the same bytes for both
sides of the S3 pair); the old rsync ships the dated folder holding the old way's
``postgres_full.sql.gz``, as backup-sync.sh does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from statistics import median

from bench import oldway
from bench.env import REMOTE_SUBDIR, S3_BUCKET
from bench.measure import BenchError, alternating, run_measured
from bench.rows import Context, ratio_of, row
from dbops.offsite.rsync import parse_rsync_stats
from dbops.tools import tree_bytes
from devstack import service


def _remote_root() -> Path:
    return service("offsite").home / REMOTE_SUBDIR


def _clear_remote() -> None:
    root = _remote_root()
    if root.exists():
        shutil.rmtree(root)


def _dbops_ship(ctx: Context, target: str, settings: dict) -> dict:
    env = ctx.bench.s3_env() if target == "s3" else ctx.bench.tool_env()
    env["DBOPS_BACKUP__ROOT"] = str(ctx.shared["pg_root"])
    args = json.dumps({"target": target, "stores": ["postgres"], "settings": settings})
    run = run_measured([ctx.python(), "-m", "bench.worker", "offsite", args], env=env, what=f"dbops offsite {target}")
    report = run.json_tail()
    report["seconds"] = run.seconds
    return report


def rsync_row(ctx: Context) -> list[dict]:
    if "pg_root" not in ctx.shared:
        raise BenchError("the offsite rows need the Postgres backup row's artifacts (run pg_backup first)")
    conn = service("offsite").connections()["dbops_offsite_ssh"]
    dated = ctx.work / "old-dated" / time.strftime("%Y%m%d")
    dated.mkdir(parents=True, exist_ok=True)
    (dated / "postgres_full.sql.gz").unlink(missing_ok=True)
    os.link(ctx.shared["pg_old_dump"], dated / "postgres_full.sql.gz")
    remote_dir = str(_remote_root())
    old_first, old_second, new_first, new_second = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="dbops-bench-ssh-") as keys:
        key_file, known = Path(keys) / "id", Path(keys) / "known_hosts"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, conn["extra"]["private_key"].encode())
        os.close(fd)
        known.write_text(f"[127.0.0.1]:{conn['port']} {conn['extra']['host_key']}\n")
        rsh = (
            f"ssh -p {conn['port']} -i {key_file} -o BatchMode=yes -o IdentitiesOnly=yes "
            f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes"
        )
        remote = f"{conn['login']}@127.0.0.1:{remote_dir}/"

        def old_sync() -> int:
            argv = oldway.bash(oldway.RSYNC.format(rsh=oldway.q(rsh), folder=oldway.q(dated), remote=oldway.q(remote)))
            stats = parse_rsync_stats(run_measured(argv, env=ctx.bench.tool_env(), what="rsync -avz").stdout)
            return stats.bytes_sent

        def old() -> float:
            _clear_remote()
            subprocess.run(["runuser", "-u", conn["login"], "--", "mkdir", "-p", remote_dir], check=True)
            old_first.append(old_sync())
            old_second.append(old_sync())
            return 100.0 * old_second[-1] / old_first[-1]

        def dbops() -> float:
            _clear_remote()
            settings = {"rsync_remote_dir": remote_dir}
            new_first.append(_dbops_ship(ctx, "rsync", settings)["wire_bytes"])
            second = _dbops_ship(ctx, "rsync", settings)
            if second["shipped"]:
                raise BenchError(f"second dbops sync shipped again: {second['shipped']}")
            new_second.append(second["wire_bytes"])
            return 100.0 * new_second[-1] / new_first[-1]

        olds, news = alternating(ctx.repetitions, old, dbops)
    _clear_remote()
    return [
        row(
            "offsite_second_sync",
            what="offsite second sync, nothing new",
            old_way="`rsync -avz --delete` of the dated folder",
            dbops_way="dbops_offsite_sync (rsync target)",
            metric="bytes sent by the second sync, % of the first",
            old=olds,
            dbops=news,
            target="<= 1 % of the first sync",
            ratio=median(news) / 100.0,
            met=median(news) <= 1.0,
            details={
                "old_bytes_first": old_first,
                "old_bytes_second": old_second,
                "dbops_bytes_first": new_first,
                "dbops_bytes_second": new_second,
                "note": "dbops bytes: rsync --stats of every transfer plus the catalog listing",
            },
        )
    ]


OLD_S3_UPLOAD = r"""
import json, os, sys, time
from pathlib import Path
import boto3
conn = json.loads(os.environ["BENCH_S3_CONN"])  # the secret never on a command line
folder, prefix, bucket = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
extra = conn["extra"]
client = boto3.client("s3", endpoint_url=extra["endpoint_url"], region_name=extra["region_name"],
                      aws_access_key_id=conn["login"], aws_secret_access_key=conn["password"])
total, started = 0, time.perf_counter()
for path in sorted(p for p in folder.rglob("*") if p.is_file()):
    client.upload_file(str(path), bucket, prefix + str(path.relative_to(folder)))
    total += path.stat().st_size
print(json.dumps({"bytes": total, "seconds": time.perf_counter() - started}))
"""


def s3_row(ctx: Context) -> list[dict]:
    if "pg_root" not in ctx.shared:
        raise BenchError("the S3 row needs the Postgres backup row's artifacts (run pg_backup first)")
    s3 = ctx.bench.s3
    client = s3.client()
    if S3_BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=S3_BUCKET)
    backup_dir = max((ctx.shared["pg_root"] / "postgres" / "dbops_bench").glob("2*"))
    size = tree_bytes(backup_dir)
    conn = s3.connections()["dbops_s3"]

    def empty_bucket() -> None:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=S3_BUCKET, Delete={"Objects": keys})

    def old() -> float:
        empty_bucket()
        env = ctx.bench.s3_env()
        env["BENCH_S3_CONN"] = json.dumps(conn)
        run = run_measured(
            [ctx.python(), "-c", OLD_S3_UPLOAD, str(backup_dir), "old/", S3_BUCKET], env=env, what="boto3 upload_file"
        )
        result = run.json_tail()
        return result["bytes"] / result["seconds"] / 1024**2

    def dbops() -> float:
        empty_bucket()
        report = _dbops_ship(ctx, "s3", {"s3_bucket": S3_BUCKET, "s3_prefix": "dbops"})
        shipped = [t for t in report["transfers"] if t["backup"].startswith("postgres/dbops_bench/")]
        if len(shipped) != 1:
            raise BenchError(f"dbops S3 sync did not ship the dbops_bench backup once: {report['summary']}")
        return shipped[0]["bytes"] / shipped[0]["seconds"] / 1024**2

    olds, news = alternating(ctx.repetitions, old, dbops)
    empty_bucket()
    client.delete_bucket(Bucket=S3_BUCKET)
    ratio = ratio_of(news, olds)
    return [
        row(
            "s3_upload",
            what=f"S3 upload of a {size / 1024**3:.2f} GB backup (the dbops backup of the Postgres row)",
            old_way="boto3 `upload_file`, default settings, file by file",
            dbops_way="dbops S3 upload (`dbops_offsite_sync` s3 target, then its arrival check)",
            metric="throughput (MiB/s)",
            old=olds,
            dbops=news,
            target=">= 1.0x",
            ratio=ratio,
            met=ratio >= 1.0,
            details={
                "backup_bytes": size,
                "timed": "the upload of this backup's files in both (no "
                "process start); dbops also heads every object after upload and puts its manifest last",
            },
        )
    ]


OLD_S3_DOWNLOAD = r"""
import json, os, sys, time
from pathlib import Path
import boto3
conn = json.loads(os.environ["BENCH_S3_CONN"])  # the secret never on a command line
folder, bucket, keys = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
extra = conn["extra"]
client = boto3.client("s3", endpoint_url=extra["endpoint_url"], region_name=extra["region_name"],
                      aws_access_key_id=conn["login"], aws_secret_access_key=conn["password"])
total, started = 0, time.perf_counter()
for index, key in enumerate(keys):
    path = folder / str(index)
    client.download_file(bucket, key, str(path))
    total += path.stat().st_size
print(json.dumps({"bytes": total, "seconds": time.perf_counter() - started}))
"""
RESTORED = "dbops_bench_restored"
TRANSFER_SHARE = 0.9  # the anchor's transfer runs at this share of boto3's download throughput


def restore_s3_row(ctx: Context) -> list[dict]:
    """dbops' restore of the Postgres backup from the S3 target (fetch, check, restore, compare)
    against its restore of the same backup from the local repository plus the transfer of its
    files at 0.9x the throughput of boto3's default ``download_file`` measured in the same run."""
    from bench.env import BENCH_DATABASE
    from dbops.offsite.s3 import CHECKSUMS_NAME

    if "pg_root" not in ctx.shared:
        raise BenchError("the S3 restore row needs the Postgres backup row's artifacts (run pg_backup first)")
    bench = ctx.bench
    s3 = bench.s3
    client = s3.client()
    if S3_BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=S3_BUCKET)
    settings = {"s3_bucket": S3_BUCKET, "s3_prefix": "dbops", "fetch_dir": str(ctx.work / "offsite-fetch")}
    shipped = _dbops_ship(ctx, "s3", {k: v for k, v in settings.items() if k != "fetch_dir"})
    if not any(t["backup"].startswith(f"postgres/{BENCH_DATABASE}/") for t in shipped["transfers"]):
        raise BenchError(f"dbops S3 sync did not ship the {BENCH_DATABASE} backup: {shipped['summary']}")
    backup_id = max((ctx.shared["pg_root"] / "postgres" / BENCH_DATABASE).glob("2*")).name
    folder = f"/postgres/{BENCH_DATABASE}/{backup_id}/"
    # the objects dbops' download fetches (all of the backup's folder but the S3 checksums record)
    objects = [
        o
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix="dbops/")
        for o in page.get("Contents", [])
        if folder in o["Key"] and not o["Key"].endswith("/" + CHECKSUMS_NAME)
    ]
    object_bytes = sum(int(o["Size"]) for o in objects)
    target_pg = bench.restore_pg
    env = bench.pg_env(target_pg)
    env.update({k: v for k, v in bench.s3_env().items() if k == "AIRFLOW_CONN_DBOPS_S3"})
    env["DBOPS_BACKUP__ROOT"] = str(ctx.shared["pg_root"])
    download_dir = ctx.work / "boto3-download"
    parts: dict[str, list[float]] = {"local_restore_s": [], "boto3_download_s": [], "s3_restore_s": []}
    dbops_download_s: list[float] = []

    def drop_restored() -> None:
        with bench.pg_connect(target_pg) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{RESTORED}" WITH (FORCE)')
        shutil.rmtree(settings["fetch_dir"], ignore_errors=True)

    def local() -> None:
        drop_restored()
        args = json.dumps({"database": BENCH_DATABASE, "target": RESTORED})
        run = run_measured([ctx.python(), "-m", "bench.worker", "pg_restore", args], env=env, what="dbops pg_restore")
        parts["local_restore_s"].append(run.task_seconds())

    def download() -> None:
        shutil.rmtree(download_dir, ignore_errors=True)
        download_dir.mkdir(parents=True)
        old_env = bench.s3_env()
        old_env["BENCH_S3_CONN"] = json.dumps(s3.connections()["dbops_s3"])
        keys = json.dumps([o["Key"] for o in objects])
        run = run_measured(
            [ctx.python(), "-c", OLD_S3_DOWNLOAD, str(download_dir), S3_BUCKET, keys],
            env=old_env,
            what="boto3 download_file",
        )
        result = run.json_tail()
        if result["bytes"] != object_bytes:
            raise BenchError(f"boto3 downloaded {result['bytes']} bytes, the objects hold {object_bytes}")
        parts["boto3_download_s"].append(result["seconds"])
        shutil.rmtree(download_dir)

    def from_s3() -> None:
        drop_restored()
        args = json.dumps({"source": "s3", "database": BENCH_DATABASE, "target": RESTORED, "settings": settings})
        run = run_measured(
            [ctx.python(), "-m", "bench.worker", "pg_restore_offsite", args], env=env, what="dbops restore from S3"
        )
        parts["s3_restore_s"].append(run.task_seconds())
        dbops_download_s.append(float((run.json_tail().get("download") or {}).get("seconds") or 0.0))

    sides = [local, download, from_s3]
    try:
        for index in range(ctx.repetitions):
            ctx.log(f"restore from S3 repetition {index + 1}/{ctx.repetitions}")
            for side in sides[index % 3 :] + sides[: index % 3]:  # rotating order
                side()
    finally:
        drop_restored()
        empty = [
            {"Key": o["Key"]}
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET)
            for o in page.get("Contents", [])
        ]
        for start in range(0, len(empty), 1000):
            client.delete_objects(Bucket=S3_BUCKET, Delete={"Objects": empty[start : start + 1000]})
        client.delete_bucket(Bucket=S3_BUCKET)
    # per repetition: that repetition's local restore plus its transfer at 0.9x boto3's throughput
    anchors = [
        restore + download / TRANSFER_SHARE
        for restore, download in zip(parts["local_restore_s"], parts["boto3_download_s"], strict=True)
    ]
    throughput = [object_bytes / s / 1024**2 for s in parts["boto3_download_s"]]
    ratio = ratio_of(parts["s3_restore_s"], anchors)
    local_s, transfer_s = median(parts["local_restore_s"]), median(parts["boto3_download_s"]) / TRANSFER_SHARE
    return [
        row(
            "pg_restore_s3",
            what=f"Postgres restore of that backup from S3 ({object_bytes / 1024**3:.2f} GB) vs from local",
            old_way=f"anchor: dbops restore from the local repository ({local_s:.1f} s) + the transfer at "
            f"0.9x boto3 `download_file` throughput ({median(throughput):.0f} MiB/s: {transfer_s:.1f} s)",
            dbops_way="`dbops_restore` with `source: s3` (fetch, check every file, `restore_postgres`, "
            "remove the fetched copy)",
            metric="wall time (s)",
            old=anchors,
            dbops=parts["s3_restore_s"],
            target="<= 1.0x (local restore + transfer at 0.9x the S3 throughput)",
            ratio=ratio,
            met=ratio <= 1.0,
            details={
                **{k: [round(v, 3) for v in values] for k, values in parts.items()},
                "boto3_download_mib_s": [round(v, 1) for v in throughput],
                "dbops_download_s": dbops_download_s,
                "object_bytes": object_bytes,
                "objects": len(objects),
                "transfer_share": TRANSFER_SHARE,
                "timed": "both restores from the worker's JOB START to JOB END (the task's own work), the boto3 "
                "download around its download_file calls; the S3 side's fetched copy is removed after its "
                "restore, as the restore task does",
            },
        )
    ]
