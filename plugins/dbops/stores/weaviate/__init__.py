"""The weaviate store: bootstrap, backup and recovery (see adapter.py)."""
