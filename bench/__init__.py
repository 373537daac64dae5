"""Benchmarks: the old cron scripts vs dbops, side by side (``python -m bench``)."""
