-- What the WAL check needs from the server, in one read: the settings point-in-time
-- recovery depends on, the receiver's slot and its stream, and how far behind it is.
-- %(slot)s: the receiver's physical replication slot (pitr.slot).
SELECT
    current_setting('wal_level')                                   AS wal_level,
    current_setting('max_wal_senders')::int                        AS max_wal_senders,
    current_setting('max_replication_slots')::int                  AS max_replication_slots,
    (SELECT system_identifier::text FROM pg_control_system())      AS system_identifier,
    (SELECT timeline_id FROM pg_control_checkpoint())               AS timeline,
    pg_current_wal_lsn()::text                                     AS current_lsn,
    clock_timestamp()                                              AS server_time,
    s.slot_name IS NOT NULL                                        AS slot_exists,
    s.slot_type                                                    AS slot_type,
    coalesce(s.active, false)                                      AS slot_active,
    s.restart_lsn::text                                            AS restart_lsn,
    s.wal_status                                                   AS slot_wal_status,
    pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint   AS retained_bytes,
    r.application_name                                             AS receiver_name,
    r.write_lsn::text                                              AS write_lsn,
    pg_wal_lsn_diff(pg_current_wal_lsn(), r.write_lsn)::bigint     AS lag_bytes,
    extract(epoch FROM r.write_lag)::float8                        AS write_lag_s,
    extract(epoch FROM clock_timestamp() - r.reply_time)::float8   AS reply_age_s
FROM (SELECT 1) AS one
LEFT JOIN pg_replication_slots AS s ON s.slot_name = %(slot)s
LEFT JOIN pg_stat_replication AS r ON r.pid = s.active_pid
