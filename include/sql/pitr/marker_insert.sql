-- One marker. %(written_by)s: who wrote it (the WAL check, the drill).
INSERT INTO dbops.pitr_markers (written_by) VALUES (%(written_by)s) RETURNING id, at;
