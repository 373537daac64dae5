"""
### dbops_health: the platform's alert rules as checks that fail loudly

The rules of the platform's Prometheus `alert_rules.yml`, checked every few minutes
(`schedules.health`), each a task that fails with a message naming the store, the measured value
and the threshold, and notifies through the dbops alert notifier:

| task | rule |
|---|---|
| `check_postgres` | client connections to the platform database (`pg_stat_activity`) above `health.pg_max_connections` (150) |
| `check_redis` | `used_memory` above `health.redis_max_memory_percent` (80 %) of `maxmemory`; a Redis without maxmemory fails too |
| `check_mongo` | a secondary's optime more than `health.mongo_max_replication_lag_s` (60 s) behind the primary; **skipped** on a standalone server |
| `check_kafka` | every topic of `include/scripts/kafka_topics.json` present with at least its partition count |

The checks are light reads and use the default pool, so a long backup never delays them.

**Params**: `stores` (which checks run).

**Backfill / rerun**: health can only be observed now, so the DAG does not allow backfills: Airflow
refuses `airflow backfill create` (and the UI's backfill) for it, instead of creating a run every ten
minutes of the past that could check nothing. A run whose logical date is more than
`health.max_start_delay_minutes` old anyway (a catch-up, a trigger with an old date) skips every check
and says so; a rerun (clear) checks again, now.
"""

from airflow.sdk import Param

from dbops.dagkit import CONFIG, cron, dbops_dag
from dbops.tasks.monitor import HEALTH_STORES, check_kafka, check_mongo, check_postgres, check_redis
from dbops.tasks.summary import summary

with dbops_dag(
    "dbops_health",
    schedule=cron(CONFIG.schedules.health),
    doc_md=__doc__,
    tags=["monitor", "health"],
    allowed_run_types=["scheduled", "manual"],
    params={
        "stores": Param(
            list(HEALTH_STORES),
            type="array",
            items={"type": "string", "enum": list(HEALTH_STORES)},
            uniqueItems=True,
            minItems=1,
            title="Stores",
            description="Which stores to check.",
        ),
    },
):
    [check_postgres(), check_redis(), check_mongo(), check_kafka()]
    summary()
