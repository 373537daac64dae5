-- Drop a replication slot the benchmark made (left behind, it would keep WAL forever).
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %(slot)s AND NOT active;
