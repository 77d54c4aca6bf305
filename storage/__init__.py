"""Postgres: schema and migrations, partitions, and the queries of each stage."""

# Advisory lock held while the schema changes (migrations, new partitions).
SCHEMA_LOCK = 0x7661786C  # "vaxl"
