"""Postgres: schema and migrations, partitions, and the queries of each stage."""

from urllib.parse import parse_qs, urlsplit

# Advisory lock held while the schema changes (migrations, new partitions).
SCHEMA_LOCK = 0x7661786C  # "vaxl"

# How long a worker waits for a pooled connection (asyncpg waits for ever by default): past it the attempt
# fails as any outage does and is retried, so a pool wedged by a server restart cannot hang a worker.
ACQUIRE_TIMEOUT = 10.0


# The first word of every backend's application_name: APPLICATION, then the process's role and name.
APPLICATION = "vaxline"


def session_settings(url: str, role: str) -> dict[str, str]:
    """asyncpg's server_settings for a pool of `role`: its `application_name` ("vaxline certifier c1"), so that
    pg_stat_activity, the server's logs and `vaxline loadtest`'s CPU per role tell whose backend is whose.
    An application_name the URL sets already is kept (asyncpg would let this one override it)."""
    if "application_name" in parse_qs(urlsplit(url).query):
        return {}
    return {"application_name": f"{APPLICATION} {role}"[:63]}  # Postgres keeps 63 bytes (NAMEDATALEN - 1)
