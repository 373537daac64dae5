"""Online PostgreSQL maintenance, table-size history and store health checks.

Pure logic over a psycopg 3 connection (or a store client) handed in by the caller;
no Airflow import here. ``dbops.tasks.maintenance`` and ``dbops.tasks.monitor`` are
the thin Airflow layer over it.

- :mod:`.postgres`: what needs VACUUM / ANALYZE / REINDEX, doing it online
  (autocommit, CONCURRENTLY, lock and statement timeouts, a window end), the
  invalid-index cleanup, VACUUM FULL of listed tables only;
- :mod:`.reports`: unused indexes and estimated bloat from catalog statistics;
- :mod:`.journal`: what was done, in ``dbops.maintenance_report``;
- :mod:`.sizes`: the size history, growth by window functions, thresholds, report files;
- :mod:`.health`: the platform's alert rules as checks;
- :mod:`.render`: plain-text tables and byte sizes for logs and report files.
"""
