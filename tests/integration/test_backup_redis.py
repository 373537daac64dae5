"""BGSAVE + copy and redis-cli --rdb / redis-check-rdb / scratch restore against the local Redis 7
(devstack's server, and private redis-servers of the same binary where the test changes the
server's configuration)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from dbops.backup.adapter import DrillEnvironmentError, Endpoint
from dbops.stores.redis import backup as rb
from dbops.tools import ToolError
from tests.support import Log

pytestmark = pytest.mark.integration

SCRATCH_PORT = 56391


@pytest.fixture(scope="module")
def redis_endpoint(devstack) -> Endpoint:
    conn = devstack.conn("dbops_redis")
    return Endpoint(host=conn["host"], port=conn["port"], login=conn.get("login"), password=conn["password"])


@pytest.fixture(scope="module")
def prefix(redis_endpoint):
    """Keys of every type under a unique prefix; removed afterwards."""
    prefix = f"dbops_test:{uuid.uuid4().hex[:10]}:"
    with rb.redis_client(redis_endpoint) as r:
        r.set(prefix + "string", "plain value")
        r.set(prefix + "binary", bytes(range(256)))
        r.set(prefix + "ttl", "expires later", ex=3600)
        r.hset(prefix + "hash", mapping={"b": "2", "a": "1", "c": "x" * 500})
        r.rpush(prefix + "list", "first", "second", "first")
        r.sadd(prefix + "set", "m1", "m2", "m3")
        r.zadd(prefix + "zset", {"low": 1.5, "high": 99.25, "tie-a": 5, "tie-b": 5})
        for i in range(5):
            r.xadd(prefix + "stream", {"n": str(i), "kind": "event"})
        r.xgroup_create(prefix + "stream", "readers", id="0")
        r.xreadgroup("readers", "c1", {prefix + "stream": ">"}, count=2)
        r.set(prefix + "odd key * with [glob] chars", "literal")
    yield prefix
    with rb.redis_client(redis_endpoint) as r:
        keys = list(r.scan_iter(match=rb.glob_escape(prefix) + "*"))
        if keys:
            r.delete(*keys)


@pytest.fixture(scope="module")
def dumped(redis_endpoint, prefix, tmp_path_factory):
    """One redis-cli --rdb snapshot for the module (each costs ~5 s: the server's
    repl-diskless-sync-delay), with every (argv, env) the adapter handed to run_tool on the way."""
    calls: list[tuple[list[str], dict[str, str]]] = []
    real = rb.run_tool

    def spy(argv, **kwargs):
        calls.append((list(argv), dict(kwargs.get("env") or {})))
        return real(argv, **kwargs)

    log = Log()
    # the shared server holds other tests' keys too: describe only this module's
    adapter = rb.RedisBackup(redis_endpoint, match=rb.glob_escape(prefix) + "*", snapshot_method="rdb")
    staging = tmp_path_factory.mktemp("redis-staging")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rb, "run_tool", spy)
        result = adapter.dump(staging, log)
    # the description is the RDB's, loaded into a scratch server during the dump
    source = result.description
    return {"adapter": adapter, "staging": staging, "result": result, "source": source, "calls": calls, "log": log}


def damaged_copy(dumped, tmp_path, flip_at) -> Path:
    staging = tmp_path / "damaged"
    staging.mkdir()
    data = bytearray((dumped["staging"] / "dump.rdb").read_bytes())
    data[flip_at(len(data))] ^= 0xFF
    (staging / "dump.rdb").write_bytes(bytes(data))
    return staging


def test_dump_check_restore_describe(redis_endpoint, prefix, dumped, tmp_path):
    log = dumped["log"]
    adapter, staging, result, source = dumped["adapter"], dumped["staging"], dumped["result"], dumped["source"]

    # the password went through REDISCLI_AUTH, never argv
    rdb_calls = [(argv, env) for argv, env in dumped["calls"] if "--rdb" in argv]
    assert len(rdb_calls) == 1
    argv, env = rdb_calls[0]
    assert "-a" not in argv and "--pass" not in argv and "--askpass" not in argv
    assert not any(redis_endpoint.password in arg for call_argv, _ in dumped["calls"] for arg in call_argv)
    assert env == {"REDISCLI_AUTH": redis_endpoint.password}
    assert "--no-auth-warning" in argv
    assert redis_endpoint.password not in log.text

    rdb = staging / "dump.rdb"
    assert rdb.is_file() and rdb.stat().st_mode & 0o777 == 0o600
    assert result.tool == "redis-cli --rdb" and result.details["snapshot"]["method"] == "rdb"
    assert "snapshot: redis-cli --rdb (snapshot_method rdb)" in log.lines
    assert result.server_version.startswith("7.")
    assert result.tool_version.startswith("redis-cli 7.")
    assert result.compression == "lzf"  # rdbcompression yes, the default
    assert result.details["rdb_version"] == rb.rdb_version(rdb) >= 9
    assert result.details["keys"] >= 9 and result.details["keyspace"]["0"]["keys"] >= 9
    assert result.details["used_memory"] > 0

    checks = adapter.check(staging, {"details": result.details}, log)
    assert checks and all(c.ok for c in checks), checks
    # redis-check-rdb's own count agrees with the description taken from the RDB
    assert "description matches the RDB" in {c.name for c in checks}
    inflated = {**result.details, "keys": result.details["keys"] + 1}
    agree = {c.name: c for c in adapter.check(staging, {"details": inflated}, log)}["description matches the RDB"]
    assert not agree.ok and "keys described, the RDB holds" in agree.detail

    # what the source held under the prefix: every type, with the digest of its value
    assert {v["type"] for v in source["keys"].values()} == {"string", "hash", "list", "set", "zset", "stream"}
    assert len(source["keys"]) == 9 and source["matched"]["0"] == 9 and source["sample"] == "all"
    assert source["keys"][f"0:{prefix}ttl"]["expires"] is True
    assert source["keys"][f"0:{prefix}string"]["expires"] is False

    scratch = rb.restore_into_scratch(rdb, port=SCRATCH_PORT, workdir=tmp_path / "scratch", log=log)
    try:
        assert scratch.running() and scratch.endpoint.port == SCRATCH_PORT
        assert (tmp_path / "scratch" / "redis.conf").stat().st_mode & 0o777 == 0o600
        restored = rb.describe_server(scratch.endpoint, log, prefix=prefix)
        assert rb.describe_differences(source, restored) == []
        assert restored["keys"] == source["keys"]

        # a different value on one side is seen
        with rb.redis_client(scratch.endpoint) as r:
            r.zadd(prefix + "zset", {"low": 1.25})
            r.xack(prefix + "stream", "readers", r.xrange(prefix + "stream", count=1)[0][0])
        changed = rb.describe_server(scratch.endpoint, log, prefix=prefix)
        assert rb.describe_differences(source, changed) == [
            f"key 0:{prefix}stream: {changed['keys'][f'0:{prefix}stream']} != {source['keys'][f'0:{prefix}stream']}",
            f"key 0:{prefix}zset: {changed['keys'][f'0:{prefix}zset']} != {source['keys'][f'0:{prefix}zset']}",
        ]

        # the port is taken now: a second scratch refuses instead of talking to the first
        with pytest.raises(DrillEnvironmentError, match="in use"):
            rb.restore_into_scratch(rdb, port=SCRATCH_PORT, workdir=tmp_path / "other", log=log)
    finally:
        scratch.stop()
    assert not scratch.running() and scratch.process.returncode is not None
    assert rb._port_free(SCRATCH_PORT)


def test_check_fails_on_a_corrupted_rdb(dumped, tmp_path):
    log = Log()
    adapter, manifest = dumped["adapter"], {"details": dumped["result"].details}
    staging = damaged_copy(dumped, tmp_path, lambda n: n // 2)
    checks = {c.name: c for c in adapter.check(staging, manifest, log)}
    assert checks["rdb header"].ok
    assert not checks["redis-check-rdb"].ok and "redis-check-rdb failed" in checks["redis-check-rdb"].detail
    assert "RDB ERROR DETECTED" in log.text

    (staging / "dump.rdb").write_bytes(b"not an rdb at all")
    checks = {c.name: c for c in adapter.check(staging, manifest, log)}
    assert not checks["rdb header"].ok and not checks["redis-check-rdb"].ok

    (staging / "dump.rdb").unlink()
    assert [c.ok for c in adapter.check(staging, manifest, log)] == [False]


def test_scratch_refuses_to_start_from_a_corrupted_rdb(dumped, tmp_path):
    staging = damaged_copy(dumped, tmp_path, lambda n: n - 4)  # inside the CRC64 trailer
    with pytest.raises(ToolError, match="(?s)exited.*CRC error"):
        rb.restore_into_scratch(staging / "dump.rdb", port=SCRATCH_PORT, workdir=tmp_path / "scratch", log=Log())
    assert rb._port_free(SCRATCH_PORT)


def test_wrong_password_fails_without_leaking(redis_endpoint, tmp_path):
    wrong = "wrong-" + uuid.uuid4().hex
    bad = Endpoint(host=redis_endpoint.host, port=redis_endpoint.port, password=wrong)
    log = Log()
    staging = tmp_path / "staging"
    staging.mkdir()
    adapter = rb.RedisBackup(bad)
    argv = adapter.rdb_argv(staging / "dump.rdb")
    assert "-a" not in argv and wrong not in " ".join(argv)
    with pytest.raises(ToolError) as failure:
        adapter.dump(staging, log)
    assert "AuthenticationError" in str(failure.value)
    assert wrong not in str(failure.value) and wrong not in log.text
    assert not (staging / "dump.rdb").exists()


# --------------------------------------------------------------------------- BGSAVE + copy


def rdb_saves(endpoint: Endpoint) -> int:
    with rb.redis_client(endpoint) as client:
        return int(client.info("persistence")["rdb_saves"])


def restored_equal(rdb: Path, description: dict, tmp_path: Path) -> None:
    """The RDB loaded into a fresh scratch server holds what the dump described."""
    with rb.ScratchCopy(rdb, port=None, scratch_dir=tmp_path, prefix="restored_", log=Log()) as scratch:
        restored = rb.describe_server(
            scratch.endpoint, Log(), match=description["match"], sample_all_below=description["sample_all_below"]
        )
    assert rb.describe_differences(description, restored) == []
    assert restored["keys"] == description["keys"]


def test_auto_takes_bgsave_on_the_local_server(redis_endpoint, prefix, dumped, tmp_path):
    log = Log()
    adapter = rb.RedisBackup(redis_endpoint, match=rb.glob_escape(prefix) + "*", snapshot_method="auto")
    staging = tmp_path / "staging"
    staging.mkdir()
    saves = rdb_saves(redis_endpoint)
    result = adapter.dump(staging, log)

    snapshot = result.details["snapshot"]
    assert result.tool == rb.BGSAVE_TOOL and result.tool_version.startswith("redis-server 7.")
    assert snapshot["method"] == "bgsave" and "readable here" in snapshot["reason"]
    with rb.redis_client(redis_endpoint) as client:
        server_dir = rb._text(client.config_get("dir")["dir"])
    assert snapshot["server_file"] == str(Path(server_dir) / "dump.rdb")
    assert rdb_saves(redis_endpoint) > saves  # a save of ours ran
    assert any(line.startswith("snapshot: BGSAVE, then a copy of the server's") for line in log.lines)
    assert not any("redis-cli" in line for line in log.lines)

    rdb = staging / "dump.rdb"
    assert rdb.stat().st_mode & 0o777 == 0o600
    checks = adapter.check(staging, {"details": result.details}, log)
    assert checks and all(c.ok for c in checks), checks
    assert "description matches the RDB" in {c.name for c in checks}
    # the same keys as the --rdb snapshot of the module saw, and a restore holds them
    assert result.description["keys"] == dumped["source"]["keys"]
    restored_equal(rdb, result.description, tmp_path)


def test_a_writer_in_several_databases_during_the_backup(redis_endpoint, prefix, tmp_path):
    """Keys change in databases 0-3 while BGSAVE runs: the backup is still one consistent
    state, which the description, redis-check-rdb and a restore agree on."""
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        clients = [rb.redis_client(redis_endpoint, db) for db in range(4)]
        try:
            n = 0
            while not stop.is_set():
                client = clients[n % 4]
                with client.pipeline(transaction=False) as pipe:
                    for i in range(50):
                        pipe.set(f"{prefix}w:{(n * 50 + i) % 3000}", n)
                    pipe.hset(f"{prefix}w:hash", str(n % 100), n)
                    pipe.execute()
                n += 1
                written[0] = n
        finally:
            for client in clients:
                client.close()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        while written[0] < 40:  # keys in every database before the snapshot
            time.sleep(0.01)
        log = Log()
        adapter = rb.RedisBackup(redis_endpoint, match=rb.glob_escape(prefix) + "*", snapshot_method="auto")
        staging = tmp_path / "staging"
        staging.mkdir()
        result = adapter.dump(staging, log)
        writes_during = written[0]
    finally:
        stop.set()
        thread.join(timeout=10)
        for db in range(1, 4):
            with rb.redis_client(redis_endpoint, db) as client:
                keys = list(client.scan_iter(match=rb.glob_escape(prefix) + "*"))
                if keys:
                    client.delete(*keys)
    assert result.details["snapshot"]["method"] == "bgsave"
    assert writes_during > 40  # the writer kept going during the backup
    assert {"0", "1", "2", "3"} <= set(result.description["matched"])
    checks = adapter.check(staging, {"details": result.details}, log)
    assert checks and all(c.ok for c in checks), checks
    restored_equal(staging / "dump.rdb", result.description, tmp_path)


@pytest.fixture
def private_redis(tmp_path):
    """``start(name, server_bin=...)``: a redis-server of this test (devstack's binary), so its
    configuration may be changed; stopped afterwards."""
    started: list[rb.ScratchRedis] = []

    def start(name: str, server_bin: str = "redis-server") -> rb.ScratchRedis:
        server = rb.restore_into_scratch(
            None, port=rb.free_port(), workdir=tmp_path / name, log=Log(), redis_server_bin=server_bin
        )
        started.append(server)
        with rb.redis_client(server.endpoint) as client:
            client.config_set("repl-diskless-sync-delay", 0)  # the fallback's --rdb at once
        return server

    yield start
    for server in started:
        server.stop()


def fill(endpoint: Endpoint, keys: int) -> None:
    with rb.redis_client(endpoint) as client:
        for start in range(0, keys, 5000):
            client.mset({f"k:{i}": f"value {i}" for i in range(start, min(keys, start + 5000))})


def test_auto_takes_bgsave_on_a_server_that_never_saved(private_redis, tmp_path):
    """A fresh server has no RDB file yet: its folder is enough, the save proves the file."""
    server = private_redis("fresh")
    fill(server.endpoint, 1000)
    with rb.redis_client(server.endpoint) as client:
        rdb = rb.server_rdb_path(client)
    assert not rdb.exists() and rdb.parent.is_dir()
    staging = tmp_path / "staging"
    staging.mkdir()
    result = rb.RedisBackup(server.endpoint, snapshot_method="auto", timeout=60).dump(staging, Log())
    assert result.details["snapshot"]["method"] == "bgsave" and result.details["keys"] == 1000


def test_a_bgsave_in_progress_is_waited_for(private_redis, tmp_path):
    server = private_redis("busy")
    fill(server.endpoint, 20_000)
    with rb.redis_client(server.endpoint) as client:
        client.config_set("rdb-key-save-delay", 100)  # µs per key: their save lasts ~2 s
        assert client.execute_command("BGSAVE") in (True, b"Background saving started")
        client.config_set("rdb-key-save-delay", 0)  # read at fork: ours is quick
        assert client.info("persistence")["rdb_bgsave_in_progress"] == 1
        client.set("written after their fork", "only in a later save")
        saves = int(client.info("persistence")["rdb_saves"])
    log = Log()
    staging = tmp_path / "staging"
    staging.mkdir()
    started = time.monotonic()
    result = rb.RedisBackup(server.endpoint, snapshot_method="bgsave", timeout=60).dump(staging, log)

    snapshot = result.details["snapshot"]
    assert snapshot["method"] == "bgsave" and snapshot["waited_for_other_saves_s"] >= 0.5
    assert "the server is busy (rdb_bgsave_in_progress): waiting for it before our BGSAVE" in log.lines
    assert rdb_saves(server.endpoint) == saves + 1  # theirs ended, then ours ran
    assert "0:written after their fork" in result.description["keys"]  # our snapshot, not theirs
    assert result.details["keys"] == 20_001
    assert time.monotonic() - started < 30


def test_a_failed_bgsave_is_named(private_redis, tmp_path):
    """The server's dir on a full disk (a 64 KiB tmpfs only the server sees): BGSAVE fails."""
    wrapper = namespaced_server(tmp_path, tmp_path / "full" / "data", size="64k")
    server = private_redis("full", wrapper)
    fill(server.endpoint, 20_000)
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(ToolError, match=r"BGSAVE failed on the server \(rdb_last_bgsave_status:err\)"):
        rb.RedisBackup(server.endpoint, snapshot_method="bgsave", timeout=60).dump(staging, Log())
    assert not (staging / "dump.rdb").exists()


def namespaced_server(tmp_path: Path, data: Path, size: str = "64m") -> str:
    """A redis-server launcher whose dir is ``data``, for the server only a fresh tmpfs: what
    the worker sees at that path is another disk's (a server in a container)."""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        # never a skip: this is the only test of a server whose disk the worker cannot see
        pytest.fail(
            f"the test needs mount namespaces (unshare -m, as root): {probe.stderr.decode(errors='replace').strip()}"
        )
    data.mkdir(parents=True)
    wrapper = tmp_path / f"redis-server-ns-{data.parent.name}"
    wrapper.write_text(
        "#!/bin/sh\n"
        "exec unshare -m --propagation private sh -c "
        f'\'mount -t tmpfs -o size={size} tmpfs "$0" && exec {shutil.which("redis-server")} "$1" --dir "$0"\' '
        f'"{data}" "$1"\n'
    )
    wrapper.chmod(0o700)
    return str(wrapper)


def test_a_file_the_worker_cannot_prove_falls_back_or_fails(private_redis, dumped, tmp_path):
    data = tmp_path / "other-disk" / "data"
    server = private_redis("other-disk", namespaced_server(tmp_path, data))
    fill(server.endpoint, 100)
    staging = tmp_path / "staging"

    def dump(method: str, log: Log):
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        return rb.RedisBackup(server.endpoint, snapshot_method=method, timeout=60).dump(staging, log)

    # the folder is there but no file of that save appears in it: auto saves once, then --rdb
    saves = rdb_saves(server.endpoint)
    log = Log()
    result = dump("auto", log)
    assert result.tool == "redis-cli --rdb" and result.details["snapshot"]["method"] == "rdb"
    assert "the server saved, but" in result.details["snapshot"]["reason"]
    assert "cannot be opened here" in result.details["snapshot"]["reason"]
    assert result.details["keys"] == 100 and rdb_saves(server.endpoint) == saves + 1
    with pytest.raises(ToolError, match="snapshot_method bgsave: the server saved, but .* cannot be opened here"):
        dump("bgsave", Log())
    assert not (staging / "dump.rdb").exists()
    # no such folder on the worker at all: auto does not even save (tried above for a folder)
    missing = tmp_path / "no-such-disk" / "dump.rdb"
    assert rb.local_rdb_problem(missing) == f"no folder {missing.parent} on this machine"

    # a readable file at that path, but another disk's: our BGSAVE does not change it
    shutil.copyfile(dumped["staging"] / "dump.rdb", data / "dump.rdb")
    log = Log()
    result = dump("auto", log)
    assert result.details["snapshot"]["method"] == "rdb" and result.details["keys"] == 100
    assert "did not change with our BGSAVE: it is not this server's file" in result.details["snapshot"]["reason"]
    assert any(line.startswith("snapshot: redis-cli --rdb (auto: ") for line in log.lines)
    with pytest.raises(ToolError, match="snapshot_method bgsave: .* did not change with our BGSAVE"):
        dump("bgsave", Log())
    assert not (staging / "dump.rdb").exists()


def test_config_refused_falls_back_or_fails(private_redis, tmp_path):
    """A user without CONFIG (as on managed services): auto uses --rdb, bgsave names why not."""
    server = private_redis("no-config")
    fill(server.endpoint, 100)
    password = uuid.uuid4().hex
    with rb.redis_client(server.endpoint) as client:
        client.acl_setuser(
            "backup",
            enabled=True,
            passwords=[f"+{password}"],
            keys=["*"],
            channels=["*"],
            commands=["+@all", "-config"],
        )
    limited = Endpoint(host=server.endpoint.host, port=server.endpoint.port, login="backup", password=password)
    staging = tmp_path / "staging"
    staging.mkdir()
    log = Log()
    result = rb.RedisBackup(limited, snapshot_method="auto").dump(staging, log)
    assert result.details["snapshot"]["method"] == "rdb" and result.details["keys"] == 100
    assert any(line.startswith("snapshot: redis-cli --rdb (auto: CONFIG GET refused:") for line in log.lines)
    assert result.compression == "unknown"
    os.unlink(staging / "dump.rdb")
    with pytest.raises(ToolError, match="snapshot_method bgsave: CONFIG GET refused"):
        rb.RedisBackup(limited, snapshot_method="bgsave").dump(staging, Log())
