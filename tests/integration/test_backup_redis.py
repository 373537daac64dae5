"""redis-cli --rdb / redis-check-rdb / scratch restore against the local Redis 7 (devstack)."""

from __future__ import annotations

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
    """One snapshot for the module (each costs ~5 s: the server's repl-diskless-sync-delay),
    with every (argv, env) the adapter handed to run_tool on the way."""
    calls: list[tuple[list[str], dict[str, str]]] = []
    real = rb.run_tool

    def spy(argv, **kwargs):
        calls.append((list(argv), dict(kwargs.get("env") or {})))
        return real(argv, **kwargs)

    log = Log()
    # the shared server holds other tests' keys too: describe only this module's
    adapter = rb.RedisBackup(redis_endpoint, match=rb.glob_escape(prefix) + "*")
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
