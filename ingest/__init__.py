"""Ingest: the HTTP edge. Decode, validate, enqueue; 202 only after XADD."""
