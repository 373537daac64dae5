"""Offsite targets built from their Airflow connections (used by the offsite tasks and the
status page, which must not import the task layer)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dbops import connections
from dbops.config import DbopsConfig
from dbops.offsite.rsync import SSHParams

MIB = 1024 * 1024


def target_connection_id(config: DbopsConfig, target: str) -> str:
    return config.connections.offsite_ssh if target == "rsync" else config.connections.s3


@contextmanager
def open_target(name: str, config: DbopsConfig) -> Iterator:
    """The target ``name`` ("rsync" or "s3") built from its Airflow connection."""
    settings = config.offsite
    if name == "rsync":
        from dbops.offsite.rsync import RsyncTarget

        params = ssh_params(config.connections.offsite_ssh, settings.ssh_connect_timeout_s)
        work_dir = settings.work_dir or config.backup.root / ".offsite-outbox"
        with RsyncTarget(
            params,
            settings.rsync_remote_dir,
            rsync_path=settings.rsync_path,
            bwlimit_kib=settings.rsync_bwlimit_kib,
            io_timeout_s=settings.rsync_timeout_s,
            compress=settings.rsync_compress,
            work_dir=work_dir,
        ) as target:
            yield target
    elif name == "s3":
        from dbops.offsite.s3 import S3Settings, S3Target

        s3 = S3Settings(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            storage_class=settings.s3_storage_class,
            sse=settings.s3_sse,
            sse_kms_key_id=settings.s3_sse_kms_key_id,
            multipart_threshold=settings.s3_multipart_threshold_mib * MIB,
            multipart_chunksize=settings.s3_multipart_chunk_mib * MIB,
            max_concurrency=settings.s3_max_concurrency,
            object_lock=settings.s3_object_lock,
            retention_days=settings.retention_days,
        )
        with S3Target(connections.s3_client(config.connections.s3), s3) as target:
            yield target
    else:  # pragma: no cover - Params and config refuse other names
        raise ValueError(f"unknown offsite target {name!r}")


def ssh_params(conn_id: str, connect_timeout: int = 15):
    """The offsite SSH target (:class:`dbops.offsite.rsync.SSHParams`) of an SSH connection.

    Read through the ssh provider's SSHHook, which checks the connection (a host_key
    together with no_host_key_check is refused, the private key must parse). The key
    text comes from the extra ``private_key`` (or ``key_file``), the host key from the
    extra ``host_key``; rsync runs with BatchMode, so a key with a passphrase is refused.
    """
    from airflow.providers.ssh.hooks.ssh import SSHHook

    extra = dict(connections.get_connection(conn_id).extra_dejson or {})
    hook = SSHHook(ssh_conn_id=conn_id)
    if extra.get("private_key_passphrase"):
        raise ValueError(
            f"connection {conn_id!r}: rsync runs non-interactively and cannot use a key with a passphrase; "
            "use a dedicated key without one (restricted on the offsite host)"
        )
    if not hook.username:
        raise ValueError(f"connection {conn_id!r} has no login")
    host_key = None
    if hook.host_key is not None:
        host_key = f"{hook.host_key.get_name()} {hook.host_key.get_base64()}"
    return SSHParams(
        host=hook.remote_host,
        port=int(hook.port or 22),
        user=hook.username,
        private_key=extra.get("private_key") or None,
        key_file=None if extra.get("private_key") else hook.key_file,
        host_key=host_key,
        no_host_key_check=bool(hook.no_host_key_check) and host_key is None,
        connect_timeout=connect_timeout,
    )
