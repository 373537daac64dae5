"""Point-in-time recovery: dbops (the ``pg_receivewal`` receiver service, ``take_base_backup``,
``plan_recovery`` + ``recover``) against Barman 3.19.1 (``streaming_archiver``, ``backup_method =
postgres``, ``barman recover``), both streaming from the source scratch cluster at the same time,
under the same writer, on the same database.

The writer commits numbered rows (``bench_pitr_writes.id`` is its own counter, so which commits
were acknowledged is known exactly) in one transaction each, as fast as one connection can. The
"hour of WAL" of the restore row is a fixed WAL volume (``wal_mb``, 512 MB per GB of database:
1 GiB at the full 2 GB; a busy hour of a small platform), produced by bulk inserts while the
writer keeps committing; the target time lies between two known commits at 90 % of it.

Rows (ids): ``pitr_base_backup`` (wall time, writer running; both wait until the backup's WAL is
in their archive), ``pitr_restore_time`` (restore to that time up to a promoted running server,
the rows checked against the writer's), ``pitr_recovery_point`` (SIGKILL of the postmaster with the
writer running, each repository restored to its end; acknowledged commits missing, in seconds of
commits), ``pitr_repository_bytes`` (one base backup + the WAL of the hour) and, in a step of
its own after the large memory database exists, ``pitr_memory`` (peak RSS of the dbops worker
during a base backup and a restore at two sizes).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from statistics import median

from bench.barman import SERVER as BARMAN_SERVER
from bench.barman import SLOT as BARMAN_SLOT
from bench.barman import Barman, ensure_installed, passfile_line
from bench.datasets import GB, MB, build_postgres, database_bytes
from bench.env import BENCH_DATABASE, start_with_retries, state_dir
from bench.measure import BenchError, alternating, run_measured
from bench.rows import Context, ratio_of, row
from dbops.sqlfiles import load_sql
from devstack.core import secret
from devstack.services.postgres import USER as PG_OS_USER
from devstack.services.postgres import pg_bin

DBOPS_SLOT = "dbops_bench_pitr"
WAL_MB_PER_GB = 512  # the restore row's "hour of WAL" per GB of database
TARGET_AT = 0.9  # the target time lies at this fraction of that WAL
KILL_AFTER_S = {True: 2.0, False: 10.0}  # writer running before the SIGKILL (smoke, full)
RECEIVER_READY_S = 60


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _traversable(path: Path) -> None:
    """Every parent of ``path`` must let the cluster's OS user through (o+x): the restored
    servers (both sides) live below it. The benchmark's own temporary work folder is opened up;
    any other parent that is closed is an error naming it."""
    for parent in [path, *path.parents]:
        if parent.stat().st_mode & 0o001:
            continue
        if parent.is_relative_to(path) or parent.name.startswith("dbops-bench-"):
            parent.chmod(parent.stat().st_mode | 0o711)
        else:
            raise BenchError(f"{parent} is not traversable by {PG_OS_USER} (o+x): the restored servers live below it")


class Area:
    """The folders of the PITR rows under the work folder (made anew for each run)."""

    def __init__(self, ctx: Context) -> None:
        self.root = ctx.work / "pitr"
        self.dbops_root = self.root / "dbops"  # the dbops backup root (postgres_wal/, postgres_pitr/)
        self.barman_home = self.root / "barman"
        self.scratch = self.root / "scratch"  # restored servers, both sides
        self.receiver_dir = self.root / "receiver"

    def create(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        _traversable(self.root)
        self.dbops_root.mkdir(mode=0o700)
        self.receiver_dir.mkdir(mode=0o700)
        self.scratch.mkdir(mode=0o711)


def _sql(ctx: Context, name: str, params: dict | None = None, *, dbname: str = BENCH_DATABASE):
    """One statement of ``include/sql/bench/<name>.sql`` on the source cluster; its rows."""
    with ctx.bench.pg_connect(ctx.bench.source_pg, dbname) as conn:
        cur = conn.execute(load_sql(f"bench/{name}.sql"), params or {})
        return cur.fetchall() if cur.description else None


def _connect_port(port: int, dbname: str = BENCH_DATABASE):
    import psycopg

    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        user="postgres",
        password=secret("postgres_password"),
        dbname=dbname,
        autocommit=True,
        connect_timeout=5,
    )


def _wal_position(ctx: Context) -> tuple[int, datetime]:
    wal_bytes, now = _sql(ctx, "pitr_wal_position")[0]
    return int(wal_bytes), now


# --------------------------------------------------------------------------- the writer


class NumberedWriter:
    """One connection committing ``bench_pitr_writes`` rows 1, 2, 3, ... one per transaction.
    ``acked`` is the highest id whose COMMIT returned. A connection error ends it (the server was
    killed): recorded, never raised."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.acked = 0
        self.started_at = 0.0
        self.stopped_at = 0.0
        self.error: str | None = None
        self._stop = threading.Event()
        self._pause = threading.Event()
        self._paused = threading.Event()
        self._resume = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pitr-writer", daemon=True)
        self._sql = load_sql("bench/pitr_write.sql")

    def _loop(self) -> None:
        try:
            conn = self.ctx.bench.pg_connect(self.ctx.bench.source_pg, BENCH_DATABASE)
        except Exception as exc:  # noqa: BLE001 (recorded; the row checks it)
            self.error = f"{type(exc).__name__}: {exc}"
            return
        self.started_at = time.perf_counter()
        try:
            while not self._stop.is_set():
                if self._pause.is_set():
                    self._paused.set()
                    self._resume.wait()
                    self._resume.clear()
                    self._paused.clear()
                    continue
                n = self.acked + 1
                conn.execute(self._sql, {"id": n, "note": f"commit {n}"})
                self.acked = n
        except Exception as exc:  # noqa: BLE001 (the kill of the recovery point row)
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.stopped_at = time.perf_counter()
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass

    def start(self) -> NumberedWriter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._resume.set()
        self._thread.join(timeout=60)

    def rate(self) -> float:
        """Commits per second over the writer's life so far."""
        end = self.stopped_at if not self._thread.is_alive() else time.perf_counter()
        return self.acked / max(end - self.started_at, 1e-9)

    @contextmanager
    def paused(self):
        """Between two commits: nothing of the writer is in flight inside the block."""
        self._pause.set()
        if not self._paused.wait(timeout=30):
            raise BenchError(f"the writer did not pause (error: {self.error})")
        try:
            yield self.acked
        finally:
            self._pause.clear()
            self._resume.set()

    def __enter__(self) -> NumberedWriter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_wal(
    ctx: Context, megabytes: float, *, at_fraction: float | None = None, writer: NumberedWriter | None = None
) -> dict:
    """Bulk inserts until the server's WAL has grown by ``megabytes``. With ``at_fraction``,
    the writer is paused once that fraction is written and the server's clock read between
    its two commits: the target time, and the last id committed before it."""
    start, _ = _wal_position(ctx)
    goal = start + megabytes * MB
    mark = None
    bulk = load_sql("bench/pitr_bulk.sql")
    rows = 2_000 if ctx.smoke else 10_000
    with ctx.bench.pg_connect(ctx.bench.source_pg, BENCH_DATABASE) as conn:
        while True:
            position = int(conn.execute(load_sql("bench/pitr_wal_position.sql")).fetchone()[0])
            if mark is None and at_fraction is not None and position >= start + at_fraction * megabytes * MB:
                assert writer is not None
                with writer.paused() as last_id:
                    time.sleep(0.05)
                    target = conn.execute(load_sql("bench/pitr_wal_position.sql")).fetchone()[1]
                    time.sleep(0.05)
                mark = {"target_time": target, "last_id_before": last_id}
                ctx.log(f"target time {target.isoformat()}: {last_id} writer commits before it")
            if position >= goal:
                break
            conn.execute(bulk, {"rows": rows})
    end, _ = _wal_position(ctx)
    return {"wal_bytes": end - start, **(mark or {})}


