"""The read replica: how far a hot standby's replay trails its primary.

A standby that has replayed everything it received is not behind, however long ago the primary's last
commit was (an idle primary); otherwise its lag is the time since the last transaction it replayed was
committed on the primary. On a primary (not in recovery) there is no lag to speak of: None.
"""

from __future__ import annotations

import asyncpg

LAG = """
SELECT CASE
    WHEN NOT pg_is_in_recovery() THEN NULL
    WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0.0
    ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0.0)::float8
END
"""


async def replica_lag(conn: asyncpg.Connection) -> float | None:
    """Seconds the standby's replay trails the primary's commits; None on a primary."""
    return await conn.fetchval(LAG)
