"""The Airflow tasks of the dbops DAGs: thin wrappers that read Params and connections,
call the pure store logic, log a readable report and return a small summary (XCom)."""
