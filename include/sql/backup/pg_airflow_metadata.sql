-- Whether the connected database is an Airflow metadata database (it holds Airflow's
-- alembic_version and dag_run tables): the nightly backup leaves it to Airflow's owners.
SELECT count(DISTINCT c.relname) = 2 AS airflow
  FROM pg_class AS c
 WHERE c.relkind IN ('r', 'p') AND c.relname IN ('alembic_version', 'dag_run');
