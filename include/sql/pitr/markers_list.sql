-- Every marker, oldest first.
SELECT id, at, written_by FROM dbops.pitr_markers ORDER BY id;
