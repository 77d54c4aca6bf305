"""How Postgres failures are classified for the pipeline.

Only a failure that is a property of the data makes a batch poison: a value
Postgres refuses (class 22, e.g. a NUL byte in text) or a violated constraint
(class 23). Everything else (a lost connection, a server restarting or
failing over, a deadlock, a lock timeout, a statement timeout, even a broken
migration) is the system's fault, not the batch's: it is retried with
backoff for as long as it lasts, so that an outage can never turn good
acknowledged doses into dead letters.
"""

import asyncpg

POISON = (
    asyncpg.DataError,  # class 22, and asyncpg's own "invalid input" on encoding
    asyncpg.IntegrityConstraintViolationError,  # class 23
)
