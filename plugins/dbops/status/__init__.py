"""The "DB Ops" page: what the backup repository and the dbops tables say, read-only.

* :mod:`.overview` builds the overview from the backup repository catalog (last good
  backup per series, its drill and offsite copies, the retention policy's verdict now)
  and shapes the table-size history and the latest maintenance report. Pure: no
  Airflow, no database.
* :mod:`.queries` reads ``dbops.table_size_history`` and ``dbops.maintenance_report``
  over a psycopg connection in a read-only session (SQL in ``include/sql/status/``).
* :mod:`.app` is the FastAPI app the Airflow plugin ``dbops_ops_page`` mounts in the API
  server: the HTML page and its JSON API. It never writes.
"""
