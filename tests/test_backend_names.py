"""Each process's Postgres backends carry its role as application_name, so that pg_stat_activity, the server's
logs and the load tests' CPU per role tell whose backend is whose."""

import asyncpg

from storage import session_settings
from tests.conftest import wait_until
from tests.factory import batch
from tests.stack import running_stack


def test_the_role_is_the_application_name_unless_the_url_names_one():
    assert session_settings("postgresql://u@h/db", "certifier c1") == {"application_name": "vaxline certifier c1"}
    assert session_settings("postgresql://u@h/db?sslmode=require&application_name=ours", "worker w1") == {}
    assert len(session_settings("postgresql://u@h/db", "worker " + "w" * 100)["application_name"]) == 63


WANTED = {"vaxline ingest", "vaxline worker test-0", "vaxline certifier test-certifier-0"}


async def _named(settings) -> bool:
    conn = await asyncpg.connect(settings.database_url)
    try:
        names = {r["application_name"] for r in await conn.fetch(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()")}
    finally:
        await conn.close()
    return WANTED <= names


async def test_ingest_workers_and_certifiers_name_their_backends(settings):
    async with running_stack(settings, certifiers=1) as stack:
        _, token = await stack.site()
        assert (await stack.post(token, batch(0, 2))).status == 202  # ingest's pool connects for the token
        await wait_until(lambda: _named(settings), message="every role's backend in pg_stat_activity")
