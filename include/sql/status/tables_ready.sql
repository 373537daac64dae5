-- Whether dbops_bootstrap created the dbops tables the page reads.
SELECT to_regclass('dbops.table_size_history') IS NOT NULL AS table_size_history,
       to_regclass('dbops.maintenance_report') IS NOT NULL AS maintenance_report;
