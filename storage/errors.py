"""How Postgres failures are classified for the pipeline.

A transient failure (the connection, the server shutting down, a deadlock or
serialization conflict, resource exhaustion) is retried with backoff and never
counts against a batch. Anything else is a property of the data: the batch
is isolated and, past the delivery bound, dead-lettered.
"""

import asyncpg

TRANSIENT = (
    OSError,
    asyncpg.InterfaceError,  # includes ConnectionDoesNotExistError
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.TransactionRollbackError,  # class 40: deadlock, serialization
    asyncpg.InsufficientResourcesError,  # class 53
    asyncpg.OperatorInterventionError,  # class 57: admin shutdown, cannot connect now
    asyncpg.exceptions.CannotConnectNowError,
    TimeoutError,
)


def is_transient(error: BaseException) -> bool:
    return isinstance(error, TRANSIENT)
