"""vaxline: the ingestion core of a national vaccination platform.

This package is the one home of what several stages share: settings, the
dose schema and value sets, the stream entry format, site tokens, the
embedded services and the command line. `ingest/` and `workers/` import it;
they never import each other.
"""
