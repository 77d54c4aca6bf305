"""Postgres: schema and migrations, partitions, and the queries of each stage."""

# Advisory lock held while the schema changes (migrations, new partitions).
SCHEMA_LOCK = 0x7661786C  # "vaxl"

# How long a worker waits for a pooled connection (asyncpg waits for ever by default): past it the attempt
# fails as any outage does and is retried, so a pool wedged by a server restart cannot hang a worker.
ACQUIRE_TIMEOUT = 10.0
