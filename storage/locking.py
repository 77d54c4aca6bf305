"""Compare-and-swap writes that read what they compare from the locked rows, never from a scan's condition.

A write that must change a row only if it is still in some state (a notification still waiting, a
certificate still current) would say so in its WHERE clause. When that state is the predicate of a partial
index (`sent_at IS NULL`, `status = 'current'`), the planner may read that index for the statement's few
keys instead of the primary key, and it does whenever its statistics were taken while few rows were in that
state: a table that grows in bursts, or from nothing on a fresh day. It then scans the whole index, once per
row (docs/benchmarks.md, 2026-12-07, late). So the rows are taken by key alone and locked, and the state is
compared on what FOR UPDATE returns: each row as it is once locked, which stays so until the commit.
"""

from __future__ import annotations


def locked_rows(table: str, *, key: str, state: str, order: str, rows: str, columns: str) -> str:
    """The CTE `l`: the rows of `table` that `rows` (a set aliased `i`, with a column named `key`) names, read
    by `key` alone and locked in `order` (columns of `t`, the table), with their `state` (columns of `t`) as
    they are once locked and these `columns` of `i`. The statement that follows compares `l`'s state."""
    return f"""
WITH l AS MATERIALIZED (
    SELECT t.{key}, {state}, {columns}
    FROM {rows}
    JOIN {table} t ON t.{key} = i.{key}
    ORDER BY {order}
    FOR UPDATE OF t
)"""
