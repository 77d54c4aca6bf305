"""Metrics (declared in monitoring.metrics) and what reads them back."""
