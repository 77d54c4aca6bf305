"""vaxline: the ingestion core of a national vaccination platform.

This package is the core every stage shares: settings, the dose schema and its validation, value sets,
the stream entry format and the enqueue path (ingest and back-entry append the same way), the sequence,
the review rules, site tokens and the DCC codec. It imports nothing of ours outside itself; monitoring
and storage build on it, and ingest, workers and back-entry on those (tests/test_layout.py keeps it so).
"""
