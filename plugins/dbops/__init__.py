"""dbops: scheduled database operations for the platform's stores, as Airflow DAGs.

Pure logic (config, migrations, the backup repository, store adapters) imports no
Airflow; ``dbops.dagkit`` and ``dbops.tasks`` are the thin Airflow layer over it.
"""
