SELECT to_regclass('dbops.maintenance_report') IS NOT NULL;
