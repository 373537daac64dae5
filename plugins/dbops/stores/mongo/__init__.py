"""The mongo store: bootstrap, backup and recovery (see adapter.py)."""
