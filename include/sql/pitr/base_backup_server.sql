-- What a base backup needs from the server, read before any work (nothing is changed):
-- the WAL settings, free WAL senders, the replication role, the cluster's identity.
-- %(role)s: the role pg_basebackup connects as (NULL: not checked here).
SELECT current_setting('wal_level')                                          AS wal_level,
       current_setting('max_wal_senders')::int                               AS max_wal_senders,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')::int
                                                                             AS wal_senders_in_use,
       (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size') AS wal_segment_size,
       (SELECT system_identifier::text FROM pg_control_system())             AS system_identifier,
       current_setting('server_version')                                     AS server_version,
       current_setting('server_version_num')::int                            AS server_version_num,
       (SELECT rolname::text FROM pg_roles WHERE oid = 10)                   AS bootstrap_superuser,
       (SELECT array_agg(datname::text ORDER BY datname) FROM pg_database
         WHERE datallowconn AND NOT datistemplate)                           AS databases,
       EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %(role)s)              AS role_exists,
       coalesce((SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = %(role)s), false)
                                                                             AS role_can_replicate;
