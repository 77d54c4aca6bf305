"""An in-process stack for tests: the ingest app on a test server, workers as tasks."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from ingest.server import ingest_app
from storage.sites import add_site
from vaxline.config import Settings
from vaxline.dcc.keys import KeyStore
from workers.certify import run_certifier
from workers.pipeline import run_worker
from workers.review import run_reviewer


class Stack:
    def __init__(self, settings: Settings, client: TestClient):
        self.settings = settings
        self.client = client
        self._workers: list[tuple[asyncio.Task, asyncio.Event]] = []

    async def site(self, code: str = "S-001", province: int = 1) -> tuple[int, str]:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            site, token = await add_site(conn, code=code, name=f"Site {code}", province=province, kind="fixed")
        finally:
            await conn.close()
        return site.site_id, token

    def start_worker(self, consumer: str = "test-0", *, certify: bool = False, review: bool = False) -> None:
        stop = asyncio.Event()
        run = run_certifier if certify else run_reviewer if review else run_worker
        self._workers.append((asyncio.create_task(run(self.settings, consumer=consumer, stop=stop)), stop))

    async def stop_workers(self) -> None:
        for _, stop in self._workers:
            stop.set()
        # asyncio.wait, not wait_for: a task that ignored its cancellation would hang wait_for for ever.
        tasks = [task for task, _ in self._workers]
        _, still_running = await asyncio.wait(tasks, timeout=30) if tasks else (set(), set())
        for task in still_running:
            task.cancel()
        self._workers.clear()
        assert not still_running, f"{len(still_running)} worker(s) did not stop within 30 s"

    async def post(self, token: str, body, *, content_type: str = "application/json", **kwargs):
        data = body if isinstance(body, bytes) else None
        json_body = None if isinstance(body, bytes) else body
        headers = {"Authorization": f"Bearer {token}"}
        if data is not None:
            headers["Content-Type"] = content_type
        return await self.client.post("/v1/doses", data=data, json=json_body, headers=headers, **kwargs)


@contextlib.asynccontextmanager
async def running_stack(settings: Settings, *, workers: int = 1, certifiers: int = 0, reviewers: int = 0):
    """Ingest on a test server, `workers` persisting workers, `certifiers` certifiers (with a signing key) and
    `reviewers` reviewers."""
    if certifiers:
        KeyStore(settings.signing_keys_dir).ensure()
    async with ingest_app(settings) as app:
        server = TestServer(app)
        await server.start_server(access_log=None)  # as in production: a path may carry a national ID
        async with TestClient(server) as client:
            stack = Stack(settings, client)
            for i in range(workers):
                stack.start_worker(f"test-{i}")
            for i in range(certifiers):
                stack.start_worker(f"test-certifier-{i}", certify=True)
            for i in range(reviewers):
                stack.start_worker(f"test-reviewer-{i}", review=True)
            try:
                yield stack
            finally:
                await stack.stop_workers()
