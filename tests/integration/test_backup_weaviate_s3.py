"""Weaviate backups in the s3 backend expire, and retries leave no orphans, on a real S3 server.

The S3 server is the devstack SeaweedFS; Weaviate is the stand-in of tests/weaviate_support.py
(no Weaviate server can run here), which writes a backup's objects under
``s3://<bucket>/<prefix>/<id>/`` as Weaviate's backup-s3 module does, and holds every request
and response to Weaviate's published OpenAPI specs.
"""

from __future__ import annotations

import json
import uuid

import pytest

from dbops.stores.weaviate.adapter import WeaviateExpiryRefused
from dbops.stores.weaviate.backup import RECORD_FILE, run_backup_id
from tests.offsite_support import empty_prefix
from tests.unit.test_weaviate_adapter import make_adapter, take
from tests.weaviate_support import FakeWeaviate

pytestmark = pytest.mark.integration


@pytest.fixture
def s3(devstack):
    service = devstack.service("s3")
    client = service.client()
    bucket = service.environment()["DBOPS_OFFSITE__S3_BUCKET"]
    prefix = f"test-weaviate-{uuid.uuid4().hex[:12]}"
    yield client, bucket, prefix
    empty_prefix(client, bucket, prefix)


def _keys(client, bucket, prefix):
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/").get("Contents", []))


@pytest.mark.parametrize("version", ["1.22.13", "1.39.0"])
def test_expiry_deletes_the_backup_from_its_bucket(s3, tmp_path, version):
    client, bucket, prefix = s3
    with FakeWeaviate(version, s3=s3) as fake:
        fake.add_class("Article", 12)
        fake.add_class("Author", 2)
        adapter = make_adapter(tmp_path, fake, backend="s3", s3_client=client, s3_bucket=bucket)
        _, keep = take(adapter, tmp_path, run_id="run-keep")
        _, old = take(adapter, tmp_path, run_id="run-old")
        record = json.loads((old.path / RECORD_FILE).read_text())
        wid = record["id"]
        assert record["backend"] == "s3" and record["path"] == f"s3://{bucket}/{prefix}/{wid}"
        assert (record["bucket"] == bucket) if version == "1.39.0" else record["bucket"] is None
        assert any(k.startswith(f"{prefix}/{wid}/") for k in _keys(client, bucket, prefix))
        lines: list[str] = []
        adapter.expire(old, lines.append)
        left = _keys(client, bucket, prefix)
        assert not [k for k in left if k.startswith(f"{prefix}/{wid}/")]
        kept_id = json.loads((keep.path / RECORD_FILE).read_text())["id"]
        assert [k for k in left if k.startswith(f"{prefix}/{kept_id}/")], "the other backup is untouched"
        assert any("deleted 3 object(s)" in line for line in lines), lines
        adapter.expire(old, lines.append)  # a rerun of retention: nothing left, no error
        assert "dbops_s3" in adapter.links.asked
        assert fake.violations == []


def test_expiry_refuses_a_record_outside_the_configured_bucket(s3, tmp_path):
    client, bucket, _ = s3
    with FakeWeaviate("1.39.0", s3=s3) as fake:
        fake.add_class("Article", 1)
        adapter = make_adapter(tmp_path, fake, backend="s3", s3_client=client, s3_bucket=bucket)
        _, backup = take(adapter, tmp_path)
        other = make_adapter(tmp_path, fake, backend="s3", s3_client=client, s3_bucket="some-other-bucket")
        with pytest.raises(WeaviateExpiryRefused, match="not in the configured bucket 'some-other-bucket'"):
            other.expire(backup, lambda _: None)


def test_retries_leave_no_orphan_objects(s3, tmp_path):
    """A failed attempt's objects, and those of an earlier attempt that finished but was
    never recorded (the worker died), are removed by the retry; only the recorded one stays."""
    client, bucket, prefix = s3
    with FakeWeaviate("1.22.13", s3=s3) as fake:
        fake.add_class("Article", 5)
        adapter = make_adapter(tmp_path, fake, backend="s3", s3_client=client, s3_bucket=bucket)
        key = "dbops_nightly_backup/run-1"
        fake.fail_next_backup = True
        with pytest.raises(Exception, match="FAILED"):
            take(adapter, tmp_path)
        assert not [k for k in _keys(client, bucket, prefix) if f"/{run_backup_id(key, 1)}/" in k]
        # an attempt that finished in Weaviate but whose record was never written
        fake.handle("POST", "/v1/backups/s3", {"id": run_backup_id(key, 2), "include": ["Article"]})
        for _ in range(2):
            fake.handle("GET", f"/v1/backups/s3/{run_backup_id(key, 2)}", None)
        _, backup = take(adapter, tmp_path)
        wid = json.loads((backup.path / RECORD_FILE).read_text())["id"]
        assert wid == run_backup_id(key, 3)
        assert {k.split("/")[1] for k in _keys(client, bucket, prefix)} == {wid}
        assert fake.violations == []
