"""The postgres store: bootstrap, backup and recovery (see adapter.py)."""
