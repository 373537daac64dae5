"""
### dbops_bootstrap: everything the platform needs, created idempotently

Takes empty stores to the platform's full layout and can be rerun at any time:

| task | what it does |
|---|---|
| `bootstrap_postgres` | versioned migrations from `include/sql/migrations` (each in a transaction, recorded with its sha256; a changed applied file is refused), then the `text_embeddings` ANN index (`postgres.ann_index`: ivfflat lists=100 or hnsw) built concurrently |
| `bootstrap_mongo` | collections and indexes of `include/scripts/mongo_collections.json`; a changed TTL is fixed with `collMod`, other index differences are reported |
| `bootstrap_weaviate` | classes of `include/scripts/weaviate_schema.json` over REST; missing properties added, conflicting types reported; **skipped** when no `dbops_weaviate` connection exists |
| `bootstrap_redis` | compares maxmemory, allkeys-lru, AOF with `include/scripts/redis_settings.json`; `CONFIG SET` only with `apply_redis_settings` |
| `bootstrap_kafka` | topics of `include/scripts/kafka_topics.json` (partitions 3, replication from config, topic configs); a broker that cannot grow partitions is reported, not ignored |
| `verify` | checks every object of every selected store; fails naming what is missing or different |

**Params**: `stores` (which stores), `dry_run` (each task logs its plan and touches nothing; `verify`
is skipped), `apply_redis_settings`.

**Rerun / backfill**: manual only (no schedule, so no backfill). A rerun changes nothing on
bootstrapped stores: every task reports `unchanged`. Clearing a failed task converges.
"""

from airflow.sdk import Param

from dbops.dagkit import dbops_dag, dry_run_param, stores_param
from dbops.tasks.bootstrap import (
    bootstrap_kafka,
    bootstrap_mongo,
    bootstrap_postgres,
    bootstrap_redis,
    bootstrap_weaviate,
    verify,
)
from dbops.tasks.summary import summary

with dbops_dag(
    "dbops_bootstrap",
    schedule=None,
    doc_md=__doc__,
    tags=["bootstrap"],
    params={
        "stores": stores_param(description="Stores to bootstrap."),
        "dry_run": dry_run_param("Log what would be created or changed; touch nothing."),
        "apply_redis_settings": Param(
            False, type="boolean", title="Apply Redis settings", description="CONFIG SET drifted Redis settings."
        ),
    },
):
    [bootstrap_postgres(), bootstrap_mongo(), bootstrap_weaviate(), bootstrap_redis(), bootstrap_kafka()] >> verify()
    summary()
