"""Postgres point-in-time recovery: the WAL archive, base backups, retention and restores."""
