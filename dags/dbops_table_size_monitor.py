"""
### dbops_table_size_monitor: table sizes with history, growth and alerts

The successor of the daily `table_sizes.log` query, visible and triggerable in the Airflow UI:

| task | what it does |
|---|---|
| `capture_sizes` | appends total, heap, index and TOAST bytes and live/dead tuples of every table of `monitor.schemas` (the platform schemas) to `dbops.table_size_history`, stamped with the real capture time; prunes history older than `monitor.history_retention_days` |
| `size_report` | growth in bytes/day over 1, 7 and 30 days and days until each table's size limit, by window functions over the history; writes `table_sizes/table_sizes_<UTC>.txt` and the Prometheus text file `metrics/dbops_table_sizes.prom` (`dbops_table_total_bytes{schema,table}`, `dbops_table_growth_bytes_per_day{schema,table,window}`, ...) under `monitor.reports_dir`, atomically; logs the report |
| `check_thresholds` | fails, naming each table and the threshold, when a table is over its limit (`monitor.size_limit_bytes` / `size_limits`), grew faster than `max_growth_bytes_per_day`, or reaches its limit within `alert_days_until_limit` days; the failure is sent through the dbops alert notifier |

Store health checks (connections, Redis memory, Mongo lag, Kafka topics) run in `dbops_health`
on a short schedule.

**Backfill / past dates**: a size can only be measured now. A run whose logical date is more than
`monitor.max_start_delay_hours` in the past (a backfill, a catch-up, a trigger with an old date) skips
`capture_sizes` with a message saying so, and the rest is skipped with it: nothing is recorded
under a date it was not measured at. A manual trigger (no logical date, or now) measures now.

**Rerun**: clearing `capture_sizes` appends one more real measurement (growth uses the real times, so
figures stay right); clearing `size_report` or `check_thresholds` recomputes from the stored history
and rewrites the same report file.
"""

from dbops.dagkit import CONFIG, cron, dbops_dag
from dbops.tasks.monitor import capture_sizes, check_thresholds, size_report
from dbops.tasks.summary import summary

with dbops_dag(
    "dbops_table_size_monitor",
    schedule=cron(CONFIG.schedules.table_size_monitor),
    doc_md=__doc__,
    tags=["monitor", "postgres"],
    params={},
):
    check_thresholds(size_report(capture_sizes()))
    summary()
