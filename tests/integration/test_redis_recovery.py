"""Redis restore and drill through the adapter, on private redis-servers started per test.

Whole databases are written here (0, 3, 9, ...), so these tests do not use the shared
devstack Redis: each starts its own redis-server (127.0.0.1, free port, password in a 0600
config file) in a temporary folder.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from dbops.backup.adapter import DrillComparison, DrillEnvironmentError, Endpoint, RestoreRefused, RestoreRequest
from dbops.backup.repository import BackupRepository
from dbops.backup.restore import resolve_backup, run_drill
from dbops.backup.runner import source_description, take_backup
from dbops.config import DbopsConfig
from dbops.stores.redis import backup as rb
from dbops.stores.redis import recovery
from dbops.stores.redis.adapter import RedisAdapter
from tests.support import Log, StaticLinks

pytestmark = pytest.mark.integration

LIVE = "test_live_redis"
TARGET = "test_target_redis"
DBS = (0, 3, 9, 15)
ODD_NAMES = ["with space", "tab\tand\nnewline", "ünïcødé-键", "glob*[x]?"]


@pytest.fixture
def servers(tmp_path):
    """``start(name)``: a private, empty redis-server; all stopped afterwards."""
    started: list[rb.ScratchRedis] = []

    def start(name: str) -> Endpoint:
        server = rb.restore_into_scratch(None, port=rb.free_port(), workdir=tmp_path / name, log=Log())
        started.append(server)
        with rb.redis_client(server.endpoint) as client:
            client.config_set("repl-diskless-sync-delay", 0)  # --rdb would wait 5 s for other replicas
        return server.endpoint

    yield start
    for server in started:
        server.stop()


def fill(endpoint: Endpoint) -> None:
    """Every type, in several databases, with TTLs and odd key names (binary included)."""
    for db in DBS:
        with rb.redis_client(endpoint, db) as r:
            r.set(f"s{db}", f"value of db {db}")
            r.set(f"ttl{db}", "expires in an hour", ex=3600)
            r.hset(f"h{db}", mapping={"a": "1", "b": str(db)})
            r.rpush(f"l{db}", "x", "y", "x")
            r.sadd(f"set{db}", "m1", "m2")
            r.zadd(f"z{db}", {"low": 1.5, "high": 99.25})
            r.xadd(f"stream{db}", {"n": str(db)})
            for name in ODD_NAMES:
                r.set(f"{name}:{db}", name)
            r.set(b"bin\x00\xff\xfe:" + bytes([db]), bytes(range(256)))
            r.hset(f"ttlhash{db}", mapping={"f": "v"})
            r.pexpire(f"ttlhash{db}", 3_600_000)


def make_adapter(endpoints: dict[str, Endpoint], **redis_settings) -> RedisAdapter:
    overrides: dict = {"connections": {"redis": LIVE}}
    if redis_settings:
        overrides["redis"] = redis_settings
    config = DbopsConfig().with_overrides(overrides)
    return RedisAdapter(config, StaticLinks(endpoints))


def backup_of(adapter: RedisAdapter, root: Path, log: Log, run_id: str = "run1"):
    repo = BackupRepository(root)
    take_backup(
        repo,
        adapter.series_backup(None),
        store="redis",
        subject=None,
        run_id=run_id,
        dag_id="dbops_nightly_backup",
        logical_date=None,
        force=False,
        stale_staging=timedelta(hours=12),
        log=log,
    )
    return repo, resolve_backup(repo, "redis", None, "latest")


def request(target: str = TARGET, confirm: str = "", **kw) -> RestoreRequest:
    return RestoreRequest(store="redis", backup_id="latest", target=target, confirm=confirm, **kw)


def test_restore_copies_every_database_with_ttls_and_odd_names(servers, tmp_path):
    """Old code: MIGRATE from a client on db 0 answered NOKEY for keys of db 3, 9, 15 and
    counted them as copied; here every database arrives, TTLs kept, and a rerun copies nothing."""
    live, target = servers("live"), servers("target")
    fill(live)
    adapter = make_adapter({LIVE: live, TARGET: target})
    log = Log()
    repo, backup = backup_of(adapter, tmp_path / "backups", log)
    described = source_description(backup)
    assert sorted(described["databases"], key=int) == [str(db) for db in DBS]
    assert described["keys"][f"9:{ODD_NAMES[1]}:9"]["type"] == "string"
    assert described["keys"]["3:ttl3"]["expires"] is True

    plan = adapter.plan_restore(backup, request(), log)
    assert plan.target == TARGET and not plan.exists and not plan.overwrite and plan.details["live"] is False
    assert any("0, 3, 9, 15" in line for line in plan.actions), plan.actions
    result = adapter.restore(backup, type(plan).from_dict(plan.to_dict()), log)
    assert result["differences"] == [], result
    assert result["databases"] == list(DBS)
    assert result["copied_keys"] == sum(described["databases"][str(db)]["keys"] for db in DBS)
    restored = rb.describe_server(target, log)
    assert adapter.compare(described, restored) == ([], [])
    for db in DBS:
        with rb.redis_client(target, db) as r:
            assert 0 < r.pttl(f"ttl{db}") <= 3_600_000 and r.ttl(f"s{db}") == -1
            assert r.get(b"bin\x00\xff\xfe:" + bytes([db])) == bytes(range(256))
    assert live.password not in log.text and target.password not in log.text

    again = adapter.restore(backup, plan, log)
    assert again["already"] and again["copied_keys"] == 0 and again["differences"] == []

    # a key changed in the restored copy fails the comparison, and a new restore without confirm
    with rb.redis_client(target, 9) as r:
        r.hset("h9", "b", "changed")
    differences, _ = adapter.compare(described, rb.describe_server(target, log))
    assert len(differences) == 1 and differences[0].startswith("key 9:h9:")
    with pytest.raises(RestoreRefused, match="(?s)1 key.*9:h9.*nothing was written"):
        adapter.restore(backup, plan, log)
    confirmed = adapter.plan_restore(backup, request(confirm=TARGET), log)
    assert confirmed.overwrite and any("replaced (confirm given)" in line for line in confirmed.actions)
    fixed = adapter.restore(backup, confirmed, log)
    assert fixed["replaced_keys"] == 1 and fixed["differences"] == []
    assert adapter.compare(described, rb.describe_server(target, log)) == ([], [])


def test_drill_copies_through_the_restore_path_and_catches_a_bad_copy(servers, tmp_path):
    live = servers("live")
    fill(live)
    adapter = make_adapter({LIVE: live})
    log = Log()
    repo, backup = backup_of(adapter, tmp_path / "backups", log)

    result = run_drill(
        repo,
        backup,
        target=adapter.drill_target(backup),
        drill=lambda b, found: adapter.drill(b, found, log),
        run_id="d1",
        dag_id="drill",
        log=log,
    )
    assert result["ok"], result
    assert any("databases [0, 3, 9, 15]" in note and "MIGRATE" in note for note in result["notes"]), result["notes"]
    assert not list((tmp_path / "backups").glob("**/dbops_drill_*"))

    # the copy lost a TTL and a value: the drill says so, for the copy
    def spoil(copy: rb.ScratchRedis) -> None:
        with rb.redis_client(copy.endpoint, 3) as r:
            r.persist("ttl3")
            r.set(f"{ODD_NAMES[2]}:3", "other")

    found = DrillComparison()
    recovery.drill_redis(port=None, scratch_dir=tmp_path / "scratch", log=log, after_copy=spoil)(backup, found)
    assert len(found.differences) == 2, found.differences
    assert all(d.startswith("copy: key 3:") for d in found.differences), found.differences
    assert any("ttl3" in d for d in found.differences) and any(ODD_NAMES[2] in d for d in found.differences)
    assert list((tmp_path / "scratch").iterdir()) == []  # both scratch servers removed


def test_writer_during_backup_drill_and_restore_pass(servers, tmp_path):
    """Old code described the live server after the RDB was streamed: with a writer running,
    the description was of another state than the backup and every drill failed."""
    live, target = servers("live"), servers("target")
    fill(live)
    stop = threading.Event()
    writes = {"n": 0}

    def writer() -> None:
        rng = random.Random(7)
        clients = {db: rb.redis_client(live, db) for db in (0, 3, 9)}
        while not stop.is_set():
            db = rng.choice((0, 3, 9))
            r, key = clients[db], f"busy:{rng.randrange(200)}"
            action = rng.randrange(4)
            if action == 0:
                r.set(key, rng.random())
            elif action == 1:
                r.delete(key)
            elif action == 2:
                r.hset(key + ":h", str(rng.randrange(5)), rng.random())
            else:
                r.set(key + ":t", "x")
                r.expire(key + ":t", rng.randrange(1, 3600))
            writes["n"] += 1
        for client in clients.values():
            client.close()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        time.sleep(0.3)
        adapter = make_adapter({LIVE: live, TARGET: target})
        log = Log()
        repo, backup = backup_of(adapter, tmp_path / "backups", log)
        drilled = run_drill(
            repo,
            backup,
            target=adapter.drill_target(backup),
            drill=lambda b, found: adapter.drill(b, found, log),
            run_id="d1",
            dag_id="drill",
            log=log,
        )
        result = adapter.restore(backup, adapter.plan_restore(backup, request(), log), log)
    finally:
        stop.set()
        thread.join(10)
    assert writes["n"] > 500, writes  # the store really was busy throughout
    assert drilled["ok"], drilled
    assert result["differences"] == [], result
    described = source_description(backup)
    assert any(k.startswith("3:busy:") for k in described["keys"])
    # the live server has moved on; the restored copy is the backup's state
    assert adapter.compare(described, rb.describe_server(target, log))[0] == []

    # a key changed in the restored copy still fails the comparison, and the drill
    with rb.redis_client(target, 0) as r:
        r.set("s0", "changed after the restore")
    assert adapter.compare(described, rb.describe_server(target, log))[0] == [
        f"key 0:s0: {rb.describe_server(target, log)['keys']['0:s0']} != {described['keys']['0:s0']}"
    ]

    def spoil(copy: rb.ScratchRedis) -> None:
        with rb.redis_client(copy.endpoint, 0) as r:
            r.set("s0", "changed in the copy")

    found = DrillComparison()
    recovery.drill_redis(port=None, scratch_dir=None, log=log, after_copy=spoil)(backup, found)
    assert [d.split(":", 1)[0] for d in found.differences] == ["copy"] and "0:s0" in found.differences[0]


def test_plan_refusals_and_the_live_redis(servers, tmp_path):
    live = servers("live")
    fill(live)
    alias = "another_id_for_live"
    adapter = make_adapter({LIVE: live, alias: live})
    log = Log()
    repo, backup = backup_of(adapter, tmp_path / "backups", log)

    for bad, message in (
        (request(target=""), "needs target"),
        (request(target="a b"), "not an Airflow connection id"),
        (request(database="db3"), "does not apply to redis"),
    ):
        with pytest.raises(RestoreRefused, match=message):
            adapter.check_request(bad)
    adapter.check_request(request())
    assert adapter.restore_subject(request()) is None
    with pytest.raises(RestoreRefused, match="no Airflow connection 'nope'"):
        adapter.plan_restore(backup, request(target="nope"), log)
    for conn_id in (LIVE, alias):  # the live Redis by its connection id, or by host and port
        with pytest.raises(RestoreRefused, match="is the live Redis"):
            adapter.plan_restore(backup, request(target=conn_id), log)
        with pytest.raises(RestoreRefused, match="must name the target exactly"):
            adapter.plan_restore(backup, request(target=conn_id, confirm=TARGET), log)
    plan = adapter.plan_restore(backup, request(target=LIVE, confirm=LIVE), log)
    assert plan.overwrite and plan.exists and plan.details["live"]
    assert any("live Redis" in line for line in plan.actions)
    assert any("replaced (confirm given)" in line for line in plan.actions)
    # restoring the backup into the server it came from: everything is already there
    result = adapter.restore(backup, plan, log)
    assert result["already"] and result["differences"] == [] and result["copied_keys"] == 0


def test_scratch_environment_errors_and_load_timeout(servers, tmp_path):
    """Port in use, an unwritable scratch folder, a load that does not finish: errors of the
    drill (DrillEnvironmentError), not verdicts on the backup. The load timeout grows with the RDB."""
    assert rb.scratch_load_timeout(0) == rb.SCRATCH_LOAD_BASE_S
    assert rb.scratch_load_timeout(1 << 30) > 240 > 120  # was a fixed 120 s
    live = servers("live")
    fill(live)
    log = Log()
    taken = rb.free_port()
    adapter = make_adapter({LIVE: live}, scratch_port=taken)
    repo, backup = backup_of(adapter, tmp_path / "backups", log)
    rdb = backup.path / rb.RDB_FILE

    with rb.ScratchCopy(None, port=taken, scratch_dir=tmp_path / "s", prefix="hold_", log=log):
        with pytest.raises(DrillEnvironmentError, match="in use"):
            adapter.drill(backup, DrillComparison(), log)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(DrillEnvironmentError, match="scratch folder"):
        with rb.ScratchCopy(rdb, port=None, scratch_dir=tmp_path / "a-file" / "sub", prefix="x_", log=log):
            pass
    with pytest.raises(DrillEnvironmentError, match="not ready after 0s"):
        rb.restore_into_scratch(rdb, port=rb.free_port(), workdir=tmp_path / "slow", log=log, timeout=0.0)
