"""The kafka store: bootstrap, backup and recovery (see adapter.py)."""