# --------------------------------------------------------------------------- dbops side


def dbops_env(ctx: Context, area: Area) -> dict[str, str]:
    """The worker's environment: the task's settings and connections, pointed at the bench."""
    bench = ctx.bench
    env = bench.pg_env(bench.source_pg)
    conn = env["AIRFLOW_CONN_DBOPS_POSTGRES"]
    env.update(
        {
            "AIRFLOW_CONN_DBOPS_POSTGRES_REPLICATION": conn,  # the superuser may replicate here
            "DBOPS_BACKUP__ROOT": str(area.dbops_root),
            "DBOPS_PITR__SLOT": DBOPS_SLOT,
            "DBOPS_PITR__SCRATCH_DIR": str(area.scratch),
            "DBOPS_PITR__SCRATCH_OS_USER": PG_OS_USER,
            "DBOPS_PITR__SERVER_BIN": str(pg_bin()),
        }
    )
    return env


class DbopsReceiver:
    """``python -m dbops.pitr.receiver`` streaming from the bench's source cluster into the
    dbops root, as the walreceiver service runs it (password from a 0600 passfile only)."""

    def __init__(self, ctx: Context, area: Area) -> None:
        self.ctx, self.area = ctx, area
        self.proc: subprocess.Popen | None = None
        self.passfile = area.receiver_dir / "pgpass"

    def env(self) -> dict[str, str]:
        server = self.ctx.bench.source_pg
        fd = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(passfile_line("127.0.0.1", server.port, "postgres", secret("postgres_password")))
        env = {
            k: v
            for k, v in dbops_env(self.ctx, self.area).items()
            if k not in ("PGPASSWORD", "PGDATABASE", "PGSERVICE")
        }
        env.update(
            PGHOST="127.0.0.1",
            PGPORT=str(server.port),
            PGUSER="postgres",
            PGPASSFILE=str(self.passfile),
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self) -> None:
        from dbops.pitr.wal import WAL_DIR, WalArchive

        out = open(self.area.receiver_dir / "receiver.log", "ab")
        self.proc = subprocess.Popen(
            [self.ctx.python(), "-m", "dbops.pitr.receiver"],
            env=self.env(),
            cwd="/",
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        archive = WalArchive(self.area.dbops_root / WAL_DIR)
        deadline = time.monotonic() + RECEIVER_READY_S
        problem = "no heartbeat yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"the dbops WAL receiver exited ({self.proc.returncode}): {self.log_tail()}")
            # receiver.json (the design's heartbeat): "streaming" once pg_receivewal runs
            try:
                status = json.loads(archive.status_path.read_text())
                problem = f"state {status.get('state')!r} ({status.get('error')})"
            except (OSError, ValueError):
                status = {}
            if status.get("state") == "streaming" and any(archive.segments.glob("*.partial")):
                return
            time.sleep(0.2)
        raise BenchError(
            f"the dbops WAL receiver is not streaming after {RECEIVER_READY_S}s ({problem}): {self.log_tail()}"
        )

    def log_tail(self) -> str:
        try:
            return (self.area.receiver_dir / "receiver.log").read_text()[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # it stops pg_receivewal and seals what completed
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.proc = None

    def wait_sealed(self, timeout: float = 300) -> None:
        """Until no completed segment waits to be sealed (the WAL phase's bytes are final)."""
        from dbops.pitr.wal import WAL_DIR, WalArchive

        archive = WalArchive(self.area.dbops_root / WAL_DIR)
        deadline = time.monotonic() + timeout
        while archive.completed_unsealed():
            if time.monotonic() > deadline:
                raise BenchError(f"dbops left segments unsealed for {timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.2)

    def has_sealed(self, name: str) -> bool:
        from dbops.pitr.wal import WAL_DIR, WalArchive

        return any(entry.name == name for entry in WalArchive(self.area.dbops_root / WAL_DIR).entries())


def archive_everything(ctx: Context, barman: Barman, dbops_receiver: DbopsReceiver, timeout: float = 300) -> str:
    """Complete the current segment and wait until both repositories hold it, and every
    segment before it, in their final form (dbops: sealed; Barman: archived by ``archive-wal``,
    which its cron runs every minute, and which leaves the newest completed segment for its
    next run: so one more segment is completed until it has been archived). Returns its name."""
    # a row first: on an idle server the switch would name a segment finished before the
    # receivers started (which neither holds)
    _sql(ctx, "pitr_touch")
    name = _sql(ctx, "pitr_switch_wal", dbname="postgres")[0][0]
    deadline = time.monotonic() + timeout
    newest = name
    while True:
        while not (barman.has_segment(newest) and dbops_receiver.has_sealed(newest)):
            if time.monotonic() > deadline:
                raise BenchError(
                    f"segment {newest} did not reach both repositories within {timeout:.0f}s "
                    f"(barman: {barman.has_segment(newest)}, dbops: {dbops_receiver.has_sealed(newest)})"
                )
            time.sleep(0.1)
        barman.run("archive-wal", BARMAN_SERVER)
        if name in barman.archived_sizes():
            break
        _sql(ctx, "pitr_touch")
        newest = _sql(ctx, "pitr_switch_wal", dbname="postgres")[0][0]
    dbops_receiver.wait_sealed()
    return name


def wal_range_bytes(barman: Barman, dbops_receiver: DbopsReceiver, after: str, upto: str) -> dict[str, int]:
    """Bytes each repository keeps for the segments after ``after`` up to ``upto`` (the same
    segments on both sides: compressed and sealed/archived)."""
    from dbops.pitr.wal import WAL_DIR, WalArchive

    barman_sizes = {n: b for n, b in barman.archived_sizes().items() if after < n <= upto}
    dbops_sizes = {
        e.name: e.size
        for e in WalArchive(dbops_receiver.area.dbops_root / WAL_DIR).entries()
        if e.kind == "segment" and after < e.name <= upto
    }
    if set(barman_sizes) != set(dbops_sizes) or not dbops_sizes:
        raise BenchError(
            f"the repositories hold different segments for {after}..{upto}: "
            f"barman {sorted(barman_sizes)}, dbops {sorted(dbops_sizes)}"
        )
    return {"barman": sum(barman_sizes.values()), "dbops": sum(dbops_sizes.values()), "segments": len(dbops_sizes)}


def dbops_base_backup(ctx: Context, area: Area) -> tuple[float, int, int]:
    """(seconds, peak RSS of the worker's process tree, bytes of the published base backup)."""
    run = run_measured(
        [ctx.python(), "-m", "bench.worker", "pitr_base_backup", "{}"],
        env=dbops_env(ctx, area),
        what="dbops take_base_backup",
        skip_forks=True,
    )
    result = run.json_tail()
    return run.seconds, run.peak_rss_bytes, int(result["total_bytes"])


def dbops_restore(ctx: Context, area: Area, target_time: datetime | None) -> tuple[float, int, dict]:
    """plan_recovery + recover into a scratch server, up to promoted (the worker returns then);
    (seconds, peak RSS without the scratch server's own processes, the worker's result)."""
    args = {"target_time": target_time.isoformat() if target_time else None}
    run = run_measured(
        [ctx.python(), "-m", "bench.worker", "pitr_restore", json.dumps(args)],
        env=dbops_env(ctx, area),
        what="dbops plan_recovery + recover",
        exclude=("postgres",),
        skip_forks=True,
    )
    return run.seconds, run.peak_rss_bytes, run.json_tail()


# --------------------------------------------------------------------------- restored servers


def _pg_ctl(*args: str, what: str, timeout: float = 3600) -> None:
    done = subprocess.run(
        ["runuser", "-u", PG_OS_USER, "--", str(pg_bin() / "pg_ctl"), *args],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=timeout,
    )
    if done.returncode != 0:
        raise BenchError(f"{what} failed: {(done.stderr or done.stdout)[-2000:]}")


def wait_promoted(port: int, timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    last = "no connection"
    while time.monotonic() < deadline:
        try:
            with _connect_port(port, "postgres") as conn:
                if conn.execute(load_sql("bench/pitr_recovering.sql")).fetchone()[0] is False:
                    return
                last = "still in recovery"
        except Exception as exc:  # noqa: BLE001 (starting up)
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    raise BenchError(f"the restored server on port {port} was not promoted within {timeout:.0f}s ({last})")


def written(port: int) -> tuple[int, int]:
    """(rows, highest id) of the writer's table on a restored server."""
    with _connect_port(port) as conn:
        count, max_id = conn.execute(load_sql("bench/pitr_written.sql")).fetchone()
    return int(count), int(max_id)


def stop_restored(area: Area, data_dir: Path) -> None:
    """Stop a restored server and remove its folder (the data directory's parent, one per
    restore, both sides), which must lie in the scratch area."""
    folder = data_dir.parent
    if folder.parent != area.scratch:
        raise BenchError(f"{data_dir} is not a restore folder in {area.scratch}: not removed")
    if (data_dir / "postmaster.pid").exists():
        _pg_ctl("-D", str(data_dir), "-m", "immediate", "-w", "stop", what=f"pg_ctl stop {data_dir}")
    shutil.rmtree(folder, ignore_errors=True)


def barman_restore(
    barman: Barman, area: Area, target_time: datetime | None, *, partial: bool = False
) -> tuple[float, int, Path]:
    """``barman recover`` into a new folder, then that server started until promoted:
    (seconds, port, data directory). ``target_time`` None: to the end of the WAL Barman has
    (with ``partial``: its streamed ``.partial`` segment too)."""
    folder = area.scratch / f"restore-barman-{time.monotonic_ns()}"
    folder.mkdir(mode=0o700)
    shutil.chown(folder, PG_OS_USER, PG_OS_USER)
    data, port = folder / "data", free_port()
    args = ["recover"]
    if target_time is not None:
        args += ["--target-time", target_time.isoformat(), "--target-action", "promote"]
    if partial:
        args += ["--no-get-wal", "--partial-wal"]
    started = time.perf_counter()
    barman.run(*args, BARMAN_SERVER, "latest", str(data), what="barman recover")
    handed = time.perf_counter()
    barman.hand_over(data)  # Barman runs as root here; not timed (a Barman user would not need it)
    started += time.perf_counter() - handed
    _pg_ctl(
        "-D",
        str(data),
        "-l",
        str(folder / "postgres.log"),
        "-o",
        f"-h 127.0.0.1 -p {port} -k {folder}",
        "-w",
        "-t",
        "3600",
        "start",
        what="starting the server barman recovered",
    )
    wait_promoted(port)
    return time.perf_counter() - started, port, data


# --------------------------------------------------------------------------- the source server


def kill_source(ctx: Context) -> None:
    """SIGKILL of the source postmaster; waits until every process of the cluster is gone."""
    import psutil

    server = ctx.bench.source_pg
    pid = int((server.data / "postmaster.pid").read_text().split()[0])
    postmaster = psutil.Process(pid)
    children = postmaster.children(recursive=True)
    os.kill(pid, signal.SIGKILL)
    _gone, alive = psutil.wait_procs([postmaster, *children], timeout=60)
    if alive:
        raise BenchError(f"processes of the killed cluster still alive after 60 s: {[p.pid for p in alive]}")


@contextmanager
def streaming(ctx: Context, area: Area, barman: Barman | None):
    """Both receivers streaming for the block, stopped after it. Their slots stay (a dropped
    slot would let the server recycle WAL not yet received): :func:`drop_slots` at the end."""
    dbops = DbopsReceiver(ctx, area)
    try:
        dbops.start()
        if barman is not None:
            barman.start_receiver()
        yield dbops
    finally:
        if barman is not None:
            barman.stop_receiver()
        dbops.stop()


def drop_slots(ctx: Context, timeout: float = 30) -> None:
    """Drop the benchmark's slots (left behind, they would keep WAL forever), once the
    stopped receivers' walsenders have let go of them."""
    if not ctx.bench.source_pg.running():
        return
    deadline = time.monotonic() + timeout
    for slot in (DBOPS_SLOT, BARMAN_SLOT):
        while (state := _sql(ctx, "pitr_slot_active", {"slot": slot}, dbname="postgres")) and state[0][0]:
            if time.monotonic() > deadline:
                raise BenchError(f"replication slot {slot} is still in use {timeout:.0f}s after its receiver stopped")
            time.sleep(0.2)
        _sql(ctx, "pitr_slot_drop", {"slot": slot}, dbname="postgres")


# --------------------------------------------------------------------------- the rows


def _base_backup_compression() -> str:
    """What ``auto`` resolves to with the local stack's pg_basebackup (the one the workers run)."""
    from dbops.pitr.basebackup import resolve_compression

    return resolve_compression("auto", str(state_dir() / "bin" / "pg_basebackup"))


def rows(ctx: Context) -> list[dict]:
    bench = ctx.bench
    dataset = build_postgres(bench, ctx.pg_gb, ctx.log)
    area = Area(ctx)
    area.create()
    barman = Barman(
        ensure_installed(ctx.log),
        area.barman_home,
        port=bench.source_pg.port,
        password=secret("postgres_password"),
        os_user=PG_OS_USER,
        bin_dir=state_dir() / "bin",
    )
    barman.write_config()
    drop_slots(ctx)  # a run that died left them: they would start from its position
    _sql(ctx, "pitr_tables")
    wal_mb = max(32.0, WAL_MB_PER_GB * ctx.pg_gb)
    result: list[dict] = []
    try:
        with streaming(ctx, area, barman) as dbops_receiver:
            # Barman's set-up step (`switch-wal --archive`): its check wants one archived segment
            archive_everything(ctx, barman, dbops_receiver)
            out = barman.run("check", BARMAN_SERVER, what="barman check")
            result += _backup_and_restore_rows(ctx, area, barman, dbops_receiver, dataset, wal_mb, out)
        result += _recovery_point_row(ctx, area, barman)
    finally:
        drop_slots(ctx)
        if bench.source_pg.running():
            _sql(ctx, "pitr_tables_drop")
    shutil.rmtree(area.root, ignore_errors=True)  # several GB at full size; kept when a row failed
    return result


def _backup_and_restore_rows(
    ctx: Context,
    area: Area,
    barman: Barman,
    dbops_receiver: DbopsReceiver,
    dataset: dict,
    wal_mb: float,
    barman_check: str,
) -> list[dict]:
    times: dict[str, list[float]] = {"barman": [], "dbops": []}
    sizes: dict[str, list[int]] = {"barman": [], "dbops": []}
    rss: list[int] = []
    with NumberedWriter(ctx) as writer:

        def barman_backup() -> float:
            before = len(barman.base_bytes())
            run = run_measured(barman.argv("backup", "--wait", BARMAN_SERVER), env=barman.env(), what="barman backup")
            after = barman.base_bytes()
            if len(after) != before + 1:
                raise BenchError(f"barman backup ended without a new base backup: {run.stdout[-2000:]}")
            sizes["barman"].append(after[-1])
            times["barman"].append(run.seconds)
            return run.seconds

        def dbops_backup() -> float:
            seconds, peak, total = dbops_base_backup(ctx, area)
            sizes["dbops"].append(total)
            times["dbops"].append(seconds)
            rss.append(peak)
            return seconds

        ctx.log(f"pitr base backups under the writer ({ctx.repetitions} each)")
        alternating(ctx.repetitions, barman_backup, dbops_backup)
        ctx.log(f"pitr base backups: barman {times['barman']}, dbops {times['dbops']} s")
        if writer.error:
            raise BenchError(f"the writer failed during the base backups: {writer.error}")
        # the hour of WAL after the newest base backups, in both archives
        wal_start = archive_everything(ctx, barman, dbops_receiver)
        ctx.log(f"pitr: {wal_mb:.0f} MB of WAL under the writer")
        phase = time.perf_counter()
        mark = make_wal(ctx, wal_mb, at_fraction=TARGET_AT, writer=writer)
        writer_rate = writer.rate()
        ctx.log(f"pitr: WAL written in {time.perf_counter() - phase:.1f}s")
    if writer.error:
        raise BenchError(f"the writer failed during the WAL phase: {writer.error}")
    # every completed segment archived on both sides (Barman's cron would do this every minute)
    phase = time.perf_counter()
    wal_end = archive_everything(ctx, barman, dbops_receiver)
    ctx.log(f"pitr: both archives caught up in {time.perf_counter() - phase:.1f}s")
    wal_delta = wal_range_bytes(barman, dbops_receiver, wal_start, wal_end)
    target, expected = mark["target_time"], mark["last_id_before"]
    restores: dict[str, list[float]] = {"barman": [], "dbops": []}
    restore_rss: list[int] = []

    def check_rows(side: str, port: int) -> None:
        count, max_id = written(port)
        if (count, max_id) != (expected, expected):
            raise BenchError(
                f"{side} restored to {target.isoformat()} holds writer rows {count} (highest {max_id}), "
                f"expected exactly 1..{expected}"
            )

    def barman_side() -> float:
        seconds, port, data = barman_restore(barman, area, target)
        try:
            check_rows("barman", port)
        finally:
            stop_restored(area, data)
        restores["barman"].append(seconds)
        return seconds

    def dbops_side() -> float:
        seconds, peak, summary = dbops_restore(ctx, area, target)
        port, data = int(summary["port"]), Path(summary["data_dir"])
        try:
            check_rows("dbops", port)
        finally:
            stop_restored(area, data)
        restores["dbops"].append(seconds)
        restore_rss.append(peak)
        return seconds

    ctx.log(f"pitr restores to {target.isoformat()} ({ctx.repetitions} each)")
    alternating(ctx.repetitions, barman_side, dbops_side)
    # per repetition: the larger of the base backup's and the restore's peak
    ctx.shared["pitr_memory"] = {
        "bytes": dataset["bytes"],
        "peak_rss_mb": [max(a, b) / MB for a, b in zip(rss, restore_rss, strict=True)],
        "base_backup_mb": [a / MB for a in rss],
        "restore_mb": [b / MB for b in restore_rss],
    }
    # per repetition: that repetition's base backup + the WAL of the hour (the same WAL for all)
    repo_bytes = {side: [size + wal_delta[side] for size in sizes[side]] for side in ("barman", "dbops")}
    backup_ratio = ratio_of(times["dbops"], times["barman"])
    restore_ratio = ratio_of(restores["dbops"], restores["barman"])
    bytes_ratio = ratio_of(repo_bytes["dbops"], repo_bytes["barman"])
    common = {
        "database_bytes": dataset["bytes"],
        "barman": "3.19.1, backup_method postgres, streaming_archiver on, "
        "backup_compression gzip (tar, its default level), WAL compression gzip",
        "dbops_compression": f"base backup auto ({_base_backup_compression()} with this pg_basebackup), WAL gzip:1",
        "writer_commits_per_s": round(writer_rate, 1),
        "barman_check": barman_check.strip().splitlines()[-12:],
    }
    return [
        row(
            "pitr_base_backup",
            what=f"PITR base backup of {dataset['bytes'] / GB:.2f} GB with a writer committing",
            old_way="`barman backup --wait` (pg_basebackup tar, gzip)",
            dbops_way="`take_base_backup` (pg_basebackup tar, auto compression, published once its WAL is sealed)",
            metric="wall time (s)",
            old=times["barman"],
            dbops=times["dbops"],
            target="<= 1.0x",
            ratio=backup_ratio,
            met=backup_ratio <= 1.0,
            details={
                **common,
                "base_backup_bytes": {k: int(median(v)) for k, v in sizes.items()},
                "dbops_peak_rss_bytes": max(rss),
            },
        ),
        row(
            "pitr_restore_time",
            what=f"PITR restore to a time after {mark['wal_bytes'] / MB:.0f} MB of WAL "
            f'(the "hour of WAL"), up to a promoted running server',
            old_way="`barman recover --target-time` + `pg_ctl start` until promoted",
            dbops_way="`plan_recovery` + `recover` (scratch server, until promoted)",
            metric="wall time (s)",
            old=restores["barman"],
            dbops=restores["dbops"],
            target="<= 1.0x",
            ratio=restore_ratio,
            met=restore_ratio <= 1.0,
            details={
                **common,
                "wal_bytes": mark["wal_bytes"],
                "target_fraction": TARGET_AT,
                "writer_rows_expected_and_found": expected,
                "note": "both restored servers hold exactly the writer's rows 1..N committed before the target",
            },
        ),
        row(
            "pitr_repository_bytes",
            what=f"PITR repository: one base backup + {mark['wal_bytes'] / MB:.0f} MB of WAL",
            old_way="Barman: base backup folder + the archived (gzip) segments of that WAL",
            dbops_way="dbops: postgres_pitr/ backup + the sealed (gzip:1) segments of that WAL",
            metric="bytes",
            old=repo_bytes["barman"],
            dbops=repo_bytes["dbops"],
            target="<= 1.0x",
            ratio=bytes_ratio,
            met=bytes_ratio <= 1.0,
            details={
                **common,
                "base_backup_bytes": {k: int(median(v)) for k, v in sizes.items()},
                "wal_repository_bytes": wal_delta,
                "wal_bytes_written": mark["wal_bytes"],
                "note": "the same segments on both sides (catalog / xlog.db sizes); a day of WAL adds "
                "to both the same way, so the ratio is given for one base backup plus this WAL",
            },
        ),
    ]


def _restored_end(ctx: Context, area: Area, barman: Barman, side: str) -> int:
    """The highest writer row in ``side``'s repository restored to its end."""
    if side == "dbops":
        _seconds, _peak, summary = dbops_restore(ctx, area, None)
        port, data = int(summary["port"]), Path(summary["data_dir"])
    else:
        barman.run("archive-wal", BARMAN_SERVER)  # what its cron does every minute
        _seconds, port, data = barman_restore(barman, area, None, partial=True)
    try:
        return written(port)[1]
    finally:
        stop_restored(area, data)


def _recovery_point_row(ctx: Context, area: Area, barman: Barman) -> list[dict]:
    """SIGKILL of the postmaster under the writer; each repository restored to its end (dbops:
    latest, with the receiver's ``.partial``; Barman: ``recover --partial-wal``, its streamed
    partial segment included). Missing = acknowledged commits not in the restored server."""
    bench = ctx.bench
    missing: dict[str, list[int]] = {"barman": [], "dbops": []}
    seconds_of_commits: dict[str, list[float]] = {"barman": [], "dbops": []}
    runs: list[dict] = []
    for index in range(ctx.repetitions):
        _sql(ctx, "pitr_tables")
        dbops_receiver = DbopsReceiver(ctx, area)
        try:
            dbops_receiver.start()
            barman.start_receiver()
            with NumberedWriter(ctx) as writer:
                time.sleep(KILL_AFTER_S[ctx.smoke])
                killed_at = time.perf_counter()
                kill_source(ctx)
                writer._thread.join(timeout=30)  # it ends on the broken connection
            if writer.stopped_at < killed_at:
                raise BenchError(f"the writer stopped before the kill: {writer.error}")
            acked, rate = writer.acked, writer.rate()
            ctx.log(
                f"recovery point {index + 1}/{ctx.repetitions}: server killed, {acked} commits acknowledged "
                f"({rate:.0f}/s)"
            )
            barman.wait_receiver_exit(timeout=30)
        finally:
            # what each repository holds is now fixed: neither receiver may see the restarted server
            barman.stop_receiver()
            dbops_receiver.stop()
        run = {"acked": acked, "commits_per_s": rate}
        try:
            for side in ("dbops", "barman") if index % 2 == 0 else ("barman", "dbops"):
                restored = _restored_end(ctx, area, barman, side)
                lost = max(acked - restored, 0)  # the commit in flight at the kill may be there too
                run[f"{side}_restored"] = restored
                missing[side].append(lost)
                seconds_of_commits[side].append(lost / rate)
        finally:
            start_with_retries(bench.source_pg)
        runs.append(run)
    dbops_s = median(seconds_of_commits["dbops"])
    return [
        row(
            "pitr_recovery_point",
            what="PITR recovery point: postmaster SIGKILLed under a committing writer",
            old_way="Barman streaming: `barman recover --partial-wal` to the end",
            dbops_way="receiver service: restore `latest` (sealed segments + the .partial)",
            metric="acknowledged commits lost, in seconds of the writer's commits",
            old=seconds_of_commits["barman"],
            dbops=seconds_of_commits["dbops"],
            target="dbops median <= 1 s of commits (ratio: dbops median / 1 s)",
            ratio=dbops_s,
            met=dbops_s <= 1.0,
            details={
                "missing_commits": missing,
                "runs": runs,
                "kill_after_s": KILL_AFTER_S[ctx.smoke],
                "how": "numbered rows, one commit each; acknowledged = COMMIT returned before the SIGKILL; "
                "each repository restored to its end and its highest row counted",
            },
        )
    ]


def memory_row(ctx: Context) -> list[dict]:
    """Peak RSS of the dbops worker (base backup, restore latest) at the large memory size,
    against the same at the PITR rows' size."""
    if "pitr_memory" not in ctx.shared:
        raise BenchError("the PITR memory row needs the PITR rows' measurement (run pitr first)")
    bench = ctx.bench
    build_postgres(bench, ctx.memory_gb[1], ctx.log)
    area = Area(ctx)
    area.create()
    peaks: list[float] = []
    parts: dict[str, list[float]] = {"base_backup_mb": [], "restore_mb": []}
    try:
        with streaming(ctx, area, None):
            for _ in range(ctx.repetitions):
                _seconds, backup_peak, _total = dbops_base_backup(ctx, area)
                _seconds, restore_peak, summary = dbops_restore(ctx, area, None)
                stop_restored(area, Path(summary["data_dir"]))
                peaks.append(max(backup_peak, restore_peak) / MB)
                parts["base_backup_mb"].append(backup_peak / MB)
                parts["restore_mb"].append(restore_peak / MB)
        large_bytes = database_bytes(bench)
    finally:
        drop_slots(ctx)
        shutil.rmtree(area.root, ignore_errors=True)
    small = ctx.shared["pitr_memory"]
    growth = median(peaks) / median(small["peak_rss_mb"])
    return [
        row(
            "pitr_memory",
            what=f"worker memory during PITR base backup and restore at "
            f"{small['bytes'] / GB:.2f} GB and {large_bytes / GB:.2f} GB",
            old_way="-",
            dbops_way="peak RSS of the worker's process tree (pg_basebackup, tar, not the scratch server)",
            metric="peak RSS (MB); old column: the small database, dbops column: the large one",
            old=small["peak_rss_mb"],
            dbops=peaks,
            target="large within 1.2x of small",
            ratio=growth,
            met=growth <= 1.2,
            details={
                "database_bytes": [small["bytes"], large_bytes],
                "small": {k: v for k, v in small.items() if k.endswith("_mb")},
                "large": parts,
            },
        )
    ]
