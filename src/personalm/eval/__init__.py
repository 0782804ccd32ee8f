"""Metrics: tone scorers, semantic similarity, diversity."""
