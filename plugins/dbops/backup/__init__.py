"""Backups on disk: repository, manifest, retention (pure Python, no Airflow import)."""
