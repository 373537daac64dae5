-- Whether a replication slot exists and whether a receiver streams from it (no row: no slot).
SELECT active FROM pg_replication_slots WHERE slot_name = %(slot)s;
