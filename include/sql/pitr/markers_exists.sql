-- Whether dbops.pitr_markers exists in the connected database.
SELECT to_regclass('dbops.pitr_markers') IS NOT NULL;
