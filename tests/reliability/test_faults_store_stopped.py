"""The store stopped mid-backup (a scratch Redis of this folder, stopped while it streams its
snapshot), restarted, and the task cleared (rerun under the same run id).

Two ways to stop it:
- ``graceful``: SIGTERM, as a service manager does. Redis 7 then waits for its replicas (up to
  ``shutdown-timeout``; redis-cli --rdb counts as one) so the snapshot stream completes. The
  backup is described from the RDB itself (never from the live store), so it is complete and
  verified although the server is gone.
- ``crash``: SIGKILL of the server: the stream breaks off and redis-cli fails.
"""

from __future__ import annotations

import os
import signal

import pytest

from dbops.stores.redis.backup import RedisBackup
from dbops.tools import ToolError
from tests.reliability.faults import (
    assert_verified,
    backup_now,
    fill_redis,
    fingerprint,
    redis_endpoint,
    staging_bytes,
    staging_left,
    start_backup,
    wait_until,
)

pytestmark = pytest.mark.integration
KEYS = 10_000

FAILURES = {
    "crash": "redis-cli failed with exit code",
}


def _stop(server, how: str) -> None:
    if how == "graceful":
        server.stop()  # SIGTERM, waits for the process to exit
    else:
        os.kill(server.process.pid(), signal.SIGKILL)
        wait_until(lambda: not server.running(), timeout=10, what="the killed server to be gone")


@pytest.mark.parametrize("how", ["graceful", "crash"])
def test_redis_stopped_mid_snapshot_then_restarted_and_cleared(repo, scratch_redis, how):
    fill_redis(scratch_redis, 100)
    adapter = RedisBackup(redis_endpoint(scratch_redis))
    older = backup_now(repo, adapter, run_id="scheduled__yesterday")
    fill_redis(scratch_redis, KEYS)
    with scratch_redis.client() as client:
        client.config_set("rdb-key-save-delay", 300)  # a ~3 s stream: time to stop the server mid-way
        client.config_set("shutdown-timeout", 60)  # a graceful stop always lets the stream finish
        client.bgrewriteaof()  # the data survives the crash too (AOF everysec, rewritten now)
    wait_until(
        lambda: scratch_redis.client().info("persistence")["aof_rewrite_in_progress"] == 0,
        timeout=30,
        what="the AOF rewrite",
    )
    before = fingerprint(repo.root)

    job = start_backup(repo, adapter, run_id="scheduled__tonight")
    wait_until(
        lambda: job.done.is_set() or staging_bytes(repo, "redis") > 64 * 1024, timeout=60, what="the snapshot streaming"
    )
    assert not job.done.is_set(), job.error
    written = staging_bytes(repo, "redis")
    _stop(scratch_redis, how)
    job.wait()

    if how == "graceful":  # the whole RDB arrived: a good backup, described from the RDB
        assert job.error is None, job.log.text[-1500:]
        made = repo.list("redis")
        assert len(made) == 2 and made[0].backup_id == older.backup_id and staging_left(repo, "redis") == []
        assert_verified(repo, "redis", None, made[-1].backup_id)
        assert made[-1].manifest["details"]["keys"] == KEYS
        scratch_redis.start()
        with scratch_redis.client() as client:
            client.config_set("repl-diskless-sync-delay", 0)
        assert backup_now(repo, adapter, run_id="scheduled__tonight").reused  # cleared: nothing new
        return
    expected = FAILURES[how].format(port=scratch_redis.port)
    assert isinstance(job.error, ToolError) and expected in str(job.error), (job.error, job.log.text[-1500:])
    assert [b.backup_id for b in repo.list("redis")] == [older.backup_id]
    assert staging_left(repo, "redis") == [] and fingerprint(repo.root) == before

    # a rerun while the store is down fails cleanly too, before writing anything
    with pytest.raises(ToolError, match="ConnectionError"):
        backup_now(repo, adapter, run_id="scheduled__tonight")
    assert staging_left(repo, "redis") == [] and len(repo.list("redis")) == 1

    scratch_redis.start()  # its data comes back from its own AOF
    with scratch_redis.client() as client:
        client.config_set("repl-diskless-sync-delay", 0)
        assert client.dbsize() == KEYS
    outcome = backup_now(repo, adapter, run_id="scheduled__tonight")  # the cleared task
    assert [b.backup_id for b in repo.list("redis")] == [older.backup_id, outcome.backup_id]
    assert_verified(repo, "redis", None, outcome.backup_id)
    assert repo.list("redis")[-1].manifest["details"]["keys"] == KEYS
    assert backup_now(repo, adapter, run_id="scheduled__tonight").reused  # cleared again: nothing new
    print(
        f"{how}: stopped after {written} bytes streamed; failed with {str(job.error).splitlines()[0]!r}; "
        f"after restart: {outcome.summary()}"
    )
