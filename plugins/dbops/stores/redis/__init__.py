"""The redis store: bootstrap, backup and recovery (see adapter.py)."""
