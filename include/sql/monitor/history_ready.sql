SELECT to_regclass('dbops.table_size_history') IS NOT NULL;
