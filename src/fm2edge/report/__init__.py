"""Metrics (pure functions), plots (data -> Figure) and the writer that puts them on disk."""
