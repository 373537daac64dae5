-- One numbered commit of the writer.
INSERT INTO bench_pitr_writes (id, note) VALUES (%(id)s, %(note)s);
