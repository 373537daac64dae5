-- Size history older than the retention (growth needs the last 30 days).
DELETE FROM dbops.table_size_history WHERE captured_at < now() - make_interval(days => %(days)s);
